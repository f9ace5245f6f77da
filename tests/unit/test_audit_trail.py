"""Generic audit records become valid DICOM audit messages, whoever records them; the file and
the append-only table keep them and give them back filtered (``mimic audit``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from mimic_server.index import schema
from mimic_server.index.audit_table import AuditTable, read_table
from mimic_server.security import audit
from mimic_server.security import audit_message as am
from mimic_server.security.audit import AuditFilter, AuditLog, read_file
from mimic_server.security.audit_records import Archive

STUDY = "1.2.826.0.1.3680043.8.498.1"
PEER = {"peer": "10.1.2.3:40000", "identity": "modality-1 (0123456789abcdef)",
        "trust_name": "modality-1", "calling_ae": "MODALITY1", "called_ae": "MIMIC"}

#: (event, outcome, details) as the archive and the access-policy work record them.
RECORDS: list[tuple[tuple[str, str, str], int, dict[str, Any]]] = [
    (audit.APPLICATION_ACTIVITY, 0, {"action": "started"}),
    (audit.APPLICATION_ACTIVITY, 0, {"action": "stopped"}),
    (audit.SECURITY_ALERT, 4, {"peer": "10.9.9.9", "reason": "NO_CERTIFICATE", "count": 40,
                               "IntervalStart": "2026-01-01T00:00:00+00:00",
                               "IntervalEnd": "2026-01-01T00:01:00+00:00"}),
    (audit.SECURITY_ALERT, 0, {"event_type": "security-configuration", "subject":
                               "trusted certificates", "reason": "trust set changed",
                               "trusted": 3, "aborted": 1}),
    (audit.SECURITY_ALERT, 4, {**PEER, "event_type": "use-of-restricted-function",
                               "service": "C-MOVE", "destination": "ELSEWHERE",
                               "reason": "destination not granted", "user": "dr.who"}),
    (audit.USER_AUTHENTICATION, 0, {**PEER, "event_type": "login", "user": "dr.who"}),
    (audit.USER_AUTHENTICATION, 4, {**PEER, "reason": "calling AE title not recognized"}),
    (audit.USER_AUTHENTICATION, 0, {**PEER, "event_type": "logout"}),
    (audit.QUERY, 0, {**PEER, "service": "C-FIND", "sop_class": "1.2.840.10008.5.1.4.1.2.2.1",
                      "transfer_syntax": "1.2.840.10008.1.2.1", "identifier": b"\x08\x00",
                      "status": "0x0000"}),
    (audit.BEGIN_TRANSFERRING, 0, {**PEER, "service": "C-MOVE", "destination": "STORESCP",
                                   "destination_address": "127.0.0.1",
                                   "studies": {STUDY: {"1.2.840.10008.5.1.4.1.1.2": 2}}}),
    (audit.INSTANCES_TRANSFERRED, 0, {**PEER, "service": "C-GET", "studies": {STUDY: {
        "1.2.840.10008.5.1.4.1.1.2": 2}}, "patient_id": "P1", "patient_name": "Doe^J"}),
    (audit.INSTANCES_TRANSFERRED, 0, {**PEER, "received": True, "studies": {STUDY: {
        "1.2.840.10008.5.1.4.1.1.2": 1}}, "patient_id": "P1", "patient_name": None}),
    (audit.INSTANCES_ACCESSED, 4, {"action_code": "D", "studies": [STUDY],
                                   "reason": "reconcile removed an instance"}),
    (audit.EXPORT, 0, {**PEER, "destination": "MEDIA", "studies": [STUDY]}),
    (("110999", "DCM", "Something New"), 0, {**PEER, "event_type": "login"}),
]


def _log(tmp_path: Path, *sinks: Any) -> AuditLog:
    return AuditLog(tmp_path / "audit.jsonl", sinks=list(sinks),
                    archive=Archive("MIMIC", host="archive-1"))


def test_every_record_validates_and_carries_its_participants(tmp_path: Path) -> None:
    trail = _log(tmp_path)
    for event, outcome, details in RECORDS:
        trail.record(event, outcome, **details)
    trail.close()
    assert trail.failures == 0
    entries = read_file(tmp_path / "audit.jsonl", AuditFilter())
    assert len(entries) == len(RECORDS)
    for entry, (event, outcome, details) in zip(entries, RECORDS, strict=True):
        am.validate(entry["xml"])
        root = etree.fromstring(entry["xml"])
        assert root.find("EventIdentification/EventID").get("csd-code") == event[0]
        assert entry["outcome"] == outcome
        if "calling_ae" in details:
            users = {p.get("UserID"): p for p in root.findall("ActiveParticipant")}
            requestor = users["MODALITY1"]
            assert requestor.get("AlternativeUserID") == PEER["identity"]
            assert requestor.get("NetworkAccessPointID") == "10.1.2.3"
            assert requestor.get("NetworkAccessPointTypeCode") == "2"
        if details.get("user"):
            assert details["user"] in {p.get("UserID") for p in root.findall("ActiveParticipant")}
    query = etree.fromstring(entries[8]["xml"])
    assert query.findtext("ParticipantObjectIdentification/ParticipantObjectQuery") == "CAA="
    move = etree.fromstring(entries[9]["xml"])
    assert "STORESCP" in {p.get("UserID") for p in move.findall("ActiveParticipant")}
    alert = etree.fromstring(entries[2]["xml"])
    assert "count=40" in alert.findtext("EventIdentification/EventOutcomeDescription")


def test_filters(tmp_path: Path) -> None:
    trail = _log(tmp_path)
    for event, outcome, details in RECORDS:
        trail.record(event, outcome, **details)
    trail.close()
    path = tmp_path / "audit.jsonl"
    assert len(read_file(path, AuditFilter(event="110112"))) == 1
    assert len(read_file(path, AuditFilter(event="Query"))) == 1
    assert len(read_file(path, AuditFilter(event="login"))) == 3
    assert len(read_file(path, AuditFilter(study=STUDY))) == 5
    assert len(read_file(path, AuditFilter(identity="modality-1"))) == 10
    assert len(read_file(path, AuditFilter(identity="dr.who"))) == 2
    future = datetime.now(UTC) + timedelta(minutes=1)
    assert read_file(path, AuditFilter(since=future)) == []


def test_a_failing_sink_is_counted_never_raised(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def write(self, entry: Any, details: Any) -> None:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            pass

    trail = _log(tmp_path, Broken())
    trail.record(audit.QUERY, 0, **PEER, patient_name="Doe^Jane")
    trail.close()
    assert trail.failures == 1
    assert "writing an audit record failed" in caplog.text
    assert "Doe^Jane" not in caplog.text
    assert len(read_file(tmp_path / "audit.jsonl", AuditFilter())) == 1  # the file still has it


def test_table_on_sqlite_is_append_only_and_filters(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    schema.upgrade(engine)
    trail = AuditLog(None, sinks=[AuditTable(engine)], archive=Archive("MIMIC"))
    for event, outcome, details in RECORDS:
        trail.record(event, outcome, **details)
    assert trail.failures == 0
    rows = read_table(engine)
    assert len(rows) == len(RECORDS)
    for row in rows:
        am.validate(row["xml"])
    assert len(read_table(engine, study=STUDY)) == 5
    assert [r for r in read_table(engine) if AuditFilter(event="Query").matches(r)]
    assert read_table(engine, since=datetime.now(UTC) + timedelta(minutes=1)) == []
    assert len(read_table(engine, since=datetime.now(UTC) - timedelta(minutes=1))) == len(
        RECORDS)
    for statement in ("UPDATE audit_events SET outcome = 0", "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    assert len(read_table(engine)) == len(RECORDS)
    engine.dispose()


def test_one_decision_says_whether_the_trail_is_the_file_or_the_table(tmp_path: Path) -> None:
    """``Settings.audit_in_index`` decides for every process (the archive, ``mimic web``,
    the supervisor's journal recovery, ``mimic audit``): the file, with its journals, on a
    SQLite index, named by URL or not; the index's table on a server database."""
    from mimic_server.archive.ingest_audit import per_instance
    from mimic_server.config import Settings
    from mimic_server.resources import open_audit_trail

    embedded = Settings(data_dir=tmp_path)
    named = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'i.sqlite3'}")
    server = Settings(data_dir=tmp_path,
                      database_url="postgresql+psycopg://mimic@127.0.0.1:9/mimic")
    for settings in (embedded, named):
        assert not settings.audit_in_index
        trail = open_audit_trail(settings, create_engine(settings.index_url))
        assert trail.path == settings.audit_path and not per_instance(trail)
        trail.close()
    assert server.audit_in_index
    trail = open_audit_trail(server, create_engine(server.index_url))  # never connects here
    assert trail.path is None and per_instance(trail)
    trail.close()
