"""QIDO-RS requests a peer may send and what it is answered: the DICOMweb app in-process
over a real SQLite index and a memory store, ``auth="none"``, its audit records collected.
Control parameters and path UIDs that are not what PS3.18 names are 400, never a 500 or a
wider search; a search that fails is never audited as a success."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset, FileMetaDataset
from starlette.testclient import TestClient

from mimic_server.index import schema
from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.engine import create_index_engine
from mimic_server.index.repository import SqlIndex
from mimic_server.query.finder import Finder
from mimic_server.query.keys import CONTROL
from mimic_server.query.matching import MAX_IDENTIFIER_KEYS
from mimic_server.security import audit
from mimic_server.security.audit import AuditLog
from mimic_server.security.policy import Policy
from mimic_server.storage.keys import new_object_key
from mimic_server.storage.memory import MemoryStore
from mimic_server.web.dicomweb.app import build_dicomweb
from mimic_server.web.dicomweb.context import DicomWebContext

JSON = {"Accept": "application/dicom+json"}
EXPLICIT = "1.2.840.10008.1.2.1"


class Records:
    """The audit records written, with their details."""

    def __init__(self) -> None:
        self.records: list[tuple[Any, dict[str, Any]]] = []

    def write(self, entry: Any, details: dict[str, Any]) -> None:
        self.records.append((entry, details))

    def close(self) -> None:
        pass

    def queries(self) -> list[tuple[int, str]]:
        """(outcome, status) of each Query record."""
        return [(entry.outcome, details["status"]) for entry, details in self.records
                if details.get("service") == "QIDO-RS"]


def _instance(n: int, modality: str = "OT") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = f"1.2.3.5.{n}"
    ds.StudyInstanceUID = f"1.2.3.4.{n}"
    ds.SeriesInstanceUID = f"1.2.3.4.{n}.1"
    ds.PatientID = f"P{n}"
    ds.PatientName = f"DOE^JOHN{n}"
    ds.Modality = modality
    ds.StudyDate = "20240101"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = EXPLICIT
    ds.file_meta = meta
    return ds


class Qido:
    def __init__(self, tmp: Path) -> None:
        self.engine = create_index_engine(f"sqlite:///{tmp / 'index.sqlite3'}")
        schema.upgrade(self.engine)
        self.index = SqlIndex(self.engine)
        self.store = MemoryStore()
        self.audit = Records()
        self.finder = Finder(self.engine, retrieve_ae_title="MIMIC", max_results=1000)
        ctx = DicomWebContext(
            finder=self.finder, store=self.store, policy=Policy("MIMIC"),
            audit=AuditLog(None, sinks=[self.audit]), tokens=None, auth="none",
            ingest=SimpleNamespace(spool_dir=tmp / "spool"))
        self.client = TestClient(build_dicomweb(ctx), raise_server_exceptions=False)

    def add(self, ds: Dataset) -> None:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        key = new_object_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        self.store.objects[key] = data
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        self.index.upsert_instance(
            InstanceAttributes.from_header(header), transfer_syntax_uid=EXPLICIT,
            object_key=key, sha256=hashlib.sha256(data).hexdigest(), size=len(data),
            received_from="test")

    def get(self, url: str) -> Any:
        return self.client.get(url, headers=JSON)

    def close(self) -> None:
        self.index.close()
        self.engine.dispose()


@pytest.fixture
def qido(tmp_path: Path) -> Iterator[Qido]:
    """Three studies of one series and one instance each (OT, CT, MR)."""
    archive = Qido(tmp_path)
    for n, modality in enumerate(("OT", "CT", "MR")):
        archive.add(_instance(n, modality))
    yield archive
    archive.close()


@pytest.mark.parametrize("query", [
    "offset=9223372036854775808", "offset=99999999999999999999", "limit=99999999999999999999",
    "offset=%D9%A1", "limit=1_0", "offset=+1", "limit=-1", "offset=", "limit= 1",
])
def test_limit_and_offset_are_ascii_digits_of_bounded_length(qido: Qido, query: str) -> None:
    """An offset past ``sys.maxsize`` was a 500; ``+1``, ``1_0`` and Arabic-Indic digits
    were read as numbers. Each is now a 400, and nothing is searched."""
    answer = qido.get("/studies?" + query)
    assert answer.status_code == 400, answer.text
    assert "whole number" in answer.json()["message"]
    assert qido.audit.queries() == []


def test_the_largest_offset_is_an_empty_page(qido: Qido) -> None:
    answer = qido.get("/studies?offset=9999999999&limit=0000000002")
    assert answer.status_code == 200
    assert answer.json() == []
    assert qido.audit.queries() == [(audit.SUCCESS, "0x0000")]


def test_a_search_that_fails_unexpectedly_is_audited_as_a_serious_failure(
    qido: Qido, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any exception in the search, not only a refusal, is a failure in the audit trail:
    the offset past ``sys.maxsize`` was answered 500 and recorded as a Success."""
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("index gone")

    monkeypatch.setattr(qido.finder, "find", broken)
    answer = qido.get("/studies")
    assert answer.status_code == 500
    assert qido.audit.queries() == [(audit.SERIOUS_FAILURE, "HTTP 500")]


@pytest.mark.parametrize("path", [
    "/studies/*/series", "/studies/1.2.3.4.1,1.2.3.4.2/series",
    "/studies/1.2.3.4.1%5C1.2.3.4.2/instances", "/studies/1.2.3.4.1%3F/series",
    "/studies/1.2.3.4.1/series/*/instances", "/studies/nonsense/series",
    "/studies/" + "1" * 65 + "/series",
])
def test_a_path_uid_is_one_uid_or_400(qido: Qido, path: str) -> None:
    """PS3.18 names one study (series) in the path: a wildcard or a list there searched
    every study's series, or several studies'. Nothing is searched or audited."""
    answer = qido.get(path)
    assert answer.status_code == 400, answer.text
    assert answer.json()["message"] == "not a UID in the path"
    assert qido.audit.queries() == []


def test_a_path_uid_names_its_study(qido: Qido) -> None:
    answer = qido.get("/studies/1.2.3.4.1/series")
    assert answer.status_code == 200
    assert [d["0020000E"]["Value"] for d in answer.json()] == [["1.2.3.4.1.1"]]


@pytest.mark.parametrize(("query", "refusal"), [
    ("/studies?Modality=CT", "Modality belongs to the SERIES level: a STUDY level search "
     "cannot match it (match ModalitiesInStudy instead)"),
    ("/studies?SeriesInstanceUID=9.9.9", "SeriesInstanceUID belongs to the SERIES level"),
    ("/studies?SOPInstanceUID=9.9.9", "SOPInstanceUID belongs to the IMAGE level"),
    ("/series?SOPClassUID=1.1", "SOPClassUID belongs to the IMAGE level"),
    ("/studies/1.2.3.4.1/series?InstanceNumber=1", "InstanceNumber belongs to the IMAGE level"),
])
def test_a_match_key_below_the_level_searched_is_400_naming_it(
    qido: Qido, query: str, refusal: str
) -> None:
    """Such a key was left unmatched: /studies?Modality=CT answered the studies without CT
    as if they matched."""
    answer = qido.get(query)
    assert answer.status_code == 400, answer.text
    assert answer.json()["message"].startswith(refusal)
    assert qido.audit.queries() == [(audit.MINOR_FAILURE, "HTTP 400")]


@pytest.mark.parametrize(("query", "studies"), [
    ("/studies?ModalitiesInStudy=CT", ["1.2.3.4.1"]),
    ("/studies?Modality=&includefield=SeriesInstanceUID,00080018", ["1.2.3.4.0", "1.2.3.4.1",
                                                                     "1.2.3.4.2"]),
    ("/studies?Modality=*", ["1.2.3.4.0", "1.2.3.4.1", "1.2.3.4.2"]),
    ("/series?Modality=MR&StudyDate=20240101", ["1.2.3.4.2"]),
])
def test_return_keys_below_the_level_and_keys_at_or_above_it_still_search(
    qido: Qido, query: str, studies: list[str]
) -> None:
    answer = qido.get(query)
    assert answer.status_code == 200, answer.text
    assert sorted(d["0020000D"]["Value"][0] for d in answer.json()) == studies


def _keywords(count: int) -> list[str]:
    """``count`` attributes a search may name (text VRs, past the File Meta group)."""
    return [keyword for tag, (vr, *_rest, keyword) in sorted(DicomDictionary.items())
            if tag >> 16 >= 0x0008 and vr in ("LO", "SH", "CS", "DA") and keyword
            and keyword not in CONTROL][:count]


@pytest.mark.parametrize("count", [MAX_IDENTIFIER_KEYS + 1, 5000])
def test_includefield_names_at_most_the_identifiers_keys(qido: Qido, count: int) -> None:
    """includefield's comma-separated attributes were not counted (MAX_PARAMETERS counts
    parameters): 5,000 of them took 1.3 GiB and half a minute per request. 400, nothing
    searched."""
    names = _keywords(count)
    half = len(names) // 2
    answer = qido.get(f"/studies?includefield={','.join(names[:half])}"
                      f"&includefield={','.join(names[half:])}")
    assert answer.status_code == 400, answer.text
    assert str(MAX_IDENTIFIER_KEYS) in answer.json()["message"]
    assert qido.audit.queries() == []


def test_the_defaults_count_with_includefield(qido: Qido) -> None:
    """Within includefield's own bound, the defaults make the Identifier's keys more than
    256: refused by the Identifier's bound (the one C-FIND has), audited as refused."""
    answer = qido.get("/studies?includefield=" + ",".join(_keywords(MAX_IDENTIFIER_KEYS)))
    assert answer.status_code == 400, answer.text
    assert f"more than {MAX_IDENTIFIER_KEYS} keys" in answer.json()["message"]
    assert qido.audit.queries() == [(audit.MINOR_FAILURE, "HTTP 400")]
    answer = qido.get("/studies?includefield=all," + ",".join(_keywords(100)))
    assert answer.status_code == 200, answer.text
    assert len(answer.json()) == 3


@pytest.mark.parametrize("accept,answered", [
    ("application/json", "application/json"),
    ("application/dicom+json", "application/dicom+json"),
    ("application/json;q=0.5, application/dicom+json", "application/dicom+json"),
    ("*/*", "application/dicom+json"),
])
@pytest.mark.parametrize("path", ["/studies", "/studies/1.2.3.4.1/metadata"])
def test_json_answers_come_in_the_type_negotiated(qido: Qido, path: str, accept: str,
                                                  answered: str) -> None:
    """QIDO-RS and WADO-RS metadata were sent as application/dicom+json whatever was
    negotiated: a client whose Accept takes application/json alone got a type it did not
    name. Each now comes in the type its Accept chose (STOW-RS's answer did already)."""
    answer = qido.client.get(path, headers={"Accept": accept})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == answered
    assert answer.json()


@pytest.mark.parametrize("path", ["/studies", "/studies/1.2.3.4.1/metadata"])
def test_every_accept_field_line_counts(qido: Qido, path: str) -> None:
    """Accept sent as two field lines is one list (RFC 9110 5.3): only the first was read,
    and a request whose second line named the type served was refused 406."""
    answer = qido.client.get(path, headers=[("Accept", "text/html"),
                                            ("Accept", "application/dicom+json")])
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/dicom+json"
    refused = qido.client.get(path, headers=[("Accept", "text/html"), ("Accept", "image/png")])
    assert refused.status_code == 406
