"""Verification Service Class SCP (C-ECHO), DICOM PS3.4 Annex A."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pynetdicom.dimse_primitives import C_ECHO

from mimic_server.dimse.session import session_of
from mimic_server.errors import Status
from mimic_server.security.identity import peer_identity
from mimic_server.security.policy import Policy, Service

if TYPE_CHECKING:
    from pynetdicom.events import Event

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"


def handle_echo(event: Event, policy: Policy) -> int:
    """Handle ``evt.EVT_C_ECHO``.

    Returns
    -------
    int
        ``0x0000`` Success, ``0x0124`` Refused: Not Authorized, or ``0x0122`` Refused: SOP
        Class not supported for a C-ECHO sent on a presentation context that is not the
        Verification one (PS3.7 9.3.1: a request goes on a context of its SOP Class), as a
        C-STORE on the Verification context is; it was answered Success.
    """
    session = session_of(event.assoc)
    if session is None or not policy.may(session, Service.ECHO):
        return Status.NOT_AUTHORIZED
    if event.context.abstract_syntax != VERIFICATION:
        _refused(event.assoc, "the request's presentation context is not Verification's",
                 str(event.context.abstract_syntax))
        return Status.SOP_CLASS_NOT_SUPPORTED
    return Status.SUCCESS


def answering_echo(original: Callable[..., None]) -> Callable[..., None]:
    """``Association._serve_request`` that answers a C-ECHO whose Affected SOP Class UID is
    not Verification itself: ``0x0122`` Refused: SOP Class not supported, and a WARNING.

    pynetdicom picks the service class by that UID: CT Image Storage ran the Storage SCP
    on the C-ECHO, which raised; an unknown UID the base class, which raises
    NotImplementedError; either way the association was aborted and the only word of it went
    to pynetdicom's own log, which is off. Every other message, and a C-ECHO pynetdicom
    would not serve anyway (during release, on a context not accepted), is pynetdicom's.
    Applied, or not, by the fence (``mimic_server/patches.py``, ``c-echo-sop-class``): one
    type check per DIMSE message."""

    def _serve_request(self: Any, msg: Any, context_id: int) -> None:
        if (type(msg) is C_ECHO and msg.AffectedSOPClassUID != VERIFICATION
                and not self._sent_release and context_id in self._accepted_cx):
            _refuse_echo(self, msg, context_id)
            return
        original(self, msg, context_id)

    return _serve_request


def _refuse_echo(assoc: Any, request: C_ECHO, context_id: int) -> None:
    sop_class = request.AffectedSOPClassUID
    _refused(assoc, "the request's SOP Class is not Verification", str(sop_class or ""))
    response = C_ECHO()
    response.MessageIDBeingRespondedTo = request.MessageID
    response.AffectedSOPClassUID = sop_class
    response.Status = Status.SOP_CLASS_NOT_SUPPORTED
    assoc.dimse.send_msg(response, context_id)


def _refused(assoc: Any, reason: str, sop_class: str) -> None:
    """One WARNING for a C-ECHO answered 0x0122, naming the peer; never raises."""
    try:
        identity = peer_identity(assoc)
        requestor = assoc.requestor
        log.warning(
            "C-ECHO refused",
            extra={"status": f"0x{Status.SOP_CLASS_NOT_SUPPORTED:04X}", "reason": reason,
                   "sop_class": sop_class, "peer": f"{requestor.address}:{requestor.port}",
                   "identity": identity.label if identity is not None else "unknown"},
        )
    except Exception:  # a log line must not change the answer
        log.debug("the refused C-ECHO could not be described", exc_info=True)
