"""The Part 10 preamble and File Meta Information that MIMIC writes in front of a data set,
and the reading of a received Part 10 file's own (STOW-RS parts: what they declare)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mimic_server.errors import CannotUnderstand

#: MIMIC's Implementation Class UID (a UUID-derived OID, PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = "2.25.166831424185209478937263318385113413712"
IMPLEMENTATION_VERSION_NAME = "MIMIC_010"


def encode_file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae_title: str
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1).

    Written here rather than by pydicom's ``write_file_meta_info``: eight short elements
    in explicit VR little endian, byte for byte what pydicom writes
    (tests/unit/test_file_meta.py), at a fiftieth of the cost on every C-STORE.
    """
    elements = [
        _element(0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
        _element(0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
        _element(0x0010, b"UI", _padded(transfer_syntax, b"\x00")),
        _element(0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\x00")),
        _element(0x0013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME, b" ")),
    ]
    if source_ae_title:
        elements.append(_element(0x0016, b"AE", _padded(source_ae_title, b" ")))
    body = b"".join(elements)
    group_length = _element(0x0000, b"UL", struct.pack("<L", len(body)))
    return b"".join((_PREAMBLE, group_length, body))


_PREAMBLE = b"\x00" * 128 + b"DICM"


def _padded(value: str, pad: bytes) -> bytes:
    encoded = value.encode("ascii")
    return encoded + pad if len(encoded) % 2 else encoded


def _element(number: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":  # 32-bit length after two reserved bytes
        return struct.pack("<HH2sxxL", 0x0002, number, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, number, vr, len(value)) + value


@dataclass(frozen=True, slots=True)
class FileMetaRead:
    """What a received Part 10 file's own File Meta declares, and where its data set starts."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int


#: A File Meta group larger than this is not one (ours is under 300 bytes).
MAX_FILE_META = 64 << 10
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})


def read_file_meta(head: bytes | memoryview, *, whole: bool = False) -> FileMetaRead | None:
    """Read the File Meta Information of a Part 10 file from its first bytes.

    None when ``head`` ends before the group does (more bytes are needed; with ``whole``,
    ``head`` is the whole file and an element cut short is refused instead); raises
    ``CannotUnderstand`` when it is not a Part 10 file (no ``DICM`` after the preamble nor
    a File Meta group at its very start, a File Meta element that does not parse, a group
    past ``MAX_FILE_META``). The elements
    are walked one by one (the group length is not trusted: some writers get it wrong);
    the group ends at the first element of another group.
    """
    return FileMetaReader().read(head, whole=whole)


class FileMetaReader:
    """:func:`read_file_meta` of a head that grows as its bytes arrive (a STOW-RS part).

    Each :meth:`read` goes on from the first element the previous one could not finish,
    so the elements are walked once whatever the chunking: read again from byte 0 at each
    write, a File Meta of 64 KiB of 8-byte elements trickled 32 bytes at a time was some
    eight million element reads (quadratic) on the event loop. ``head`` must be the same
    bytes each time, longer or not: only appended to.
    """

    __slots__ = ("_pos", "_start_of_meta", "_values")

    def __init__(self) -> None:
        #: Where the next element starts; None until the preamble (or its absence) is known.
        self._pos: int | None = None
        self._start_of_meta = 0
        self._values: dict[int, bytes] = {}

    def read(self, head: bytes | memoryview | bytearray, *, whole: bool = False
             ) -> FileMetaRead | None:
        """What :func:`read_file_meta` answers for ``head``."""
        pos = self._pos
        if pos is None:
            if len(head) < 132 and not (whole and len(head) >= 8):
                return None
            if bytes(head[128:132]) == b"DICM":
                pos = 132
            elif bytes(head[:2]) == b"\x02\x00" and bytes(head[4:6]).isalpha():
                pos = 0  # File Meta without preamble (pydicom writes such files): read as it is
            else:
                raise CannotUnderstand("not a DICOM Part 10 file (no DICM prefix)")
            self._pos = self._start_of_meta = pos
        values = self._values
        while True:
            if pos > MAX_FILE_META:
                raise CannotUnderstand("the File Meta Information does not end")
            if len(head) < pos + 8:
                if whole and len(head) == pos and pos > self._start_of_meta:
                    break  # a file of File Meta only: its (empty) data set is refused later
                if whole:
                    raise CannotUnderstand("the file ends inside its File Meta Information")
                self._pos = pos
                return None
            group, element, vr = struct.unpack_from("<HH2s", head, pos)
            if group != 0x0002:
                break
            if vr in _LONG_VRS:
                if len(head) < pos + 12:
                    self._pos = pos
                    return _short(whole)
                (length,) = struct.unpack_from("<L", head, pos + 8)
                start = pos + 12
            elif vr.isalpha() and vr.isupper():
                (length,) = struct.unpack_from("<H", head, pos + 6)
                start = pos + 8
            else:
                raise CannotUnderstand("a File Meta element is not explicit VR little endian")
            if length == 0xFFFFFFFF or start + length > MAX_FILE_META:
                raise CannotUnderstand("a File Meta element's length is not valid")
            if len(head) < start + length:
                self._pos = pos
                return _short(whole)
            values[element] = bytes(head[start:start + length])
            pos = start + length
        self._pos = pos
        return FileMetaRead(_uid(values.get(0x0002)), _uid(values.get(0x0003)),
                            _uid(values.get(0x0010)), pos)


def _short(whole: bool) -> None:
    if whole:
        raise CannotUnderstand("the file ends inside its File Meta Information")
    return None


def _uid(value: bytes | None) -> str:
    return (value or b"").rstrip(b"\x00 ").decode("ascii", "replace")
