"""A C-STORE's data set received in bounded memory, counted against the size limit.

pynetdicom writes every P-DATA fragment of a message into the message's ``data_set``, a
``BytesIO``: a 1 GiB object is 1 GiB of memory. Each acceptor association's DIMSE provider
is given (by the fence, ``mimic_server/patches.py``) a :class:`ReceivingDataSet` for every
message instead: a ``BytesIO`` while the data set is small (the common case: the handler then
reads it zero-copy, exactly as before), which past ``in_memory`` bytes moves what it holds
into an anonymous spool file, behind the File Meta we write, and writes every later fragment
there, hashing it (SHA-256 of that File Meta, then the data set) and walking its structure
as it arrives. The spool file has no name (``O_TMPFILE``, or created and unlinked at once),
so nothing can leak on disk: it is closed when the handler is done or the association ends,
and the kernel frees it should the process die. Since it holds the object exactly as the
archive keeps it, the file store may give it a name instead of copying it
(:meth:`ReceivingDataSet.whole_file`, ``storage/anonymous.py``).

Every fragment is counted: past ``max_object_bytes`` what was received is dropped at once
and the rest of the data set is read and discarded, so that a sender who finishes gets the
C-STORE's failure status; one who keeps sending past ``OVERRUN_GRACE`` more is aborted.
A data set of another message (an Identifier) larger than ``in_memory`` is not an
Identifier: the association is aborted, and so is one whose command set grows past
``MAX_COMMAND_SET`` (a real one is a few hundred bytes).

No Asynchronous Operations Window is negotiated, so a peer has one request outstanding at a
time (PS3.7 D.3.3.3). pynetdicom reads on while a request is handled and queues what comes:
a peer that sends without waiting for responses would have every object received, held and
spooled at once. A request that arrives while another of the peer's waits in the queue
(:func:`_refuse_another_request`) aborts the association, and nothing of it is kept: one
request handled, one waiting, at most. Requests still queued when the connection ends
release their spools then (:func:`discard_partial`), not at the next garbage collection.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu_primitives import P_DATA

from mimic_server.codec.command_set import (
    StoreRequestCommand,
    decode_echo_request,
    decode_store_request,
    decode_store_response,
)
from mimic_server.codec.file_meta import encode_file_meta
from mimic_server.codec.structure import DeflatedWalk, StructureWalk, structure_walk
from mimic_server.dimse.session import session_of
from mimic_server.errors import CannotUnderstand, DicomStatusError, OutOfResources
from mimic_server.logs import where
from mimic_server.storage.anonymous import open_anonymous

log = logging.getLogger(__name__)

MiB = 1 << 20
#: Data sets up to this size stay in memory (the fast path of small objects).
IN_MEMORY = 8 * MiB
#: How much past the limit is read and discarded before the association is aborted.
OVERRUN_GRACE = 64 * MiB
#: The size of the pieces a spooled data set is read back in.
READ_CHUNK = MiB
#: The largest command set received: a DIMSE command set is some 100-300 bytes (PS3.7
#: section 9.3, 10.3); past this the peer is not sending one, and the association is aborted.
MAX_COMMAND_SET = 64 * 1024
#: Where a message assembled by :func:`_receive_store_fragments` keeps its decoded command.
_STORE_COMMAND = "_mimic_store_command"


@dataclass(frozen=True)
class ReceiveLimits:
    """What every acceptor association receives under."""

    max_object_bytes: int
    spool_dir: Path
    in_memory: int = IN_MEMORY


@dataclass(frozen=True)
class SpoolStart:
    """What a spooled C-STORE data set needs from its command: the File Meta we write
    (hashed first) and the transfer syntax (how its structure is walked)."""

    file_meta: bytes
    transfer_syntax: UID


class ReceivingCommandSet(io.BytesIO):
    """A message's command set as it arrives, pynetdicom's or :func:`_receive_store_fragments`'s
    writes alike: past :data:`MAX_COMMAND_SET` bytes nothing more is kept and the
    association is to be aborted (``abort_due``)."""

    def __init__(self) -> None:
        super().__init__()
        self.too_large = False
        self.abort_due = False

    def write(self, data: Any) -> int:  # type: ignore[override]
        count = len(data)
        if self.too_large:
            return count
        if self.tell() + count > MAX_COMMAND_SET:
            self.too_large = self.abort_due = True
            self.seek(0)
            self.truncate()
            return count
        return super().write(data)


class ReceivingDataSet(io.BytesIO):
    """A message's data set as it arrives: in memory while small, then spooled."""

    def __init__(
        self,
        limits: ReceiveLimits,
        message: DIMSEMessage,
        start: Callable[[DIMSEMessage], SpoolStart],
    ) -> None:
        super().__init__()
        self._limits = limits
        self._message = message
        self._start = start
        self._lock = threading.Lock()
        #: Every data set byte received, kept or not.
        self.received = 0
        self.too_large = False
        self.abort_due = False
        self.spool: IO[bytes] | None = None
        self.spool_start: SpoolStart | None = None
        #: Where the data set begins in the spool file (after ``spool_start.file_meta``).
        self.dataset_start = 0
        self._nameable = False
        self._finished = False
        #: The read-only map of the spool (:meth:`mapped_data_set`) and the view handed out.
        self._map: mmap.mmap | None = None
        self._view: memoryview | None = None
        self._digest: Any = None
        self._walk: StructureWalk | DeflatedWalk | None = None
        #: Why the spooled data set is refused: a structural fault, a spool that failed.
        self.failure: DicomStatusError | None = None
        self._discarded = False
        self._abort_signalled = False

    def write(self, data: Any) -> int:  # type: ignore[override]
        count = len(data)
        self.received += count
        if self.too_large:
            self._check_overrun()
            return count
        if self.received > self._limits.max_object_bytes:
            self.too_large = True
            self.discard()
            self._check_overrun()
            return count
        if self.spool is None:
            if self.received <= self._limits.in_memory:
                return super().write(data)
            if not isinstance(self._message, C_STORE_RQ):
                log.warning("a DIMSE Identifier exceeds %d bytes: aborting",
                            self._limits.in_memory)
                self.too_large = True
                self.discard()
                self._signal_abort()
                return count
        with self._lock:
            if self._discarded:
                return count
            try:
                if self.spool is None:
                    self._open_spool()
                assert self.spool is not None
                self.spool.write(data)
            except Exception as exc:  # in the DUL thread: it must never end the reactor
                log.error("a data set cannot be spooled", extra={"error": type(exc).__name__})
                self.failure = OutOfResources("the data set cannot be spooled")
                self._drop()
                return count
            self._digest.update(data)
            self._feed_walk(data)
        return count

    def _check_overrun(self) -> None:
        over = self.received - self._limits.max_object_bytes
        if over > min(OVERRUN_GRACE, self._limits.max_object_bytes):
            self._signal_abort()

    def _signal_abort(self) -> None:
        if not self._abort_signalled:
            self._abort_signalled = self.abort_due = True

    def _open_spool(self) -> None:
        """Move what is in memory to a new anonymous spool file; start hash and walk."""
        self.spool_start = start = self._start(self._message)
        self._limits.spool_dir.mkdir(parents=True, exist_ok=True)
        self.spool, self._nameable = open_anonymous(self._limits.spool_dir)
        self.spool.write(start.file_meta)
        self.dataset_start = len(start.file_meta)
        self._digest = hashlib.sha256(start.file_meta)
        self._walk = structure_walk(start.transfer_syntax)
        with self.getbuffer() as head:
            self.spool.write(head)
            self._digest.update(head)
            self._feed_walk(head)
        self.seek(0)
        self.truncate()

    def _feed_walk(self, data: Any) -> None:
        if self._walk is None:
            return
        try:
            self._walk.feed(data)
        except CannotUnderstand as exc:
            self.failure = exc
            self._walk = None  # one fault is enough: the object is refused

    @property
    def limit(self) -> int:
        """``max_object_bytes``: the largest data set kept."""
        return self._limits.max_object_bytes

    @property
    def spooled(self) -> bool:
        return self.spool is not None or self.failure is not None

    def finish(self) -> tuple[str, int]:
        """The spooled data set ended: raise ``CannotUnderstand`` if it is malformed;
        (SHA-256 of File Meta + data set, data set size)."""
        if self.failure is None and self._walk is not None:
            try:
                self._walk.close()
            except CannotUnderstand as exc:
                self.failure = exc
        if self.failure is not None:
            raise self.failure
        assert self.spool is not None
        try:  # its last bytes may still be in the write buffer: the disk can be full now
            self.spool.flush()
        except OSError as exc:
            log.error("a data set cannot be spooled", extra={"error": type(exc).__name__})
            self.failure = OutOfResources("the data set cannot be spooled")
            raise self.failure from None
        self._finished = True
        return self._digest.hexdigest(), self.received

    def chunks(self) -> Iterator[bytes]:
        """The spooled data set, read back piece by piece."""
        assert self.spool is not None
        self.spool.seek(self.dataset_start)
        while chunk := self.spool.read(READ_CHUNK):
            yield chunk

    def mapped_data_set(self) -> memoryview:
        """The spooled data set through a read-only map of the spool file (the header is
        parsed from it: only the header's pages are read). Released, and the map closed,
        with the spool: not left to the garbage collector, as a failed C-STORE's exception
        would leave it (a cycle through its traceback), holding the file's disk space."""
        with self._lock:
            assert self.spool is not None and self._map is None
            self._map = mmap.mmap(self.spool.fileno(), 0, access=mmap.ACCESS_READ)
            self._view = memoryview(self._map)[self.dataset_start:]
            return self._view

    def whole_file(self) -> int | None:
        """A descriptor of the spool file of its own (the caller closes it), where the file
        store may name it: it holds exactly the object as kept (our File Meta, then the
        whole data set, received in full and found sound) and can be named; else None."""
        with self._lock:
            spool = self.spool
            if (not (self._nameable and self._finished) or spool is None or spool.closed
                    or self._discarded or self.too_large or self.failure is not None):
                return None
            spool.flush()
            fd = spool.fileno()
            if os.fstat(fd).st_size != self.dataset_start + self.received:
                return None
            return os.dup(fd)

    def discard(self) -> None:
        """Drop whatever is held (memory and spool file); later fragments are not kept."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        self._discarded = True
        with contextlib.suppress(BufferError):  # a view of it is still in use: kept
            self.seek(0)
            self.truncate()
        if self.spool is not None:
            # Closing flushes the write buffer, which fails again where the write that
            # brought us here failed (the disk full); the descriptor is closed all the same.
            with contextlib.suppress(OSError):
                self.spool.close()
        # Its readers are done (the C-STORE was answered); a view still exported from it
        # (never so today) leaves both to the garbage collector instead of failing here.
        with contextlib.suppress(BufferError):
            if self._view is not None:
                self._view.release()
            if self._map is not None:
                self._map.close()


def _spool_start(assoc: Any, message: DIMSEMessage) -> SpoolStart:
    """The File Meta of a C-STORE about to be spooled, as ``ReceivedObject`` writes it."""
    command = message.command_set
    context = assoc._accepted_cx[message.context_id]
    transfer_syntax = UID(str(context.transfer_syntax[0]))
    session = session_of(assoc)
    calling = session.calling_ae_title if session is not None else ""
    file_meta = encode_file_meta(
        str(command.AffectedSOPClassUID or ""),
        str(command.AffectedSOPInstanceUID or ""),
        transfer_syntax,
        calling,
    )
    return SpoolStart(file_meta, transfer_syntax)


def receive_in_bounded_memory(
    assoc: Any, limits: ReceiveLimits, store_requests: bool = False
) -> None:
    """Give a new (not yet started) acceptor association's DIMSE provider a
    :class:`ReceivingDataSet` for every message it receives (applied by the fence).

    ``store_requests`` (the fence's ``received-command``): C-STORE-RQs are assembled here
    (:func:`_receive_store_fragments`), the rest by pynetdicom.

    A PDV of one byte (its presentation context ID, no message control header, PS3.8
    9.3.5.1), or a message that does not decode (a last command fragment whose command set
    has no Command Field, say), is answered with an A-ABORT, logged at WARNING (at ERROR,
    with its frames, where MIMIC's own code raised); pynetdicom raised in its DUL thread,
    which died and dropped the connection.
    """
    dimse = assoc.dimse
    receive = dimse.receive_primitive

    def start(message: DIMSEMessage) -> SpoolStart:
        return _spool_start(assoc, message)

    def new_message() -> DIMSEMessage:
        message = DIMSEMessage()
        message.encoded_command_set = ReceivingCommandSet()
        message.data_set = ReceivingDataSet(limits, message, start)
        dimse.message = message
        return message

    def receive_primitive(primitive: Any) -> None:
        for _, data in primitive.presentation_data_value_list:
            if not data:
                log.warning("a P-DATA-TF holds a PDV without its message control header: "
                            "aborting")
                dimse.dul.event_queue.put("Evt19")  # pynetdicom's own A-ABORT path (AA-8)
                return
        try:
            decode(primitive)
        except Exception as exc:
            # In the DUL thread, where pynetdicom catches nothing: the thread died with a
            # traceback on stderr, and the peer saw its connection dropped, no A-ABORT.
            # Raised in pynetdicom or pydicom: the peer's message; in MIMIC's own code
            # (its decoders, the received data set): a bug, at ERROR.
            frames = where(exc)
            ours = bool(frames) and frames[-1].startswith("mimic_server/")
            log.log(logging.ERROR if ours else logging.WARNING,
                    "unexpected error decoding a DIMSE message: aborting" if ours
                    else "a DIMSE message from the peer cannot be decoded: aborting",
                    extra={"error": type(exc).__name__, "where": frames})
            log.debug("undecodable DIMSE message", exc_info=True)  # may name its UIDs
            dimse.dul.event_queue.put("Evt19")

    def decode(primitive: Any) -> None:
        message = dimse.message or new_message()
        data_set = message.data_set
        command_set = message.encoded_command_set
        if isinstance(command_set, ReceivingCommandSet) and command_set.too_large:
            _abort_when_due(dimse, command_set)
            return  # its abort is on the way: nothing more of that message is decoded
        if not _on_their_commands_contexts(message, primitive.presentation_data_value_list):
            # PS3.8 9.3.5 and Annex E: every fragment of a message on its command's context.
            # Taken as it came, a data set sent on another context was stored as the
            # command's, under the transfer syntax of a context it was not sent on. Here,
            # before MIMIC's C-STORE path and pynetdicom's decoder (a command set with a Move
            # Originator goes to the latter) alike.
            log.warning("a data set fragment on another presentation context than its "
                        "command's: aborting")
            if isinstance(command_set, ReceivingCommandSet):
                command_set.too_large = True  # nothing more of this message is decoded
            if isinstance(data_set, ReceivingDataSet):
                data_set.discard()
            dimse.dul.event_queue.put("Evt19")  # pynetdicom's own A-ABORT path (AA-8)
            return
        if store_requests:
            rest = _receive_store_fragments(dimse, primitive.presentation_data_value_list,
                                            new_message)
            if rest is not None:
                if rest is not primitive.presentation_data_value_list:
                    primitive = P_DATA()  # the list is extended, as PDU.to_primitive does:
                    primitive.presentation_data_value_list.extend(rest)  # its setter wants lists
                if dimse.message is None:
                    new_message()
                receive(primitive)
        else:
            receive(primitive)
        if isinstance(data_set, ReceivingDataSet) and data_set.abort_due:
            data_set.abort_due = False
            log.warning("the peer keeps sending a data set beyond the size limit: aborting")
            dimse.dul.event_queue.put("Evt19")  # pynetdicom's own A-ABORT path (AA-8)
        # The message this P-DATA began with, and the one it left: fragments of a message
        # that began in it (after another's last) went to that one's command set.
        _abort_when_due(dimse, command_set)
        if dimse.message is not None and dimse.message is not message:
            _abort_when_due(dimse, dimse.message.encoded_command_set)

    dimse.receive_primitive = receive_primitive
    waiting = dimse.msg_queue

    def put(item: Any, block: bool = True, timeout: float | None = None) -> None:
        # Every message the DUL thread completes comes here, pynetdicom's and ours alike.
        _, primitive = item
        if _is_request(primitive) and _refuse_another_request(dimse):
            release_spool(getattr(primitive, "DataSet", None))
            return
        type(waiting).put(waiting, item, block, timeout)  # the class's: it may ring a bell

    waiting.put = put


def _on_their_commands_contexts(message: Any, pdvs: list[tuple[int, bytes]]) -> bool:
    """Whether each data set fragment of ``pdvs`` comes on the context of the command set
    it follows: ``message``'s (the one being received, whose command may be complete) for
    the first, then each command's that ends among them."""
    context = getattr(message, "context_id", None)
    for context_id, data in pdvs:
        control = data[0]
        if control & 1:  # a command fragment: its last one sets the message's context
            context = context_id if control & 2 else None
        elif context is not None and context_id != context:
            return False
        elif control & 2:
            context = None  # the message's last fragment: the next one begins another
    return True


def _is_request(primitive: Any) -> bool:
    """A request of the peer's (not a response to one of ours, a C-GET's sub-operation's)."""
    return primitive is not None and getattr(primitive, "MessageIDBeingRespondedTo",
                                             None) is None


def _refuse_another_request(dimse: Any) -> bool:
    """If a request of the peer's is still waiting for the association thread, the peer
    sent this one without waiting for that one's response: the association is aborted
    (True). (The request being handled was taken off the queue: one is allowed beside it.)"""
    waiting = dimse.msg_queue
    with waiting.mutex:
        if not any(_is_request(primitive) for _, primitive in waiting.queue):
            return False
    log.warning("a request arrived while another waits for its turn (no Asynchronous "
                "Operations Window is negotiated): aborting")
    dimse.dul.event_queue.put("Evt19")  # pynetdicom's own A-ABORT path (AA-8)
    return True


def _abort_when_due(dimse: Any, command_set: object) -> None:
    """A command set past :data:`MAX_COMMAND_SET`: the association is aborted, once."""
    if isinstance(command_set, ReceivingCommandSet) and command_set.abort_due:
        command_set.abort_due = False
        log.warning("a DIMSE command set exceeds %d bytes: aborting", MAX_COMMAND_SET)
        dimse.dul.event_queue.put("Evt19")  # pynetdicom's own A-ABORT path (AA-8)


def _receive_store_fragments(
    dimse: Any, pdvs: list[tuple[int, bytes]], new_message: Callable[[], DIMSEMessage]
) -> list[tuple[int, bytes]] | None:
    """Take a P-DATA's fragments of C-STORE-RQs, as pynetdicom's ``decode_msg`` and
    ``receive_primitive`` would, without pydicom: the command set by
    :func:`~mimic_server.codec.command_set.decode_store_request`, each data set fragment
    written to the message's data set without a copy of its own. Returns None when every
    fragment was taken, else the fragments from the first one that is not a plain C-STORE-RQ's
    (another command, a command set only pydicom can decode, a data set fragment before its
    command): pynetdicom's own code takes those, and the rest of that message. A plain
    C-STORE-RSP (a C-GET sub-operation's answer) and a plain C-ECHO-RQ, command sets without
    a data set, are handed on here too.
    """
    for index, (context_id, data) in enumerate(pdvs):
        message = dimse.message or new_message()
        control = data[0]
        store = message.__dict__.get(_STORE_COMMAND)
        if store is None and type(message) is not DIMSEMessage:
            return pdvs[index:]  # a message whose command pynetdicom decoded: its own
        if control & 1:  # a command fragment
            if store is not None:  # a command inside a data set: pynetdicom's to judge,
                del message.__dict__[_STORE_COMMAND]  # and the rest of the message with it
                return pdvs[index:]
            fragment = memoryview(data)[1:]
            command_set = message.encoded_command_set
            if not control & 2 or command_set.tell() + len(fragment) > MAX_COMMAND_SET:
                command_set.write(fragment)  # past the bound: flagged, the abort follows
                continue
            if getattr(command_set, "too_large", False):
                continue  # the abort is on its way; nothing of this message is decoded
            encoded = command_set.getvalue() + fragment
            command = decode_store_request(encoded)
            if command is None:
                if _store_response_received(dimse, message, encoded, context_id):
                    continue  # a C-GET sub-operation's answer, handed on
                if _echo_request_received(dimse, message, encoded, context_id):
                    continue
                return pdvs[index:]
            if _refuse_another_request(dimse):
                command_set.too_large = True  # nothing more of this message is kept
                message.data_set.discard()
                return None
            message.encoded_command_set.write(fragment)
            message.context_id = context_id
            message.command_set = command  # type: ignore[assignment]
            message.__class__ = C_STORE_RQ
            message.__dict__[_STORE_COMMAND] = command
            continue
        if store is None:
            return pdvs[index:]  # a data set before its command, or pynetdicom's message
        message.data_set.write(memoryview(data)[1:])
        if control & 2:
            _store_request_received(dimse, message, store)
    return None


def _store_request_received(dimse: Any, message: DIMSEMessage,
                            command: StoreRequestCommand) -> None:
    """pynetdicom's ``receive_primitive`` for a complete C-STORE-RQ, with the primitive's
    UIDs taken as decoded (already checked as pynetdicom's validation would)."""
    assoc = dimse.assoc
    evt.trigger(assoc, evt.EVT_DIMSE_RECV, {"message": message})
    try:
        request = C_STORE()
        request.MessageID = command.MessageID
        request._affected_sop_class_uid = command.AffectedSOPClassUID
        request._affected_sop_instance_uid = command.AffectedSOPInstanceUID
        request.Priority = command.Priority
        request.DataSet = cast(io.BytesIO, message.data_set)
        request._context_id = message.context_id
    except Exception as exc:  # as pynetdicom: an invalid message ends the association
        log.error("a C-STORE request could not be built", extra={"error": type(exc).__name__})
        dimse.dul.event_queue.put("Evt19")
        return
    dimse.msg_queue.put((message.context_id, request))
    message.encoded_command_set = io.BytesIO()
    message.data_set = io.BytesIO()
    dimse.message = None


def _store_response_received(dimse: Any, message: DIMSEMessage, encoded: bytes,
                             context_id: int) -> bool:
    """A plain C-STORE-RSP (the peer's answer to a C-GET sub-operation) decoded without
    pydicom and handed on, 0.1 ms sooner; False for any other command set, which pynetdicom
    decodes."""
    command = decode_store_response(encoded)
    if command is None:
        return False
    response = C_STORE()
    response.MessageIDBeingRespondedTo = command.MessageIDBeingRespondedTo
    response._affected_sop_class_uid = command.AffectedSOPClassUID  # checked as its setter
    response._affected_sop_instance_uid = command.AffectedSOPInstanceUID
    response.Status = command.Status
    _hand_on(dimse, message, encoded, context_id, command, C_STORE_RSP, response)
    return True


def _echo_request_received(dimse: Any, message: DIMSEMessage, encoded: bytes,
                           context_id: int) -> bool:
    """A plain C-ECHO-RQ decoded without pydicom and handed on; False for any other command
    set, which pynetdicom decodes."""
    command = decode_echo_request(encoded)
    if command is None:
        return False
    request = C_ECHO()
    request.MessageID = command.MessageID
    request._affected_sop_class_uid = command.AffectedSOPClassUID  # checked as its setter
    _hand_on(dimse, message, encoded, context_id, command, C_ECHO_RQ, request)
    return True


def _hand_on(dimse: Any, message: DIMSEMessage, encoded: bytes, context_id: int,
             command: Any, message_class: type[DIMSEMessage], primitive: Any) -> None:
    """A whole message without a data set, its command set decoded here, handed on as
    pynetdicom's ``receive_primitive`` does: ``EVT_DIMSE_RECV`` with the message, the
    primitive (its context ID and no data set file, as ``message_to_primitive`` sets) on
    the queue, the message reset for the next one."""
    message.encoded_command_set.write(encoded[len(message.encoded_command_set.getvalue()):])
    message.context_id = context_id
    message.command_set = command
    message.__class__ = message_class
    evt.trigger(dimse.assoc, evt.EVT_DIMSE_RECV, {"message": message})
    primitive._context_id = context_id
    primitive._dataset_path = primitive._dataset_file = None
    dimse.msg_queue.put((context_id, primitive))
    message.encoded_command_set = io.BytesIO()
    message.data_set = io.BytesIO()
    dimse.message = None


def release_spool(data_set: object) -> None:
    """Free a request's spool file, if it has one (after its C-STORE was answered)."""
    if isinstance(data_set, ReceivingDataSet) and data_set.spooled:
        data_set.discard()


def discard_partial(event: Any) -> None:
    """``EVT_CONN_CLOSE``: a data set still being received when the connection ends (an
    abort, a peer gone mid-transfer) releases its spool file now."""
    dimse = event.assoc.dimse
    message = getattr(dimse, "message", None)
    data_set = getattr(message, "data_set", None)
    if isinstance(data_set, ReceivingDataSet):
        data_set.discard()
    # Requests received whole but never handled (the association was aborted before its
    # thread took them): nobody answers them now. Only those: the (None, None) pynetdicom
    # queues as the connection closes wakes a service waiting for a response (a C-GET's
    # sub-operation), and must stay.
    waiting = getattr(dimse, "msg_queue", None)
    if waiting is None:
        return
    with waiting.mutex:
        held = list(waiting.queue)
        unanswered = [item for item in held if _is_request(item[1])]
        waiting.queue.clear()
        waiting.queue.extend(item for item in held if not _is_request(item[1]))
    for _, primitive in unanswered:
        release_spool(getattr(primitive, "DataSet", None))
