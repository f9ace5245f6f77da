"""The C-STORE handler's decisions, one by one: every failure answers a DICOM status and
leaves nothing behind (no object, no index row).

The handler is driven with a minimal stand-in for pynetdicom's event; the network path is
covered by tests/e2e.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from mimic_server.dimse.session import Session, attach_session
from mimic_server.dimse.store import handle_store
from mimic_server.errors import OutOfResources
from mimic_server.index.engine import create_index_engine
from mimic_server.index.repository import SqlIndex
from mimic_server.security.identity import Identity
from mimic_server.security.policy import Policy, Service
from mimic_server.storage.memory import MemoryStore
from tests.data import ct_small

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _encode(ds: Dataset) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


def _event(ds: Dataset | bytes, *, sop_instance: str | None = None, sop_class: str | None = None):  # type: ignore[no-untyped-def]
    raw = ds if isinstance(ds, bytes) else _encode(ds)
    assoc = SimpleNamespace()
    attach_session(assoc, Session(Identity("modality1", "ab" * 32, "modality1"), "CT01", "x"))  # type: ignore[arg-type]
    request = SimpleNamespace(
        AffectedSOPClassUID=sop_class or (ds.SOPClassUID if isinstance(ds, Dataset) else ""),
        AffectedSOPInstanceUID=sop_instance
        or (ds.SOPInstanceUID if isinstance(ds, Dataset) else ""),
        DataSet=io.BytesIO(raw),
    )
    return SimpleNamespace(assoc=assoc, request=request, context=SimpleNamespace(
        transfer_syntax=EXPLICIT_LE, abstract_syntax=request.AffectedSOPClassUID))


@pytest.fixture
def ct() -> Dataset:
    ds = pydicom.dcmread(ct_small())
    del ds.file_meta
    return ds


def _status(answer: int | Dataset) -> int:
    return int(answer.Status) if isinstance(answer, Dataset) else int(answer)


def test_success_stores_and_indexes(ct: Dataset, index: SqlIndex) -> None:
    store = MemoryStore()
    assert _status(handle_store(_event(ct), store, index, Policy("MIMIC"))) == 0x0000
    stored = index.get_instance(ct.SOPInstanceUID)
    assert stored is not None and list(store.objects) == [stored.object_key]
    data = store.objects[stored.object_key]
    assert data.endswith(_encode(ct))
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == EXPLICIT_LE


def test_store_down_is_out_of_resources(ct: Dataset, index: SqlIndex) -> None:
    store = MemoryStore()
    store.fail = True
    answer = handle_store(_event(ct), store, index, Policy("MIMIC"))
    assert _status(answer) == 0xA700
    assert answer.ErrorComment  # type: ignore[union-attr]
    assert index.count_instances() == 0 and not store.objects


class _DownIndex(SqlIndex):
    def upsert_instance(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise OutOfResources("index unavailable")


def test_index_down_is_out_of_resources_and_the_object_is_removed(
    ct: Dataset, index: SqlIndex
) -> None:
    store = MemoryStore()
    answer = handle_store(_event(ct), store, _DownIndex(index.engine), Policy("MIMIC"))
    assert _status(answer) == 0xA700
    assert not store.objects, "an object without index row was left behind"


def test_unreachable_database_is_out_of_resources(ct: Dataset) -> None:
    # A real SQLAlchemy engine whose server does not answer (nothing listens on port 9).
    down = SqlIndex(create_index_engine("postgresql+psycopg://mimic@127.0.0.1:9/none"))
    store = MemoryStore()
    assert _status(handle_store(_event(ct), store, down, Policy("MIMIC"))) == 0xA700
    assert not store.objects


def test_sop_instance_uid_differs_from_request(ct: Dataset, index: SqlIndex) -> None:
    store = MemoryStore()
    answer = handle_store(
        _event(ct, sop_instance="1.2.3.4.5.6"), store, index, Policy("MIMIC")
    )
    assert _status(answer) == 0xC001
    assert "SOP Instance UID" in answer.ErrorComment  # type: ignore[union-attr]
    assert index.count_instances() == 0 and not store.objects


def test_sop_class_differs_from_request(ct: Dataset, index: SqlIndex) -> None:
    store = MemoryStore()
    answer = handle_store(
        _event(ct, sop_class="1.2.840.10008.5.1.4.1.1.4"), store, index, Policy("MIMIC")
    )
    assert _status(answer) == 0xA900
    assert index.count_instances() == 0 and not store.objects


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_study_or_series_uid(ct: Dataset, index: SqlIndex, keyword: str) -> None:
    delattr(ct, keyword)
    store = MemoryStore()
    answer = handle_store(_event(ct), store, index, Policy("MIMIC"))
    assert _status(answer) == 0xC002
    assert keyword in answer.ErrorComment  # type: ignore[union-attr]
    assert index.count_instances() == 0 and not store.objects


def test_uid_with_path_characters_is_refused(ct: Dataset, index: SqlIndex) -> None:
    with pydicom.config.disable_value_validation():
        ct.StudyInstanceUID = "../../etc"
    store = MemoryStore()
    # 0xC002 (invalid UID) or 0xC000 (pydicom refuses the value while parsing): never stored.
    assert _status(handle_store(_event(ct), store, index, Policy("MIMIC"))) in (0xC000, 0xC002)
    assert not store.objects


def test_garbage_bytes_cannot_be_understood(index: SqlIndex) -> None:
    event = _event(b"\xff" * 300, sop_instance="1.2.3.4", sop_class="1.2.840.10008.5.1.4.1.1.2")
    store = MemoryStore()
    answer = handle_store(event, store, index, Policy("MIMIC"))
    assert 0xC000 <= _status(answer) <= 0xCFFF
    assert index.count_instances() == 0 and not store.objects


def test_truncated_dataset_cannot_be_understood(ct: Dataset, index: SqlIndex) -> None:
    raw = _encode(ct)
    event = _event(raw[:700], sop_instance=ct.SOPInstanceUID, sop_class=ct.SOPClassUID)
    store = MemoryStore()
    assert 0xC000 <= _status(handle_store(event, store, index, Policy("MIMIC"))) <= 0xCFFF
    assert not store.objects


def test_store_not_granted_is_not_authorized(ct: Dataset, index: SqlIndex) -> None:
    store = MemoryStore()
    policy = Policy("MIMIC", granted=frozenset({Service.ECHO}))
    assert _status(handle_store(_event(ct), store, index, policy)) == 0x0124
    assert not store.objects


def test_nul_characters_are_not_kept(ct: Dataset, index: SqlIndex) -> None:
    """NUL is padding in DICOM text but refused by PostgreSQL: stored without it."""
    with pydicom.config.disable_value_validation():
        ct.InstitutionName = "GENERAL\x00"
        ct.PatientID = "1CT1\x00"
    store = MemoryStore()
    assert _status(handle_store(_event(ct), store, index, Policy("MIMIC"))) == 0x0000
    assert index.count_instances() == 1


def test_unknown_transfer_syntax_is_read_as_explicit_little_endian(
    ct: Dataset, index: SqlIndex
) -> None:
    event = _event(ct)
    event.context.transfer_syntax = "1.2.840.10008.1.2.4.999"  # a future encapsulated syntax
    store = MemoryStore()
    assert _status(handle_store(event, store, index, Policy("MIMIC"))) == 0x0000
