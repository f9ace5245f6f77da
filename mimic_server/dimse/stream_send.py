"""Large stored objects sent by C-MOVE / C-GET sub-operations straight from the store.

pynetdicom sends a C-STORE request's data set from memory: ``Association.send_c_store``
encodes the whole ``Dataset``, and ``DIMSEServiceProvider.send_msg`` cuts the bytes into
P-DATA primitives that all go onto the DUL's outgoing queue at once, each holding its
fragment, so the object sits in memory once or twice over while it is sent. For an object
above ``archive.read.STREAM_ABOVE`` that is replaced here (applied by the fence,
``mimic_server/patches.py``):

* :class:`StreamedDataset` stands for the object in pynetdicom's retrieve service: only what
  it reads to choose a presentation context (SOP Class and Instance UIDs, from the index,
  and the stored transfer syntax); no byte of the object is parsed;
* :func:`streamed_encoder` (around ``pynetdicom.association.encode``) answers such a dataset
  with an empty data set and leaves the object for the sender, in the calling thread, where
  ``send_c_store`` calls ``send_msg`` next;
* :func:`streamed_sender` (around ``DIMSEServiceProvider.send_msg``) sends that C-STORE's
  command set as pynetdicom does, then the data set in fragments read from the store as the
  DUL sends them: at most :data:`QUEUE_DEPTH` fragments of at most :data:`FRAGMENT` bytes
  (and within the peer's maximum PDU length) wait in the DUL's queue at a time.

The memory a sub-operation holds is therefore a few fragments, whatever the object's size.
A Deflated object of any size takes this path too (``retrieve.read_verified``): to a
destination that took it in Explicit VR Little Endian it is inflated as it is sent (the
inflated data set is that encoding, byte for byte), where pydicom would inflate and
re-encode it whole, and a megabyte stored can inflate to 1 GiB. To a destination that took
only Implicit VR Little Endian (the one syntax every implementation accepts), an Explicit VR
Little Endian or Deflated data set is re-encoded element by element as it is sent
(``codec/implicit_stream.py``): values are the same bytes in both, only element headers
change; an Implicit VR one to a destination that took only Explicit VR Little Endian, the
same way, each VR taken as pydicom takes it (``codec/explicit_stream.py``); and either
deflated as it is sent to a destination that took only Deflated. Every conversion pynetdicom
makes has one such (``dimse/recoders.py``); one without (none with pynetdicom 3.0) would read
the object whole and let pydicom re-encode it (logged at WARNING, with the object's size).
(pynetdicom converts within one byte order only: a Big Endian object goes only to a
destination that took Big Endian, as stored.)

Before its C-STORE request is sent, an object's first piece is read, and a conversion is
run through its first :data:`CHECKED_BEFORE_SENDING` bytes (the header of any object, and
the whole of most): a store that cannot give it now, or a data set its conversion refuses
there (nested too deep, an element that overruns what contains it, a deflate stream cut
short), fails the sub-operation with nothing sent, and the association goes on with the next
one, as for an object held whole.

An association that ends while its object is being sent (peer A-ABORT, connection closed)
stops the stream at the next fragment; the store's handle is closed, and the sub-operation
is answered at once as failed (``send_c_store`` gets no response) rather than after the DIMSE
timeout. A store that fails midway, or a conversion refused past what was checked, leaves
the peer with part of a data set: the association is aborted (pynetdicom's own reaction to
a missing response).
"""

from __future__ import annotations

import collections
import io
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from mimic_server.archive.read import VerifiedObject, reference
from mimic_server.codec.command_set import send_held
from mimic_server.dimse.raw_send import conversion_refused, refuse_if_too_deep
from mimic_server.dimse.recoders import Recoder, recoder
from mimic_server.errors import CannotUnderstand, OutOfResources

log = logging.getLogger(__name__)

#: Set by the fence when the encoder and sender below are installed; while False, no
#: :class:`StreamedDataset` is made and large objects take the whole-object path.
enabled = False

#: Largest data set fragment (PDV value) sent; the peer's maximum PDU length may cut it.
FRAGMENT = 1 << 20
#: Fragments that may wait in the DUL's outgoing queue: enough to keep its thread busy.
QUEUE_DEPTH = 4
#: How often a sender waiting for room checks that its association is still there (s).
CHECK_EVERY = 0.5
#: A conversion's output made before the C-STORE request is sent, held until then (as an
#: object up to ``archive.read.STREAM_ABOVE`` is held whole): what it refuses there fails
#: the sub-operation cleanly; past it, only by aborting the association.
CHECKED_BEFORE_SENDING = 8 << 20


#: The object the encoder left for the sender, per thread: ``send_c_store`` encodes and
#: then sends in the thread that called it, with nothing between that could send.
_pending = threading.local()


class StreamedDataset(Dataset):
    """A large stored object as pynetdicom's retrieve service sees it: the UIDs that pick the
    presentation context and the C-STORE request, and the verified object to stream."""

    _mimic_object: VerifiedObject
    _mimic_encoding: tuple[bool, bool, bool]
    #: Set when pynetdicom handed it to the encoder, i.e. found a presentation context.
    _mimic_encoded: bool = False
    #: Set when the encoder then failed it, nothing sent (a conversion refused, the store):
    #: with ``_mimic_encoded`` alone, the audit's fallback would count it transferred.
    _mimic_refused: bool = False
    #: The Status of the peer's C-STORE response (``raw_send.answered_send``).
    _mimic_answer: int | None = None

    @classmethod
    def of(cls, stored: VerifiedObject) -> StreamedDataset:
        ref = stored.ref
        dataset = cls()
        dataset.SOPClassUID = ref.sop_class_uid
        dataset.SOPInstanceUID = ref.sop_instance_uid
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ref.sop_class_uid
        meta.MediaStorageSOPInstanceUID = ref.sop_instance_uid
        meta.TransferSyntaxUID = ref.transfer_syntax_uid
        dataset.file_meta = meta
        dataset._mimic_object = stored
        syntax = UID(ref.transfer_syntax_uid)
        known = syntax.is_transfer_syntax  # else encapsulated: explicit VR little endian
        dataset._mimic_encoding = (
            syntax.is_implicit_VR if known else False,
            syntax.is_little_endian if known else True,
            syntax.is_deflated if known else False,
        )
        return dataset


def streamed_encoder(original: Callable[..., Any]) -> Callable[..., Any]:
    """A wrapper of ``pynetdicom.association.encode`` (applied by the fence): a
    :class:`StreamedDataset` becomes an empty data set and its object is left for
    :func:`streamed_sender`, in its stored encoding or in one it is converted to as it is
    sent (:func:`_recoding`); in another encoding it is read whole and encoded by
    ``original``; anything else goes to ``original``."""

    def encode(
        ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
    ) -> Any:
        if isinstance(ds, StreamedDataset):
            ds._mimic_encoded = True
            stored = ds._mimic_object
            recode = _recoding(ds, (is_implicit_vr, is_little_endian, deflated))
            if recode is not None:
                try:
                    _pending.stored, _pending.pieces = stored, _begun(stored, recode)
                except Exception:
                    ds._mimic_refused = True
                    raise
                return b""
            data = stored.read()
            try:  # as raw_send's (a Deflated one is refused: read, never inflated whole)
                refuse_if_too_deep(memoryview(data)[stored.dataset_offset:], ds._mimic_encoding)
            except CannotUnderstand as exc:  # fails the sub-operation; nothing sent
                ds._mimic_refused = True
                conversion_refused(stored.ref, exc)
                raise
            if stored.streamed:
                log.warning("object converted between transfer syntaxes in memory",
                            extra={"object": reference(stored.ref), "bytes": stored.size})
            ds = pydicom.dcmread(io.BytesIO(data))
        return original(ds, is_implicit_vr, is_little_endian, deflated)

    return encode


def streamed_sender(send_msg: Callable[..., None]) -> Callable[..., None]:
    """A wrapper of ``DIMSEServiceProvider.send_msg`` (applied by the fence): the C-STORE
    request whose object :func:`streamed_encoder` left is streamed from the store; any other
    message goes to ``send_msg``."""

    def send(self: Any, primitive: Any, context_id: int) -> None:
        stored: VerifiedObject | None = getattr(_pending, "stored", None)
        pieces: _Resumed | None = getattr(_pending, "pieces", None)
        _pending.stored, _pending.pieces = None, None
        if stored is not None and pieces is not None and _carries(primitive, stored):
            send_held(self)  # a pending C-GET response held for this message goes first
            _stream(self, primitive, context_id, stored, pieces)
            return
        if pieces is not None:
            pieces.close()  # the store's handle
        send_msg(self, primitive, context_id)

    return send


def _carries(primitive: Any, stored: VerifiedObject) -> bool:
    """Whether ``primitive`` is the C-STORE request the encoder left ``stored`` for."""
    return (
        isinstance(primitive, C_STORE)
        and primitive.MessageIDBeingRespondedTo is None
        and primitive.AffectedSOPInstanceUID == stored.ref.sop_instance_uid
        and primitive.DataSet is not None
        and primitive.DataSet.getbuffer().nbytes == 0
    )


def _recoding(ds: StreamedDataset, wanted: tuple[bool, bool, bool]) -> Recoder | None:
    """How ``ds`` goes in the ``wanted`` encoding as it streams: as stored (cut to size), or
    through its conversion (``dimse/recoders``); None where it cannot stream (pydicom
    converts it whole)."""
    if ds._mimic_encoding == wanted:
        return _within
    return recoder(ds.file_meta.TransferSyntaxUID, wanted)


def _begun(stored: VerifiedObject, recode: Recoder) -> _Resumed:
    """The data set's pieces as they will be sent (at most :data:`FRAGMENT` bytes each, cut
    again to the peer's PDU by :func:`_stream`), begun before the request is sent: as stored,
    its first piece read; converted, its first :data:`CHECKED_BEFORE_SENDING` bytes made.
    What that raises (``CannotUnderstand``; the store's errors as ``OutOfResources``, whose
    message pynetdicom logs and which, unlike a ``KeyError`` or ``OSError``, names no object
    key or path) is logged and raised, so the sub-operation fails with nothing sent; the
    store's handle is then closed."""
    check = 1 if recode is _within else CHECKED_BEFORE_SENDING
    pieces = recode(stored.chunks(stored.dataset_offset, FRAGMENT), FRAGMENT)
    held: list[bytes | memoryview] = []
    made = 0
    try:
        while made < check and (piece := next(pieces, None)) is not None:
            held.append(piece)
            made += len(piece)
    except CannotUnderstand as exc:
        pieces.close()
        conversion_refused(stored.ref, exc)
        raise
    except (KeyError, OutOfResources, OSError) as exc:
        pieces.close()
        log.error(
            "C-STORE sub-operation failed: the stored object could not be read; nothing "
            "was sent",
            extra={"object": reference(stored.ref), "error": type(exc).__name__},
        )
        if isinstance(exc, OutOfResources):
            raise
        raise OutOfResources("the stored object could not be read") from exc
    return _Resumed(held, pieces)


class _Resumed:
    """The ``held`` pieces, each let go once given, then the rest of ``pieces``. Its
    ``close()`` closes ``pieces`` (the store's handle) whether or not it was begun: a
    generator never started runs no ``finally`` when closed."""

    def __init__(self, held: list[bytes | memoryview],
                 pieces: Iterator[bytes | memoryview]) -> None:
        self._held = collections.deque(held)
        self._pieces = pieces

    def __iter__(self) -> _Resumed:
        return self

    def __next__(self) -> bytes | memoryview:
        if self._held:
            return self._held.popleft()
        return next(self._pieces)

    def close(self) -> None:
        self._held.clear()
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()


def _stream(dimse: Any, primitive: Any, context_id: int, stored: VerifiedObject,
            begun: _Resumed) -> None:
    """The C-STORE request: its command set as pynetdicom encodes it (the data set it holds
    is empty), then the data set from the store as :func:`_begun` began it, the DUL's queue
    kept short."""
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    message.context_id = context_id
    evt.trigger(dimse.assoc, evt.EVT_DIMSE_SENT, {"message": message})
    max_pdu = dimse.maximum_pdu_size
    for pdata in message.encode_msg(context_id, max_pdu):  # the command set only
        dimse.dul.send_pdu(pdata)
    size = FRAGMENT if not max_pdu else max(1, min(FRAGMENT, max_pdu - 6))
    pieces = _within(begun, size)
    try:
        for flag, fragment in _flagged(pieces):
            if not _room(dimse):
                log.warning(
                    "C-STORE sub-operation interrupted: the association ended while its "
                    "object was being sent",
                    extra={"object": reference(stored.ref)},
                )
                _no_response(dimse)
                return
            pdata = P_DATA()
            pdata.presentation_data_value_list.append((context_id, flag + fragment))
            dimse.dul.send_pdu(pdata)
    except (KeyError, OutOfResources, OSError) as exc:
        log.error(
            "C-STORE sub-operation interrupted: the stored object became unreadable while "
            "it was being sent; the association is aborted",
            extra={"object": reference(stored.ref), "error": type(exc).__name__},
        )
        _no_response(dimse)
    except CannotUnderstand as exc:
        log.error(
            "C-STORE sub-operation interrupted: the stored data set could not be inflated or "
            "re-encoded for the destination's transfer syntax; the association is aborted",
            extra={"object": reference(stored.ref), "reason": str(exc)},
        )
        _no_response(dimse)
    finally:
        pieces.close()
        begun.close()  # the store's handle, also where ``pieces`` was never begun


def _within(pieces: Iterator[bytes | memoryview], size: int) -> Iterator[memoryview]:
    """``pieces`` cut to at most ``size`` bytes each: an object held in memory (a small
    Deflated one, streamed for its inflation, sent here as stored) is one piece. Closing
    this iterator closes ``pieces``."""
    try:
        for piece in pieces:
            view = memoryview(piece)
            for start in range(0, view.nbytes, size):
                yield view[start:start + size]
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


def _flagged(pieces: Iterator[bytes | memoryview]) -> Iterator[tuple[bytes, bytes | memoryview]]:
    """Each data set fragment with its message control header: 0x00, the last 0x02."""
    previous = next(pieces, b"")
    for piece in pieces:
        yield b"\x00", previous
        previous = piece
    yield b"\x02", previous


def _room(dimse: Any) -> bool:
    """Wait until the DUL's outgoing queue has room; False when the association ended.

    The DUL takes each P-DATA off the queue with ``get`` (``pynetdicom.fsm.DT_1``), which
    notifies the queue's ``not_full`` condition whatever its ``maxsize``: that is the wait.
    """
    queue = dimse.dul.to_provider_queue
    while True:
        with queue.not_full:
            if queue._qsize() < QUEUE_DEPTH:
                break
            queue.not_full.wait(CHECK_EVERY)
        if not carries_data(dimse):
            return False
    return carries_data(dimse)


def carries_data(dimse: Any) -> bool:
    """The association can still carry data: DUL running, in Sta6, no abort waiting.

    Seen from the DUL, not ``assoc.is_established``: that flag is cleared by the association
    thread, which is paused while a sub-operation waits for its response (a C-MOVE
    sub-association), or is the very thread running the retrieve (a C-GET)."""
    dul = dimse.dul
    return (
        dul.is_alive()
        and dul.state_machine.current_state == "Sta6"
        and not dimse.assoc.acse.is_aborted()
    )


def _no_response(dimse: Any) -> None:
    """Let ``send_c_store`` see no response now (its ``get_msg(block=True)`` would wait the
    DIMSE timeout): it then reacts as to a peer that never answered (fails the
    sub-operation; aborts an association that is still established)."""
    dimse.msg_queue.put((None, None))
