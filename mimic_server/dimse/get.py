"""Query/Retrieve Service Class SCP, C-GET (PS3.4 C.4.3): over the requesting association.

The requestor must have proposed the storage SOP classes with the SCP role (SCP/SCU Role
Selection); each object's SHA-256 is checked before it is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mimic_server.dimse.find import MODELS, failure
from mimic_server.dimse.get_answer import refuse
from mimic_server.dimse.retrieve import datasets
from mimic_server.dimse.session import session_of
from mimic_server.errors import DicomStatusError, QueryError, Status
from mimic_server.query.finder import Finder
from mimic_server.query.identifier import parse
from mimic_server.security.policy import Policy, Service
from mimic_server.storage import ObjectStore

if TYPE_CHECKING:
    from pynetdicom.events import Event

log = logging.getLogger(__name__)


def handle_get(
    event: Event, finder: Finder, store: ObjectStore, policy: Policy
) -> Iterator[Any]:
    """Handle ``evt.EVT_C_GET``.

    Yields
    ------
    The number of sub-operations, then ``(0xFF00, dataset)`` per object; or a final failure:
    0x0124 Not Authorized, 0xA900 / 0xC000 bad Identifier, 0xA700 index unavailable,
    0xFE00 Cancel. A refusal announces one sub-operation (pynetdicom's only way to let a
    handler fail a C-GET) and marks itself refused (:mod:`~mimic_server.dimse.get_answer`),
    so its answer carries no counts.
    """
    session = session_of(event.assoc)
    sop_class = str(event.request.AffectedSOPClassUID)
    try:
        if session is None or not policy.may(session, Service.GET):
            raise QueryError("C-GET is not granted", Status.NOT_AUTHORIZED)
        query = parse(
            event.identifier, MODELS[sop_class],
            relational=session.relational(sop_class), retrieve=True,
        )
        refs = finder.instances(query)
        session.retrieving = refs  # for the audit trail (dimse/audited.py)
    except (QueryError, DicomStatusError) as exc:
        refuse(event.assoc)  # answered without counts where the fence allows (get_answer)
        yield 1
        yield failure(exc.status, str(exc)), None
        return
    yield len(refs)
    log.info("C-GET", extra={"instances": len(refs)})
    for dataset in datasets(store, refs, finder.current, association=event.assoc):
        if event.is_cancelled:
            yield Status.CANCEL, None
            return
        yield Status.PENDING, dataset
