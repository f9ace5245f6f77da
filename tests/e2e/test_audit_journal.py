"""The file trail's DICOM Instances Transferred of received objects, written per study when
an association ends, are in the trail even when that end never comes: a worker killed with
an association open, a whole server killed. Real processes and a real peer (pynetdicom over
TLS): the objects are stored and answered Success, the process holding the association is
killed (SIGKILL), and the records name those instances, each exactly once, with the
requestor and the study; a normal end writes them once and leaves no journal."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.data import ct_small
from tests.e2e.test_workers import worker_pids
from tests.support import HOST, MimicProcess, associate, client_context, wait_for

EXPLICIT_LE = "1.2.840.10008.1.2.1"
#: Where the archive keeps the journals of its open associations' received instances.
JOURNALS = "audit-journal"


def objects(directory: Path, count: int) -> tuple[str, list[Path]]:
    """``count`` copies of CT_small in one study (and series) of their own: (its UID, the
    files)."""
    study, series = generate_uid(), generate_uid()
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for _ in range(count):
        ds = pydicom.dcmread(ct_small())
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study, paths


def received(server: MimicProcess, study: str) -> list[dict[str, Any]]:
    """The trail's Instances Transferred (received) of ``study``, as the file holds them."""
    trail = server.data_dir / "audit.jsonl"
    if not trail.exists():
        return []
    records = [json.loads(line) for line in trail.read_bytes().splitlines() if line.strip()]
    return [r for r in records if r.get("event") == "110104" and r.get("received")
            and r.get("studies") == [study]]


def instances_named(records: list[dict[str, Any]]) -> Counter[str]:
    """Each SOP Instance UID the records name (in their message), with how many name it."""
    named: Counter[str] = Counter()
    for record in records:
        named.update(uid for study in (record.get("sop_instances") or {}).values()
                     for uids in study.values() for uid in uids)
    return named


def _message_instances(xml: str) -> list[str]:
    from lxml import etree

    message = etree.fromstring(xml.encode())
    return [str(i.get("UID")) for i in message.iter("Instance")]


def store_and_hold(server: MimicProcess, paths: list[Path]) -> Any:
    """An association that stores ``paths`` (each answered Success) and is left open."""
    client = server.certs / "clients" / "modality1"
    ctx = client_context(client / "client.pem", client / "client.key", server.ca_cert)
    assoc = associate(server.port, ctx, transfer_syntaxes=[EXPLICIT_LE])
    assert assoc.is_established
    for path in paths:
        status = assoc.send_c_store(path)
        assert status is not None and status.Status == 0x0000, status
    return assoc


def check_recorded_once(server: MimicProcess, study: str, paths: list[Path]) -> None:
    """One Instances Transferred (received) for the study, naming each instance once, with
    the requestor (MODALITY1 from loopback, its certificate) and the patient."""
    records = received(server, study)
    assert len(records) == 1, records
    record = records[0]
    ct = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    assert record["outcome"] == 0
    assert record["calling_ae"] == "MODALITY1" and record["identity"]
    assert record["peer"].startswith(f"{HOST}:") and record["service"] == "C-STORE"
    assert record["instances"] == len(paths) and record["failed"] == 0
    assert record["patient_id"] == ct.PatientID
    named = instances_named(records)
    assert named == Counter({p.stem: 1 for p in paths})
    assert sorted(_message_instances(record["xml"])) == sorted(p.stem for p in paths)


def restart(server: MimicProcess, **settings: str) -> MimicProcess:
    """The archive started again on the same data directory (its first log kept aside: a
    start waits for its own "listening")."""
    server.log_path.rename(server.log_path.with_suffix(".first.log"))
    return MimicProcess(server.data_dir, **settings).start()


def journals(server: MimicProcess) -> list[Path]:
    directory = server.data_dir / JOURNALS
    return sorted(directory.iterdir()) if directory.exists() else []


def test_a_killed_workers_acknowledged_stores_are_audited_once(tmp_path: Path) -> None:
    server = MimicProcess(tmp_path / "data", workers="2", cert_refresh_seconds="3600").start()
    try:
        study, paths = objects(tmp_path / "objects", 3)
        assoc = store_and_hold(server, paths)
        answer = json.loads(server.ops("/status/associations")[1])
        [held] = answer["associations"]
        victim = worker_pids(server)[held["worker"]]
        assert not received(server, study)  # the association's end writes them, not yet
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: bool(received(server, study)), timeout=30), server.log()
        check_recorded_once(server, study, paths)
        assoc.abort()
        assert not journals(server)
        # The replacement serves; the stop writes nothing more for the killed association.
        assert wait_for(lambda: worker_pids(server)[held["worker"]] != victim
                        and server.ops("/readyz")[0] == 200, timeout=90)
        for n in range(4):  # on either worker, the replacement among them
            _, more = objects(tmp_path / f"more{n}", 1)
            store_and_hold(server, more).release()
    finally:
        assert server.stop() == 0, server.log()
    check_recorded_once(server, study, paths)
    assert not journals(server)
    written = [e for e in server.log_entries()
               if e.get("message") == "audit records written from an ended association's journal"]
    assert written and written[0]["level"] == "WARNING"
    assert written[0]["associations"] == 1 and written[0]["instances"] == 3
    assert study not in server.log() and paths[0].stem not in server.log()


def test_a_normal_end_writes_the_records_once_and_leaves_no_journal(tmp_path: Path) -> None:
    server = MimicProcess(tmp_path / "data", workers="1").start()
    try:
        study, paths = objects(tmp_path / "objects", 3)
        assoc = store_and_hold(server, paths)
        assert journals(server)  # the association is open: its journal is kept
        assoc.release()
        assert wait_for(lambda: bool(received(server, study)), timeout=30)
        assert wait_for(lambda: not journals(server), timeout=10)
    finally:
        assert server.stop() == 0, server.log()
    # Started again: nothing to recover, nothing written twice.
    server = restart(server, workers="1")
    assert server.stop() == 0, server.log()
    assert len(received(server, study)) == 1
    assert not [e for e in server.log_entries() if "audit" in str(e.get("message"))]


@pytest.mark.parametrize("workers", ["1", "2"], ids=["single-process", "supervisor"])
def test_a_server_killed_whole_writes_the_missing_records_at_its_start(
    tmp_path: Path, workers: str,
) -> None:
    server = MimicProcess(tmp_path / "data", workers=workers, cert_refresh_seconds="3600").start()
    study, paths = objects(tmp_path / "objects", 3)
    assoc = store_and_hold(server, paths)
    assert server.proc is not None
    pids = list(worker_pids(server).values())
    server.proc.send_signal(signal.SIGKILL)  # its workers follow it (PR_SET_PDEATHSIG)
    server.proc.wait(30)
    assert wait_for(lambda: not _alive(pids), timeout=30)
    assoc.abort()
    server.stop()
    assert not received(server, study)
    assert journals(server)
    server = restart(server, workers=workers, cert_refresh_seconds="3600")
    try:
        check_recorded_once(server, study, paths)
        assert not journals(server)
    finally:
        assert server.stop() == 0, server.log()
    check_recorded_once(server, study, paths)


def _alive(pids: Any) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return True
    return False


@contextlib.contextmanager
def index_writes_held(server: MimicProcess) -> Iterator[None]:
    """The index's writers' lock (``index/engine.py``) held by the test, as another worker's
    long transaction would hold it: a C-STORE meanwhile is stored and waits to be indexed."""
    fd = os.open(server.data_dir / "index.sqlite3-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def in_store(server: MimicProcess, sop_instance: str) -> bool:
    """Whether the object is in the file store (its put done), by its file's name."""
    return any((server.data_dir / "objects").glob(f"*/*/*/{sop_instance}.*.dcm"))


def indexed(server: MimicProcess, sop_instance: str) -> bool:
    with contextlib.closing(sqlite3.connect(
            f"file:{server.data_dir / 'index.sqlite3'}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT 1 FROM instances WHERE sop_instance_uid = ?",
                         (sop_instance,)).fetchone()
    return row is not None


@pytest.mark.parametrize("before", [0, 2], ids=["first-store", "after-two"])
def test_a_store_indexed_after_its_association_ended_is_recorded_once(
    tmp_path: Path, before: int,
) -> None:
    """The peer aborts while a C-STORE waits for its index commit: the association's end
    writes its records (and ends its journal) first; the object is indexed after. It is in
    the trail once all the same, at once, not at some later start."""
    server = MimicProcess(tmp_path / "data", workers="1").start()
    try:
        study, paths = objects(tmp_path / "objects", before + 1)
        assoc = store_and_hold(server, paths[:before])
        answers: list[Any] = []
        # pynetdicom's requestor waits out its DIMSE timeout for an answer even after its
        # own abort (15 s here): 5 s is ample for the server to put the object meanwhile,
        # and a timeout that came first would abort the association as the test does.
        assoc.dimse_timeout = 5
        with index_writes_held(server):
            sender = threading.Thread(target=lambda: answers.append(
                assoc.send_c_store(paths[-1])))
            sender.start()
            # Put in the store, the C-STORE waits for the index.
            assert wait_for(lambda: in_store(server, paths[-1].stem), timeout=30)
            assert not indexed(server, paths[-1].stem)
            assoc.abort()
            assert wait_for(lambda: any(e.get("message") == "association closed"
                                        for e in server.log_entries()), timeout=30)
        sender.join(30)
        # No Success went out: the peer saw its association end, not an answer.
        assert answers and "Status" not in answers[0]
        assert wait_for(lambda: indexed(server, paths[-1].stem), timeout=30), server.log()
        assert wait_for(lambda: recorded(server, study) == before + 1, timeout=10), \
            received(server, study)
    finally:
        assert server.stop() == 0, server.log()
    check_late_recorded_once(server, study, before + 1, paths[-1].stem)
    assert not journals(server)
    # Started again: nothing is left to recover, nothing is written twice.
    server = restart(server, workers="1")
    assert server.stop() == 0, server.log()
    check_late_recorded_once(server, study, before + 1, paths[-1].stem)


def recorded(server: MimicProcess, study: str) -> int:
    """How many instances of ``study`` the trail's received records count."""
    return sum(int(r["instances"]) for r in received(server, study))


def check_late_recorded_once(server: MimicProcess, study: str, count: int, late: str) -> None:
    """``count`` instances recorded in all; the late one by a record of its own, naming it,
    with the requestor (MODALITY1, its certificate)."""
    assert recorded(server, study) == count, received(server, study)
    [own] = [r for r in received(server, study) if late in instances_named([r])]
    assert own["instances"] == 1 and own["outcome"] == 0 and own["failed"] == 0
    assert own["calling_ae"] == "MODALITY1" and own["identity"]
    assert own["service"] == "C-STORE"
    assert _message_instances(own["xml"]) == [late]


def test_a_worker_killed_in_the_drain_has_its_records_written_by_the_stop(
    tmp_path: Path,
) -> None:
    """A worker killed while it drains (OOM, a crash, or killed for overrunning) with an
    association that stored objects: the stop writes their records before the server exits,
    not some later start on this data directory, which may never come."""
    server = MimicProcess(tmp_path / "data", workers="2", drain_seconds="30",
                          cert_refresh_seconds="3600").start()
    study, paths = objects(tmp_path / "objects", 3)
    assoc = store_and_hold(server, paths)
    [held] = json.loads(server.ops("/status/associations")[1])["associations"]
    victim = worker_pids(server)[held["worker"]]
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: server.ops("/readyz")[0] == 503)
    os.kill(victim, signal.SIGKILL)  # mid-drain, its association open
    code = server.proc.wait(60)
    server.stop()
    assoc.abort()
    assert code == 4, server.log()  # an unclean stop, as before
    check_recorded_once(server, study, paths)
    assert not journals(server)
    entries = server.log_entries()
    death = next(e for e in entries if e.get("message") == "worker died during the drain")
    written = next(e for e in entries if e.get("message")
                   == "audit records written from an ended association's journal")
    assert written["level"] == "WARNING" and written["instances"] == 3
    assert entries.index(death) < entries.index(written)
    assert study not in server.log() and paths[0].stem not in server.log()
    # Started again: nothing is left to recover, nothing is written twice.
    server = restart(server, workers="2")
    assert server.stop() == 0, server.log()
    check_recorded_once(server, study, paths)
