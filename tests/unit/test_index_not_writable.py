"""A SQLite index the server may read and not write (a file of another owner, a read-only
mount): it started, answered ready, and refused every C-STORE 0xA700 with no log line
saying why. A read-only open (``mode=ro``) is the condition SQLite meets in both cases:
the file opens, reads, and takes ``BEGIN IMMEDIATE``; only a write fails."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from mimic_server.backends import open_index_engine
from mimic_server.config import Settings
from mimic_server.errors import ConfigurationError, OutOfResources
from mimic_server.index import schema
from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.engine import create_index_engine
from mimic_server.index.repository import SqlIndex
from tests.data import ct_small
from tests.support import HOST


def _read_only_url(tmp_path: Path) -> str:
    """A current index, opened read-only."""
    path = tmp_path / "index.sqlite3"
    engine = create_index_engine(f"sqlite:///{path}")
    schema.upgrade(engine)
    engine.dispose()
    return f"sqlite:///file:{path}?mode=ro&uri=true"


def test_an_index_file_that_cannot_be_written_stops_the_start(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=_read_only_url(tmp_path))
    with pytest.raises(ConfigurationError) as raised:
        open_index_engine(settings)
    assert str(raised.value) == (
        f"index file {tmp_path / 'index.sqlite3'} is not writable "
        "(OperationalError (SQLITE_READONLY): attempt to write a readonly database)")


@pytest.mark.parametrize("command", ["serve", "web"])
def test_serve_and_web_exit_2_with_one_line_naming_the_file(
        tmp_path: Path, command: str) -> None:
    env = {"MIMIC_DATABASE_URL": _read_only_url(tmp_path), "MIMIC_WORKERS": "1",
           "MIMIC_WEB_WORKERS": "1", "MIMIC_WEB_AUTH": "none", "MIMIC_PORT": "0",
           "MIMIC_WEB_PORT": "0", "MIMIC_OPS_PORT": "0", "MIMIC_HOST": HOST}
    result = subprocess.run(
        [sys.executable, "-m", "mimic_server", command, "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("mimic:")]
    assert f"index file {tmp_path / 'index.sqlite3'} is not writable" in line


def test_a_refused_write_logs_the_database_reason_once_without_patient_data(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each C-STORE is still refused 0xA700 "index unavailable"; the first logs why at
    ERROR: the driver's error class, code and first line, not SQLAlchemy's text of the error
    (the statement's parameters: the patient's name, IDs, the header)."""
    engine = create_index_engine(_read_only_url(tmp_path))
    index = SqlIndex(engine)
    ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    common = {"transfer_syntax_uid": "1.2.840.10008.1.2.1", "sha256": "0" * 64, "size": 1,
              "received_from": "t"}
    try:
        with caplog.at_level(logging.ERROR, logger="mimic_server.index"):
            for key in ("a", "b"):
                with pytest.raises(OutOfResources, match="index unavailable"):
                    index.upsert_instance(InstanceAttributes.from_header(ds),
                                          object_key=key, **common)
    finally:
        index.close()
        engine.dispose()
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == "index write failed"
    assert record.error == (  # type: ignore[attr-defined]
        "OperationalError (SQLITE_READONLY): attempt to write a readonly database")
    said = caplog.text
    for value in (str(ds.PatientName), ds.PatientID, ds.SOPInstanceUID, "INSERT"):
        assert value not in said


def test_a_reconcile_report_reads_an_index_it_may_not_write(tmp_path: Path) -> None:
    """A report only reads (an index the server's account owns, a read-only copy being
    checked): the start's write probe refused it (exit 2); --fix, which writes, still is."""
    env = {"MIMIC_DATABASE_URL": _read_only_url(tmp_path)}
    command = [sys.executable, "-m", "mimic_server", "reconcile", "--json",
               "--data-dir", str(tmp_path)]
    report = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert report.returncode == 0, report.stderr
    assert '"remaining": 0' in report.stdout
    fix = subprocess.run([*command, "--fix"], capture_output=True, text=True, timeout=60,
                         env=env)
    assert fix.returncode == 2 and "is not writable" in fix.stderr, fix.stderr
