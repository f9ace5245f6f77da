"""WADO-RS metadata, bulk data, frames and rendering of an object of any size, in bounded
memory: the object is read from the store into an anonymous file (hashed again as it is),
its header parsed with every large value left unread, and only what was asked for read.
Before, each of them read the object whole into memory and pydicom copied its Pixel Data
once more."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from starlette.testclient import TestClient

from mimic_server.archive.inflated import inflated_copy
from mimic_server.archive.read import VerifiedObject
from mimic_server.query.finder import InstanceRef
from mimic_server.storage.keys import new_object_key
from mimic_server.storage.memory import MemoryStore
from mimic_server.web.dicomweb.app import build_dicomweb
from mimic_server.web.dicomweb.wado import LARGEST_INLINE_VALUE, header_of, metadata_json
from tests.data import Storable, storable_files
from tests.dicomweb_doubles import InstanceFinder, web_context
from tests.large_objects import large_image, write_large_document
from tests.memory import peak_allocated

MiB = 1 << 20
STUDY, SERIES = "1.2.826.0.1.3680043.8.498.8", "1.2.826.0.1.3680043.8.498.8.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
OCTETS = 'multipart/related; type="application/octet-stream"'
URL = "https://archive.example/dicomweb/studies/1/series/2/instances/3"


def _large(rows: int = 1024, columns: int = 1024, frames: int = 32,
           syntax: str = ExplicitVRLittleEndian, text: int = 0) -> tuple[bytes, Dataset]:
    """``large_image`` in this module's study and series (64 MiB by default)."""
    return large_image(rows, columns, frames, syntax, text, study=STUDY, series=SERIES)


def _client(data: bytes, tmp_path: Path, syntax: str = ExplicitVRLittleEndian,
            uid: str | None = None) -> TestClient:
    store = MemoryStore()
    uid = uid or pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
    key = new_object_key(STUDY, SERIES, uid)
    store.objects[key] = data
    ref = InstanceRef(SECONDARY_CAPTURE, uid, syntax, key, hashlib.sha256(data).hexdigest())
    ctx = web_context(store, InstanceFinder(ref), tmp_path / "spool")
    client = TestClient(build_dicomweb(ctx))
    client.mimic_store = store  # type: ignore[attr-defined]
    return client


def _get(client: TestClient, resource: str, accept: str) -> Any:
    path = f"/studies/{STUDY}/series/{SERIES}/instances/1.2.3{resource}"
    with peak_allocated() as peak_:
        answer = client.get(path, headers={"Accept": accept})
    peak = peak_[0]
    return answer, peak


def _streamed(client: TestClient, resource: str, accept: str) -> tuple[int, str, int, int, str]:
    """The answer's status, SHA-256 and size, read as it comes (not kept), and the peak of
    memory allocated meanwhile."""
    path = f"/studies/{STUDY}/series/{SERIES}/instances/1.2.3{resource}"
    digest, size = hashlib.sha256(), 0
    with peak_allocated() as peak, client.stream("GET", path,
                                                 headers={"Accept": accept}) as answer:
        for piece in answer.iter_bytes():
            digest.update(piece)
            size += len(piece)
        boundary = answer.headers["content-type"].split("boundary=")[1].strip('"')
    return answer.status_code, boundary, size, peak[0], digest.hexdigest()


def test_metadata_of_a_large_object_reads_no_pixel(tmp_path: Path) -> None:
    data, _ds = _large()
    client = _client(data, tmp_path)
    answer, peak = _get(client, "/metadata", "application/dicom+json")
    assert answer.status_code == 200, answer.text
    [document] = answer.json()
    assert document["7FE00010"] == {
        "vr": "OW", "BulkDataURI": document["7FE00010"]["BulkDataURI"]}
    assert document["00100020"]["Value"] == ["LARGE"]
    # The store's hash pass reads up to 8 MiB at once (archive/read.py), then 1 MiB pieces.
    assert peak < 16 * MiB, f"{peak / MiB:.1f} MiB for a {len(data) // MiB} MiB object"
    assert not (tmp_path / "spool").exists()  # walked, never copied (codec/header_stream)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian],
                         ids=["explicit", "deflated"])
def test_bulk_data_of_a_large_object_is_streamed(tmp_path: Path, syntax: str) -> None:
    """A Deflated one (64 MiB inflating from some 261 KB) from its inflated copy."""
    data, ds = _large(syntax=syntax)
    client = _client(data, tmp_path, syntax)
    status, boundary, size, peak, digest = _streamed(client, "/bulkdata/7FE00010", OCTETS)
    assert status == 200
    expected = (f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
                + ds.PixelData + f"\r\n--{boundary}--\r\n".encode())
    assert (size, digest) == (len(expected), hashlib.sha256(expected).hexdigest())
    assert peak < 16 * MiB, f"{peak / MiB:.1f} MiB for an object of 64 MiB"


@pytest.mark.parametrize("resource,accept", [
    ("/frames/1", OCTETS), ("/rendered", "image/png"), ("/thumbnail", "image/jpeg")])
def test_frames_and_rendering_of_a_large_object(tmp_path: Path, resource: str,
                                                accept: str) -> None:
    """What one frame of 2 MiB takes (its pixels, their rendering), not the object."""
    data, _ds = _large()
    client = _client(data, tmp_path)
    answer, peak = _get(client, resource, accept)
    assert answer.status_code == 200, answer.text
    assert peak < 32 * MiB, f"{peak / MiB:.1f} MiB for a {len(data) // MiB} MiB object"


def test_a_frame_list_of_repeats_is_streamed_frame_by_frame(tmp_path: Path) -> None:
    """1,024 numbers (the most a list may hold), repeats allowed, of a 2 MiB frame: 2 GiB
    of answer. Built whole, a 512 KiB frame asked for 1,024 times was a 537 MB body and
    1.5 GiB of memory; streamed, one frame at a time."""
    data, ds = _large(frames=2)
    client = _client(data, tmp_path)
    frame = ds.PixelData[: len(ds.PixelData) // 2]
    status, boundary, size, peak, digest = _streamed(
        client, "/frames/" + ",".join(["1"] * 1024), OCTETS)
    assert status == 200
    part = (f"--{boundary}\r\nContent-Type: application/octet-stream; "
            "transfer-syntax=1.2.840.10008.1.2.1\r\n\r\n").encode() + frame + b"\r\n"
    expected = hashlib.sha256()
    for _ in range(1024):
        expected.update(part)
    expected.update(f"--{boundary}--\r\n".encode())
    assert (size, digest) == (1024 * len(part) + len(boundary) + 6, expected.hexdigest())
    assert peak < 32 * MiB, f"{peak / MiB:.1f} MiB for an answer of {size // MiB} MiB"


@pytest.mark.parametrize("name,stored_syntax,asked,status", [
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", 406),
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.50", 200),
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", "*", 200),
    # Native frames are sent as Explicit VR Little Endian, whatever the stored syntax.
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", 200),
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2", "1.2.840.10008.1.2", 406),
])
def test_frames_in_another_transfer_syntax_than_asked_for_are_not_acceptable(
    tmp_path: Path, name: str, stored_syntax: str, asked: str, status: int,
) -> None:
    """PS3.18 8.7.3.5: the transfer-syntax parameter of the Accept header is honoured (MIMIC
    does not transcode); a JPEG Baseline frame was sent with 200 for JPEG Lossless."""
    data = Path(pydicom.data.get_testdata_file(name)).read_bytes()
    client = _client(data, tmp_path, stored_syntax)
    media_type = "image/jpeg" if stored_syntax.startswith("1.2.840.10008.1.2.4") \
        else "application/octet-stream"
    answer, _peak = _get(client, "/frames/1",
                         f'multipart/related; type="{media_type}"; transfer-syntax={asked}')
    assert answer.status_code == status, answer.text
    if status == 200:
        assert b"transfer-syntax=" + (asked if asked != "*" else stored_syntax).encode() \
            in answer.content


@pytest.mark.parametrize("accept,status,media_type", [
    ("image/jpeg;q=0, image/*", 200, "image/png"),  # was image/jpeg: image/*'s q won
    ("image/png;q=0, */*", 200, "image/jpeg"),
    ("image/jpeg;q=0, image/png;q=0, image/*", 406, None),
    ("image/png, image/jpeg;q=0, */*;q=0.5", 200, "image/png"),
])
def test_the_most_specific_accepted_range_gives_a_media_types_q(
    tmp_path: Path, accept: str, status: int, media_type: str | None,
) -> None:
    """RFC 9110 12.5.1 (PS3.18 8.7): a type refused with q=0 stays refused when a wider
    range also names it."""
    data, _ds = _large(rows=16, columns=16, frames=1)
    answer, _peak = _get(_client(data, tmp_path), "/rendered", accept)
    assert answer.status_code == status, answer.text
    if media_type is not None:
        assert answer.headers["content-type"] == media_type


@pytest.mark.parametrize("frames", ["1_0", "%2B1", "%D9%A3", "1,%EF%BC%92", "9" * 5000])
def test_a_frame_list_is_ascii_digits_only(tmp_path: Path, frames: str) -> None:
    """``int`` took 1_0 (frame 10), +1, Arabic-Indic and full-width digits."""
    data, _ds = _large(rows=16, columns=16, frames=12)
    answer, _peak = _get(_client(data, tmp_path), f"/frames/{frames}", OCTETS)
    assert answer.status_code == 400, answer.text


def test_rendering_reads_no_large_value_it_does_not_use(tmp_path: Path) -> None:
    """The renderer's header parse left values over 1 KiB unread: an Encapsulated PDF's
    64 MiB document was read whole for a 404 (no Pixel Data), and a vendor's 32 MiB
    private blob before an image's pixels for its thumbnail."""
    document = tmp_path / "document.dcm"
    uid = write_large_document(document, 64 * MiB)
    client = _client(document.read_bytes(), tmp_path, ExplicitVRLittleEndian, uid)
    for resource, accept in (("/rendered", "image/png"), ("/thumbnail", "image/jpeg"),
                             ("/frames/1", OCTETS)):
        answer, peak = _get(client, resource, accept)
        assert answer.status_code == 404 and "no Pixel Data" in answer.text
        assert peak < 16 * MiB, f"{resource}: {peak / MiB:.1f} MiB"
    data, _ds = _large(rows=64, columns=64, frames=1)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.private_block(0x0009, "MIMIC TEST", create=True).add_new(0x10, "OB", b"\1" * 32 * MiB)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    client = _client(buffer.getvalue(), tmp_path)
    for resource, accept in (("/rendered", "image/png"), ("/thumbnail", "image/jpeg")):
        answer, peak = _get(client, resource, accept)
        assert answer.status_code == 200, answer.text
        assert peak < 16 * MiB, f"{resource}: {peak / MiB:.1f} MiB"


def test_a_long_text_is_a_bulk_data_uri_and_its_bytes_are_served(tmp_path: Path) -> None:
    """Over 64 KiB, a text value is given a URI (PS3.18 F.2.7), not read for the JSON."""
    # implicit VR: in explicit VR an LT holds at most 64 KiB, and pydicom writes it as UN
    data, ds = _large(rows=16, columns=16, frames=1, text=LARGEST_INLINE_VALUE + 2,
                      syntax=ImplicitVRLittleEndian)
    client = _client(data, tmp_path, ImplicitVRLittleEndian)
    answer, _peak = _get(client, "/metadata", "application/dicom+json")
    [document] = answer.json()
    uri = document["00204000"]["BulkDataURI"]
    assert document["00204000"]["vr"] == "LT"
    value, _peak = _get(client, uri[uri.index("/bulkdata"):], OCTETS)
    assert ds.ImageComments.encode() in value.content
    short, _ = _large(rows=16, columns=16, frames=1, text=2000)
    [document] = _get(_client(short, tmp_path), "/metadata",
                      "application/dicom+json")[0].json()
    assert document["00204000"] == {"vr": "LT", "Value": ["c" * 2000]}


ENCAPSULATED = [f for f in storable_files()
                if f.transfer_syntax_uid not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                                 "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")]


@pytest.mark.parametrize("item", ENCAPSULATED[:12], ids=lambda f: f.path.name)
def test_encapsulated_pixel_data_is_no_octet_stream_bulk_data(
    item: Storable, tmp_path: Path
) -> None:
    """PS3.18 8.7.3.3.2: compressed bulk data is its compressed stream in its own media
    type. It was answered as application/octet-stream with its fragments' item delimiters;
    now the metadata gives it no BulkDataURI and the bulkdata route answers 406 naming the
    frames route, which sends each frame in its media type."""
    data = item.path.read_bytes()
    expected = pydicom.dcmread(io.BytesIO(data), force=True).get("PixelData")
    if expected is None:
        return
    client = _client(data, tmp_path, item.transfer_syntax_uid)
    answer, _peak = _get(client, "/bulkdata/7FE00010", OCTETS)
    assert answer.status_code == 406
    assert "frames" in answer.json()["message"]
    assert bytes(expected)[:64] not in answer.content
    [document] = _get(client, "/metadata", "application/dicom+json")[0].json()
    assert document["7FE00010"] == {"vr": "OB"}


def _readable(data: bytes, syntax: str) -> BinaryIO:
    """The stored ``data`` as ``wado.copied`` gives it: a Deflated object inflated."""
    if syntax != DeflatedExplicitVRLittleEndian:
        return io.BytesIO(data)
    ref = InstanceRef(SECONDARY_CAPTURE, "1.2.3", syntax, "key",
                      hashlib.sha256(data).hexdigest())
    return inflated_copy(VerifiedObject(ref, len(data), 144 + int.from_bytes(data[140:144],
                                                                                "little"),
                                        data=data))


@pytest.mark.parametrize("item", storable_files(), ids=lambda f: f.path.name)
def test_metadata_with_large_values_unread_is_the_metadata_read_whole(item: Storable) -> None:
    """Every shipped file: the same document as from the data set read whole, but for text
    values over 64 KiB (none there); a Deflated one read from its inflated copy."""
    data = item.path.read_bytes()
    try:
        whole = metadata_json(pydicom.dcmread(io.BytesIO(data), force=True), URL)
    except Exception:
        pytest.skip("pydicom cannot write this file's JSON")
    with _readable(data, item.transfer_syntax_uid) as source:
        assert metadata_json(header_of(source), URL) == whole


def test_nested_bulk_stays_inline_when_the_sequence_was_left_unread() -> None:
    icon = Dataset()
    icon.Rows, icon.Columns = 64, 64
    icon.PixelData = bytes(range(256)) * 16
    icon["PixelData"].VR = "OB"
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, generate_uid()
    ds.IconImageSequence = Sequence([icon])
    ds.PixelData = b"\x01\x02" * 2048
    ds["PixelData"].VR = "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    document = metadata_json(header_of(io.BytesIO(buffer.getvalue())), URL)
    assert document["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{URL}/bulkdata/7FE00010"}
    nested = document["00880200"]["Value"][0]["7FE00010"]
    assert base64.b64decode(nested["InlineBinary"]) == icon.PixelData


@pytest.mark.parametrize("name", ["image_dfl.dcm", "MR_small_bigendian.dcm"])
def test_bulk_data_of_deflated_and_big_endian_objects_as_before(name: str,
                                                                tmp_path: Path) -> None:
    """Deflated: from the inflated copy, as pydicom inflates it; big endian: in little
    endian byte order, as its frames (PS3.18 8.7.3.3: bulk data as application/octet-stream
    is Explicit VR Little Endian; tests/unit/test_wado_bulk_big_endian.py)."""
    path = pydicom.data.get_testdata_file(name)
    data = Path(str(path)).read_bytes()
    whole = pydicom.dcmread(io.BytesIO(data), force=True)
    client = _client(data, tmp_path, str(whole.file_meta.TransferSyntaxUID))
    answer, _peak = _get(client, "/bulkdata/7FE00010", OCTETS)
    assert answer.status_code == 200
    if whole.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2":
        assert whole.pixel_array.astype("<i2").tobytes() in answer.content
    else:
        assert whole.PixelData in answer.content
    [document] = _get(client, "/metadata", "application/dicom+json")[0].json()
    assert document == metadata_json(whole, document["7FE00010"]["BulkDataURI"].rsplit(
        "/bulkdata/", 1)[0])


@pytest.fixture(scope="module")
def deflated_large() -> tuple[bytes, Dataset]:
    """A 64 MiB image stored Deflated: under 1 MiB as stored (its pixels repeat)."""
    return _large(syntax=DeflatedExplicitVRLittleEndian)


@pytest.mark.parametrize("resource,accept,bound", [
    ("/metadata", "application/dicom+json", 16 * MiB), ("/frames/2", OCTETS, 32 * MiB),
    ("/rendered", "image/png", 32 * MiB)])
def test_a_deflated_object_is_inflated_a_piece_at_a_time(
    deflated_large: tuple[bytes, Dataset], tmp_path: Path, resource: str, accept: str,
    bound: int,
) -> None:
    """pydicom inflates a Deflated data set whole, in memory: a deflate stream of a
    megabyte can inflate to the 1 GiB the receive walk allows, and each metadata, frame or
    rendering request cost that, several times over. Now it is inflated piece by piece: into
    a spool file for frames and rendering, read as any other object there
    (archive/inflated.py); walked as it inflates for its metadata, nothing written
    (codec/header_stream.py)."""
    data, ds = deflated_large
    assert len(data) < MiB
    client = _client(data, tmp_path, DeflatedExplicitVRLittleEndian)
    answer, peak = _get(client, resource, accept)
    assert answer.status_code == 200, answer.text
    assert peak < bound, f"{peak / MiB:.1f} MiB for an object inflating to 64 MiB"
    if resource == "/metadata":
        [document] = answer.json()
        assert document["00100020"]["Value"] == ["LARGE"]
        assert document["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
    if resource.startswith("/frames"):
        frame = len(ds.PixelData) // ds.NumberOfFrames
        assert ds.PixelData[frame:2 * frame] in answer.content
    spool = tmp_path / "spool"
    assert not spool.exists() if resource == "/metadata" else list(spool.iterdir()) == []


def test_a_deflated_object_that_does_not_inflate_is_a_500_and_nothing_stays(
    deflated_large: tuple[bytes, Dataset], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stored bytes the receive walk would have refused (cut in the deflate stream, or
    inflating past its bound: here a bound lowered to 8 MiB): a 500, and the spool file
    is gone."""
    data, ds = deflated_large
    cut = data[:len(data) // 2]
    answer, _peak = _get(_client(cut, tmp_path, DeflatedExplicitVRLittleEndian,
                                 ds.SOPInstanceUID), "/metadata", "application/dicom+json")
    assert answer.status_code == 500
    monkeypatch.setattr("mimic_server.archive.inflated.MAX_INFLATED", 8 * MiB)
    client = _client(data, tmp_path, DeflatedExplicitVRLittleEndian)
    for resource, accept in (("/metadata", "application/dicom+json"),
                             ("/bulkdata/7FE00010", OCTETS), ("/frames/1", OCTETS)):
        answer, peak = _get(client, resource, accept)
        assert answer.status_code == 500, resource
        assert ("cannot be parsed" if resource != "/metadata" else "can be read") \
            in answer.text
        assert peak < 16 * MiB
    assert list((tmp_path / "spool").iterdir()) == []


def _implicit_object(uid: str, *elements: tuple[int, str, bytes]) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID = SECONDARY_CAPTURE, uid, "P"
    for tag, vr, value in elements:
        ds.add_new(tag, vr, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=True)
    return buffer.getvalue()


def test_an_element_whose_vr_cannot_be_told_is_left_out_as_before() -> None:
    """An ambiguous VR without what settles it (LUT Data with no LUT Descriptor): pydicom's
    JSON leaves it out; it made the metadata of its whole series a 500 (review)."""
    data = _implicit_object("1.2.3.2", (0x00283006, "OW", b"\x01\x00" * 1024))
    document = metadata_json(header_of(io.BytesIO(data)), URL)
    assert "00283006" not in document and document["00100020"]["Value"] == ["P"]


def test_a_large_value_stored_as_un_keeps_un() -> None:
    """pydicom looks a UN up in its dictionary only below 64 KiB: a larger one stays UN in
    its JSON, as when the data set is read whole (review)."""
    data, _ds = _large(rows=16, columns=16, frames=1)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.add_new(0x00204000, "UN", b"c" * 70_000)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    whole = metadata_json(pydicom.dcmread(io.BytesIO(buffer.getvalue())), URL)
    document = metadata_json(header_of(io.BytesIO(buffer.getvalue())), URL)
    assert document["00204000"] == whole["00204000"] == {
        "vr": "UN", "BulkDataURI": f"{URL}/bulkdata/00204000"}


def test_metadata_never_switches_pydicoms_validation_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pydicom's validation mode is one setting of the whole process; the routes run in
    threads: a request that switched it (``strict_reading``, which ``to_json_dict`` uses
    to suppress invalid tags) and one overlapping it left it strict for good, and STOW-RS
    ingest in the same process then refused or indexed objects otherwise (review). An
    invalid value is written as read, as in the index's JSON."""
    from pydicom import config

    def switched() -> Any:
        raise AssertionError("pydicom's validation mode switched")

    monkeypatch.setattr(config, "strict_reading", switched)
    data = _implicit_object("1.2.3.3", (0x00200013, "IS", b"1.0 "),
                            (0x00283006, "OW", b"\x01\x00" * 1024))
    document = metadata_json(header_of(io.BytesIO(data)), URL)
    assert document["00200013"] == {"vr": "IS", "Value": [1]}
    assert "00283006" not in document
