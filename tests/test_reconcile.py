"""``mimic reconcile``: orphans, missing and corrupt objects found, fixed, and the exit status.

Embedded mode (files + SQLite) through the real command; the Blob Storage + PostgreSQL run is
in tests/e2e/test_azure.py.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
import pytest
from sqlalchemy import func, select

from mimic_server.app import open_index, open_object_store
from mimic_server.backends import close_object_store
from mimic_server.config import Settings
from mimic_server.errors import OutOfResources
from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.models import Instance, Series
from mimic_server.reconcile import reconcile
from mimic_server.security.audit import AuditLog
from mimic_server.storage.filesystem import _TMP
from mimic_server.storage.keys import new_object_key
from tests.data import ct_small
from tests.test_cli import mimic


def _archive(data_dir: Path, count: int) -> list[tuple[str, str]]:
    """``count`` instances of one series stored and indexed; returns (uid, key) pairs."""
    settings = Settings(data_dir=data_dir)
    store = open_object_store(settings)
    engine, index = open_index(settings)
    base = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    stored = []
    for n in range(count):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = f"{base.SOPInstanceUID}.{n}"
        attrs = InstanceAttributes.from_header(ds)
        data = f"object {n}".encode()
        sha = hashlib.sha256(data).hexdigest()
        key = new_object_key(attrs.study_instance_uid, attrs.series_instance_uid,
                             attrs.sop_instance_uid)
        store.put(key, [data], sha)
        index.upsert_instance(attrs, transfer_syntax_uid="1.2.840.10008.1.2.1", object_key=key,
                              sha256=sha, size=len(data), received_from="test")
        stored.append((attrs.sop_instance_uid, key))
    engine.dispose()
    close_object_store(store)  # its spares and lock: the tests look at .incoming
    return stored


def _reconcile(data_dir: Path, *args: str) -> tuple[int, dict]:
    done = mimic("reconcile", "--json", "--data-dir", str(data_dir), "--log-format", "text",
                 *args)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_no_drift_exits_zero(tmp_path: Path) -> None:
    _archive(tmp_path / "data", 2)
    code, report = _reconcile(tmp_path / "data")
    assert code == 0
    assert report["objects"] == 2 and report["instances"] == 2 and report["remaining"] == 0


def test_drift_found_then_fixed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (uid_missing, key_missing), (uid_corrupt, key_corrupt), (uid_ok, _) = _archive(data, 3)
    objects = data / "objects"
    (objects / key_missing).unlink()
    (objects / key_corrupt).write_bytes(b"bit rot")
    orphan = "ab/1.2/1.2.3/1.2.3.4.0000000000000000.dcm"
    (objects / orphan).parent.mkdir(parents=True)
    (objects / orphan).write_bytes(b"put, never indexed")

    code, report = _reconcile(data)
    assert code == 1
    assert report["orphans"] == [orphan]
    assert report["missing"] == [{"sop_instance_uid": uid_missing, "key": key_missing}]
    assert report["corrupt"] == [{"sop_instance_uid": uid_corrupt, "key": key_corrupt}]
    assert report["remaining"] == 3

    code, fixed = _reconcile(data, "--fix", "--settle-seconds", "0")
    assert code == 0, fixed
    assert fixed["deleted_orphans"] == 1 and fixed["removed_instances"] == 2
    assert sorted(fixed["removed"]) == sorted([uid_missing, uid_corrupt])
    assert not (objects / orphan).exists() and not (objects / key_corrupt).exists()
    audit = (data / "audit.jsonl").read_text()
    assert uid_missing in audit and uid_corrupt in audit

    engine, _ = open_index(Settings(data_dir=data))
    with engine.connect() as conn:
        uids = set(conn.execute(select(Instance.sop_instance_uid)).scalars())
        assert conn.execute(select(func.count()).select_from(Series)).scalar_one() == 1
    engine.dispose()
    assert uids == {uid_ok}
    assert _reconcile(data)[0] == 0


def test_a_store_that_lists_nothing_keeps_the_index(tmp_path: Path) -> None:
    """Every object missing, the store empty: far likelier a volume not mounted than an
    archive lost; --fix keeps the rows (exit 1, said at ERROR), unless told otherwise."""
    data = tmp_path / "data"
    stored = _archive(data, 3)
    for _, key in stored:
        (data / "objects" / key).unlink()
    done = mimic("reconcile", "--json", "--fix", "--data-dir", str(data), "--log-format",
                 "json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["removed_instances"] == 0 and report["remaining"] == 3
    errors = [json.loads(line) for line in done.stderr.splitlines()
              if line.startswith("{") and json.loads(line)["level"] == "ERROR"]
    assert [e["missing_objects"] for e in errors] == [3]
    assert not (data / "audit.jsonl").exists() or not (data / "audit.jsonl").read_text()


def test_fix_prunes_parents_left_empty(tmp_path: Path) -> None:
    data = tmp_path / "data"
    [(_, key)] = _archive(data, 1)
    (data / "objects" / key).unlink()
    code, _ = _reconcile(data, "--fix", "--store-may-be-empty")  # its only object is gone
    assert code == 0
    engine, _ = open_index(Settings(data_dir=data))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Series)).scalar_one() == 0
    engine.dispose()


def test_foreign_files_are_reported_and_never_deleted(tmp_path: Path) -> None:
    """Files the archive never put (lost+found/#1234 after e2fsck, .DS_Store) are counted
    and named apart, are no drift, and --fix leaves them and deletes the real orphan. (They
    were orphans, and --fix died on them with a KeyError, exit 1, no report.)"""
    data = tmp_path / "data"
    _archive(data, 1)
    objects = data / "objects"
    orphan = "ab/1.2/1.2.3/1.2.3.4.0000000000000000.dcm"
    (objects / orphan).parent.mkdir(parents=True)
    (objects / orphan).write_bytes(b"put, never indexed")
    (objects / "lost+found").mkdir()
    (objects / "lost+found" / "#1234").write_bytes(b"recovered by e2fsck")
    (objects / ".DS_Store").write_bytes(b"finder")

    code, fixed = _reconcile(data, "--fix", "--settle-seconds", "0")
    assert code == 0, fixed
    assert fixed["deleted_orphans"] == 1 and not (objects / orphan).exists()
    assert (objects / "lost+found" / "#1234").exists() and (objects / ".DS_Store").exists()
    assert fixed["foreign_files"] == 2
    assert sorted(fixed["foreign"]) == [".DS_Store", "lost+found/#1234"]
    assert "lost+found" not in (data / "audit.jsonl").read_text()

    code, report = _reconcile(data)
    assert code == 0 and report["foreign_files"] == 2 and report["remaining"] == 0


def test_files_of_another_shape_than_the_archives_objects_are_never_deleted(
        tmp_path: Path) -> None:
    """A name the file store takes as a key but no put of the archive makes (README.txt
    beside the objects, a copy an operator parked in a study's folder) is foreign, not an
    orphan: --fix deleted it, and counted it among the objects."""
    data = tmp_path / "data"
    _archive(data, 1)
    objects = data / "objects"
    strays = ["README.txt", "ab/notes", "ab/1.2/1.2.3/1.2.3.4.dcm.bak",
              "ab/1.2/1.2.3/1.2.3.4.0000000000000000.dcm.old"]
    for name in strays:
        (objects / name).parent.mkdir(parents=True, exist_ok=True)
        (objects / name).write_bytes(b"not the archive's")
    orphan = "ab/1.2/1.2.3/1.2.3.5.0000000000000000.dcm"
    (objects / orphan).write_bytes(b"put, never indexed")

    code, fixed = _reconcile(data, "--fix", "--settle-seconds", "0")
    assert code == 0, fixed
    assert fixed["deleted_orphans"] == 1 and not (objects / orphan).exists()
    assert all((objects / name).exists() for name in strays)
    assert sorted(fixed["foreign"]) == sorted(strays) and fixed["objects"] == 2


def test_unusable_store_is_a_configuration_error(tmp_path: Path) -> None:
    done = mimic("reconcile", "--data-dir", str(tmp_path), "--blob-connection-string",
                 "DefaultEndpointsProtocol=http;AccountName=x;AccountKey=eA==;"
                 "BlobEndpoint=http://127.0.0.1:9/x;", "--blob-retries", "0",
                 "--blob-timeout", "2")
    assert done.returncode == 2 and "unusable" in done.stderr


def test_a_row_switched_to_new_bytes_is_not_removed(tmp_path: Path) -> None:
    """The fix removes a row only if it still points at the object that was checked."""
    from mimic_server.index import maintenance

    data = tmp_path / "data"
    [(uid, key)] = _archive(data, 1)
    engine, _ = open_index(Settings(data_dir=data))
    try:
        assert not maintenance.remove_instance(engine, uid, key + ".older")
        assert maintenance.refers_to(engine, key)
        assert maintenance.remove_instance(engine, uid, key)
        assert not maintenance.refers_to(engine, key)
    finally:
        engine.dispose()


def _indexed(store, index, ds) -> str:  # type: ignore[no-untyped-def]
    """Put and index one header (a running server's ingest, without the network)."""
    attrs = InstanceAttributes.from_header(ds)
    data = f"object {attrs.sop_instance_uid}".encode()
    sha = hashlib.sha256(data).hexdigest()
    key = new_object_key(attrs.study_instance_uid, attrs.series_instance_uid,
                         attrs.sop_instance_uid)
    store.put(key, [data], sha)
    index.upsert_instance(attrs, transfer_syntax_uid="1.2.840.10008.1.2.1", object_key=key,
                          sha256=sha, size=len(data), received_from="test")
    return key


def test_resent_instance_of_a_pruned_series_keeps_its_own_series(tmp_path: Path) -> None:
    """`reconcile --fix` (another process) prunes series A; SQLite then gives A's row id to a
    new series B of another patient. An instance of A sent again through the same running
    index (whose series cache still maps A to that id) must land under a new row for A."""
    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    store = open_object_store(settings)
    engine, index = open_index(settings)  # the running server's index, cache and all
    try:
        series_a = pydicom.dcmread(ct_small(), stop_before_pixels=True)
        series_a.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.31.1"
        key = _indexed(store, index, series_a)
        with engine.connect() as conn:
            id_a = conn.execute(select(Series.id)).scalar_one()

        (data / "objects" / key).unlink()
        code, fixed = _reconcile(data, "--fix", "--settle-seconds", "0",
                                 "--store-may-be-empty")  # its only object is gone
        assert code == 0 and fixed["removed_instances"] == 1

        series_b = copy.deepcopy(series_a)
        series_b.PatientID, series_b.PatientName = "OTHER-PATIENT", "Other^Patient"
        series_b.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.31.2"
        series_b.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.31.3"
        series_b.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.31.4"
        _indexed(store, index, series_b)
        with engine.connect() as conn:
            reused = conn.execute(
                select(Series.id).where(Series.series_instance_uid == series_b.SeriesInstanceUID)
            ).scalar_one()
        assert reused == id_a  # SQLite reused the pruned row's id: the trap is set

        _indexed(store, index, series_a)  # the modality sends A's instance again
        with engine.connect() as conn:
            filed_under = conn.execute(
                select(Series.series_instance_uid)
                .join(Instance, Instance.series_fk == Series.id)
                .where(Instance.sop_instance_uid == series_a.SOPInstanceUID)
            ).scalar_one()
        assert filed_under == series_a.SeriesInstanceUID
    finally:
        engine.dispose()


class _FailingStore:
    """The file store of ``data_dir``, whose reads of ``keys`` fail while ``failing`` is set:
    ``open`` raising OutOfResources (Blob Storage's 503 ServerBusy, a timeout, EACCES or
    EMFILE on a file), or a file that opens and then fails its read (EIO)."""

    def __init__(self, data_dir: Path, keys: dict[str, str]) -> None:
        self.store = open_object_store(Settings(data_dir=data_dir))
        self.keys = keys  # key -> "open" | "read"
        self.failing = True

    def open(self, key: str) -> BinaryIO:
        how = self.keys.get(key) if self.failing else None
        if how == "open":
            raise OutOfResources("blob store read failed: ServerBusy")
        fh = self.store.open(key)
        if how == "read":
            fh.close()
            return _EioFile()  # type: ignore[return-value]
        return fh

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class _EioFile(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))


@pytest.mark.parametrize("fails", ["open", "read"])
def test_fix_keeps_instances_whose_objects_cannot_be_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fails: str
) -> None:
    """A store that fails reads throughout the run (throttled; a file's EIO) is no verdict on
    the bytes: the instance is reported unreadable, stays drift (exit 1), and ``--fix`` keeps
    its row and object and audits no removal. (It was counted corrupt, and the fix's re-check,
    failing again, removed the acknowledged instance and deleted its good bytes; an EIO in
    the read ended reconcile with a traceback.)"""
    data = tmp_path / "data"
    (uid, key), _ = _archive(data, 2)
    store = _FailingStore(data, {key: fails})
    engine, _ = open_index(Settings(data_dir=data))
    audit_path = tmp_path / "audit.jsonl"
    trail = AuditLog(audit_path)
    try:
        with caplog.at_level(logging.DEBUG, logger="mimic_server.reconcile"):
            report = reconcile(store, engine, fix=True, settle_seconds=0,  # type: ignore[arg-type]
                               audit_log=trail)
        assert (data / "objects" / key).exists()
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(Instance)).scalar_one() == 2
        trail.close()
        assert not audit_path.exists() or uid not in audit_path.read_text()
        assert [r.sop_instance_uid for r in report.unreadable] == [uid]
        assert not report.corrupt and not report.missing
        assert not report.removed_instances
        assert report.remaining == 1  # exit 1: the operator has to look again
        assert report.as_dict(with_keys=True)["unreadable"] == [
            {"sop_instance_uid": uid, "key": key}]
        # Said at WARNING without patient data; the key (UIDs) at DEBUG only.
        warnings = [r for r in caplog.records
                    if r.name == "mimic_server.reconcile" and r.levelno >= logging.WARNING]
        assert [r.getMessage() for r in warnings] == ["object unreadable"]
        assert uid not in str(vars(warnings[0]))

        store.failing = False  # the store recovered: the next run finds no drift
        assert reconcile(store, engine, fix=True, settle_seconds=0).drift == 0  # type: ignore[arg-type]
    finally:
        trail.close()
        engine.dispose()
        store.store.close()


class _UndeletableStore:
    """The file store of ``data_dir``, refusing to delete ``keys``: a container under a
    locked immutability policy (deploy.md: reconcile cannot delete orphans until retention
    ends), an immutable or read-only file."""

    def __init__(self, data_dir: Path, keys: set[str]) -> None:
        self.store = open_object_store(Settings(data_dir=data_dir))
        self.keys = keys

    def delete(self, key: str) -> None:
        if key in self.keys:
            raise OutOfResources("blob store delete failed: BlobImmutableDueToPolicy")
        self.store.delete(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_fix_goes_on_past_objects_the_store_will_not_delete(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A delete the store refuses ended ``--fix`` at that object: a traceback (a file's
    PermissionError) or exit 2 (Blob Storage), with the orphans after it never looked at and
    no report of the rows already removed. Each refused object is now left as drift (exit
    1, listed under ``undeleted``), and the run goes on."""
    data = tmp_path / "data"
    (uid_corrupt, key_corrupt), _ = _archive(data, 2)
    objects = data / "objects"
    (objects / key_corrupt).write_bytes(b"bit rot")
    kept, deleted = ("ab/1.2/1.2.3/1.2.3.4.0000000000000000.dcm",
                     "ab/1.2/1.2.3/1.2.3.5.0000000000000000.dcm")
    (objects / kept).parent.mkdir(parents=True)
    for orphan in (kept, deleted):
        (objects / orphan).write_bytes(b"put, never indexed")
    store = _UndeletableStore(data, {kept, key_corrupt})
    engine, _ = open_index(Settings(data_dir=data))
    try:
        with caplog.at_level(logging.INFO, logger="mimic_server.reconcile"):
            report = reconcile(store, engine, fix=True, settle_seconds=0)  # type: ignore[arg-type]
    finally:
        engine.dispose()
        store.store.close()

    assert report.removed_instances == [uid_corrupt]
    assert report.deleted_orphans == [deleted] and not (objects / deleted).exists()
    assert sorted(report.undeleted) == sorted([key_corrupt, kept])
    assert (objects / kept).exists() and (objects / key_corrupt).exists()
    assert report.remaining == 2  # exit 1: both objects are still to be deleted
    assert report.as_dict(with_keys=False)["undeleted_objects"] == 2
    said = [r for r in caplog.records if r.getMessage().startswith("object could not be")]
    assert len(said) == 2 and all(uid_corrupt not in str(vars(r)) for r in said)


def test_a_file_the_store_cannot_delete_is_out_of_resources(tmp_path: Path) -> None:
    """The store's contract: OutOfResources for a failure to delete, not the OSError."""
    store = open_object_store(Settings(data_dir=tmp_path))
    try:
        key = "ab/1.2/1.2.3/1.2.3.4.0000000000000000.dcm"
        (tmp_path / "objects" / key).mkdir(parents=True)  # unlink(2) gives EISDIR
        with pytest.raises(OutOfResources, match="object store delete failed"):
            store.delete(key)
    finally:
        store.close()  # type: ignore[attr-defined]


def test_a_report_writes_nothing_into_the_object_directory(tmp_path: Path) -> None:
    """Operator guide: a report without ``--fix`` only reads, and may check a read-only
    copy. It made ``.incoming/<id>/`` with spare files and a lock there, and left them."""
    data = tmp_path / "data"
    _archive(data, 2)
    objects = data / "objects"
    before = sorted(p.relative_to(objects) for p in objects.rglob("*")
                    if _TMP not in p.relative_to(objects).parts)
    for leftover in sorted((objects / _TMP).rglob("*"), reverse=True):
        leftover.rmdir() if leftover.is_dir() else leftover.unlink()
    (objects / _TMP).rmdir()

    code, report = _reconcile(data)

    assert code == 0 and report["instances"] == 2
    assert sorted(p.relative_to(objects) for p in objects.rglob("*")) == before


@pytest.mark.parametrize("layout", ["no-data-dir", "empty-data-dir", "sqlite-url"])
def test_a_report_without_an_index_says_so_and_creates_nothing(
    tmp_path: Path, layout: str,
) -> None:
    """A fresh install, or a MIMIC_DATA_DIR (or SQLite MIMIC_DATABASE_URL) that names the
    wrong place: the report failed with SQLite's "unable to open database file" when the
    directory was missing, and otherwise created the index (and its writers' lock),
    migrated it and reported an empty archive, exit 0. It is now one line naming the
    missing index file, exit 2, and nothing is created."""
    from tests.test_cli import _one_line

    data = tmp_path / "data"
    args = ["reconcile", "--json", "--data-dir", str(data)]
    index = data / "index.sqlite3"
    if layout == "empty-data-dir":
        data.mkdir()
    elif layout == "sqlite-url":
        data.mkdir()
        index = tmp_path / "elsewhere" / "index.db"
        args += ["--database-url", f"sqlite:///{index}"]
    done = mimic(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    line = _one_line(done)
    assert line.startswith(f"mimic: index file {index} does not exist: no archive has run")
    assert line.endswith("nothing was created")
    assert "unable to open" not in done.stderr
    assert sorted(tmp_path.rglob("*")) == ([] if layout == "no-data-dir" else [data])


@pytest.mark.parametrize("settle", ["-1", "nan", "inf", "86401"])
def test_a_settle_time_out_of_range_is_refused_and_nothing_deleted(
    tmp_path: Path, settle: str,
) -> None:
    """``--settle-seconds`` -1 or nan deleted orphans at once, with no wait for a C-STORE
    in flight to commit, and inf was an OverflowError traceback, exit 1 (drift, to a
    script). Each is now a bad option, exit 2, and the orphan is left alone."""
    data = tmp_path / "data"
    _archive(data, 1)
    orphan = data / "objects" / "ab/1.2/1.2.3/1.2.3.5.0000000000000000.dcm"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"put, not committed yet")
    done = mimic("reconcile", "--fix", "--settle-seconds", settle, "--data-dir", str(data))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "Invalid value for '--settle-seconds'" in done.stderr
    assert done.stdout == ""
    assert orphan.read_bytes() == b"put, not committed yet"


def test_fix_keeps_the_objects_when_the_index_names_none(tmp_path: Path) -> None:
    """An index that names no instance beside a store of objects (its SQLite file moved
    away, or created afresh at a mistyped MIMIC_DATABASE_URL path): ``--fix`` deleted every
    object of the archive as an orphan, exit 0. They are now kept (exit 1, said at ERROR
    with a count only), unless ``--index-may-be-empty`` says the index truly is empty."""
    data = tmp_path / "data"
    stored = _archive(data, 2)
    objects = data / "objects"
    elsewhere = f"sqlite:///{tmp_path / 'mistyped.sqlite3'}"
    done = mimic("reconcile", "--json", "--fix", "--settle-seconds", "0", "--data-dir",
                 str(data), "--database-url", elsewhere, "--log-format", "json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["deleted_orphans"] == 0 and report["remaining"] == 2
    assert all((objects / key).exists() for _, key in stored)
    errors = [json.loads(line) for line in done.stderr.splitlines()
              if line.startswith("{") and json.loads(line)["level"] == "ERROR"]
    assert [(e["message"].split(":")[0], e["orphan_objects"]) for e in errors] == [
        ("the index names no instance while the object store holds objects", 2)]
    assert not any(uid in done.stderr or key in done.stderr for uid, key in stored)

    code, fixed = _reconcile(data, "--fix", "--settle-seconds", "0", "--database-url",
                             elsewhere, "--index-may-be-empty")
    assert code == 0 and fixed["deleted_orphans"] == 2
    assert not any((objects / key).exists() for _, key in stored)


def _ghosts(data: Path) -> dict[str, int]:
    """Rows left empty as a re-send under another study left them before the move removed
    them: the instance rows deleted under their series, study and patient, which stay."""
    from mimic_server.index.models import Patient, Study

    engine, _ = open_index(Settings(data_dir=data))
    with engine.begin() as conn:
        conn.execute(Instance.__table__.delete())
        counts = {model.__tablename__: conn.execute(
            select(func.count()).select_from(model)).scalar_one()
            for model in (Series, Study, Patient)}
    engine.dispose()
    return counts


def test_rows_left_empty_are_drift_and_fixed(tmp_path: Path) -> None:
    """A series, study and patient with no instance under them: C-FIND answers each with
    nothing in it, and nothing found them (rows an earlier version left after an instance
    was sent again under another study). Drift (exit 1); --fix removes them."""
    data = tmp_path / "data"
    _archive(data, 1)
    second = _archive(tmp_path / "other", 1)  # an object kept: the index is not empty
    assert _ghosts(data) == {"series": 1, "studies": 1, "patients": 1}
    # One instance the index does hold, under another series of the same study.
    settings = Settings(data_dir=data)
    store = open_object_store(settings)
    engine, index = open_index(settings)
    ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    ds.SeriesInstanceUID, ds.SOPInstanceUID = f"{ds.SeriesInstanceUID}.9", second[0][0] + ".9"
    attrs = InstanceAttributes.from_header(ds)
    key = new_object_key(attrs.study_instance_uid, attrs.series_instance_uid,
                         attrs.sop_instance_uid)
    store.put(key, [b"kept"], hashlib.sha256(b"kept").hexdigest())
    index.upsert_instance(attrs, transfer_syntax_uid="1.2.840.10008.1.2.1", object_key=key,
                          sha256=hashlib.sha256(b"kept").hexdigest(), size=4,
                          received_from="test")
    engine.dispose()
    old_object = next(p for p in (data / "objects").rglob("*.dcm") if p.name != Path(key).name)
    old_object.unlink()  # the ghost's own object went with its move

    code, report = _reconcile(data)
    assert code == 1
    assert (report["empty_rows"], report["remaining"]) == (1, 1)  # the empty series
    assert report["empty"] and report["empty"][0].startswith("series ")

    code, fixed = _reconcile(data, "--fix", "--settle-seconds", "0")
    assert code == 0, fixed
    assert fixed["removed_empty_rows"] == 1
    engine, _ = open_index(Settings(data_dir=data))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Series)).scalar_one() == 1
    engine.dispose()
    code, again = _reconcile(data)
    assert code == 0 and again["empty_rows"] == 0


def test_empty_study_and_patient_rows_go_with_their_series(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _archive(data, 2)
    assert _ghosts(data) == {"series": 1, "studies": 1, "patients": 1}
    code, report = _reconcile(data)
    assert code == 1 and report["empty_rows"] == 1 and report["instances"] == 0
    code, fixed = _reconcile(data, "--fix", "--settle-seconds", "0",
                             "--index-may-be-empty")
    assert fixed["removed_empty_rows"] == 1
    from mimic_server.index.models import Patient, Study

    engine, _ = open_index(Settings(data_dir=data))
    with engine.connect() as conn:
        for model in (Series, Study, Patient):
            assert conn.execute(select(func.count()).select_from(model)).scalar_one() == 0
    engine.dispose()


def test_an_empty_row_that_gained_an_instance_is_kept(tmp_path: Path) -> None:
    """Found empty, then a C-STORE filed an instance under it before --fix came to it: the
    row stays (its removal is conditional on naming no child), counted resolved."""
    from mimic_server.index import maintenance

    data = tmp_path / "data"
    _archive(data, 1)
    _ghosts(data)
    engine, _ = open_index(Settings(data_dir=data))
    [row] = maintenance.empty_rows(engine)
    engine.dispose()
    _archive(data, 1)  # the same series again, an instance under it
    engine, _ = open_index(Settings(data_dir=data))
    assert maintenance.remove_empty_row(engine, row) is False
    assert maintenance.empty_rows(engine) == []
    engine.dispose()


def test_a_report_on_an_older_index_migrates_nothing(tmp_path: Path) -> None:
    """A report only reads: on an index an older MIMIC left (schema revision 0003) it ran
    the migration, a write into the archive it was to read. It now says to upgrade, exit 2,
    and the index is as it was."""
    from alembic import command
    from sqlalchemy import create_engine

    from mimic_server.index import schema
    from tests.test_cli import _one_line

    data = tmp_path / "data"
    data.mkdir()
    index = data / "index.sqlite3"
    engine = create_engine(f"sqlite:///{index}")
    config = schema._config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
    engine.dispose()
    done = mimic("reconcile", "--json", "--data-dir", str(data))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "run 'mimic db upgrade'" in _one_line(done) and "0003" in _one_line(done)
    engine = create_engine(f"sqlite:///{index}")
    assert schema.current_revision(engine) == "0003"
    engine.dispose()


def test_a_fix_leaves_nothing_in_the_incoming_directory(tmp_path: Path) -> None:
    """``--fix`` opens the store writable (it deletes orphans), which claims a directory and
    a lock file in ``.incoming``; it never puts, so it makes no spare files, and it closes
    the store at its end. It left 16 empty spares, the directory and the lock file, until
    the next start of a server swept them."""
    data = tmp_path / "data"
    [(_, key), _] = _archive(data, 2)
    (data / "objects" / key).unlink()
    code, fixed = _reconcile(data, "--fix", "--settle-seconds", "0")
    assert code == 0 and fixed["removed_instances"] == 1
    assert list((data / "objects" / _TMP).iterdir()) == []
