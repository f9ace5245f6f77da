"""What a header may make the server copy: sequences of undefined length taken whole by the
scan, long values within their budget, a bound on the rest, a sane Specific Character Set.

Each bound holds on both routes: the scan (``codec/header_scan.py``) and pydicom's read of
what the scan leaves to it (``codec/header.py``), made to take a header here by a value of
undefined length that is not a sequence.
"""

from __future__ import annotations

import io
import struct

import pytest
from pydicom.filereader import read_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from mimic_server.codec.header import _at_pixel_data, read_checked_header, read_header
from mimic_server.codec.header_scan import (
    HEADER_LONG_VALUES,
    HEADER_SEQUENCES,
    LARGEST_HEADER_VALUE,
    MAX_HEADER_BYTES,
    ScannedHeader,
)
from mimic_server.errors import CannotUnderstand, OutOfResources
from mimic_server.index.attributes import header_json
from tests.memory import peak_allocated

EXPLICIT = UID(ExplicitVRLittleEndian)
IMPLICIT = UID(ImplicitVRLittleEndian)
MiB = 1 << 20


def _explicit(group: int, number: int, vr: bytes, value: bytes, undefined: bool = False) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        length = 0xFFFFFFFF if undefined else len(value)
        return struct.pack("<HH2sHL", group, number, vr, 0, length) + value
    return struct.pack("<HH2sH", group, number, vr, len(value)) + value


def _implicit(group: int, number: int, value: bytes, undefined: bool = False) -> bytes:
    return struct.pack("<HHL", group, number, 0xFFFFFFFF if undefined else len(value)) + value


def _item(content: bytes, undefined: bool = False) -> bytes:
    if undefined:
        return struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + content + struct.pack(
            "<HHL", 0xFFFE, 0xE00D, 0)
    return struct.pack("<HHL", 0xFFFE, 0xE000, len(content)) + content


SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
#: Not a sequence: a header holding one is pydicom's to read.
PYDICOM_ONLY = _explicit(0x0007, 0x1010, b"OB", _item(b"\x01\x02") + SEQUENCE_END, undefined=True)
NAME = _explicit(0x0010, 0x0010, b"PN", b"Budget^Header ")
ROUTES = ["scanned", "pydicom"]


def _routed(data: bytes, route: str) -> memoryview:
    """``data`` as the route reads it: pydicom's, after a value of undefined length."""
    return memoryview(PYDICOM_ONLY + data if route == "pydicom" else data)


def _header(data: bytes | memoryview, route: str, syntax: UID = EXPLICIT) -> object:
    view = data if isinstance(data, memoryview) else _routed(data, route)
    header = read_checked_header(view, syntax)
    assert isinstance(header, ScannedHeader) == (route == "scanned")
    return header


def _pydicom_json(data: bytes, implicit: bool) -> dict[str, object]:
    """The index's JSON of what pydicom's own reader makes of ``data``, read whole."""
    return header_json(read_dataset(io.BytesIO(data), implicit, True, stop_when=_at_pixel_data))


def test_sequences_of_undefined_length_are_scanned_as_pydicom_reads_them() -> None:
    """SQ, a private UN (implicit VR inside, PS3.5 6.2.2), items of either length, nested:
    the scan keeps the header (no pydicom read of it) and the JSON is pydicom's."""
    code = _explicit(0x0008, 0x0100, b"SH", b"CODE") + _explicit(0x0008, 0x0104, b"LO", b"Text")
    nested = _explicit(0x0040, 0xA043, b"SQ", _item(code, undefined=True) + SEQUENCE_END,
                       undefined=True)
    un_content = _item(_implicit(0x0009, 0x1001, b"INNER ")) + SEQUENCE_END
    data = b"".join([
        _explicit(0x0008, 0x0060, b"CS", b"SR"),
        _explicit(0x0008, 0x1110, b"SQ", _item(code) + _item(code + nested, undefined=True)
                  + SEQUENCE_END, undefined=True),
        _explicit(0x0009, 0x0010, b"LO", b"MIMIC TEST"),
        _explicit(0x0009, 0x1010, b"UN", un_content, undefined=True),
        NAME,
    ])
    header = read_checked_header(memoryview(data), EXPLICIT)
    assert isinstance(header, ScannedHeader) and not header.bulk
    document = header_json(header)
    assert document == _pydicom_json(data, implicit=False)
    assert len(document["00081110"]["Value"]) == 2
    assert document["00081110"]["Value"][1]["0040A043"]["Value"][0]["00080104"] == {
        "vr": "LO", "Value": ["Text"]}


def test_implicit_vr_sequences_of_undefined_length_are_scanned() -> None:
    """Implicit VR: the dictionary says SQ, or (a private tag) the first item does."""
    code = _implicit(0x0008, 0x0100, b"CODE")
    data = b"".join([
        _implicit(0x0008, 0x0060, b"SR"),
        _implicit(0x0008, 0x1110, _item(code) + SEQUENCE_END, undefined=True),
        _implicit(0x0009, 0x0010, b"MIMIC TEST"),
        _implicit(0x0009, 0x1010, _item(code, undefined=True) + SEQUENCE_END, undefined=True),
        _implicit(0x0010, 0x0010, b"Budget^Header "),
    ])
    header = read_checked_header(memoryview(data), IMPLICIT)
    assert isinstance(header, ScannedHeader)
    assert header_json(header) == _pydicom_json(data, implicit=True)


def test_a_broken_sequence_of_undefined_length_is_refused_as_before() -> None:
    """Unclosed, or a stray element where an item belongs: the whole walk's refusal."""
    unclosed = _explicit(0x0008, 0x1110, b"SQ", _item(b""), undefined=True) + NAME
    stray = _explicit(0x0008, 0x1110, b"SQ", NAME + SEQUENCE_END, undefined=True)
    for data in (unclosed, stray):
        with pytest.raises(CannotUnderstand):
            read_checked_header(memoryview(_explicit(0x0008, 0x0060, b"CS", b"OT") + data),
                                EXPLICIT)


def test_a_long_sequence_of_undefined_length_is_bulk_not_copied() -> None:
    """Past what is left of the sequences' budget: in the header, its value not copied
    (nor its items read), out of the JSON; what follows it is read."""
    items = _item(_explicit(0x0009, 0x1001, b"OB", bytes(8 * MiB)))
    data = memoryview(b"".join([
        _explicit(0x0008, 0x0060, b"CS", b"OT"),
        _explicit(0x0009, 0x1010, b"SQ", items + SEQUENCE_END, undefined=True),
        NAME,
    ]))
    with peak_allocated() as peak_:
        header = read_checked_header(data, EXPLICIT)
    peak = peak_[0]
    assert isinstance(header, ScannedHeader) and header.bulk == {0x00091010}
    assert peak < MiB, peak
    document = header_json(header)
    assert "00091010" not in document and "00100010" in document


def test_pydicom_refuses_a_sequence_of_undefined_length_it_would_read_whole() -> None:
    """pydicom cannot leave one unread: past the budget it is refused (0xA700) before it is
    read; within it, read."""
    small = _explicit(0x0009, 0x1010, b"SQ", _item(b"") + SEQUENCE_END, undefined=True)
    large = _explicit(0x0009, 0x1011, b"SQ", _item(_explicit(
        0x0009, 0x1001, b"OB", bytes(HEADER_SEQUENCES))) + SEQUENCE_END, undefined=True)
    head = _explicit(0x0008, 0x0060, b"CS", b"OT") + _explicit(0x0009, 0x0010, b"LO", b"M")
    header = _header(head + small + NAME, "pydicom")
    assert header_json(header)["00091010"] == {"vr": "SQ", "Value": [{}]}
    data = _routed(head + small + large + NAME, "pydicom")
    with peak_allocated() as peak_, pytest.raises(OutOfResources) as refused:
        _header(data, "pydicom")
    peak = peak_[0]
    assert refused.value.status == 0xA700
    assert peak < HEADER_SEQUENCES // 2, peak


@pytest.mark.parametrize("route", ROUTES)
def test_long_values_are_copied_while_they_fit_their_budget(route: str) -> None:
    """Values over 1 KiB are kept while they total 1 MiB: a thousand of 64 KiB (a 64 MiB
    header) were copied whole, and their text put in the index's JSON."""
    count = 1000
    values = b"".join(_explicit(0x0011 + 2 * (n // 0xF0), 0x1000 + n % 0xF0, b"UT",
                                b"%06d" % n + b"t" * (LARGEST_HEADER_VALUE - 6))
                      for n in range(count))
    data = _routed(_explicit(0x0008, 0x0060, b"CS", b"OT") + NAME + values, route)
    del values
    with peak_allocated() as peak_:
        header = _header(data, route)
        document = header_json(header)
    peak = peak_[0]
    kept = [key for key, entry in document.items() if entry.get("vr") == "UT"]
    assert len(kept) == HEADER_LONG_VALUES // LARGEST_HEADER_VALUE  # the first 16
    assert document["00100010"]["Value"] == [{"Alphabetic": "Budget^Header"}]
    assert peak < 8 * MiB, f"{peak / MiB:.1f} MiB for a {data.nbytes // MiB} MiB header"


@pytest.mark.parametrize("route", ROUTES)
def test_a_header_too_large_bulk_aside_is_refused(route: str) -> None:
    """Values of at most 1 KiB are all kept: past 8 MiB of them the header is refused
    (0xA700), as one of too many elements; below, read."""
    def header_of(count: int) -> bytes:
        return _explicit(0x0008, 0x0060, b"CS", b"OT") + NAME + b"".join(
            _explicit(0x0011 + 2 * (n // 0xF0), 0x1000 + n % 0xF0, b"OB", bytes(1024))
            for n in range(count))

    below = MAX_HEADER_BYTES // 1040
    assert len(_header(header_of(below), route)) == below + 2 + (route == "pydicom")
    with pytest.raises(OutOfResources) as refused:
        _header(header_of(MAX_HEADER_BYTES // 1024 + 1), route)
    assert refused.value.status == 0xA700


@pytest.mark.parametrize("route", ROUTES)
def test_a_long_specific_character_set_is_refused(route: str) -> None:
    """0xC000, before pydicom makes a codec of each of its values (12 MB a MiB)."""
    defined = b"\\".join([b"ISO_IR 100"] * 93)  # 1,022 bytes: taken
    header = _header(_explicit(0x0008, 0x0005, b"CS", defined) + NAME, route)
    assert header_json(header)["00100010"]["Value"] == [{"Alphabetic": "Budget^Header"}]
    for size in (2000, 16 * MiB):  # a multi-MiB one can be sent in implicit VR only
        implicit = route == "scanned" and size > 0xFFFF
        charset = b"\\".join([b"ISO_IR 100"] * (size // 11)).ljust(size // 11 * 11, b" ")
        if implicit:
            data = _implicit(0x0008, 0x0005, charset) + _implicit(0x0010, 0x0010, b"A^B ")
        elif size > 0xFFFF:  # pydicom's route in implicit VR: a value not a sequence first
            data = _implicit(0x0007, 0x1010, _item(b"\x01\x02") + SEQUENCE_END, undefined=True) \
                + _implicit(0x0008, 0x0005, charset) + _implicit(0x0010, 0x0010, b"A^B ")
        else:
            data = _explicit(0x0008, 0x0005, b"CS", charset) + NAME
        with peak_allocated() as peak_, pytest.raises(CannotUnderstand) as refused:
            first = PYDICOM_ONLY if route == "pydicom" and not size > 0xFFFF else b""
            read_checked_header(memoryview(first + data), IMPLICIT if size > 0xFFFF
                                else EXPLICIT)
        peak = peak_[0]
        assert refused.value.status == 0xC000
        assert "Specific Character Set" in str(refused.value)
        assert peak < MiB, peak


def test_read_header_keeps_the_bounds_without_the_walk() -> None:
    """``read_header`` (a spooled object, walked as it arrived) takes the same route."""
    data = _explicit(0x0008, 0x1110, b"SQ", _item(b"") + SEQUENCE_END, undefined=True) + NAME
    assert isinstance(read_header(memoryview(data), EXPLICIT), ScannedHeader)


def test_a_long_value_of_undefined_length_pydicom_defers_is_bulk_not_empty() -> None:
    """Not a sequence, over 1 KiB: pydicom keeps none of it. The JSON leaves it out, as any
    bulk value; it wrote it as an empty value."""
    long = _explicit(0x0007, 0x1010, b"OB", _item(b"\x01" * 4000) + SEQUENCE_END, undefined=True)
    header = read_checked_header(memoryview(long + NAME), EXPLICIT)
    assert not isinstance(header, ScannedHeader)
    document = header_json(header)
    assert "00071010" not in document and "00100010" in document
    short = read_checked_header(memoryview(PYDICOM_ONLY + NAME), EXPLICIT)
    assert header_json(short)["00071010"]["vr"] == "OB"  # a short one is kept


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_a_group_fffe_element_of_undefined_length_is_refused(implicit: bool) -> None:
    """Item tags belong inside sequences, never among a data set's elements (as review
    found: the scan's branch for undefined lengths took one)."""
    content = _item(b"") + SEQUENCE_END
    element = _implicit(0xFFFE, 0x0001, content, undefined=True) if implicit \
        else _explicit(0xFFFE, 0x0001, b"SQ", content, undefined=True)
    head = _implicit(0x0008, 0x0060, b"OT") if implicit else _explicit(0x0008, 0x0060, b"CS",
                                                                        b"OT")
    with pytest.raises(CannotUnderstand):
        read_checked_header(memoryview(head + element), IMPLICIT if implicit else EXPLICIT)


def test_a_deflated_sequence_cut_by_the_inflation_bound_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The header of a Deflated object is inflated up to a bound; a sequence of undefined
    length not closed within it would be read item by item by pydicom (62 MiB a MiB of
    small items): refused 0xA700 before (review)."""
    import zlib

    from mimic_server.codec import header

    monkeypatch.setattr(header, "MAX_INFLATED_HEADER", 1 << 20)
    items = _item(b"") * ((2 << 20) // 8)
    plain = _explicit(0x0008, 0x0060, b"CS", b"OT") + _explicit(
        0x0008, 0x1110, b"SQ", items + SEQUENCE_END, undefined=True) + NAME
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = deflater.compress(plain) + deflater.flush()
    with peak_allocated() as peak_, pytest.raises(OutOfResources) as refused:
        read_header(memoryview(deflated), UID("1.2.840.10008.1.2.1.99"))
    peak = peak_[0]
    assert refused.value.status == 0xA700
    assert peak < 8 * MiB, peak


def test_a_long_value_of_undefined_length_not_a_sequence_is_taken() -> None:
    """pydicom keeps no more of it than its defer size: neither charged to the sequences'
    budget nor refused (review)."""
    fragment = _item(bytes(2 * MiB))
    data = _explicit(0x0009, 0x0010, b"LO", b"M") + _explicit(
        0x0009, 0x1010, b"OB", fragment + SEQUENCE_END, undefined=True) + NAME
    with peak_allocated() as peak_:
        header = read_checked_header(memoryview(data), EXPLICIT)
    peak = peak_[0]
    assert not isinstance(header, ScannedHeader)
    assert "00091010" not in header_json(header)
    assert peak < MiB, peak


@pytest.mark.parametrize("route", ROUTES)
def test_a_specific_character_set_looking_like_a_sequence_is_refused_too(route: str) -> None:
    """Checked before anything else of the element: a value starting with an item tag
    went past the bound as a sequence (review)."""
    charset = _item(b"ISO_IR 100" * 200)
    data = _implicit(0x0008, 0x0005, charset) + _implicit(0x0010, 0x0010, b"A^B ")
    if route == "pydicom":
        data = _implicit(0x0007, 0x1010, _item(b"\x01\x02") + SEQUENCE_END, undefined=True) \
            + data
    with pytest.raises(CannotUnderstand) as refused:
        read_checked_header(memoryview(data), IMPLICIT)
    assert "Specific Character Set" in str(refused.value)


def test_the_size_bound_counts_the_same_bytes_on_both_routes() -> None:
    """Element headers and copied values, on both routes (review: pydicom's counted values
    only, so a header could be refused by one route and taken by the other)."""
    def header_of(count: int, route: str) -> bool:
        values = b"".join(_explicit(0x0011 + 2 * (n // 0xF0), 0x1000 + n % 0xF0, b"OB",
                                    bytes(1024)) for n in range(count))
        try:
            _header(_explicit(0x0008, 0x0060, b"CS", b"OT") + NAME + values, route)
        except OutOfResources:
            return False
        return True

    # 1,036 bytes an element with its header: the bound falls between these two counts
    for count in (MAX_HEADER_BYTES // 1036 - 2, MAX_HEADER_BYTES // 1036 + 2):
        assert header_of(count, "scanned") == header_of(count, "pydicom"), count


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_items_of_undefined_length_are_read_as_pydicom_reads_them(implicit: bool) -> None:
    """Their elements are read by the header JSON itself, as an item of defined length's:
    the same document as pydicom's."""
    if implicit:
        code = _implicit(0x0008, 0x0100, b"CODE") + _implicit(0x0008, 0x0104, b"Text")
        sequence = _implicit(0x0008, 0x1110, _item(code, undefined=True) + _item(b"", True)
                             + _item(code) + SEQUENCE_END, undefined=True)
        data = _implicit(0x0008, 0x0060, b"SR") + sequence + _implicit(0x0010, 0x0010, b"A^B ")
    else:
        code = _explicit(0x0008, 0x0100, b"SH", b"CODE") + _explicit(0x0008, 0x0104, b"LO",
                                                                      b"Text")
        sequence = _explicit(0x0008, 0x1110, b"SQ", _item(code, undefined=True)
                             + _item(b"", True) + _item(code) + SEQUENCE_END, undefined=True)
        data = _explicit(0x0008, 0x0060, b"CS", b"SR") + sequence + NAME
    header = read_checked_header(memoryview(data), IMPLICIT if implicit else EXPLICIT)
    assert isinstance(header, ScannedHeader)
    document = header_json(header)
    assert document == _pydicom_json(data, implicit)
    assert [len(item) for item in document["00081110"]["Value"]] == [2, 0, 2]


def test_many_small_items_of_undefined_length_in_small_memory() -> None:
    """A sequence of 65,000 empty items of undefined length (1 MiB, within the sequences'
    budget): pydicom made a Dataset of each, some 75 MB (review)."""
    items = _item(b"", undefined=True) * 65_000
    data = _explicit(0x0008, 0x0060, b"CS", b"OT") + _explicit(
        0x0008, 0x1110, b"SQ", items + SEQUENCE_END, undefined=True) + NAME
    header = read_checked_header(memoryview(data), EXPLICIT)
    with peak_allocated() as peak:
        document = header_json(header)
    assert len(document["00081110"]["Value"]) == 65_000
    assert peak[0] < 24 * MiB, f"{peak[0] / MiB:.1f} MiB"


@pytest.mark.parametrize("route", ROUTES)
def test_binary_values_do_not_crowd_out_the_texts_after_them(route: str) -> None:
    """Binary values over 1 KiB are bulk at once (the JSON leaves them out anyway), not
    charged to the long values' budget: sixteen 64 KiB vendor blobs left no room for an
    8 KiB Image Comments after them (review)."""
    blobs = b"".join(_explicit(0x0019, 0x1000 + n, b"OB", bytes(LARGEST_HEADER_VALUE))
                     for n in range(HEADER_LONG_VALUES // LARGEST_HEADER_VALUE))
    data = _explicit(0x0008, 0x0060, b"CS", b"OT") + NAME + _explicit(
        0x0019, 0x0010, b"LO", b"VENDOR") + blobs + _explicit(0x0020, 0x4000, b"LT", b"c" * 8192)
    document = header_json(_header(data, route))
    assert document["00204000"] == {"vr": "LT", "Value": ["c" * 8192]}
    assert not any(key.startswith("00191") for key in document)
