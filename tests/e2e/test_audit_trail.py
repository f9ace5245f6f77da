"""The audit trail end to end: a real ``mimic serve`` is used by real peers (dcmtk and
pynetdicom: echo, store, find, move to a dcmtk storescp, get, a refused TLS connection, an
association rejected for its AE title, a revoked certificate); then ``mimic audit --xml``
prints DICOM audit messages that validate against the PS3.15 A.5.1 schema and name the
expected events and participants. PostgreSQL: the trail is the append-only table and
survives a kill -9. Syslog/TLS: the audit repository gets the messages with the archive's
client certificate, and one that is down never holds up DICOM traffic."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from lxml import etree
from pydicom.uid import generate_uid
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from mimic_server.certs import devpki
from mimic_server.security import audit_message as am
from tests import database
from tests.data import ct_copy, ct_small, storable_files
from tests.e2e.test_ops import samples
from tests.e2e.test_query_retrieve import _get, _id, running_archive
from tests.support import (
    HOST,
    MimicProcess,
    associate,
    client_context,
    dcmtk,
    dcmtk_tls,
    wait_for,
)
from tests.syslog_double import SyslogTlsReceiver

EXPLICIT = "1.2.840.10008.1.2.1"
#: The source address of the refused probes (loopback, another address than the peers').
PROBE = "127.0.0.2"


def mimic_audit(server: MimicProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env_args = ["--data-dir", str(server.data_dir)]
    if "database_url" in server.settings:
        env_args += ["--database-url", server.settings["database_url"]]
    return subprocess.run(
        [sys.executable, "-m", "mimic_server", "audit", *env_args, *args],
        capture_output=True, text=True, timeout=60,
    )


def messages(server: MimicProcess, *args: str) -> list[etree._Element]:
    listed = mimic_audit(server, "--xml", *args)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    for line in lines:
        am.validate(line)  # every message the archive wrote is a DICOM audit message
    return [etree.fromstring(line) for line in lines]


def event(message: etree._Element) -> str:
    return str(message.find("EventIdentification/EventID").get("csd-code"))


def event_type(message: etree._Element) -> str | None:
    node = message.find("EventIdentification/EventTypeCode")
    return None if node is None else str(node.get("csd-code"))


def users(message: etree._Element) -> dict[str, etree._Element]:
    return {str(p.get("UserID")): p for p in message.findall("ActiveParticipant")}


def studies(message: etree._Element) -> set[str]:
    return {str(o.get("ParticipantObjectID")) for o in message.findall(
        "ParticipantObjectIdentification") if o.find("ParticipantObjectIDTypeCode").get(
        "csd-code") == "110180"}


def test_every_event_validates_with_its_participants(tmp_path: Path) -> None:
    ct = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    rg3 = [f for f in storable_files() if f.path.name.startswith("RG3_")]
    rg3_study = pydicom.dcmread(rg3[0].path, stop_before_pixels=True).StudyInstanceUID
    with running_archive(tmp_path, cert_refresh_seconds="1",
                         audit_refusal_interval="3600") as archive:
        server = archive.server
        echo = dcmtk("echoscu", *dcmtk_tls(server), "-aet", "MODALITY1", "-aec", "MIMIC",
                     "localhost", str(server.port))
        assert echo.returncode == 0, echo.stderr
        stored = dcmtk("storescu", *dcmtk_tls(server), "-aet", "DCMTKSCU", "-aec", "MIMIC",
                       "localhost", str(server.port), str(ct_small()))
        assert stored.returncode == 0, stored.stderr
        answers, final = archive.find(_id("STUDY", StudyInstanceUID=ct.StudyInstanceUID))
        assert final.Status == 0 and len(answers) == 1
        assoc = archive.associate([StudyRootQueryRetrieveInformationModelMove])
        moved = list(assoc.send_c_move(_id("STUDY", StudyInstanceUID=rg3_study), "STORESCP",
                                       StudyRootQueryRetrieveInformationModelMove))
        assoc.release()
        assert moved[-1][0].Status == 0
        ct_files = [f for f in storable_files() if f.path == ct_small()]
        got, final = _get(archive, _id("PATIENT", PatientID=ct.PatientID),
                          PatientRootQueryRetrieveInformationModelGet, ct_files)
        assert got and final.Status == 0
        # refused: TLS without a client certificate (nothing reaches DICOM)
        anonymous = client_context(None, None, server.ca_cert)
        for _ in range(5):
            # from a source address of their own, so that their alert is theirs alone
            raw = socket.create_connection((HOST, server.port), timeout=10,
                                           source_address=(PROBE, 0))
            with contextlib.suppress(ssl.SSLError, OSError), anonymous.wrap_socket(
                raw, server_hostname="localhost"
            ) as tls:
                tls.recv(1)
            raw.close()
        # rejected: the wrong called AE title
        wrong = associate(server.port, archive.tls(), called="NOT-MIMIC")
        assert wrong.is_rejected, (  # what happened instead, and the server's side of it
            f"established={wrong.is_established} aborted={wrong.is_aborted}\n"
            + server.log()[-4000:])
        # revoked with an association open: aborted
        devpki.issue_client(server.certs, "auditee")
        client = server.certs / "clients" / "auditee"
        ctx = client_context(client / "client.pem", client / "client.key", server.ca_cert)
        assert wait_for(lambda: _established(server.port, ctx), timeout=30)
        held = associate(server.port, ctx, calling="AUDITEE")
        assert held.is_established
        devpki.revoke(server.certs, "auditee")
        assert wait_for(lambda: held.is_aborted, timeout=30)
        assert wait_for(lambda: any(e.get("message") == "association closed"
                                    and e.get("calling_ae") == "DCMTKSCU"
                                    for e in server.log_entries()), timeout=30)
    trail = messages(server)
    by_event: dict[str, list[etree._Element]] = {}
    for message in trail:
        by_event.setdefault(event(message), []).append(message)
    # Application Activity: start and stop
    assert {event_type(m) for m in by_event["110100"]} == {"110120", "110121"}
    # User Authentication: logins accepted, and the one rejected for its AE title
    logins = by_event["110114"]
    rejected = [m for m in logins if m.find("EventIdentification").get(
        "EventOutcomeIndicator") == "4"]
    assert len(rejected) == 1 and "called" in rejected[0].findtext(
        "EventIdentification/EventOutcomeDescription")
    assert any("DCMTKSCU" in users(m) for m in logins)
    # Security Alert: the refused connections counted into one alert, the trust set change,
    # the revoked certificate's aborted association
    alerts = by_event["110113"]
    refused = [m for m in alerts if event_type(m) == "110126" and "count=" in (
        m.findtext("EventIdentification/EventOutcomeDescription") or "")]
    reasons = [m.findtext("EventIdentification/EventOutcomeDescription").split(";")[0]
               for m in refused]
    # Refusals are counted by the process that saw them: one alert per source and reason per
    # interval from each worker process (MIMIC_WORKERS), whose counts add up.
    processes = max(1, len(_worker_pids(server)))
    assert max(Counter(reasons).values()) <= processes, (
        "more than one alert per source and reason and worker process")
    probes = [m for m in refused if m.find("ParticipantObjectIdentification").get(
        "ParticipantObjectID") == PROBE]
    assert 1 <= len(probes) <= processes, [etree.tostring(m) for m in refused]
    counts = [re.search(r"count=(\d+)", m.findtext(
        "EventIdentification/EventOutcomeDescription") or "") for m in probes]
    assert sum(int(c.group(1)) for c in counts if c) == 5
    assert any(event_type(m) == "110129" for m in alerts)
    assert any("no longer trusted" in (m.findtext(
        "EventIdentification/EventOutcomeDescription") or "") for m in alerts)
    # Query: the Identifier as received, the SOP Class, the requestor's certificate and AE
    query = by_event["110112"][0]
    requestor = users(query)["MODALITY1"]
    assert requestor.get("UserIsRequestor") == "true"
    assert "modality1" in requestor.get("AlternativeUserID")
    assert requestor.get("NetworkAccessPointID") == HOST
    assert requestor.get("NetworkAccessPointTypeCode") == "2"
    queried = query.find("ParticipantObjectIdentification")
    assert queried.get("ParticipantObjectID") == "1.2.840.10008.5.1.4.1.2.2.1"
    detail = queried.find("ParticipantObjectDetail")
    assert detail.get("type") == "TransferSyntax"
    syntax = base64.b64decode(detail.get("value")).decode()
    identifier = pydicom.filereader.read_dataset(
        io.BytesIO(base64.b64decode(queried.findtext("ParticipantObjectQuery"))),
        syntax == "1.2.840.10008.1.2", True)
    assert identifier.StudyInstanceUID == ct.StudyInstanceUID
    # Begin Transferring and Instances Transferred for the C-MOVE: destination and requestor
    begun = by_event["110102"]
    assert any(rg3_study in studies(m) and "STORESCP" in users(m) for m in begun)
    transferred = by_event["110104"]
    move = [m for m in transferred if "STORESCP" in users(m)]
    assert move and rg3_study in studies(move[0]) and "MODALITY1" in users(move[0])
    assert move[0].find("EventIdentification").get("EventActionCode") == "R"
    # C-GET: the archive sent to the requestor
    get = [m for m in transferred if ct.StudyInstanceUID in studies(m)
           and m.find("EventIdentification").get("EventActionCode") == "R"
           and "STORESCP" not in users(m)]
    assert get, "no Instances Transferred for the C-GET"
    # C-STORE: received per study, by dcmtk's storescu, with the patient
    received = [m for m in transferred if "DCMTKSCU" in users(m)]
    assert received and received[0].find("EventIdentification").get("EventActionCode") in (
        "C", "U")
    assert ct.StudyInstanceUID in studies(received[0])
    patient = [o for o in received[0].findall("ParticipantObjectIdentification")
               if o.get("ParticipantObjectTypeCodeRole") == "1"]
    assert patient and patient[0].get("ParticipantObjectID") == ct.PatientID
    # pynetdicom's stores (running_archive) are received records too
    assert sum("MODALITY1" in users(m) and m.find("EventIdentification").get(
        "EventActionCode") in ("C", "U") for m in transferred) >= 2

    # mimic audit filters
    only_queries = messages(server, "--event", "Query")
    assert [event(m) for m in only_queries] == ["110112"]
    of_study = messages(server, "--study", ct.StudyInstanceUID)
    assert of_study and all(ct.StudyInstanceUID in studies(m) for m in of_study)
    assert messages(server, "--identity", "DCMTKSCU")
    assert messages(server, "--since", "2999-01-01T00:00:00") == []
    as_json = mimic_audit(server, "--json", "--event", "110112")
    assert as_json.returncode == 0
    record = json.loads(as_json.stdout.splitlines()[0])
    assert record["calling_ae"] == "MODALITY1" and record["xml"].startswith("<AuditMessage")
    assert mimic_audit(server, "--since", "yesterday").returncode == 2
    # ... and the operational log names no patient or study
    log = server.log()
    for value in (str(ct.PatientName), ct.PatientID, ct.StudyInstanceUID, rg3_study):
        assert value not in log, value


def patients(message: etree._Element) -> list[str]:
    return [str(o.get("ParticipantObjectID")) for o in message.findall(
        "ParticipantObjectIdentification") if o.find("ParticipantObjectIDTypeCode").get(
        "csd-code") == "2"]


def test_a_retrieve_of_several_patients_is_recorded_per_patient(tmp_path: Path) -> None:
    """A C-GET and a C-MOVE of two patients' studies (a list of Study Instance UIDs): one
    Begin Transferring and one DICOM Instances Transferred per patient, each naming it and
    only its study (PS3.15 A.5.3.3, A.5.3.4: the Patient is mandatory, one per message).
    Each named no patient, and both studies."""
    ct = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    rg3 = [f for f in storable_files() if f.path.name.startswith("RG3_")]
    rg3_ds = pydicom.dcmread(rg3[0].path, stop_before_pixels=True)
    assert ct.PatientID != rg3_ds.PatientID
    both = _id("STUDY", StudyInstanceUID=[ct.StudyInstanceUID, rg3_ds.StudyInstanceUID])
    expected = {ct.PatientID: ct.StudyInstanceUID, rg3_ds.PatientID: rg3_ds.StudyInstanceUID}
    with running_archive(tmp_path) as archive:
        got, final = _get(archive, both, StudyRootQueryRetrieveInformationModelGet,
                          [f for f in storable_files() if f.path == ct_small()] + rg3)
        assert final.Status == 0 and len(got) == 1 + len(rg3)
        assoc = archive.associate([StudyRootQueryRetrieveInformationModelMove])
        moved = list(assoc.send_c_move(both, "STORESCP",
                                       StudyRootQueryRetrieveInformationModelMove))
        assoc.release()
        assert moved[-1][0].Status == 0
    trail = messages(archive.server)
    for service in ("C-GET", "C-MOVE"):
        for code in ("110102", "110104"):
            retrieved = [m for m in trail if event(m) == code and f"service={service};" in (
                m.findtext("EventIdentification/EventOutcomeDescription") or "")]
            named = sorted((patients(m), studies(m)) for m in retrieved)
            assert named == sorted(([p], {s}) for p, s in expected.items()), (service, code)
            assert all(m.find("EventIdentification").get("EventOutcomeIndicator") == "0"
                       for m in retrieved)
            if service == "C-MOVE":
                assert all("STORESCP" in users(m) for m in retrieved)


def _established(port: int, ctx: ssl.SSLContext) -> bool:
    assoc = associate(port, ctx, calling="AUDITEE")
    if not assoc.is_established:
        return False
    assoc.release()
    return True


# -- PostgreSQL: the append-only table ---------------------------------------------------


@pytest.fixture
def pg_url(postgres_server: str):  # type: ignore[no-untyped-def]
    with database.fresh_database(postgres_server) as url:
        yield url


def test_postgresql_trail_survives_kill_and_refuses_changes(pg_url: str, tmp_path: Path) -> None:
    upgrade = subprocess.run([sys.executable, "-m", "mimic_server", "db", "upgrade",
                              "--database-url", pg_url], capture_output=True, text=True,
                             timeout=120)
    assert upgrade.returncode == 0, upgrade.stderr
    ct = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    server = MimicProcess(tmp_path / "data", database_url=pg_url).start()
    try:
        assoc = associate(server.port, client_context(server.client_cert, server.client_key,
                                                      server.ca_cert),
                          transfer_syntaxes=[EXPLICIT])
        assert assoc.send_c_store(ct_small()).Status == 0
        assoc.release()
        assert wait_for(lambda: any(e.get("message") == "association closed"
                                    for e in server.log_entries()))
    finally:
        assert server.proc is not None
        # No stop record, no flush: a lost replica. Its worker processes (MIMIC_WORKERS) go
        # with it, as a container's do when its first process is killed.
        for pid in _worker_pids(server):
            os.kill(pid, signal.SIGKILL)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
        server.stop()
    assert not (server.data_dir / "audit.jsonl").exists()  # not the replica's disk
    trail = messages(server, "--study", ct.StudyInstanceUID)
    assert [event(m) for m in trail] == ["110104"]
    # Each process that serves records its start: one, or one per worker process.
    processes = max(1, len(_worker_pids(server)))
    started = messages(server, "--event", "110100")
    assert [event_type(m) for m in started] == ["110120"] * processes  # killed: no stop
    # a restarted replica appends to the same trail
    again = MimicProcess(tmp_path / "data2", database_url=pg_url).start()
    assert again.stop() == 0
    assert len(messages(server, "--event", "110100")) == 3 * processes
    engine = create_engine(pg_url)
    try:
        for statement in ("UPDATE audit_events SET outcome = 0", "DELETE FROM audit_events",
                          "TRUNCATE audit_events"):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(text(statement))
        with engine.connect() as conn:
            count = conn.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
        assert count == len(messages(server))
    finally:
        engine.dispose()


def test_a_control_character_in_a_patients_name_loses_no_record(
    pg_url: str, tmp_path: Path,
) -> None:
    """A value XML cannot carry, from the sender, is written as U+FFFD: refused by the
    message's writer, it lost the stored object's Instances Transferred (the table
    configuration acknowledged the object without one) and the record of every later
    retrieve of that patient."""
    upgrade = subprocess.run([sys.executable, "-m", "mimic_server", "db", "upgrade",
                              "--database-url", pg_url], capture_output=True, text=True,
                             timeout=120)
    assert upgrade.returncode == 0, upgrade.stderr
    path = ct_copy(tmp_path, generate_uid())
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = study = generate_uid()
    ds.PatientName = "EVIL\x01^HIDDEN"
    ds.save_as(path, enforce_file_format=True)
    server = MimicProcess(tmp_path / "data", database_url=pg_url).start()
    try:
        assoc = associate(server.port, client_context(server.client_cert, server.client_key,
                                                      server.ca_cert),
                          transfer_syntaxes=[EXPLICIT])
        assert assoc.send_c_store(path).Status == 0
        assoc.release()
    finally:
        server.stop()
    assert not [e for e in server.log_entries() if "audit" in str(e.get("message"))
                and e.get("level") == "ERROR"]
    [received] = messages(server, "--study", study)
    assert event(received) == "110104"
    [patient] = [o for o in received.findall("ParticipantObjectIdentification")
                 if o.find("ParticipantObjectIDTypeCode").get("csd-code") == "2"]
    assert patient.findtext("ParticipantObjectName") == "EVIL\ufffd^HIDDEN"


def test_a_refused_find_s_query_record_says_refused_not_cancelled(tmp_path: Path) -> None:
    """Each C-FIND's Query record carries its final status: pynetdicom drops the handler
    after a refusal, which was recorded as a cancel (0xFE00, outcome 8), and a C-FIND
    answered with matches as 0xFF00, its last Pending."""
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelFind as FIND,
    )

    server = MimicProcess(tmp_path / "data").start()
    try:
        assoc = associate(server.port, client_context(server.client_cert, server.client_key,
                                                      server.ca_cert),
                          contexts=["1.2.840.10008.5.1.4.1.1.2", FIND])
        assert assoc.send_c_store(ct_small()).Status == 0
        finals = []
        for keys in ({"StudyDate": ""}, {"StudyDate": "not a date"}, {"QueryRetrieveLevel": "X"}):
            identifier = _id("STUDY", **keys)
            finals.append(list(assoc.send_c_find(identifier, FIND))[-1][0].Status)
        assoc.release()
    finally:
        assert server.stop() == 0, server.log()
    assert finals == [0x0000, 0xC000, 0xA900]
    queries = [json.loads(line) for line in (tmp_path / "data" / "audit.jsonl").open()
               if '"event":"110112"' in line]
    assert [(q["status"], q["outcome"]) for q in queries] == [
        ("0x0000", 0), ("0xC000", 4), ("0xA900", 4)]


def test_postgresql_kill_in_mid_association_keeps_every_acknowledged_store_audited(
    pg_url: str, tmp_path: Path,
) -> None:
    """The audit row of a C-STORE commits with its index row: a replica killed while a sender
    streams objects has audited every instance it answered Success for (the association's
    end, where a summary would be written, never comes), and nothing that is not indexed."""
    upgrade = subprocess.run([sys.executable, "-m", "mimic_server", "db", "upgrade",
                              "--database-url", pg_url], capture_output=True, text=True,
                             timeout=120)
    assert upgrade.returncode == 0, upgrade.stderr
    ct = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    study = generate_uid()
    objects = tmp_path / "objects"
    objects.mkdir()
    paths = []
    for _ in range(120):
        path = ct_copy(objects, generate_uid())
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    server = MimicProcess(tmp_path / "data", database_url=pg_url).start()
    acknowledged: list[str] = []
    sender = threading.Thread(target=_stream, args=(server, paths, acknowledged))
    try:
        sender.start()
        assert wait_for(lambda: len(acknowledged) >= 15, timeout=60)
    finally:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)  # in mid-association: no end, no summary
        server.proc.wait(30)
        sender.join(60)
        server.stop()
    assert not sender.is_alive()
    assert 15 <= len(acknowledged) < len(paths)

    trail = [m for m in messages(server, "--study", study) if event(m) == "110104"]
    assert trail, "no Instances Transferred for the study of the killed association"
    audited: list[str] = []
    for message in trail:
        assert message.find("EventIdentification").get("EventActionCode") == "C"
        assert "MODALITY1" in users(message) and "MIMIC" in users(message)
        requestor = users(message)["MODALITY1"]
        assert requestor.get("UserIsRequestor") == "true"
        assert requestor.get("AlternativeUserID") and requestor.get(
            "NetworkAccessPointID") == HOST
        assert studies(message) == {study}
        classes = message.findall(
            "ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass")
        assert [(c.get("UID"), c.get("NumberOfInstances")) for c in classes] == [
            (ct.SOPClassUID, "1")]
        audited += [i.get("UID") for i in classes[0].findall("Instance")]
        patient = [o for o in message.findall("ParticipantObjectIdentification")
                   if o.get("ParticipantObjectTypeCodeRole") == "1"]
        assert patient and patient[0].get("ParticipantObjectID") == ct.PatientID
    assert len(audited) == len(set(audited)), "an instance audited twice"
    missing = set(acknowledged) - set(audited)
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged not audited"
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            indexed = set(conn.execute(text(
                "SELECT i.sop_instance_uid FROM instances i JOIN series s ON i.series_fk = s.id"
                " JOIN studies t ON s.study_fk = t.id WHERE t.study_instance_uid = :study"),
                {"study": study}).scalars())
    finally:
        engine.dispose()
    assert set(audited) == indexed  # nothing audited that was not committed, and the reverse


def _stream(server: MimicProcess, paths: list[Path], acknowledged: list[str]) -> None:
    """Send ``paths`` over one association; record each SOP Instance UID answered Success."""
    assoc = associate(server.port, client_context(server.client_cert, server.client_key,
                                                  server.ca_cert),
                      transfer_syntaxes=[EXPLICIT])
    assert assoc.is_established
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            if status is None or "Status" not in status:
                return  # the server was killed
            assert status.Status == 0x0000, status
            acknowledged.append(path.stem)
    finally:
        if assoc.is_established:
            assoc.release()


# -- syslog/TLS to an audit repository ---------------------------------------------------


def test_syslog_repository_gets_messages_and_a_down_one_blocks_nothing(tmp_path: Path) -> None:
    receiver = SyslogTlsReceiver(tmp_path / "repository").start()
    client_cert, client_key = receiver.client_cert[0], receiver.client_cert[1]
    settings = {
        "audit_syslog_host": HOST, "audit_syslog_port": str(receiver.port),
        "audit_syslog_ca_file": str(receiver.ca[0]),
        "audit_syslog_client_cert": str(client_cert),
        "audit_syslog_client_key": str(client_key),
        "audit_syslog_server_name": "localhost",
    }
    server = MimicProcess(tmp_path / "data", **settings).start()
    try:
        ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
        assoc = associate(server.port, ctx)
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        assert wait_for(lambda: len(receiver.messages) >= 2, timeout=15)  # start, login
        assert receiver.peers and receiver.peers[0] == "mimic-audit-client"
        for message in list(receiver.messages):
            assert b" IHE+RFC-3881 " in message
            am.validate(message.split(b"\xef\xbb\xbf", 1)[1])
        receiver.stop()  # the repository goes away: DICOM goes on
        for _ in range(20):
            assoc = associate(server.port, ctx)
            assert assoc.is_established and assoc.send_c_echo().Status == 0
            assoc.release()
    finally:
        receiver.stop()
        assert server.stop() == 0, server.log()
    # the file, the durable trail of the embedded mode, has everything
    assert len(messages(server, "--event", "login")) == 21


def test_a_down_repositorys_drops_are_counted_and_logged(tmp_path: Path) -> None:
    """The repository is down and its queue holds 5 messages (per worker): every record the
    durable trail has is either dropped or queued on /metrics, none sent; the drops are
    logged at WARNING while the server runs, not only at its stop."""
    receiver = SyslogTlsReceiver(tmp_path / "repository")  # never started: it is down
    server = MimicProcess(
        tmp_path / "data", workers="2", audit_syslog_queue="5",
        audit_syslog_host=HOST, audit_syslog_port=str(receiver.port),
        audit_syslog_ca_file=str(receiver.ca[0]),
        audit_syslog_client_cert=str(receiver.client_cert[0]),
        audit_syslog_client_key=str(receiver.client_cert[1]),
        audit_syslog_server_name="localhost",
    ).start()

    def syslog() -> dict[str, float]:
        found = samples(server)
        return {name: found.get((f"mimic_audit_syslog_{name}", ()), -1.0)
                for name in ("sent_total", "dropped_total", "queued", "queued_bytes")}

    try:
        ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
        for _ in range(15):
            assoc = associate(server.port, ctx)
            assert assoc.is_established and assoc.send_c_echo().Status == 0
            assoc.release()
        recorded = len((server.data_dir / "audit.jsonl").read_text().splitlines())
        assert recorded >= 17  # each worker's start, 15 logins
        assert wait_for(lambda: syslog()["dropped_total"] + syslog()["queued"] == recorded)
        now = syslog()
        assert now["sent_total"] == 0 and now["dropped_total"] >= recorded - 10
        assert 0 < now["queued"] <= 10 and now["queued_bytes"] > 500 * now["queued"]
        warnings = [e for e in server.log_entries()
                    if e.get("message") == "audit repository: queue full, oldest messages "
                    "dropped"]
        assert warnings and all(e["level"] == "WARNING" for e in warnings)
        assert all(e["dropped"] >= 1 and e["queued"] == 5 for e in warnings)
    finally:
        assert server.stop() == 0, server.log()


def _worker_pids(server: MimicProcess) -> list[int]:
    """The worker processes' pids (none when MIMIC_WORKERS is 1), from the supervisor's log."""
    return [int(e["pid"]) for e in server.log_entries() if e.get("message") == "worker started"]


def _fingerprint(pem: Path) -> str:
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    leaf = x509.load_pem_x509_certificates(pem.read_bytes())[0]
    return hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()


def _beside_a_repository(tmp_path: Path, **settings: str) -> tuple[
        Path, SyslogTlsReceiver, MimicProcess]:
    """An archive on a development PKI whose audit repository (syslog/TLS) accepts the
    archive's own server certificate as its client certificate: the PKI's directory, the
    repository, the started archive."""
    data = tmp_path / "data"
    certs = data / "certs"
    devpki.init(certs)
    receiver = SyslogTlsReceiver(tmp_path / "repository",
                                 client_cas=(certs / "ca" / "ca.pem",)).start()
    server = MimicProcess(
        data, audit_syslog_host=HOST, audit_syslog_port=str(receiver.port),
        audit_syslog_ca_file=str(receiver.ca[0]), audit_syslog_server_name="localhost",
        **settings,
    ).start()
    return certs, receiver, server


def test_a_renewed_server_certificate_is_what_the_repository_sees_next(tmp_path: Path) -> None:
    """With no client certificate of its own, the audit repository is shown the archive's
    server certificate. It was the one of the start for good: renewed without a restart (as
    every certificate may be), the next connection still presented the old one, which the
    repository refuses once it expires. The next connection now presents the new one."""
    certs, receiver, server = _beside_a_repository(tmp_path, workers="1",
                                                   cert_refresh_seconds="1")
    try:
        old = _fingerprint(certs / "server" / "server.pem")
        assert wait_for(lambda: receiver.fingerprints == [old], timeout=15), receiver.fingerprints
        # Renewed the documented way: both files deleted, `mimic certs init` again.
        (certs / "server" / "server.pem").unlink()
        (certs / "server" / "server.key").unlink()
        devpki.init(certs)
        new = _fingerprint(certs / "server" / "server.pem")
        assert new != old
        assert wait_for(lambda: any(e.get("message") == "trust set updated"
                                    for e in server.log_entries()), timeout=20)
        receiver.drop()  # the repository closes the connection (an idle timeout)
        time.sleep(0.5)
        assoc = associate(server.port, client_context(server.client_cert, server.client_key,
                                                      server.ca_cert))
        assert assoc.is_established  # its login record goes over a new connection
        assoc.release()
        assert wait_for(lambda: len(receiver.fingerprints) >= 2, timeout=15)
        assert receiver.fingerprints[1:] == [new]
    finally:
        assert server.stop() == 0, server.log()
        receiver.stop()


def test_a_note_beside_the_repository_ca_holds_back_no_revocation(tmp_path: Path) -> None:
    """Each new trust set builds the audit repository's TLS context again (its client
    certificate is the server's own), before the trust set is applied. A CA file OpenSSL
    reads (the start's check passes it) with a note beside its PEM block that is not ASCII
    raised out of that rebuild (Latin-1: UnicodeDecodeError; UTF-8: UnicodeEncodeError in
    load_verify_locations): the refresh failed whole, every second, and a revoked modality
    kept associating. The file is read as OpenSSL reads it, and nothing of the repository's
    context can hold a trust set back."""
    data = tmp_path / "data"
    certs = data / "certs"
    devpki.init(certs)
    receiver = SyslogTlsReceiver(tmp_path / "repository",
                                 client_cas=(certs / "ca" / "ca.pem",)).start()
    ca_file = tmp_path / "repository-ca.pem"
    ca_file.write_bytes(receiver.ca[0].read_bytes())
    server = MimicProcess(
        data, workers="1", cert_refresh_seconds="1", audit_syslog_host=HOST,
        audit_syslog_port=str(receiver.port), audit_syslog_ca_file=str(ca_file),
        audit_syslog_server_name="localhost",
    ).start()
    try:
        context = client_context(server.client_cert, server.client_key, server.ca_cert)
        assoc = associate(server.port, context)
        assert assoc.is_established
        assoc.release()
        # The operator puts a note beside the CA: Latin-1, then UTF-8 (still PEM files).
        for note in ("Zürich".encode("latin-1"), "Zürich".encode()):
            ca_file.write_bytes(b"# Audit repository CA, " + note + b"\n"
                                + receiver.ca[0].read_bytes())
            since = len(server.log_entries())
            devpki.issue_client(certs, f"modality-{len(note)}")  # a new trust set
            assert wait_for(lambda since=since: any(
                e.get("message") == "trust set updated"
                for e in server.log_entries()[since:]), timeout=20), server.log()
        devpki.revoke(certs, "modality1")
        assert wait_for(lambda: not associate(server.port, context).is_established,
                        timeout=10), server.log()
        entries = server.log_entries()
        assert not [e for e in entries
                    if str(e.get("message", "")).startswith("certificate refresh failed")
                    or e.get("message") == "audit repository keeps its TLS context"]
        # The repository's context is made from that file, as OpenSSL reads it.
        from mimic_server.certs.directory import DirectorySource
        from mimic_server.config import Settings
        from mimic_server.resources import syslog_context

        settings = Settings(data_dir=data, audit_syslog_host=HOST, audit_syslog_ca_file=ca_file)
        assert syslog_context(settings, DirectorySource(certs).load()) is not None
    finally:
        assert server.stop() == 0, server.log()
        receiver.stop()


def _received_by_repository(receiver: SyslogTlsReceiver, study: str) -> list[etree._Element]:
    """The repository's Instances Transferred (received) messages of ``study``."""
    found = []
    for message in list(receiver.messages):
        xml = etree.fromstring(message.split(b"\xef\xbb\xbf", 1)[1])
        if event(xml) == "110104" and study in studies(xml):
            found.append(xml)
    return found


def test_a_killed_workers_records_reach_the_repository_from_the_supervisor(
    tmp_path: Path,
) -> None:
    """The records the supervisor writes from a killed worker's journals go to the audit
    repository too, as the worker's own would have, over a connection that shows the same
    client certificate (by default the archive's server certificate); they went to the
    file only, and the repository never had them."""
    from tests.e2e.test_audit_journal import (
        check_recorded_once,
        objects,
        received,
        store_and_hold,
    )
    from tests.e2e.test_workers import worker_pids

    certs, receiver, server = _beside_a_repository(tmp_path, workers="2",
                                                   cert_refresh_seconds="3600")
    try:
        study, paths = objects(tmp_path / "objects", 3)
        assoc = store_and_hold(server, paths)
        [held] = json.loads(server.ops("/status/associations")[1])["associations"]
        os.kill(worker_pids(server)[held["worker"]], signal.SIGKILL)
        assert wait_for(lambda: bool(received(server, study)), timeout=30), server.log()
        assert wait_for(lambda: bool(_received_by_repository(receiver, study)), timeout=15)
        assoc.abort()
    finally:
        assert server.stop() == 0, server.log()
        receiver.stop()
    check_recorded_once(server, study, paths)
    [message] = _received_by_repository(receiver, study)
    am.validate(etree.tostring(message))
    named = sorted(str(i.get("UID")) for i in message.iter("Instance"))
    assert named == sorted(p.stem for p in paths)
    own = _fingerprint(certs / "server" / "server.pem")
    assert set(receiver.fingerprints) == {own}  # workers' and supervisor's connections alike
    assert "audit repository unusable" not in server.log()
