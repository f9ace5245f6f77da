"""Sequences nested deeper than ``codec.nesting.MAX_SEQUENCE_DEPTH`` are refused at the door,
and an object at the limit is served by every path that reads its nesting.

Such an object was stored and indexed (the receive walk skips sequences of defined length),
then failed mid-send: each C-GET / C-MOVE sub-operation that converts between transfer
syntaxes refused it, and WADO-RS metadata, by pydicom's recursion, dropped the element.
Through a real pynetdicom SCU and ``mimic web`` on the same data directory; every length
encoding (defined, undefined, the two alternating) in either VR encoding.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet as GET,
)

from mimic_server.codec.nesting import MAX_SEQUENCE_DEPTH
from tests.support import HOST, MimicProcess, associate, client_context
from tests.web_support import WebProcess

_ITEM, _ITEM_END, _SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_UNDEFINED = 0xFFFFFFFF
#: (0040,A730) Content Sequence, the element a structured report nests.
_CONTENT = (0x0040, 0xA730)


class Archive:
    def __init__(self, server: MimicProcess, web: WebProcess) -> None:
        self.server, self.web = server, web

    def tls(self) -> tuple[Any, str]:
        s = self.server
        return client_context(s.client_cert, s.client_key, s.ca_cert), "localhost"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    root = tmp_path_factory.mktemp("nesting")
    server = MimicProcess(root / "data").start()
    web = WebProcess(root / "data", None, web_auth="none")
    try:
        web.start()
        yield Archive(server, web)
    finally:
        web_code, server_code = web.stop(), server.stop()
        assert web_code == 0, web.log()
        assert server_code == 0, server.log()


def _header(tag: tuple[int, int], length: int) -> bytes:
    return struct.pack("<HHL", *tag, length)


def _sequence(value: bytes, implicit: bool, undefined: bool) -> bytes:
    length = _UNDEFINED if undefined else len(value)
    if implicit:
        return _header(_CONTENT, length) + value
    return struct.pack("<HH2s2xL", *_CONTENT, b"SQ", length) + value


def nested(levels: int, implicit: bool, lengths: str) -> bytes:
    """A Content Sequence ``levels`` sequences deep, each of one item; ``lengths``:
    "defined", "undefined", or "alternating" (an undefined sequence holding a defined
    item, holding an undefined sequence...)."""
    code = b"\x08\x00\x00\x01" + (b"\x02\x00\x00\x00" if implicit else b"SH\x02\x00") + b"X "
    inner = code
    for level in range(levels):
        undefined = lengths == "undefined" or (lengths == "alternating" and level % 2 == 0)
        if undefined:
            item = _header(_ITEM, _UNDEFINED) + inner + _header(_ITEM_END, 0)
            inner = _sequence(item + _header(_SEQ_END, 0), implicit, True)
        else:
            inner = _sequence(_header(_ITEM, len(inner)) + inner, implicit, False)
        if level + 1 < levels:
            inner = code + inner  # each item: a Code Value, then the next sequence
    return inner


def _object(levels: int, implicit: bool, lengths: str) -> tuple[bytes, Dataset, str]:
    """A small CT whose Content Sequence nests ``levels`` deep; its Part 10 bytes, its
    data set without the sequence and its transfer syntax."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "NEST", "Nest^Deep", "CT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(8)
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    data = out.getvalue()
    pixel = data.rindex(b"\xe0\x7f\x10\x00")
    return data[:pixel] + nested(levels, implicit, lengths) + data[pixel:], ds, str(syntax)


def _store(archive: Archive, path: Path, syntax: str) -> Dataset:
    assoc = associate(archive.server.port, archive.tls()[0], contexts=[CTImageStorage],
                      transfer_syntaxes=[syntax])
    assert assoc.is_established
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


def _depth(item: dict[str, Any] | Dataset) -> int:
    """How many Content Sequences nest in ``item`` (DICOM JSON or a pydicom Dataset)."""
    depth = 0
    while True:
        if isinstance(item, Dataset):
            if "ContentSequence" not in item:
                return depth
            item = item.ContentSequence[0]
        else:
            if "0040A730" not in item:
                return depth
            item = item["0040A730"]["Value"][0]
        depth += 1


@pytest.mark.parametrize("lengths", ["defined", "undefined", "alternating"])
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("levels", [MAX_SEQUENCE_DEPTH + 1, 250])
def test_nesting_past_the_limit_is_refused_before_anything_is_kept(
    archive: Archive, tmp_path: Path, levels: int, implicit: bool, lengths: str
) -> None:
    """0xC000 with the reason, and nothing stored, nothing indexed."""
    data, _ds, syntax = _object(levels, implicit, lengths)
    path = tmp_path / "deep.dcm"
    path.write_bytes(data)
    server = archive.server
    objects, instances = server.stored_objects(), server.instance_count()
    response = _store(archive, path, syntax)
    assert response.Status == 0xC000, response
    assert "nested deeper than" in response.ErrorComment
    assert server.stored_objects() == objects
    assert server.instance_count() == instances
    assert server.incoming_leftovers() == []


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_stow_rs_refuses_nesting_past_the_limit_before_anything_is_kept(
    archive: Archive, implicit: bool
) -> None:
    """The same door through STOW-RS: 409, the instance failed 0xC000, nothing stored."""
    from tests.e2e.test_stow import DICOM_MULTIPART, failures, multipart

    data, ds, _syntax = _object(MAX_SEQUENCE_DEPTH + 1, implicit, "alternating")
    server = archive.server
    objects, instances = server.stored_objects(), server.instance_count()
    response = requests.post(f"{archive.web.url}/studies", data=multipart(data), timeout=60,
                             headers={"Content-Type": DICOM_MULTIPART,
                                      "Accept": "application/dicom+json"})
    assert response.status_code == 409, response.text
    assert failures(response.json()) == [(ds.SOPInstanceUID, 0xC000)]
    assert server.stored_objects() == objects
    assert server.instance_count() == instances
    assert server.incoming_leftovers() == []


def _get_converted(archive: Archive, stored: Dataset, syntax: str) -> tuple[list[Dataset], int]:
    """C-GET of ``stored`` by a requestor that takes CT only in ``syntax``."""
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(GET)
    ae.add_requested_context(CTImageStorage, [syntax])
    assoc = ae.associate(HOST, archive.server.port, ae_title="MIMIC", tls_args=archive.tls(),
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = stored.StudyInstanceUID
    identifier.SeriesInstanceUID = stored.SeriesInstanceUID
    identifier.SOPInstanceUID = stored.SOPInstanceUID
    final = 0xFFFF
    for status, _ in assoc.send_c_get(identifier, GET):
        if status and status.Status != 0xFF00:
            final = int(status.Status)
    assoc.release()
    return received, final


@pytest.mark.parametrize("lengths", ["defined", "undefined", "alternating"])
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_nesting_at_the_limit_is_kept_and_served(
    archive: Archive, tmp_path: Path, implicit: bool, lengths: str
) -> None:
    """Stored; a C-GET in the other VR encoding (the conversion of a sub-operation) and
    WADO-RS metadata give the whole nesting."""
    data, stored, syntax = _object(MAX_SEQUENCE_DEPTH, implicit, lengths)
    path = tmp_path / "deep.dcm"
    path.write_bytes(data)
    assert _store(archive, path, syntax).Status == 0x0000
    other = ExplicitVRLittleEndian if implicit else ImplicitVRLittleEndian
    received, final = _get_converted(archive, stored, other)
    assert final == 0x0000
    [dataset] = received
    assert _depth(dataset) == MAX_SEQUENCE_DEPTH
    response = requests.get(f"{archive.web.url}/studies/{stored.StudyInstanceUID}/series/"
                            f"{stored.SeriesInstanceUID}/instances/{stored.SOPInstanceUID}"
                            "/metadata",
                            headers={"Accept": "application/dicom+json"}, timeout=30)
    assert response.status_code == 200, response.text
    [metadata] = response.json()
    assert _depth(metadata) == MAX_SEQUENCE_DEPTH
