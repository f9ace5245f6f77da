"""DIMSE command sets encoded without pydicom's dataset writer.

pynetdicom builds every response as a pydicom ``Dataset`` of command elements and encodes it
twice with pydicom (once to learn the Command Group Length, once to send it): about half a
millisecond on every C-STORE response and every C-FIND match, for a handful of elements. A
command set is always implicit VR little endian and holds only group 0000 elements of a few
VRs. Three wrappers, applied process-wide by the fence (``mimic_server/patches.py``) when
pynetdicom's call sites are the verified ones:

* the encoder of pynetdicom's DIMSE messages writes such command sets directly and gives
  anything else (another VR, a value it does not expect, a non-ASCII text) to pydicom;
* the C-STORE and C-FIND responses MIMIC sends most (no Error Comment, no Offending
  Element), and C-ECHO responses, skip the ``Dataset`` altogether: their P-DATA primitives
  are built straight from the response primitive;
* a C-FIND answer built as a plain :class:`~mimic_server.codec.answer.Answer` is encoded by
  itself, not by pydicom.

The other way, a received C-STORE-RQ's command set is decoded here
(:func:`decode_store_request`, used by ``dimse/receiving.py`` under the fence's
``received-command``): pydicom's decode, the element-by-element copy into the request
primitive and the UID checks were about 0.7 ms of every C-STORE. So is the C-STORE-RSP that
answers each C-GET sub-operation (:func:`decode_store_response`, 0.115 ms each), and a
C-ECHO-RQ (:func:`decode_echo_request`).

With the fence's ``pdata-batches``, the messages built here (and C-STORE sub-operations,
C-GET / C-MOVE pending responses) go to the DUL as one :class:`EncodedPData` each, their
PDUs encoded here (:func:`encoded_pdus`) and written at once (``net/pdata_batches.py``).

tests/unit/test_command_set.py checks both give the same bytes and P-DATA as
pynetdicom, for the command sets it builds and at several maximum PDU lengths.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable, Iterator
from typing import Any

from pydicom import config
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.pdu_primitives import P_DATA

from mimic_server.codec.answer import Answer, pack_numbers

_HEADER = struct.Struct("<HHL")


def _numbers(code: str) -> Callable[[Any], bytes | None]:
    def encode(value: Any) -> bytes | None:
        if value is None:
            return b""
        values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        return pack_numbers(values, code)

    return encode


def _text(padding: bytes) -> Callable[[Any], bytes | None]:
    def encode(value: Any) -> bytes | None:
        if value is None:
            return b""
        values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        if not all(isinstance(v, str) for v in values):
            return None
        try:
            data = "\\".join(values).encode("ascii")
        except UnicodeEncodeError:
            return None
        return data + padding if len(data) % 2 else data

    return encode


_ENCODERS: dict[str, Callable[[Any], bytes | None]] = {
    "US": _numbers("H"),
    "UL": _numbers("I"),
    "UI": _text(b"\x00"),
    "AE": _text(b" "),
    "CS": _text(b" "),
    "LO": _text(b" "),
    "SH": _text(b" "),
}


def encode_command_set(command_set: Dataset) -> bytes | None:
    """The implicit VR little endian bytes of a command set, or None for pydicom to do."""
    parts: list[bytes] = []
    for element in command_set:
        if element.tag >> 16:
            return None  # not a command set
        encoder = _ENCODERS.get(element.VR)
        value = encoder(element.value) if encoder is not None else None
        if value is None:
            return None
        parts.append(_HEADER.pack(0, element.tag & 0xFFFF, len(value)))
        parts.append(value)
    return b"".join(parts)


#: (0000,0100) Command Field of the messages built directly.
_STORE_RQ_FIELD, _STORE_RSP, _FIND_RSP = 0x0001, 0x8001, 0x8020
_GET_RSP, _MOVE_RSP, _ECHO_RSP = 0x8010, 0x8021, 0x8030
_NO_DATA_SET, _DATA_SET = 0x0101, 0x0001
#: (0000,1020)-(0000,1023) Number of Remaining, Completed, Failed, Warning Sub-operations.
_SUB_OPERATIONS = (
    (0x1020, "NumberOfRemainingSuboperations"),
    (0x1021, "NumberOfCompletedSuboperations"),
    (0x1022, "NumberOfFailedSuboperations"),
    (0x1023, "NumberOfWarningSuboperations"),
)


def response_pdata(primitive: Any, context_id: int, max_pdu_length: int) -> list[P_DATA] | None:
    """The P-DATA of a plain C-STORE, C-FIND or C-ECHO response, as pynetdicom would send
    them.

    ``None`` for any other message, or a response with an Error Comment or Offending
    Element: pynetdicom builds those itself.
    """
    if type(primitive) not in (C_STORE, C_FIND, C_ECHO) or (
        primitive.MessageIDBeingRespondedTo is None
    ):
        return None
    parts = message_parts(primitive)
    if parts is None:
        return None
    return _fragments(*parts, context_id, max_pdu_length)


def message_parts(primitive: Any) -> tuple[bytes, bytes] | None:
    """(command set, data set) of a message as pynetdicom would encode it, for the messages
    MIMIC sends most: plain C-STORE, C-FIND, C-GET, C-MOVE and C-ECHO responses (no Error
    Comment, no Offending Element; C-GET and C-MOVE without an Identifier) and C-STORE
    requests (the sub-operations of C-GET and C-MOVE). ``None`` for anything else:
    pynetdicom's to build.
    """
    kind = type(primitive)
    if primitive.MessageIDBeingRespondedTo is None:
        if kind is C_STORE:
            return _store_request(primitive)
        return None
    if kind is C_STORE:
        field, data = _STORE_RSP, None
    elif kind is C_FIND:
        field, data = _FIND_RSP, primitive.Identifier
    elif kind in (C_GET, C_MOVE) and primitive.Identifier is None:
        field, data = (_GET_RSP if kind is C_GET else _MOVE_RSP), None
    elif kind is C_ECHO:  # it has no Offending Element
        field, data = _ECHO_RSP, None
    else:
        return None
    if primitive.ErrorComment is not None or (
        getattr(primitive, "OffendingElement", None) is not None
    ):
        return None
    status = primitive.Status
    if not isinstance(status, int) or not 0 <= status <= 0xFFFF:
        return None
    elements = [
        (0x0002, _text_value(primitive.AffectedSOPClassUID, b"\x00")),
        (0x0100, _US.pack(field)),
        (0x0120, _US.pack(primitive.MessageIDBeingRespondedTo)),
        (0x0800, _US.pack(_NO_DATA_SET if data is None else _DATA_SET)),
        (0x0900, _US.pack(int(status))),
    ]
    if field == _STORE_RSP:
        elements.append((0x1000, _text_value(primitive.AffectedSOPInstanceUID, b"\x00")))
    elif field in (_GET_RSP, _MOVE_RSP):
        for number, keyword in _SUB_OPERATIONS:
            count = getattr(primitive, keyword)
            if count is not None:
                elements.append((number, _US.pack(count)))
    return _command_set(elements), data.getvalue() if data is not None else b""


def _store_request(primitive: C_STORE) -> tuple[bytes, bytes] | None:
    """A C-STORE-RQ with its data set in memory (a chunked one from a file is
    pynetdicom's)."""
    data = primitive.DataSet
    if data is None or getattr(primitive, "_dataset_path", None) is not None:
        return None
    originator_id = primitive.MoveOriginatorMessageID
    elements = [
        (0x0002, _text_value(primitive.AffectedSOPClassUID, b"\x00")),
        (0x0100, _US.pack(_STORE_RQ_FIELD)),
        (0x0110, _US.pack(primitive.MessageID)),
        (0x0700, _US.pack(primitive.Priority)),
        (0x0800, _US.pack(_DATA_SET)),
        (0x1000, _text_value(primitive.AffectedSOPInstanceUID, b"\x00")),
        (0x1030, _text_value(primitive.MoveOriginatorApplicationEntityTitle, b" ")),
        (0x1031, None if originator_id is None else _US.pack(originator_id)),
    ]
    return _command_set(elements), data.getvalue()


def _command_set(elements: list[tuple[int, bytes | None]]) -> bytes:
    """Implicit VR little endian elements of group 0000, after their Group Length."""
    body = b"".join(
        _HEADER.pack(0, number, len(value)) + value
        for number, value in elements
        if value is not None
    )
    return _HEADER.pack(0, 0x0000, 4) + _UL.pack(len(body)) + body


def _text_value(value: str | None, padding: bytes) -> bytes | None:
    if value is None:
        return None
    data = str(value).encode("ascii")
    return data + padding if len(data) % 2 else data


def _fragments(
    command: bytes, data_set: bytes, context_id: int, max_pdu_length: int
) -> list[P_DATA] | None:
    """P-DATA for a command and its data set, as pynetdicom fragments them, except that a
    message that fits in one P-DATA-TF PDU goes in one, as two PDVs (PS3.8 9.3.5 allows any
    number): for a C-FIND match that halves the PDUs both sides handle."""
    if 0 < max_pdu_length < 7:
        return None  # pynetdicom refuses such a length itself
    pdvs = 6 + len(command) + (6 + len(data_set) if data_set else 0)
    if not max_pdu_length or pdvs <= max_pdu_length:
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
        if data_set:
            pdata.presentation_data_value_list.append((context_id, b"\x02" + data_set))
        return [pdata]
    size = max_pdu_length - 6
    out: list[P_DATA] = []
    for stream, more, last in ((command, 0x01, 0x03), (data_set, 0x00, 0x02)):
        if not stream:
            continue
        pieces = [stream[i : i + size] for i in range(0, len(stream), size)]
        for n, piece in enumerate(pieces):
            pdata = P_DATA()
            header = last if n == len(pieces) - 1 else more
            pdata.presentation_data_value_list.append((context_id, bytes([header]) + piece))
            out.append(pdata)
    return out


_PDU_HEADER = struct.Struct(">BxL")
_PDV_HEADER = struct.Struct(">LBB")


def encoded_pdus(
    command: bytes, data_set: bytes, context_id: int, max_pdu_length: int,
    before: tuple[bytes, int] | None = None,
) -> tuple[bytes, int] | None:
    """The P-DATA-TF PDUs of :func:`_fragments`, encoded for the wire as pynetdicom's
    ``P_DATA_TF.encode`` writes them, and how many: the PDVs cut the same way, one PDV per
    PDU but for a message that fits one PDU (PS3.8 9.3.5). ``None`` where :func:`_fragments`
    gives up. ``before``: PDUs encoded earlier (and their number) to write first, in the
    same buffer (the one copy the join makes anyway)."""
    if 0 < max_pdu_length < 7:
        return None
    first = [before[0]] if before else []
    earlier = before[1] if before else 0
    pdvs = 6 + len(command) + (6 + len(data_set) if data_set else 0)
    if not max_pdu_length or pdvs <= max_pdu_length:
        parts = [*first, _PDU_HEADER.pack(0x04, pdvs),
                 _PDV_HEADER.pack(2 + len(command), context_id, 0x03), command]
        if data_set:
            parts += [_PDV_HEADER.pack(2 + len(data_set), context_id, 0x02), data_set]
        return b"".join(parts), earlier + 1
    size = max_pdu_length - 6
    parts = []
    for stream, more, last in ((command, 0x01, 0x03), (data_set, 0x00, 0x02)):
        view = memoryview(stream)
        for start in range(0, len(stream), size):
            piece = view[start : start + size]
            header = last if start + size >= len(stream) else more
            parts += [_PDU_HEADER.pack(0x04, 6 + len(piece)),
                      _PDV_HEADER.pack(2 + len(piece), context_id, header), piece]
    return b"".join([*first, *parts]), earlier + len(parts) // 3


# The wrappers below are applied by the fence, mimic_server/patches.py, which checks first
# that the pynetdicom call sites they replace are the ones verified; each takes the function
# it replaces and falls back to it for anything it does not handle.


def answer_encoder(encode_identifier: Callable[..., Any]) -> Callable[..., Any]:
    """A replacement for ``pynetdicom.service_class.encode``: an :class:`Answer` encodes
    itself, anything else goes to ``encode_identifier``."""

    def encode_answer(
        ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
    ) -> Any:
        if isinstance(ds, Answer):
            fast = None if deflated else ds.encode(is_implicit_vr, is_little_endian)
            if fast is not None:
                return fast
            ds = ds.to_dataset()
        return encode_identifier(ds, is_implicit_vr, is_little_endian, deflated)

    return encode_answer


def direct_response_sender(send_msg: Callable[..., None]) -> Callable[..., None]:
    """A replacement for ``DIMSEServiceProvider.send_msg``: plain C-STORE and C-FIND
    responses go out as P-DATA built here, anything else through ``send_msg``.

    With the fence's ``pdata-batches`` in force (:data:`batches`) and nothing bound to
    ``EVT_PDU_SENT``, every message :func:`message_parts` builds goes to the DUL as one
    :class:`EncodedPData`: its PDUs encoded here, written in one go by the DUL thread. A
    C-STORE sub-operation of a 0.5 MB object in 16 KiB PDUs was 33 turns of the DUL's queue,
    state machine and PDU encoder, one write each.
    """

    def send_response_directly(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
        assoc = self.assoc
        if not assoc.get_handlers(evt.EVT_DIMSE_SENT):
            try:
                if batches and not assoc.get_handlers(evt.EVT_PDU_SENT):
                    parts = message_parts(primitive)
                    held = self.__dict__.get(_HELD)
                    encoded = None if parts is None else encoded_pdus(
                        *parts, context_id, self.maximum_pdu_size, held)
                    if encoded is not None:
                        self.__dict__.pop(_HELD, None)
                        if held is None and _pending_get_response(primitive):
                            self.__dict__[_HELD] = encoded  # until the next message
                        else:  # a second pending response in a row goes out at once
                            self.dul.send_pdu(EncodedPData(*encoded))
                        return
                pdatas = response_pdata(primitive, context_id, self.maximum_pdu_size)
            except (UnicodeEncodeError, struct.error):
                pdatas = None
            if pdatas is not None:
                send_held(self)
                for pdata in pdatas:
                    self.dul.send_pdu(pdata)
                return
        send_held(self)
        send_msg(self, primitive, context_id)

    return send_response_directly


#: Where a DIMSE provider keeps a pending C-GET response, encoded, until its next message.
_HELD = "_mimic_held_response"


def _pending_get_response(primitive: Any) -> bool:
    """A C-GET Pending response without an identifier: what pynetdicom sends after each
    C-STORE sub-operation of a C-GET, which its next sub-operation (or the final response)
    follows on the same association at once. Sent in one write with that next message, it
    costs neither a turn of the DUL thread nor a write of its own: C-GETs of CT slices and
    images one study at a time, 10-20 % of their time (docs/benchmarks.md). The order of
    the messages on the wire is the same; only the pause between the two is gone. One is
    held at most: a pending response that finds another held (a sub-operation that sent
    nothing, its object unreadable or without a presentation context) goes out with it at
    once, so a C-GET whose sub-operations all fail still reports each. A C-MOVE's pending
    responses are not held: its sub-operations go over another association, and nothing
    would follow them for a whole sub-operation."""
    return (
        type(primitive) is C_GET
        and primitive.MessageIDBeingRespondedTo is not None
        and primitive.Status == 0xFF00
        and primitive.Identifier is None
    )


def send_held(dimse: Any) -> None:
    """Send the pending C-GET response :func:`direct_response_sender` held back, if any, as
    it stands: before a message that goes to the DUL another way (pynetdicom's own path, an
    object streamed from the store)."""
    held = dimse.__dict__.pop(_HELD, None)
    if held is not None:
        dimse.dul.send_pdu(EncodedPData(*held))


#: Set by the fence when the DUL's P-DATA actions send :class:`EncodedPData` (``pdata-batches``).
batches = False


class EncodedPData(P_DATA):
    """The P-DATA-TF PDUs of one DIMSE message, encoded: the DUL thread writes them at once
    (``net/pdata_batches.py``). Its PDV list stays empty: nothing reads it but the action."""

    def __init__(self, encoded: bytes, pdus: int) -> None:
        super().__init__()
        self.encoded = encoded
        self.pdus = pdus


def command_set_encoder(original: Callable[..., Any]) -> Callable[..., Any]:
    """A replacement for ``pynetdicom.dimse_messages.encode``: command sets of plain VRs
    are written here, anything else by ``original`` (pydicom)."""

    def encode(
        ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
    ) -> Any:
        if is_implicit_vr and is_little_endian and not deflated:
            fast = encode_command_set(ds)
            if fast is not None:
                return fast
        return original(ds, is_implicit_vr, is_little_endian, deflated)

    return encode


# -- received command sets ---------------------------------------------------------------------

#: (0000,0100) Command Field of a C-STORE-RQ.
_STORE_RQ = 0x0001
#: The elements of a plain C-STORE-RQ's command set: tag -> value length (0: text, any even
#: length). (0000,0000) Command Group Length, (0000,0002) Affected SOP Class UID, (0000,0100)
#: Command Field, (0000,0110) Message ID, (0000,0700) Priority, (0000,0800) Command Data Set
#: Type, (0000,1000) Affected SOP Instance UID. Anything else (a Move Originator, a private
#: or unknown element) is pydicom's to decode.
_STORE_RQ_ELEMENTS = {0x0000: 4, 0x0002: 0, 0x0100: 2, 0x0110: 2, 0x0700: 2, 0x0800: 2,
                      0x1000: 0}
#: The elements of a plain C-STORE-RSP: (0000,0000), (0000,0002) Affected SOP Class UID,
#: (0000,0100), (0000,0120) Message ID Being Responded To, (0000,0800), (0000,0900) Status,
#: (0000,1000) Affected SOP Instance UID.
_STORE_RSP_ELEMENTS = {0x0000: 4, 0x0002: 0, 0x0100: 2, 0x0120: 2, 0x0800: 2, 0x0900: 2,
                       0x1000: 0}
#: The elements of a plain C-ECHO-RQ (no data set).
_ECHO_RQ_ELEMENTS = {0x0000: 4, 0x0002: 0, 0x0100: 2, 0x0110: 2, 0x0800: 2}
_ECHO_RQ = 0x0030
_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")
_UL = struct.Struct("<L")
_UID_TEXT = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


class CheckedUID(UID):
    """A UID :func:`decode_store_request` found conformant (pydicom's pattern, 1 to 64
    characters): pynetdicom's ``set_uid`` would accept it silently and return an equal
    ``UID``, so :func:`checked_uid_setter` hands it on as it is."""

    __slots__ = ()


def checked_uid_setter(set_uid: Callable[..., Any]) -> Callable[..., Any]:
    """A replacement for the ``set_uid`` of pynetdicom's DIMSE primitives: a
    :class:`CheckedUID` (a received C-STORE-RQ's, copied into its response) is taken as
    checked; anything else is checked by ``set_uid`` (one pydicom ``UID`` built and matched
    three times over)."""

    def set_checked_uid(
        value: Any, name: str, allow_empty: bool = True, allow_none: bool = True,
        validate: bool = True,
    ) -> Any:
        if type(value) is CheckedUID:
            return value
        return set_uid(value, name, allow_empty, allow_none, validate)

    return set_checked_uid


class DecodedCommandSet:
    """A command set decoded here, not by pydicom: its elements are attributes under
    pydicom's keywords, with pydicom's value types (``UID``, ``int``); anything else asked of
    it (iteration, another keyword, ``to_json``...) is answered by a pydicom ``Dataset`` of the
    same bytes, decoded on first use, so a consumer of ``DIMSEMessage.command_set`` sees what
    pynetdicom would have given it."""

    __slots__ = ("_dataset", "encoded")

    def __init__(self, encoded: bytes) -> None:
        self.encoded = encoded
        self._dataset: Dataset | None = None

    def as_dataset(self) -> Dataset:
        """The same command set as pydicom decodes it (what pynetdicom would hold)."""
        if self._dataset is None:
            from pynetdicom.dsutils import decode

            self._dataset = decode(io.BytesIO(self.encoded), True, True)
        return self._dataset

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.as_dataset(), name)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.as_dataset())

    def __getitem__(self, key: Any) -> Any:
        return self.as_dataset()[key]

    def __contains__(self, key: Any) -> bool:
        return key in self.as_dataset()

    def __len__(self) -> int:
        return len(self.as_dataset())


class StoreRequestCommand(DecodedCommandSet):
    """The command set of a received C-STORE-RQ."""

    __slots__ = ("AffectedSOPClassUID", "AffectedSOPInstanceUID", "CommandDataSetType",
                 "CommandField", "CommandGroupLength", "MessageID", "Priority")

    def __init__(self, encoded: bytes, values: dict[int, Any]) -> None:
        super().__init__(encoded)
        self.CommandGroupLength: int = values[0x0000]
        self.AffectedSOPClassUID: UID = values[0x0002]
        self.CommandField: int = values[0x0100]
        self.MessageID: int = values[0x0110]
        self.Priority: int = values[0x0700]
        self.CommandDataSetType: int = values[0x0800]
        self.AffectedSOPInstanceUID: UID = values[0x1000]


class StoreResponseCommand(DecodedCommandSet):
    """The command set of a received C-STORE-RSP (the answer to a C-GET sub-operation)."""

    __slots__ = ("AffectedSOPClassUID", "AffectedSOPInstanceUID", "CommandDataSetType",
                 "CommandField", "CommandGroupLength", "MessageIDBeingRespondedTo", "Status")

    def __init__(self, encoded: bytes, values: dict[int, Any]) -> None:
        super().__init__(encoded)
        self.CommandGroupLength: int = values[0x0000]
        self.AffectedSOPClassUID: UID = values[0x0002]
        self.CommandField: int = values[0x0100]
        self.MessageIDBeingRespondedTo: int = values[0x0120]
        self.CommandDataSetType: int = values[0x0800]
        self.Status: int = values[0x0900]
        self.AffectedSOPInstanceUID: UID = values[0x1000]


class EchoRequestCommand(DecodedCommandSet):
    """The command set of a received C-ECHO-RQ."""

    __slots__ = ("AffectedSOPClassUID", "CommandDataSetType", "CommandField",
                 "CommandGroupLength", "MessageID")

    def __init__(self, encoded: bytes, values: dict[int, Any]) -> None:
        super().__init__(encoded)
        self.CommandGroupLength: int = values[0x0000]
        self.AffectedSOPClassUID: UID = values[0x0002]
        self.CommandField: int = values[0x0100]
        self.MessageID: int = values[0x0110]
        self.CommandDataSetType: int = values[0x0800]


def decode_store_request(encoded: bytes) -> StoreRequestCommand | None:
    """A plain C-STORE-RQ command set (implicit VR little endian) decoded, or None for
    pynetdicom to decode: another command, another element, a value pydicom would decode
    differently or with a warning (a UID that is not conformant), no data set."""
    values = _decode_plain(encoded, _STORE_RQ_ELEMENTS)
    if values is None or len(values) != len(_STORE_RQ_ELEMENTS):
        return None
    if values[0x0100] != _STORE_RQ or values[0x0800] == _NO_DATA_SET:
        return None
    if values[0x0700] not in (0, 1, 2):
        return None
    return StoreRequestCommand(encoded, values)


def decode_store_response(encoded: bytes) -> StoreResponseCommand | None:
    """A plain C-STORE-RSP command set (the answer to a C-GET or C-MOVE sub-operation)
    decoded, with both Affected SOP UIDs, no data set, no Error Comment or other element;
    else None, for pynetdicom to decode."""
    values = _decode_plain(encoded, _STORE_RSP_ELEMENTS)
    if values is None or len(values) != len(_STORE_RSP_ELEMENTS):
        return None
    if values[0x0100] != _STORE_RSP or values[0x0800] != _NO_DATA_SET:
        return None
    return StoreResponseCommand(encoded, values)


def decode_echo_request(encoded: bytes) -> EchoRequestCommand | None:
    """A plain C-ECHO-RQ command set decoded: its five elements, no data set; else None,
    for pynetdicom to decode."""
    values = _decode_plain(encoded, _ECHO_RQ_ELEMENTS)
    if values is None or len(values) != len(_ECHO_RQ_ELEMENTS):
        return None
    if values[0x0100] != _ECHO_RQ or values[0x0800] != _NO_DATA_SET:
        return None
    return EchoRequestCommand(encoded, values)


def _decode_plain(encoded: bytes, expected_elements: dict[int, int]) -> dict[int, Any] | None:
    """The group 0000 elements of ``expected_elements`` (number -> 4: UL, 2: US, 0: UI),
    each at most once; None at anything else."""
    values: dict[int, Any] = {}
    view = memoryview(encoded)
    offset, end = 0, len(encoded)
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = _ELEMENT.unpack_from(view, offset)
        offset += 8
        expected = expected_elements.get(element)
        if group or expected is None or element in values or offset + length > end:
            return None
        value = view[offset : offset + length]
        offset += length
        if expected == 4:
            if length != 4:
                return None
            values[element] = _UL.unpack(value)[0]
        elif expected == 2:
            if length != 2:
                return None
            values[element] = _US.unpack(value)[0]
        else:
            try:
                text = bytes(value).rstrip(b"\x00 ").decode("ascii")
            except UnicodeDecodeError:
                return None
            if not 0 < len(text) <= 64 or not _UID_TEXT.fullmatch(text):
                return None
            values[element] = CheckedUID(text, validation_mode=config.IGNORE)  # checked above
    return values
