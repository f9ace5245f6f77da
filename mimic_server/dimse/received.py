"""One received C-STORE object: the bytes as sent, a File Meta header, the parsed header.

The dataset bytes come straight from pynetdicom's receive buffer (``event.request.DataSet``)
and are never decoded or re-encoded: what we store is a Part 10 preamble and File Meta
Information that we write, followed by the dataset exactly as it arrived. Only the header is
parsed, stopping before Pixel Data, so pixel data is never decoded nor even copied.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from mimic_server.dimse.status import Status
from mimic_server.errors import CannotUnderstand
from mimic_server.index.header_scan import read_little_endian_header

if TYPE_CHECKING:
    from pynetdicom.events import Event

#: MIMIC's Implementation Class UID (a UUID-derived OID, PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = "2.25.166831424185209478937263318385113413712"
IMPLEMENTATION_VERSION_NAME = "MIMIC_010"

_PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})


def _at_pixel_data(tag: int, _vr: str | None, _length: int) -> bool:
    return tag in _PIXEL_DATA_TAGS


@dataclass(frozen=True, slots=True)
class ReceivedObject:
    """A received object ready to be stored: ``chunks`` are its Part 10 bytes."""

    file_meta: bytes
    dataset: memoryview
    transfer_syntax_uid: str
    header: Dataset
    sha256: str

    @property
    def size(self) -> int:
        return len(self.file_meta) + self.dataset.nbytes

    @property
    def chunks(self) -> tuple[bytes | memoryview, ...]:
        return (self.file_meta, self.dataset)

    @classmethod
    def from_event(cls, event: Event, calling_ae_title: str) -> ReceivedObject:
        request = event.request
        dataset = request.DataSet.getbuffer()  # type: ignore[union-attr]
        transfer_syntax = UID(str(event.context.transfer_syntax))
        file_meta = encode_file_meta(
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
            transfer_syntax,
            calling_ae_title,
        )
        header = parse_header(dataset, transfer_syntax)
        digest = hashlib.sha256(file_meta)
        digest.update(dataset)
        return cls(file_meta, dataset, str(transfer_syntax), header, digest.hexdigest())


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


#: How much of a deflated dataset is inflated to read its header: enough for any header,
#: and a bound on what a small, highly compressed upload can make us allocate.
MAX_INFLATED_HEADER = 64 << 20


def parse_header(dataset: memoryview, transfer_syntax: UID) -> Dataset:
    """Parse the dataset up to Pixel Data; ``CannotUnderstand`` if it is not DICOM.

    A transfer syntax pydicom does not know is read as explicit VR little endian, the
    encoding of every encapsulated (compressed) syntax defined since.
    """
    known = transfer_syntax.is_transfer_syntax
    implicit = transfer_syntax.is_implicit_VR if known else False
    little = transfer_syntax.is_little_endian if known else True
    try:
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            source: io.RawIOBase | io.BytesIO = io.BytesIO(
                inflater.decompress(dataset, MAX_INFLATED_HEADER)
            )
        else:
            source = _MemoryReader(dataset)
        header = None
        if little:
            view = source.getbuffer() if isinstance(source, io.BytesIO) else dataset
            header = read_little_endian_header(view, implicit)
        if header is None:
            source.seek(0)
            header = read_dataset(
                source,  # type: ignore[arg-type]
                implicit,
                little,
                stop_when=_at_pixel_data,
            )
        # Values are converted lazily; every element is converted once, by the DICOM JSON
        # of the index (index/attributes.py), which refuses a malformed one as 0xC000.
    except CannotUnderstand:
        raise
    except Exception as exc:  # pydicom raises many kinds for malformed input
        raise CannotUnderstand("dataset cannot be parsed", Status.CANNOT_UNDERSTAND) from exc
    if len(header) == 0:
        raise CannotUnderstand("dataset is empty")
    return header


class _MemoryReader(io.RawIOBase):
    """A seekable reader over a memoryview that copies only what is read."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = max(0, min(len(buffer), self._view.nbytes - self._pos))
        buffer[:count] = self._view[self._pos : self._pos + count]
        self._pos += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._view.nbytes}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos
