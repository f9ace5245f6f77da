"""A received data set's header, parsed up to Pixel Data without copying the data set."""

from __future__ import annotations

import io
import zlib

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from mimic_server.codec.header_scan import (
    BINARY_VRS,
    HEADER_LONG_VALUES,
    HEADER_SEQUENCES,
    LARGEST_HEADER_VALUE,
    LONG_HEADER_VALUE,
    LONGEST_CHARACTER_SET,
    ScannedHeader,
    check_bounds,
    read_as_sequence,
    scan_header,
    scan_header_to,
)
from mimic_server.codec.structure import (
    check_structure,
    check_structure_after,
    read_as_implicit,
    undefined_length_end,
)
from mimic_server.errors import CannotUnderstand, DicomStatusError, OutOfResources, Status

_PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})


_UNDEFINED_LENGTH = 0xFFFFFFFF
#: The explicit VRs whose element header has a 4-byte length (12 bytes in all).
_LONG_LENGTH_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_ITEM_TAG = b"\xfe\xff\x00\xe0"


def _at_pixel_data(tag: int, _vr: str | None, _length: int) -> bool:
    return tag in _PIXEL_DATA_TAGS


#: How much of a deflated dataset is inflated to read its header: enough for any header,
#: and a bound on what a small, highly compressed upload can make us allocate.
MAX_INFLATED_HEADER = 64 << 20
#: The first inflation budget: each next one is four times larger, up to the bound; a header
#: found whole in the first (the usual case) leaves the rest of the data set uninflated.
_FIRST_INFLATED = 1 << 20
#: The compressed input is handed to zlib this much at a time: what it is not yet asked to
#: inflate it copies aside (``unconsumed_tail``), so a whole spooled data set would be
#: copied once more.
_DEFLATED_SLICE = 1 << 20


#: A received header: scanned (the usual little endian header, ``codec/header_scan.py``),
#: or read by pydicom.
Header = ScannedHeader | Dataset


def read_checked_header(dataset: memoryview, transfer_syntax: UID) -> Header:
    """``check_structure`` then ``read_header``, in one pass where the header is scanned:
    the walk then goes on from where the scan stopped (Pixel Data) instead of reading
    every element of the header a second time. Raises ``CannotUnderstand`` as they do,
    with the same messages."""
    if (transfer_syntax != DeflatedExplicitVRLittleEndian
            and (not transfer_syntax.is_transfer_syntax or transfer_syntax.is_little_endian)):
        implicit = transfer_syntax.is_implicit_VR if transfer_syntax.is_transfer_syntax \
            else False
        try:
            scanned = scan_header_to(dataset, implicit)
        except DicomStatusError:
            raise  # a bound of the scan (MAX_HEADER_ELEMENTS, ...)
        except Exception:  # pragma: no cover - a fault of the scan: the whole walk decides
            scanned = None
        if scanned is not None:
            header, stopped = scanned
            # The scan took the elements before ``stopped`` in ascending order only.
            check_structure_after(dataset, implicit, stopped, next(reversed(header.elements), -1))
            if len(header) == 0:
                raise CannotUnderstand("dataset is empty")
            return header
    check_structure(dataset, transfer_syntax)
    return read_header(dataset, transfer_syntax)


def parse_header(dataset: memoryview, transfer_syntax: UID) -> Dataset:
    """The header as pydicom's ``Dataset`` (of raw elements); see ``read_header``."""
    header = read_header(dataset, transfer_syntax)
    return header.dataset if isinstance(header, ScannedHeader) else header


def read_header(dataset: memoryview, transfer_syntax: UID) -> Header:
    """Read the dataset up to Pixel Data; ``CannotUnderstand`` if it is not DICOM.

    A transfer syntax pydicom does not know is read as explicit VR little endian, the
    encoding of every encapsulated (compressed) syntax defined since.
    """
    known = transfer_syntax.is_transfer_syntax
    implicit = transfer_syntax.is_implicit_VR if known else False
    little = transfer_syntax.is_little_endian if known else True
    try:
        header: Header | None = None
        view = dataset
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            header, inflated = _inflated_header(dataset)
            view = memoryview(inflated)
        elif little:
            header = scan_header(dataset, implicit)
        if header is None:
            header = _read_by_pydicom(view, implicit, little)
        # Values are converted lazily; every element is converted once, by the DICOM JSON
        # of the index (index/attributes.py), which refuses a malformed one as 0xC000.
    except DicomStatusError:
        raise
    except Exception as exc:  # pydicom raises many kinds for malformed input
        raise CannotUnderstand("dataset cannot be parsed", Status.CANNOT_UNDERSTAND) from exc
    if len(header) == 0:
        raise CannotUnderstand("dataset is empty")
    return header


def _read_by_pydicom(view: memoryview, implicit: bool, little: bool) -> Dataset:
    """pydicom's read of a header the scan leaves to it (big endian, an odd encoding),
    under the scan's bounds, decided as pydicom meets each top-level element (``stop_when``
    sees its tag, VR and length before its value is read): at most ``MAX_HEADER_ELEMENTS``
    elements and ``MAX_HEADER_BYTES``, so a header of millions is refused before it is
    read; values over ``LONG_HEADER_VALUE`` deferred, then read from the data set while
    they fit ``HEADER_LONG_VALUES`` (and ``LARGEST_HEADER_VALUE``), else bulk data (out of
    the JSON); sequences read while they fit ``HEADER_SEQUENCES``. pydicom cannot leave a
    sequence of undefined length unread: one that does not fit what is left of
    ``HEADER_SEQUENCES``, or does not end within what there is (a Deflated header inflated
    up to its bound), is refused (0xA700) instead of being made bulk data. A value of
    undefined length that pydicom does not read as a sequence it keeps no more of than its
    defer size. Element headers count towards ``MAX_HEADER_BYTES`` as in the scan."""
    reader = _MemoryReader(view)
    top_implicit = read_as_implicit(view, implicit)
    seen = 0
    copied = 0
    sequences_left = HEADER_SEQUENCES
    long_values_left = HEADER_LONG_VALUES
    bulk: set[int] = set()

    def stop_when(tag: int, vr: str | None, length: int) -> bool:
        nonlocal seen, copied, sequences_left, long_values_left
        if tag in _PIXEL_DATA_TAGS:
            return True
        seen += 1
        start = reader.tell()
        # What the scan counts: every element's header, and the values it copies.
        copied += 12 if not top_implicit and vr in _LONG_LENGTH_VRS else 8
        if tag == 0x00080005 and length > LONGEST_CHARACTER_SET:
            raise CannotUnderstand(
                f"Specific Character Set is longer than {LONGEST_CHARACTER_SET} bytes")
        if length == _UNDEFINED_LENGTH:
            if read_as_sequence(view, start, tag, None if top_implicit else vr):
                # pydicom reads every item of it: refused unless it is whole, and fits.
                end = undefined_length_end(view, start, top_implicit, little)
                if end is None or end - start > sequences_left:
                    raise OutOfResources(
                        f"a sequence of undefined length past the header's {HEADER_SEQUENCES}"
                        " bytes of sequences, in an encoding the archive reads with pydicom")
                sequences_left -= end - start
                copied += end - start
            # else pydicom keeps no more of it than its defer size
        elif vr == "SQ" or (vr in (None, "UN") and length
                            and view[start : start + 4] == _ITEM_TAG):
            if length <= sequences_left:
                sequences_left -= length
                copied += length
            else:
                bulk.add(tag)
        elif length <= LONG_HEADER_VALUE:
            copied += length
        elif vr in BINARY_VRS:
            bulk.add(tag)  # left out of the JSON anyway, as in the scan
        elif length <= LARGEST_HEADER_VALUE and length <= long_values_left:
            long_values_left -= length
            copied += length
        else:
            bulk.add(tag)
        check_bounds(seen, copied)
        return False

    header = read_dataset(
        reader,  # type: ignore[arg-type]
        implicit,
        little,
        stop_when=stop_when,
        defer_size=LONG_HEADER_VALUE,
    )
    elements = header._dict
    for tag, raw in elements.items():
        if not isinstance(raw, RawDataElement):
            continue  # read by pydicom: a sequence of undefined length, in its bound
        if tag in bulk:  # unread, or (a short sequence) dropped
            elements[tag] = raw._replace(value=None)
        elif raw.value is None and raw.length and raw.length != _UNDEFINED_LENGTH:
            start = raw.value_tell  # deferred, and it fits: read it as the scan would
            elements[tag] = raw._replace(value=view[start : start + raw.length].tobytes())
    return header


def _inflated_header(dataset: memoryview) -> tuple[ScannedHeader | None, bytearray]:
    """The scanned header of a deflated data set and what was inflated for it: as little
    as finds the header whole (the scan reaching Pixel Data, or the data set's end), at
    most ``MAX_INFLATED_HEADER``; the compressed input read a slice at a time."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = bytearray()
    budget = _FIRST_INFLATED
    position = 0
    while True:
        while len(inflated) < budget and not inflater.eof:
            pending = inflater.unconsumed_tail
            if not pending:
                if position >= dataset.nbytes:
                    break
                pending = dataset[position : position + _DEFLATED_SLICE]
                position += len(pending)
            inflated += inflater.decompress(pending, budget - len(inflated))
        ended = inflater.eof or (position >= dataset.nbytes and not inflater.unconsumed_tail)
        with memoryview(inflated) as view:
            scanned = scan_header_to(view, False)
        # The scan stops short of the end only at Pixel Data (its 8-byte element header in
        # full); anywhere else it stops at a cut element, a sign to inflate more.
        if scanned is not None and (scanned[1] + 8 <= len(inflated) or ended):
            return scanned[0], inflated
        if ended or budget >= MAX_INFLATED_HEADER:
            return None, inflated  # pydicom reads what there is, with its own rules
        budget = min(budget * 4, MAX_INFLATED_HEADER)


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
