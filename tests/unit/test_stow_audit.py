"""STOW-RS's audit records in the table configuration, as C-STORE's: each stored instance's
Instances Transferred is written in its index transaction (nothing recorded that did not
commit; an audit row that cannot be written fails the instance and stores nothing), and the
request's failures once at its end. SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pydicom
import pytest
from lxml import etree
from sqlalchemy.exc import OperationalError

from mimic_server.archive.ingest import Ingest
from mimic_server.index.audit_table import AuditTable, read_table
from mimic_server.index.repository import SqlIndex
from mimic_server.security.audit import AuditLog
from mimic_server.security.audit_journal import Journals
from mimic_server.security.audit_records import Archive
from mimic_server.security.identity import Identity
from mimic_server.security.policy import Policy
from mimic_server.security.user_identity import AssociationUser
from mimic_server.storage.memory import MemoryStore
from mimic_server.web.dicomweb.auth import WebSession
from mimic_server.web.dicomweb.context import DicomWebContext
from mimic_server.web.dicomweb.stow import _StowRequest
from mimic_server.web.dicomweb.stow_part import ReceivedPart
from tests.data import ct_small
from tests.unit.test_store_audit import Collected


def _request(index: SqlIndex, trail: AuditLog, store: MemoryStore, tmp_path: Path
             ) -> _StowRequest:
    ingest = Ingest(store, index, 1 << 30, tmp_path / "spool")
    ctx = DicomWebContext(finder=None, store=store, policy=Policy("MIMIC"),  # type: ignore[arg-type]
                          audit=trail, tokens=None, ingest=ingest)
    session = WebSession(Identity("DICOMweb", "", "dicomweb"), "127.0.0.1:50000",
                         AssociationUser("dr-who@example.org", frozenset(), "jwt"), None, None)
    requestor = {**session.audit_details(), "service": "STOW-RS"}
    return _StowRequest(ctx, ingest, session, None, "http://archive/dicomweb", requestor)


def _part(data: bytes, tmp_path: Path) -> ReceivedPart:
    part = ReceivedPart({"content-type": "application/dicom"}, 1 << 30, tmp_path / "spool")
    part.write(memoryview(data))
    part.end()
    return part


def test_each_instance_commits_its_record_and_failures_one_at_the_end(
    index: SqlIndex, tmp_path: Path
) -> None:
    table, other = AuditTable(index.engine), Collected()
    trail = AuditLog(None, sinks=[table, other], archive=Archive("MIMIC", host="archive-1"),
                     transactional=table)
    store = MemoryStore()
    request = _request(index, trail, store, tmp_path)
    data = ct_small().read_bytes()
    request.keep(_part(data, tmp_path))
    request.keep(_part(data[:-100], tmp_path))  # damaged: refused
    rows = read_table(index.engine)
    assert [(r["event"], r["outcome"]) for r in rows] == [("110104", 0)]
    assert rows[0]["user"] == "dr-who@example.org"
    [instance] = etree.fromstring(rows[0]["xml"]).iter("Instance")
    assert instance.get("UID") == request.outcome.stored[0].sop_instance_uid
    request.record_end()
    rows = read_table(index.engine)
    assert [(r["event"], r["outcome"]) for r in rows] == [("110104", 0), ("110104", 4)]
    assert len(other.entries) == 2 and trail.failures == 0
    assert len(store.objects) == 1


def test_an_audit_row_that_cannot_be_written_fails_the_instance(
    index: SqlIndex, tmp_path: Path
) -> None:
    class Broken(AuditTable):
        @staticmethod
        def write_in(conn: Any, entry: Any) -> None:
            raise OperationalError("INSERT INTO audit_events", {}, Exception("disk full"))

    table, other = Broken(index.engine), Collected()
    trail = AuditLog(None, sinks=[table, other], transactional=table)
    store = MemoryStore()
    request = _request(index, trail, store, tmp_path)
    request.keep(_part(ct_small().read_bytes(), tmp_path))
    assert [f.reason for f in request.outcome.failed] == [0xA700]
    assert not request.outcome.stored and not store.objects
    assert index.count_instances() == 0 and other.entries == []


@pytest.mark.parametrize("target", ["1.2.3.4", None], ids=["other-study", "any-study"])
def test_the_target_study(index: SqlIndex, tmp_path: Path, target: str | None) -> None:
    trail = AuditLog(None)
    request = _request(index, trail, MemoryStore(), tmp_path)
    request.study = target
    request.keep(_part(ct_small().read_bytes(), tmp_path))
    if target is None:
        assert len(request.outcome.stored) == 1
    else:
        assert [f.reason for f in request.outcome.failed] == [0xC409]
        assert index.count_instances() == 0


def test_the_file_trail_journals_each_part_and_a_dead_requests_records_are_recovered(
    index: SqlIndex, tmp_path: Path
) -> None:
    """The file configuration records a request at its end; its parts, stored and refused,
    are journaled as they come. A request whose end never comes (its process killed: here
    the journal's descriptor, and with it its lock, let go) is recorded from the journal:
    the stored instance, the refusal's outcome; a request that ends leaves no journal."""
    path = tmp_path / "audit.jsonl"
    trail = AuditLog(path, archive=Archive("MIMIC", host="archive-1"))
    journals = Journals(tmp_path / "audit-journal", path)
    request = _request(index, trail, MemoryStore(), tmp_path)
    request.ctx.journals = journals
    request.journal = journals.open(request.requestor)
    data = ct_small().read_bytes()
    request.keep(_part(data, tmp_path))
    request.keep(_part(data[:-100], tmp_path))  # damaged: refused
    [journal] = (tmp_path / "audit-journal").glob("*.journal")
    assert [line[:4] for line in journal.read_text().splitlines()[1:]] == ['["S"', '["F"']
    assert not path.exists() or path.read_text() == ""  # recorded at the end, not yet
    assert journals.recover(trail).associations == 0  # a live request's: left alone

    assert request.journal._fd is not None
    os.close(request.journal._fd)  # the process is gone: its lock with it
    request.journal._fd = None
    assert journals.recover(trail).associations == 1
    [record] = [json.loads(line) for line in path.read_text().splitlines()]
    assert (record["event"], record["outcome"], record["instances"], record["failed"]) == (
        "110104", 4, 1, 1)
    assert record["user"] == "dr-who@example.org" and record["service"] == "STOW-RS"
    assert record["association"] == request.journal.association
    assert list((tmp_path / "audit-journal").glob("*.journal")) == []

    ended = _request(index, trail, MemoryStore(), tmp_path)
    ended.journal = journals.open(ended.requestor)
    other = pydicom.dcmread(ct_small())
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6"
    buffer = io.BytesIO()
    other.save_as(buffer)
    ended.keep(_part(buffer.getvalue(), tmp_path))
    ended.record_end()
    last = json.loads(path.read_text().splitlines()[-1])
    assert (last["outcome"], last["instances"], last["association"]) == (
        0, 1, ended.journal.association)
    assert list((tmp_path / "audit-journal").glob("*.journal")) == []
