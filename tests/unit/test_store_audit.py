"""A C-STORE's audit record in the table configuration: written in the transaction that
indexes the instance, so it commits with it or not at all, once however often the upsert is
retried; the per-association summary is then not written again. SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from lxml import etree
from pydicom.dataset import Dataset
from sqlalchemy.exc import OperationalError

from mimic_server.dimse.association import handle_conn_close
from mimic_server.dimse.session import Session, session_of
from mimic_server.dimse.store import handle_store
from mimic_server.dimse.store_audit import prepare_stored
from mimic_server.errors import OutOfResources
from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.audit_table import AuditTable, read_table
from mimic_server.index.repository import SqlIndex
from mimic_server.security import audit_message as am
from mimic_server.security.audit import AuditLog
from mimic_server.security.audit_journal import Journals
from mimic_server.security.audit_records import Archive
from mimic_server.security.policy import Policy
from mimic_server.storage.memory import MemoryStore
from tests.data import ct_small, storable_files
from tests.unit.test_store_handler import _event, _status


class Collected:
    """The other sinks (syslog): what they were given."""

    def __init__(self) -> None:
        self.entries: list[Any] = []

    def write(self, entry: Any, details: Any) -> None:
        self.entries.append(entry)

    def close(self) -> None:
        pass


def _trail(index: SqlIndex, other: Collected) -> AuditLog:
    table = AuditTable(index.engine)
    return AuditLog(None, sinks=[table, other], archive=Archive("MIMIC", host="archive-1"),
                    transactional=table)


def _instances(xml: str) -> list[str]:
    return [str(i.get("UID")) for i in etree.fromstring(xml).iter("Instance")]


@pytest.fixture
def ct() -> Dataset:
    ds = pydicom.dcmread(ct_small())
    del ds.file_meta
    return ds


def test_each_store_commits_its_own_valid_record(index: SqlIndex) -> None:
    other = Collected()
    trail = _trail(index, other)
    store = MemoryStore()
    stored: dict[str, Dataset] = {}
    for storable in storable_files():
        ds = pydicom.dcmread(storable.path, stop_before_pixels=True)
        del ds.file_meta
        try:
            event = _event(ds)
        except Exception:
            continue  # a header pydicom cannot write back as Explicit VR Little Endian
        if _status(handle_store(event, store, index, Policy("MIMIC"), trail)) == 0:
            stored[ds.SOPInstanceUID] = ds
    assert len(stored) > 10
    rows = read_table(index.engine)
    assert len(rows) == len(stored) == len(other.entries)
    assert trail.failures == 0
    for row in rows:
        am.validate(row["xml"])  # names, character sets, UIDs: each message is valid
        [uid] = _instances(row["xml"])
        ds = stored[uid]
        message = etree.fromstring(row["xml"])
        assert row["event"] == "110104" and row["studies"] == [ds.StudyInstanceUID]
        assert row["calling_ae"] == "CT01" and row["identity"]
        [sop_class] = message.iter("SOPClass")
        assert (sop_class.get("UID"), sop_class.get("NumberOfInstances")) == (
            ds.SOPClassUID, "1")
        participants = {p.get("UserID"): p for p in message.findall("ActiveParticipant")}
        assert participants["CT01"].get("UserIsRequestor") == "true"
        assert "MIMIC" in participants
        patient = [o for o in message.findall("ParticipantObjectIdentification")
                   if o.get("ParticipantObjectTypeCodeRole") == "1"]
        assert patient[0].get("ParticipantObjectID") == (ds.get("PatientID") or "(none)")
    assert {e.xml for e in other.entries} == {r["xml"] for r in rows}


def _prepared(trail: AuditLog, ds: Dataset) -> tuple[Any, InstanceAttributes]:
    attrs = InstanceAttributes.from_header(ds)
    session = session_of(_event(ds).assoc)
    assert session is not None
    record = prepare_stored(trail, session, attrs)
    assert record is not None
    return record, attrs


def _upsert(index: SqlIndex, attrs: InstanceAttributes, hook: Any) -> str | None:
    return index.upsert_instance(attrs, transfer_syntax_uid="1.2.840.10008.1.2.1",
                                 object_key="k", sha256="0" * 64, size=1,
                                 received_from="CT01", in_transaction=hook)


def test_a_retried_upsert_leaves_one_record(ct: Dataset, index: SqlIndex) -> None:
    record, attrs = _prepared(_trail(index, Collected()), ct)
    attempts = []

    def flaky(conn: Any) -> None:
        record.write_in(conn)
        attempts.append(1)
        if len(attempts) < 3:  # after the audit row: the attempt rolls back with it
            raise OperationalError("INSERT", {}, Exception("database is locked"))

    _upsert(index, attrs, flaky)
    assert len(attempts) == 3
    rows = read_table(index.engine)
    assert [_instances(r["xml"]) for r in rows] == [[ct.SOPInstanceUID]]
    assert index.get_instance(ct.SOPInstanceUID) is not None


def test_an_upsert_that_fails_leaves_no_record(ct: Dataset, index: SqlIndex) -> None:
    record, attrs = _prepared(_trail(index, Collected()), ct)

    def locked(conn: Any) -> None:
        record.write_in(conn)
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    with pytest.raises(OutOfResources):
        _upsert(index, attrs, locked)
    assert read_table(index.engine) == []
    assert index.get_instance(ct.SOPInstanceUID) is None


def test_an_audit_row_that_cannot_be_written_fails_the_store(ct: Dataset,
                                                             index: SqlIndex) -> None:
    class Broken(AuditTable):
        @staticmethod
        def write_in(conn: Any, entry: Any) -> None:
            raise OperationalError("INSERT INTO audit_events", {}, Exception("disk full"))

    other = Collected()
    table = Broken(index.engine)
    trail = AuditLog(None, sinks=[table, other], transactional=table)
    store = MemoryStore()
    assert _status(handle_store(_event(ct), store, index, Policy("MIMIC"), trail)) == 0xA700
    assert index.get_instance(ct.SOPInstanceUID) is None and not store.objects
    assert other.entries == []  # nothing audited that did not commit


def test_the_association_end_writes_no_second_record(ct: Dataset, index: SqlIndex) -> None:
    other = Collected()
    trail = _trail(index, other)
    event = _event(ct)
    assert _status(handle_store(event, MemoryStore(), index, Policy("MIMIC"), trail)) == 0
    session: Session | None = session_of(event.assoc)
    assert session is not None
    assert [r["event"] for r in read_table(index.engine)] == ["110104"]
    # a failed C-STORE is still recorded at the end, as a failure with the counts
    session.count_failed()
    handle_conn_close(SimpleNamespace(assoc=SimpleNamespace(
        **vars(event.assoc), is_aborted=False)), trail)
    # an end seen twice (a connection closed by both threads) writes nothing more
    handle_conn_close(SimpleNamespace(assoc=SimpleNamespace(
        **vars(event.assoc), is_aborted=False)), trail)
    rows = read_table(index.engine)
    assert [(r["event"], r["outcome"]) for r in rows] == [("110104", 0), ("110104", 4)]
    assert "failed=1" in etree.fromstring(rows[1]["xml"]).findtext(
        "EventIdentification/EventOutcomeDescription")


class EndingStore(MemoryStore):
    """A store during whose put the association ends (its peer aborts): the end runs on the
    DUL thread while the C-STORE is still being kept on the association thread."""

    def __init__(self, end: Any, fail: bool = False) -> None:
        super().__init__()
        self._end = end
        self._fail = fail

    def put(self, *args: Any, **kwargs: Any) -> Any:
        self._end()
        if self._fail:
            raise OutOfResources("store unavailable")
        return super().put(*args, **kwargs)


def _end(event: Any, trail: AuditLog) -> Any:
    return lambda: handle_conn_close(SimpleNamespace(assoc=event.assoc), trail)


def test_a_store_kept_after_its_association_ended_has_one_record(
    ct: Dataset, index: SqlIndex, tmp_path: Path,
) -> None:
    """The table (PostgreSQL) wrote the record in the index transaction: nothing more. The
    file, whose end had written the association's records without it: its own, at once."""
    other = Collected()
    table = _trail(index, other)
    event = _event(ct)
    assert _status(handle_store(event, EndingStore(_end(event, table)), index,
                                Policy("MIMIC"), table)) == 0
    rows = read_table(index.engine)
    assert [(r["event"], r["outcome"]) for r in rows] == [("110104", 0)]
    assert _instances(rows[0]["xml"]) == [ct.SOPInstanceUID] and len(other.entries) == 1

    file_trail = AuditLog(tmp_path / "audit.jsonl")
    journals = Journals(tmp_path / "journals", tmp_path / "audit.jsonl")
    ct.SOPInstanceUID = "1.2.3.4.5.6.7.8.9.10"
    event = _event(ct)
    assert _status(handle_store(event, EndingStore(_end(event, file_trail)), index,
                                Policy("MIMIC"), file_trail, journals)) == 0
    [record] = file_records(tmp_path / "audit.jsonl")
    assert record["event"] == "110104" and record["outcome"] == 0 and record["instances"] == 1
    assert _instances(record["xml"]) == [ct.SOPInstanceUID]
    assert record["calling_ae"] == "CT01" and "association" not in record
    assert not list((tmp_path / "journals").iterdir())  # none made after the end
    handle_conn_close(SimpleNamespace(assoc=event.assoc), file_trail)  # seen again: no more
    assert len(file_records(tmp_path / "audit.jsonl")) == 1


def test_a_store_failed_after_its_association_ended_has_its_failure_record(
    ct: Dataset, index: SqlIndex,
) -> None:
    other = Collected()
    trail = _trail(index, other)
    event = _event(ct)
    answer = handle_store(event, EndingStore(_end(event, trail), fail=True), index,
                          Policy("MIMIC"), trail)
    assert _status(answer) == 0xA700
    rows = read_table(index.engine)
    assert [(r["event"], r["outcome"]) for r in rows] == [("110104", 4)]
    assert "failed=1" in etree.fromstring(rows[0]["xml"]).findtext(
        "EventIdentification/EventOutcomeDescription")


def file_records(trail: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in trail.read_bytes().splitlines() if line.strip()]
