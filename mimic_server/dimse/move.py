"""Query/Retrieve Service Class SCP, C-MOVE (PS3.4 C.4.2): to a registered destination.

The destination's AE title must be in the move destination registry (``MIMIC_MOVE_DESTINATIONS``);
an unknown one is answered 0xA801. A TLS destination is reached with the server's own
certificate. Each object's SHA-256 is checked before it is sent. The statuses pynetdicom
cannot express itself go through :mod:`mimic_server.dimse.move_answer`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import build_context

from mimic_server.dimse.find import MODELS
from mimic_server.dimse.move_answer import MoveAnswer, answer_of
from mimic_server.dimse.move_attempt import Attempt
from mimic_server.dimse.retrieve import datasets
from mimic_server.dimse.session import session_of
from mimic_server.errors import ConfigurationError, DicomStatusError, QueryError, Status
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
    adapt_sub_association: Callable[[Any], None] | None = None,
) -> Iterator[Any]:
    """Handle ``evt.EVT_C_MOVE``.

    ``adapt_sub_association`` (the fence's ``requestor_adapter``) is applied to the
    sub-association once it is established, before its association thread starts. Its
    C-STORE requests name the requestor's AE title as their Move Originator
    (:func:`_name_move_originator`).

    Everything that can refuse the request is decided before the destination is yielded,
    because pynetdicom opens the sub-association as soon as it has a destination and one
    sub-operation: a refusal never opens one (nor sends anything).

    Yields
    ------
    ``(None, None)`` for a refusal (with its status in the C-MOVE's
    :class:`~mimic_server.dimse.move_answer.MoveAnswer`: 0x0124 C-MOVE or this destination
    not granted, 0xA900 / 0xC000
    bad Identifier, 0xA700 index unavailable; none: 0xA801 unknown destination); else the
    destination ``(host, port, associate kwargs)`` (0xA702 if it cannot be reached), the
    number of sub-operations, then ``(0xFF00, dataset)`` per object or 0xFE00 Cancel.
    """
    session = session_of(event.assoc)
    answer = answer_of(event.assoc)
    target = str(event.move_destination or "").strip()
    if session is None or not policy.may(session, Service.MOVE):
        yield _refuse(answer, Status.NOT_AUTHORIZED, "C-MOVE not granted", target)
        return
    if not policy.may_move_to(session, target):  # audited by the policy
        yield _refuse(answer, Status.NOT_AUTHORIZED, "move destination not granted", target)
        return
    destination = resolve(target)
    if destination is None:
        yield _refuse(answer, None, "unknown move destination", target)
        return
    sop_class = str(event.request.AffectedSOPClassUID)
    try:
        query = parse(
            event.identifier, MODELS[sop_class],
            relational=session.relational(sop_class), retrieve=True,
        )
        refs = finder.instances(query)
        session.retrieving = refs  # for the audit trail (dimse/audited.py)
    except (QueryError, DicomStatusError) as exc:
        yield _refuse(answer, exc.status, str(exc), target)
        return
    opened: list[Any] = []  # the sub-association, once established
    attempt = Attempt()  # why it was not, if it is not
    kwargs: dict[str, Any] = {
        "contexts": _contexts(refs),
        "evt_handlers": [(evt.EVT_ESTABLISHED, _established(
            adapt_sub_association, event.assoc.requestor.ae_title, opened.append,
        )), *attempt.handlers()],
    }
    if destination.tls is not None and refs:
        try:
            kwargs["tls_args"] = attempt.tls(*destination.tls())
        except ConfigurationError as exc:
            # The operator's setting, not a bug of the handler: nothing can be sent there.
            log.error("C-MOVE destination's TLS cannot be set up",
                      extra={"destination": target, "error": str(exc), "instances": len(refs)})
            yield _refuse_unreachable(answer, refs)
            return
    if answer is not None:
        # Used by pynetdicom's answer only if the sub-association cannot be established.
        answer.status, answer.comment = Status.SUB_OPERATIONS_FAILED, "destination unreachable"
        answer.failed = [ref.sop_instance_uid for ref in refs]

        def unreachable() -> None:
            log.warning(
                "C-MOVE destination unreachable",
                extra={"destination": target, "address": f"{destination.host}:{destination.port}",
                       "cause": attempt.cause, "instances": len(refs)},
            )

        answer.on_used = unreachable
    yield destination.host, destination.port, kwargs
    yield len(refs)
    log.info("C-MOVE", extra={"destination": target, "instances": len(refs)})
    # Asked for only once pynetdicom has established the sub-association.
    sub_association = opened[0] if opened else None
    for dataset in datasets(store, refs, finder.current, association=sub_association):
        if event.is_cancelled:
            yield Status.CANCEL, None
            return
        yield Status.PENDING, dataset


def _established(
    adapt: Callable[[Any], None] | None, originator: str, opened: Callable[[Any], None],
) -> Callable[[Event], None]:
    """An ``EVT_ESTABLISHED`` handler: ``AE.associate`` triggers it while it negotiates, in
    the C-MOVE's own thread, before it starts the sub-association's thread. ``originator``:
    the calling AE title of the association the C-MOVE came on; ``opened`` is given the
    sub-association (whose end stops the reading of the objects, ``retrieve.datasets``).

    pynetdicom clears the socket's timeout once it has connected: a destination that
    accepts and then stops reading blocked the sub-association's sends for good (no
    response to the C-MOVE, its C-CANCEL never seen, the connection held after the
    requestor aborted). With the network timeout a send that long without progress ends
    the sub-association (pynetdicom: transport closed), failing its sub-operations, as an
    accepted association's socket has it (``net/server.py``).

    The sub-association's own network timer is turned off: pynetdicom's association thread
    aborts an association that has *received* nothing for that long, and a destination
    rightly sends nothing while the archive reads the next object from its store (a large
    one is read whole for its SHA-256 before it is sent: minutes, for a few GiB from Blob
    Storage), so every such object failed, the sub-association aborted. What the timer was
    for is covered otherwise: a destination that stops reading by the socket's deadline
    above, one that never answers a C-STORE by the DIMSE timeout."""

    def established(event: Event) -> None:
        assoc = event.assoc
        connection = getattr(assoc.dul.socket, "socket", None)
        if connection is not None and assoc.network_timeout is not None:
            connection.settimeout(assoc.network_timeout)
        assoc.network_timeout = None  # the socket's deadline set above stays
        if adapt is not None:
            adapt(assoc)
        _name_move_originator(assoc, originator)
        opened(assoc)

    return established


def _name_move_originator(assoc: Any, originator: str) -> None:
    """Each C-STORE request sent over the sub-association ``assoc`` names ``originator`` in
    Move Originator Application Entity Title (0000,1030): PS3.7 9.1.1.1 / Table 9.3-1 want
    the AE that invoked the C-MOVE, and pynetdicom's C-MOVE service passes the archive's own
    AE title (``originator_aet=self.ae.ae_title``), so a destination that routes, reports or
    answers by originator saw the archive as the requestor. The Move Originator Message ID
    pynetdicom passes is the C-MOVE's already.

    Set on the request primitive as it goes into the sub-association's DIMSE provider, on
    that instance only (as ``net/observe.py`` does): both encoders read it from there, the
    command set of an object held whole (``codec/command_set.py``) and of a streamed one
    (``stream_send``), and no pynetdicom code is changed. The sub-association sends nothing
    but C-STORE requests, so one type check a sub-operation is the whole cost."""
    dimse = assoc.dimse
    send = dimse.send_msg  # bound now: the class's, wrapped by the fence where applied

    def send_msg(primitive: Any, context_id: int) -> None:
        if type(primitive) is C_STORE:
            primitive.MoveOriginatorApplicationEntityTitle = originator
        send(primitive, context_id)

    dimse.send_msg = send_msg


def _refuse(
    answer: MoveAnswer | None, status: int | None, reason: str, target: str
) -> tuple[None, None]:
    """The first yield of a refused C-MOVE: its status goes into ``answer``, and its reason,
    the Error Comment of a status of ours (0xA801 is pynetdicom's and goes without one) and
    the audit record's reason either way (``dimse/audited.py``)."""
    log.warning("C-MOVE refused", extra={"destination": target, "reason": reason,
                                         "status": f"0x{status or 0xA801:04X}"})
    if answer is not None:
        answer.status, answer.comment = status, reason[:64]
    return None, None


def _refuse_unreachable(answer: MoveAnswer | None, refs: list[InstanceRef]) -> tuple[None, None]:
    """The first yield of a C-MOVE whose destination cannot be reached before any
    association is tried: 0xA702 with every match failed and listed, as pynetdicom's
    answer to a destination that refuses is replaced (``move_answer``)."""
    if answer is not None:
        answer.status, answer.comment = Status.SUB_OPERATIONS_FAILED, "destination unreachable"
        answer.failed = [ref.sop_instance_uid for ref in refs]
    return None, None


def _little_endian(syntax: str) -> bool:
    """Uncompressed little endian (Implicit, Explicit or Deflated Explicit VR): what a
    sub-operation converts between as it sends (``recoders.py``). Explicit VR Big Endian is
    converted to nothing, nor is a compressed syntax or one pydicom does not know."""
    uid = UID(syntax)
    return uid.is_transfer_syntax and not uid.is_compressed and uid.is_little_endian


def _contexts(refs: list[InstanceRef]) -> list[Any]:
    """Presentation contexts for the stored objects: per SOP Class, one offering the
    uncompressed little endian syntaxes, and one for each other transfer syntax held (each
    compressed one, Explicit VR Big Endian), proposed alone: the destination accepts one
    syntax per context, and an object is sent only in one it can be converted to."""
    wanted: dict[tuple[str, str], list[str]] = {}
    for ref in refs:
        syntax = ref.transfer_syntax_uid
        group = "little endian" if _little_endian(syntax) else syntax
        syntaxes = wanted.setdefault((ref.sop_class_uid, group), [])
        if syntax not in syntaxes:
            syntaxes.append(syntax)
    contexts = []
    for (sop_class, _), syntaxes in list(wanted.items())[:MAX_CONTEXTS]:
        if _little_endian(syntaxes[0]):
            syntaxes += [s for s in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
                         if s not in syntaxes]
        contexts.append(build_context(sop_class, syntaxes))
    if not contexts:  # an association still needs one context
        contexts.append(build_context("1.2.840.10008.1.1"))
    return contexts
