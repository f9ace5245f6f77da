"""Query/Retrieve Service Class SCP, C-FIND: Patient Root and Study Root (PS3.4 C.4.1).

Answers stream as the index yields them (one pending response per match); a C-CANCEL ends
the stream with Cancel; more matches than the configured limit, or more work than the
query's time budget, end it with a failure that says so, after the matches already sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from mimic_server.dimse.pacing import let_the_reactor_breathe
from mimic_server.dimse.session import session_of
from mimic_server.errors import DicomStatusError, QueryError, Status
from mimic_server.query.finder import Finder, ResultLimitReached
from mimic_server.query.identifier import parse
from mimic_server.query.keys import Model
from mimic_server.query.pages import TimeLimitReached
from mimic_server.security.policy import Policy, Service

if TYPE_CHECKING:
    from pynetdicom.events import Event

log = logging.getLogger(__name__)

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"

MODELS = {
    PATIENT_ROOT_FIND: Model.PATIENT_ROOT,
    STUDY_ROOT_FIND: Model.STUDY_ROOT,
    PATIENT_ROOT_MOVE: Model.PATIENT_ROOT,
    STUDY_ROOT_MOVE: Model.STUDY_ROOT,
    PATIENT_ROOT_GET: Model.PATIENT_ROOT,
    STUDY_ROOT_GET: Model.STUDY_ROOT,
}


def failure(status: int, comment: str) -> Dataset:
    answer = Dataset()
    answer.Status = int(status)
    answer.ErrorComment = comment[:64]
    return answer


class _CancelSeen:
    """Whether a C-CANCEL arrived; it stays seen (``event.is_cancelled`` consumes it)."""

    def __init__(self, event: Event) -> None:
        self.event = event
        self.seen = False

    def __call__(self) -> bool:
        self.seen = self.seen or self.event.is_cancelled
        return self.seen


def handle_find(event: Event, finder: Finder, policy: Policy) -> Iterator[tuple[Any, Any]]:
    """Handle ``evt.EVT_C_FIND``.

    Yields
    ------
    (status, identifier)
        ``0xFF00`` Pending with each match; then (pynetdicom adds) ``0x0000`` Success; or
        ``0xFE00`` Cancel, ``0xA700`` Out of Resources (index unavailable, result limit,
        time limit),
        ``0xA900`` Identifier does not match SOP Class, ``0xC000`` Unable to process,
        ``0x0124`` Not Authorized (C-FIND not granted, or a query that does not narrow by
        one of the identity's ``find_requires`` keys).
    """
    session = session_of(event.assoc)
    sop_class = str(event.request.AffectedSOPClassUID)
    if sop_class not in MODELS:  # e.g. Modality Worklist, accepted as a storage-like class
        yield failure(Status.SOP_CLASS_NOT_SUPPORTED, "SOP Class not supported"), None
        return
    if session is None or not policy.may(session, Service.FIND):
        yield failure(Status.NOT_AUTHORIZED, "C-FIND is not granted"), None
        return
    narrowing = policy.missing_narrowing(session, event.identifier)
    if narrowing is not None:  # the identity's find_requires (audited by the policy)
        yield failure(Status.NOT_AUTHORIZED, narrowing), None
        return
    try:
        query = parse(
            event.identifier, MODELS[sop_class], relational=session.relational(sop_class)
        )
    except QueryError as exc:
        log.warning("C-FIND refused", extra={"status": f"0x{exc.status:04X}", "reason": str(exc)})
        yield failure(exc.status, str(exc)), None
        return
    matches, started = 0, time.monotonic()
    cancel = _CancelSeen(event)
    try:
        limit = policy.max_find_results(session)
        for answer in finder.find(query, cancelled=cancel, max_results=limit):
            let_the_reactor_breathe(event.assoc)
            if cancel():
                break
            matches += 1
            yield Status.PENDING, answer
    except ResultLimitReached as exc:
        log.warning("C-FIND result limit reached", extra={"limit": exc.args[0]})
        yield failure(Status.OUT_OF_RESOURCES, f"more than {exc.args[0]} matches: refine"), None
        return
    except TimeLimitReached as exc:
        log.warning(
            "C-FIND time limit reached", extra={"limit_seconds": exc.args[0], "matches": matches}
        )
        comment = f"query time limit ({exc.args[0]:g} s): refine"
        yield failure(Status.OUT_OF_RESOURCES, comment), None
        return
    except DicomStatusError as exc:
        yield failure(exc.status, str(exc)), None
        return
    if cancel():  # while answering, or while no candidate matched
        yield Status.CANCEL, None
        return
    log.info(
        "C-FIND",
        extra={
            "query_level": query.level.value, "matches": matches,
            "seconds": round(time.monotonic() - started, 4),
        },
    )
