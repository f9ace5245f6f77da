"""WADO-RS metadata: bulk data URIs only where the bulkdata route can answer them."""

from __future__ import annotations

import base64

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mimic_server.web.dicomweb.wado import LARGEST_INLINE_VALUE, metadata_json

URL = "https://archive.example/dicomweb/studies/1/series/2/instances/3"


def test_top_level_bulk_is_a_uri_and_nested_bulk_is_inline() -> None:
    icon = Dataset()
    icon.Rows, icon.Columns = 64, 64
    icon.PixelData = bytes(range(256)) * 16  # 4 KiB: over the bulk data threshold
    icon["PixelData"].VR = "OB"
    ds = Dataset()
    ds.PatientID = "P1"
    ds.IconImageSequence = Sequence([icon])
    ds.PixelData = b"\x01\x02" * 2048
    ds["PixelData"].VR = "OW"

    document = metadata_json(ds, URL)

    assert document["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{URL}/bulkdata/7FE00010"}
    nested = document["00880200"]["Value"][0]["7FE00010"]
    assert "BulkDataURI" not in nested
    assert base64.b64decode(nested["InlineBinary"]) == icon.PixelData
    assert document["00100020"]["Value"] == ["P1"]


def test_a_nested_binary_value_over_64_kib_is_given_without_its_value() -> None:
    """No route serves a value inside a sequence, and inlined a 256 MiB encapsulated
    document in a content item cost about 900 MiB per request: past 64 KiB the element
    keeps its VR alone; up to it, it is inline."""
    small, large = Dataset(), Dataset()
    small.add_new(0x00420011, "OB", b"\x01" * LARGEST_INLINE_VALUE)
    large.add_new(0x00420011, "OB", b"\x02" * (LARGEST_INLINE_VALUE + 1))
    large.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds = Dataset()
    ds.PatientID = "P1"
    ds.ContentSequence = Sequence([small, large])

    document = metadata_json(ds, URL)

    items = document["0040A730"]["Value"]
    assert base64.b64decode(items[0]["00420011"]["InlineBinary"]) == small[0x00420011].value
    assert items[1]["00420011"] == {"vr": "OB"}
    assert items[1]["00420012"]["Value"] == ["application/pdf"]
