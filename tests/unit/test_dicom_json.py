"""The fast DICOM JSON of the index equals pydicom's own, on every shipped test file (but
for the header's bulk elements, which the index leaves out: codec/header_scan.py)."""

from __future__ import annotations

import json
from typing import Any

import pydicom
import pytest

from mimic_server.codec.dicom_json import finite_only, json_text
from mimic_server.codec.header import parse_header, read_header
from mimic_server.index.attributes import _without_bulk_data, header_json
from tests.data import Storable, storable_files


def _dataset_view(item: Storable) -> memoryview:
    return memoryview(item.path.read_bytes()[item.dataset_offset :])


@pytest.mark.parametrize("read", [read_header, parse_header], ids=["as-received", "dataset"])
@pytest.mark.parametrize("item", storable_files(), ids=lambda f: f.path.name)
def test_same_as_pydicom(item: Storable, read: Any) -> None:
    """As received (``read_header``: the scanned header where it can be scanned) and from
    a pydicom ``Dataset`` of raw elements (a header pydicom read)."""
    syntax = pydicom.uid.UID(item.transfer_syntax_uid)
    header = read(_dataset_view(item), syntax)
    ours = header_json(header)
    # Bulk elements of a scanned header (values over 64 KiB, never copied) are left out.
    bulk = {f"{tag:08X}" for tag in getattr(header, "bulk", ())}
    reference = parse_header(_dataset_view(item), syntax).to_json_dict(
        bulk_data_threshold=1024,
        bulk_data_element_handler=lambda _elem: "",
        suppress_invalid_tags=True,
    )
    # PS3.18 F.2.3 has no JSON for NaN / infinity in FL / FD, which pydicom writes as a bare
    # NaN token: both sides follow the same rule (codec.dicom_json.finite_only).
    expected = _without_bulk_data(
        {tag: kept for tag, entry in reference.items()
         if tag not in bulk and (kept := finite_only(entry))}
    )
    assert not bulk & set(ours)
    # pydicom's dataset-level conversion drops an element it fails on (suppress_invalid_tags,
    # e.g. one sequence of rtdose_rle.dcm) that converts fine element by element: ours may
    # keep such an element; everything pydicom produces must be identical.
    assert set(ours) >= set(expected) and len(set(ours) - set(expected)) <= 1
    common = {tag: ours[tag] for tag in expected}
    assert common == expected
    # And as stored: the same JSON text (pydicom's DSfloat / IS serialize as float / int).
    assert json.dumps(common, sort_keys=True) == json.dumps(expected, sort_keys=True)



ODD_TEXT = [b" CT ", b"A \\ B ", b"\\ ", b"\\", b"  ", b"1\\ ", b" 12", b"1.2.3\x00", b"X\x00",
            b"1.2 \\3.4", b" ", b"A\\\\B", b"ab \x00", b"ORIGINAL\\PRIMARY\\AXIAL", b"x y ",
            b"12\\34", b"A\\B\\", b"\\A", b".", b"1.2\\.", b"1.2\\3", b"1\\2", b" 1\\2 ",
            b"1e3", b"nan", b"-0", b"+7", b"1.5 \x00", b"\x00"]
TEXT_TAGS = [(0x00080060, "CS"), (0x00100020, "LO"), (0x00080020, "DA"), (0x00080030, "TM"),
             (0x00080054, "AE"), (0x00101010, "AS"), (0x00080050, "SH"), (0x0020000D, "UI"),
             (0x00200013, "IS"), (0x00280030, "DS"), (0x00324000, "LT"), (0x00400280, "ST"),
             (0x0040A160, "UT")]


@pytest.mark.parametrize(("tag", "vr"), TEXT_TAGS, ids=[vr for _, vr in TEXT_TAGS])
def test_odd_spacing_and_padding_as_pydicom(tag: int, vr: str) -> None:
    """Where the fast reader answers, it answers as pydicom; pydicom trims differently per
    VR (leading spaces kept, per-value or whole-string trimming), so odd values go to it."""
    from pydicom.dataelem import RawDataElement, convert_raw_data_element
    from pydicom.tag import BaseTag

    from mimic_server.codec.dicom_json import _fast

    for data in ODD_TEXT:
        raw = RawDataElement(BaseTag(tag), vr, len(data), data, 0, False, True)
        ours = _fast(raw, "latin_1")
        if ours is None:
            continue
        assert ours == convert_raw_data_element(raw).to_json_dict(None, 1024), data


def _encoded(ds: pydicom.Dataset, syntax: str = "1.2.840.10008.1.2.1",
             read: Any = parse_header) -> Any:
    """``ds`` written in ``syntax`` and read back as a received header is (``read``)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    uid = pydicom.uid.UID(syntax)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = uid.is_implicit_VR, uid.is_little_endian
    write_dataset(buffer, ds)
    return read(memoryview(buffer.getvalue()), uid)


def _non_finite_header() -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.Modality = "MR"
    ds.add_new(0x00189089, "FD", [float("nan"), 0.0, 1.0])  # Diffusion Gradient Orientation
    ds.add_new(0x00189328, "FD", float("inf"))  # Exposure Time in ms
    ds.add_new(0x00189087, "FD", -float("inf"))  # Diffusion b-value
    ds.add_new(0x00181320, "FL", float("nan"))  # B1rms
    ds.add_new(0x00180088, "DS", "1.5")
    item = pydicom.Dataset()
    item.add_new(0x00189087, "FD", float("nan"))
    item.add_new(0x00189089, "FD", [1.0, 0.0, 0.0])
    ds.add_new(0x00189117, "SQ", [item])  # MR Diffusion Sequence
    return ds


@pytest.mark.parametrize("read", [read_header, parse_header], ids=["as-received", "dataset"])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
def test_nan_and_infinity_are_left_out(syntax: str, read: Any) -> None:
    """PS3.18 F.2.3: FL / FD are JSON Numbers, which cannot be NaN or infinite: such an
    element is left out (inside sequence items too); finite neighbours stay."""
    document = header_json(_encoded(_non_finite_header(), syntax, read))
    assert "00189089" not in document and "00189328" not in document
    assert "00189087" not in document and "00181320" not in document
    assert document["00180088"] == {"vr": "DS", "Value": [1.5]}
    assert document["00189117"] == {
        "vr": "SQ", "Value": [{"00189089": {"vr": "FD", "Value": [1.0, 0.0, 0.0]}}]
    }
    json.dumps(document, allow_nan=False)  # strict JSON: what PostgreSQL's jsonb accepts


@pytest.mark.parametrize("read", [read_header, parse_header], ids=["as-received", "dataset"])
def test_nan_rule_same_on_the_fast_path_and_through_pydicom(read: Any) -> None:
    """The fast reader hands a non-finite FL / FD to pydicom, whose answer goes through the
    same rule: the result equals pydicom's own to_json_dict after that rule."""
    header = _encoded(_non_finite_header(), read=read)
    ours = header_json(header)
    reference = _encoded(_non_finite_header()).to_json_dict(1024, lambda _e: "")
    assert any("NaN" in json.dumps(entry) for entry in reference.values())  # pydicom's
    expected = {tag: kept for tag, entry in reference.items() if (kept := finite_only(entry))}
    assert ours == expected


def test_finite_only() -> None:
    assert finite_only({"vr": "FL", "Value": [float("nan")]}) is None
    assert finite_only({"vr": "FD", "Value": [1.0, float("inf")]}) is None
    assert finite_only({"vr": "FD", "Value": [1.0, 2.5]}) == {"vr": "FD", "Value": [1.0, 2.5]}
    assert finite_only({"vr": "FD"}) == {"vr": "FD"}
    assert finite_only({"vr": "US", "Value": [1]}) == {"vr": "US", "Value": [1]}
    nested = {"vr": "SQ", "Value": [{"00189087": {"vr": "FD", "Value": [float("-inf")]},
                                      "00080060": {"vr": "CS", "Value": ["MR"]}}, {}]}
    assert finite_only(nested) == {"vr": "SQ", "Value": [
        {"00080060": {"vr": "CS", "Value": ["MR"]}}, {}]}


@pytest.mark.parametrize("document", [
    {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Buc^Jérôme=山田"}]}},
    {"00720078": {"vr": "UV", "Value": [2**64 - 1]}, "00189089": {"vr": "FD", "Value": [0.1]}},
    {"00720078": {"vr": "SV", "Value": [2**70]}},  # beyond orjson: json writes it
    {"00081030": {"vr": "LO", "Value": ["\ud800"]}},  # a lone surrogate: json escapes it
])
def test_json_text_is_the_json_of_the_document(document: dict[str, Any]) -> None:
    assert json.loads(json_text(document)) == json.loads(json.dumps(document))


BINARY_TAGS = [(0x00280010, "US", "<H"), (0x00189219, "SS", "<h"), (0x00280106, "US", "<H"),
               (0x00181310, "US", "<H"), (0x00189089, "FD", "<d"), (0x00181320, "FL", "<f"),
               (0x00189234, "UL", "<I"), (0x00181620, "SL", "<i")]


@pytest.mark.parametrize(("tag", "vr", "fmt"), BINARY_TAGS, ids=[t[1] for t in BINARY_TAGS])
def test_binary_numbers_as_pydicom(tag: int, vr: str, fmt: str) -> None:
    """One value (read by ``struct``) and several (by ``array``), little and big endian."""
    import struct

    from pydicom.dataelem import RawDataElement, convert_raw_data_element
    from pydicom.tag import BaseTag

    from mimic_server.codec.dicom_json import _fast

    for values in ([1], [0, 7], [3, 1, 2], [5, 4, 3, 2, 1, 0]):
        for little in (True, False):
            data = struct.pack(("<" if little else ">") + fmt[1] * len(values), *values)
            raw = RawDataElement(BaseTag(tag), vr, len(data), data, 0, False, little)
            ours = _fast(raw, "ascii")
            assert ours == convert_raw_data_element(raw).to_json_dict(None, 1024)
    odd = RawDataElement(BaseTag(tag), vr, 3, b"\x01\x02\x03", 0, False, True)
    assert _fast(odd, "ascii") is None  # not a whole number of values: pydicom's rules


def _documents(items: list[Storable]) -> list[dict[str, Any]]:
    return [header_json(read_header(_dataset_view(item),
                                    pydicom.uid.UID(item.transfer_syntax_uid)))
            for item in items]


def test_the_entries_kept_from_the_instance_before_change_no_document(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every test file, in both orders and each twice in a row (so each tag's last value is
    now equal, now different, now another VR or character set), gives the documents it
    gives with nothing kept from one header to the next."""
    from mimic_server.codec import dicom_json

    items = list(storable_files())
    sequence = [i for item in items for i in (item, item)] + items[::-1]
    monkeypatch.setattr(dicom_json, "_LAST", {})
    kept = _documents(sequence)
    assert dicom_json._LAST  # the memory was used
    monkeypatch.setattr(dicom_json, "_LAST", {})
    monkeypatch.setattr(dicom_json, "_LAST_LIMIT", -1)
    fresh = _documents(sequence)
    assert not dicom_json._LAST
    assert json_text_all(kept) == json_text_all(fresh)


def json_text_all(documents: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(d, sort_keys=True) for d in documents]


@pytest.mark.parametrize("read", [read_header, parse_header], ids=["as-received", "dataset"])
def test_an_equal_value_under_another_vr_or_character_set_is_read_again(read: Any) -> None:
    """The same tag and bytes twice: a private element as LO then SH, a name under
    Latin-1 then UTF-8 (where its bytes are not UTF-8: pydicom's business)."""
    first, second = pydicom.Dataset(), pydicom.Dataset()
    first.SpecificCharacterSet, second.SpecificCharacterSet = "ISO_IR 100", "ISO_IR 192"
    for ds, vr in ((first, "LO"), (second, "SH")):
        ds.add_new(0x00090010, "LO", "MIMIC TEST")
        ds.add_new(0x00091010, vr, "AB")
        ds.add_new(0x00100010, "PN", b"M\xfcller")
        ds.add_new(0x00080060, "CS", "CT")
    documents = [header_json(_encoded(ds, read=read)) for ds in (first, second, first, first)]
    assert [d["00091010"]["vr"] for d in documents] == ["LO", "SH", "LO", "LO"]
    assert documents[0]["00100010"] == documents[2]["00100010"] == {
        "vr": "PN", "Value": [{"Alphabetic": "Müller"}]}
    assert documents[1]["00100010"] != documents[0]["00100010"]
    if read is read_header:  # scanned: the entry of the instance before, kept
        assert documents[3]["00080060"] is documents[2]["00080060"]
