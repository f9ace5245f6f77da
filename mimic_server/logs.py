"""Structured logging: one JSON (or text) line per event, fields passed with ``extra``.

Log lines carry no patient data at INFO and above: no names, IDs or UIDs of patients' objects.
Those belong to the audit trail (:mod:`mimic_server.security.audit`). pynetdicom's own
loggers are silenced below DEBUG, because they print identifiers and full PDUs; so is pydicom's,
whose messages quote element values ("Invalid value for VR PN: ...").

Python warnings (pydicom warns about every invalid value it reads) become log records too,
so that every line on stderr is a log line: at WARNING only their category and where they
were raised, their text (which may quote a value) at DEBUG.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
import warnings
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
#: The JSON line's own fields. An ``extra`` key of the same name (a C-FIND once logged its
#: query level as ``level``, hiding the severity) is written as ``extra_<key>`` instead.
OWN_FIELDS = frozenset({"time", "level", "logger", "message", "exception"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[f"extra_{key}" if key in OWN_FIELDS else key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``MIMIC_LOG_FORMAT=text``: the JSON line's fields as ``key=value``. It carries the
    time as the JSON line does (a file of lines without it cannot be read against the
    audit trail or a modality's log), and renames a field that would take one of the
    line's own names alike."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{'extra_' + k if k in OWN_FIELDS else k}={v}"
            for k, v in vars(record).items() if k not in _STANDARD
        )
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{line} {fields}" if fields else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    silence_libraries()
    # uvicorn: its start/stop lines carry ANSI colour copies; MIMIC logs its own.
    for noisy in ("alembic", "azure", "urllib3", "uvicorn"):
        logging.getLogger(noisy).setLevel("WARNING")
    warnings.showwarning = _log_warning


def silence_libraries() -> None:
    """pydicom and pynetdicom log values of data sets: nothing of theirs unless the root
    logger is at DEBUG. Again after a late import of pydicom, which sets its logger's level
    when it is imported."""
    level = logging.getLogger().getEffectiveLevel()
    quiet = "DEBUG" if level <= logging.DEBUG else "CRITICAL"
    logging.getLogger("pynetdicom").setLevel(quiet)
    logging.getLogger("pydicom").setLevel(quiet)


_warnings_log = logging.getLogger("py.warnings")


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` as log records; the text only at DEBUG (it may quote values)."""
    where = f"{filename.rsplit('/', 1)[-1]}:{lineno}"
    _warnings_log.warning(
        "library warning", extra={"category": category.__name__, "location": where}
    )
    _warnings_log.debug("library warning text", extra={"text": str(message)})


def where(exc: BaseException) -> list[str]:
    """The frames of ``exc``'s traceback as ``module:function:line``, without values: what
    an ERROR record of an unexpected exception names instead of its message, which may
    quote element values (patient data)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return [f"{_module(f.filename)}:{f.name}:{f.lineno}" for f in frames]


def _module(filename: str) -> str:
    parts = filename.replace("\\", "/").split("/")
    for root in ("mimic_server", "pynetdicom", "pydicom", "sqlalchemy"):
        if root in parts:
            return "/".join(parts[parts.index(root):])
    return parts[-1]
