"""WADO-RS metadata: bulk data URIs only where the bulkdata route can answer them."""

from __future__ import annotations

import base64

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mimic_server.web.dicomweb.wado import metadata_json

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
