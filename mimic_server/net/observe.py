"""What the listener sees, counted: associations, DIMSE requests and their final statuses.

Fed by pynetdicom's notification events, so no DIMSE handler knows it is measured:

* ``EVT_ESTABLISHED`` / ``EVT_ABORTED`` / ``EVT_RELEASED``: outcomes, each association's
  end counted once (a local abort fires ``EVT_ABORTED`` from two places);
* ``EVT_ACSE_SENT`` with an A-ASSOCIATE-RJ: rejections. Not ``EVT_REJECTED``: the policy
  rejects in ``EVT_REQUESTED`` by sending the A-ASSOCIATE-RJ itself, which pynetdicom does not
  report as an event; every rejection, pynetdicom's own included, passes through the DUL;
* ``EVT_DIMSE_RECV``: a request arrived (its service, Message ID and, for a C-STORE, its
  data set length), the start of its duration;
* the final response: NOT through ``EVT_DIMSE_SENT``. Binding that event turns off the
  direct encoding of C-STORE and C-FIND responses (``codec/command_set.py`` skips its fast
  path when a handler wants the decoded message): half a millisecond on every C-STORE.
  Instead each established association's ``dimse.send_msg`` is wrapped, on that instance
  only, to read the status of the response primitive before it goes out.

The sink receives only fixed label values (service names, status categories, outcomes).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any, Protocol

from pynetdicom import evt
from pynetdicom.dimse_messages import (
    C_ECHO_RQ,
    C_FIND_RQ,
    C_GET_RQ,
    C_MOVE_RQ,
    C_STORE_RQ,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import A_ASSOCIATE

_SERVICES: dict[type, str] = {
    C_ECHO_RQ: "C-ECHO",
    C_STORE_RQ: "C-STORE",
    C_FIND_RQ: "C-FIND",
    C_MOVE_RQ: "C-MOVE",
    C_GET_RQ: "C-GET",
}
_WARNINGS = frozenset({0x0001, 0x0107, 0x0116})
_PENDING = frozenset({0xFF00, 0xFF01})
_REQUESTS = "_mimic_requests"
_ENDED = "_mimic_ended"


class Sink(Protocol):
    """Where the counts go (``web.metrics.ArchiveMetrics``)."""

    def association(self, outcome: str) -> None: ...

    def request_answered(self, service: str, status: str, seconds: float) -> None: ...

    def stored(self, size: int) -> None: ...


def status_category(status: int) -> str | None:
    """``success`` / ``warning`` / ``failure`` / ``cancel``; None for Pending (not final)."""
    if status == 0x0000:
        return "success"
    if status in _PENDING:
        return None
    if status == 0xFE00:
        return "cancel"
    if status in _WARNINGS or 0xB000 <= status <= 0xBFFF:
        return "warning"
    return "failure"


def bind(server: Any, sink: Sink) -> None:
    """Count what ``server``'s associations do into ``sink``."""
    server.bind(evt.EVT_ESTABLISHED, _established, [sink])
    server.bind(evt.EVT_ACSE_SENT, _acse_sent, [sink])
    server.bind(evt.EVT_ABORTED, _ended, [sink, "aborted"])
    server.bind(evt.EVT_RELEASED, _ended, [sink, "released"])
    server.bind(evt.EVT_DIMSE_RECV, _received)


def _acse_sent(event: Any, sink: Sink) -> None:
    primitive = event.primitive
    if type(primitive) is A_ASSOCIATE and primitive.result in (0x01, 0x02):
        sink.association("rejected")


def _ended(event: Any, sink: Sink, outcome: str) -> None:
    assoc = event.assoc
    if getattr(assoc, _ENDED, False):
        return
    setattr(assoc, _ENDED, True)
    sink.association(outcome)


def _established(event: Any, sink: Sink) -> None:
    sink.association("accepted")
    assoc = event.assoc
    # Message ID -> (service, monotonic start, data set bytes); one association's requests.
    requests: dict[int, tuple[str, float, int]] = {}
    setattr(assoc, _REQUESTS, requests)
    assoc.dimse.send_msg = _observed_send(assoc.dimse.send_msg, requests, sink)


def _received(event: Any) -> None:
    message = event.message
    service = _SERVICES.get(type(message))
    if service is None:
        return  # a response (C-GET sub-operations), a C-CANCEL, an N- service
    requests = getattr(event.assoc, _REQUESTS, None)
    if requests is None:
        return
    size = 0
    if service == "C-STORE" and isinstance(message.data_set, io.BytesIO):
        # A data set received in bounded memory counts what arrived (dimse/receiving.py).
        size = getattr(message.data_set, "received", None)
        if size is None:
            with message.data_set.getbuffer() as view:
                size = view.nbytes
    requests[message.command_set.MessageID] = (service, time.perf_counter(), size)


def _observed_send(
    send: Callable[[Any, int], None], requests: dict[int, tuple[str, float, int]], sink: Sink
) -> Callable[[Any, int], None]:
    def send_msg(primitive: Any, context_id: int) -> None:
        send(primitive, context_id)
        answered = primitive.MessageIDBeingRespondedTo
        if answered is None or answered not in requests:
            return  # a request we send (C-GET / C-MOVE sub-operations), or unknown
        status = primitive.Status
        category = status_category(status) if isinstance(status, int) else "failure"
        if category is None:
            return  # Pending: the request goes on
        service, started, size = requests.pop(answered)
        sink.request_answered(service, category, time.perf_counter() - started)
        if size and type(primitive) is C_STORE and category in ("success", "warning"):
            sink.stored(size)

    return send_msg


def in_flight(assoc: Any) -> list[str]:
    """The services of the requests an association is being answered for now (console)."""
    requests = getattr(assoc, _REQUESTS, None) or {}
    return sorted({service for service, _, _ in list(requests.values())})


def handshake_failure_reason(reason: str) -> str:
    """The fixed label for a refusal reason of :class:`~.server.MimicAssociationServer`."""
    text = reason.upper()
    if "TOO MANY CONNECTIONS" in text:
        return "overloaded"
    if "NOT TRUSTED" in text:
        return "certificate_untrusted"
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in text or "NO_CERTIFICATE" in text:
        return "certificate_missing"
    if "CERTIFICATE" in text or "UNKNOWN_CA" in text:  # ours at the peer, or theirs here
        return "certificate_rejected"
    if "TIMEOUT" in text or "TIMED OUT" in text:
        return "timeout"
    if any(word in text for word in ("RESET", "EOF", "BROKENPIPE", "CONNECTION")):
        return "connection"
    if any(
        word in text
        for word in ("PROTOCOL", "VERSION", "CIPHER", "HTTP_REQUEST", "WRONG", "ALERT", "SSL")
    ):
        return "protocol"
    return "other"
