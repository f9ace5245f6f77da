"""Query/Retrieve Service Class SCP, C-MOVE (PS3.4 C.4.2): to a registered destination.

The destination's AE title must be in the move destination registry (``MIMIC_MOVE_DESTINATIONS``);
an unknown one is answered 0xA801. A TLS destination is reached with the server's own
certificate. Each object's SHA-256 is checked before it is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import build_context

from mimic_server.dimse.find import MODELS, failure
from mimic_server.dimse.retrieve import datasets
from mimic_server.dimse.session import session_of
from mimic_server.errors import DicomStatusError, QueryError, Status
from mimic_server.query.finder import Finder, InstanceRef
from mimic_server.query.identifier import parse
from mimic_server.security.policy import Policy, Service
from mimic_server.storage import ObjectStore

if TYPE_CHECKING:
    import ssl

    from pynetdicom.events import Event

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128


@dataclass(frozen=True, slots=True)
class MoveTarget:
    """Where a Move Destination AE title is reached; ``tls`` builds its TLS arguments."""

    host: str
    port: int
    #: ``(client context, server name)`` for a TLS destination, made when it is used.
    tls: Callable[[], tuple[ssl.SSLContext, str]] | None = None


#: The registry of Move Destinations: AE title -> target, or None for an unknown one.
MoveResolver = Callable[[str], MoveTarget | None]


def handle_move(
    event: Event,
    finder: Finder,
    store: ObjectStore,
    policy: Policy,
    resolve: MoveResolver,
) -> Iterator[Any]:
    """Handle ``evt.EVT_C_MOVE``.

    Yields
    ------
    The destination ``(host, port, associate kwargs)`` or ``(None, None)`` (0xA801 unknown
    destination); the number of sub-operations; then ``(0xFF00, dataset)`` per object, or a
    final failure: 0xA900 / 0xC000 bad Identifier, 0xA700 index unavailable, 0xFE00 Cancel.
    """
    session = session_of(event.assoc)
    target = str(event.move_destination or "").strip()
    destination = resolve(target)
    allowed = session is not None and policy.may(session.identity, Service.MOVE)
    if destination is None or not allowed:
        reason = "unknown move destination" if destination is None else "C-MOVE not granted"
        log.warning("C-MOVE refused", extra={"destination": target, "reason": reason})
        yield None, None
        return
    assert session is not None
    kwargs: dict[str, Any] = {}
    if destination.tls is not None:
        kwargs["tls_args"] = destination.tls()
    sop_class = str(event.request.AffectedSOPClassUID)
    try:
        query = parse(
            event.identifier, MODELS[sop_class],
            relational=session.relational(sop_class), retrieve=True,
        )
        refs = finder.instances(query)
    except (QueryError, DicomStatusError) as exc:
        # pynetdicom needs the destination before any status: the failure follows at once.
        yield destination.host, destination.port, {**kwargs, "contexts": _contexts([])}
        yield 1
        yield failure(exc.status, str(exc)), None
        return
    yield destination.host, destination.port, {**kwargs, "contexts": _contexts(refs)}
    yield len(refs)
    log.info("C-MOVE", extra={"destination": target, "instances": len(refs)})
    for dataset in datasets(store, refs):
        if event.is_cancelled:
            yield Status.CANCEL, None
            return
        yield Status.PENDING, dataset


def _uncompressed(syntax: str) -> bool:
    """Native (uncompressed) encoding; a syntax pydicom does not know counts as compressed."""
    uid = UID(syntax)
    return uid.is_transfer_syntax and not uid.is_compressed


def _contexts(refs: list[InstanceRef]) -> list[Any]:
    """Presentation contexts for the stored objects: per SOP Class, one context for each
    compressed transfer syntax held and one offering the uncompressed ones."""
    wanted: dict[tuple[str, str], list[str]] = {}
    for ref in refs:
        syntax = ref.transfer_syntax_uid
        group = "uncompressed" if _uncompressed(syntax) else syntax
        syntaxes = wanted.setdefault((ref.sop_class_uid, group), [])
        if syntax not in syntaxes:
            syntaxes.append(syntax)
    contexts = []
    for (sop_class, _), syntaxes in list(wanted.items())[:MAX_CONTEXTS]:
        if _uncompressed(syntaxes[0]):
            syntaxes += [s for s in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
                         if s not in syntaxes]
        contexts.append(build_context(sop_class, syntaxes))
    if not contexts:  # an association still needs one context
        contexts.append(build_context("1.2.840.10008.1.1"))
    return contexts
