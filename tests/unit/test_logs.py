"""The JSON log line keeps its own fields whatever a caller passes in ``extra``."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from mimic_server.logs import OWN_FIELDS, JsonFormatter, TextFormatter


def _line(**extra: object) -> dict[str, object]:
    record = logging.getLogger("mimic_server.test").makeRecord(
        "mimic_server.test", logging.INFO, __file__, 1, "C-FIND", None, None, extra=extra
    )
    return dict(json.loads(JsonFormatter().format(record)))


def test_an_extra_key_never_overwrites_the_lines_own_fields() -> None:
    line = _line(level="STUDY", time="later", logger="x", exception="none", matches=3)
    assert line["level"] == "INFO" and line["logger"] == "mimic_server.test"
    assert line["message"] == "C-FIND" and line["time"] != "later"
    assert "exception" not in line  # no exception was logged
    assert line["extra_level"] == "STUDY" and line["extra_time"] == "later"
    assert line["extra_exception"] == "none" and line["matches"] == 3


def test_a_text_line_has_the_time_and_keeps_its_own_fields() -> None:
    """The guide: every line has time, level, logger, message, and a field that would
    take one of those names is written extra_<name>. Text lines had no time at all, and a
    ``level=STUDY`` field beside the severity."""
    record = logging.getLogger("mimic_server.test").makeRecord(
        "mimic_server.test", logging.INFO, __file__, 1, "C-FIND", None, None,
        extra={"level": "STUDY", "matches": 3},
    )
    record.created = 1796637260.5
    line = TextFormatter().format(record)
    assert line == ("2026-12-07T09:54:20.500+00:00 INFO    mimic_server.test: C-FIND "
                    "extra_level=STUDY matches=3")


def test_own_fields_are_the_ones_the_formatter_writes() -> None:
    assert set(_line()) == OWN_FIELDS - {"exception"}


def test_a_single_mimic_web_leaves_the_dicom_libraries_silent(tmp_path: Path) -> None:
    # pydicom sets its logger's level when it is imported, and it logs values of data sets
    # (patient data) at WARNING; `mimic web` of one process imports the app, and pydicom with
    # it, after its logging is set up, so it silences the libraries again. Run for real on
    # an ephemeral port, stopped as by SIGTERM once it serves.
    code = (
        "import logging, signal\n"
        "from mimic_server import cli, signals\n"
        "signals.SignalInbox.wait = lambda self, timeout=None: [signal.SIGTERM]\n"
        f"cli.main(['web', '--data-dir', {str(tmp_path)!r}, '--web-auth', 'none',\n"
        "          '--web-host', '127.0.0.1', '--web-port', '0', '--web-workers', '1'],\n"
        "         standalone_mode=False)\n"
        "print(logging.getLogger('pydicom').level, logging.getLogger('pynetdicom').level)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert run.stdout.split() == [str(logging.CRITICAL)] * 2, run.stderr[-2000:]
