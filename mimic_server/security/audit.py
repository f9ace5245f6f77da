"""The audit trail: who connected, who was refused, what was stored, queried and sent.

Every part of MIMIC records an event with one call, ``AuditLog.record(event, outcome,
**details)``; :mod:`~mimic_server.security.audit_records` turns it into a DICOM audit message
(PS3.15 A.5) with a few index fields, and the log hands that to its sinks: a JSON-lines file
(embedded mode), the append-only ``audit_events`` table (PostgreSQL), an audit repository over
syslog/TLS. Records name patients' studies and instances, so they never go to the
operational log. A sink that fails is logged (without the record) and counted, and never
fails the operation that is being recorded; the exception is work that writes its record
in its own transaction (``AuditLog.prepare``: a C-STORE in the PostgreSQL configuration),
where record and work commit together or not at all. The sinks are composed in ``app.py``; this
package knows neither the network nor the database.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from mimic_server.security.audit_records import (
    EVENT_TYPES,
    Archive,
    AuditEntry,
    build,
    json_details,
)

log = logging.getLogger(__name__)

#: (code, coding scheme, meaning) from PS3.16 CID 400 "Audit Event ID".
APPLICATION_ACTIVITY = ("110100", "DCM", "Application Activity")
AUDIT_LOG_USED = ("110101", "DCM", "Audit Log Used")
BEGIN_TRANSFERRING = ("110102", "DCM", "Begin Transferring DICOM Instances")
INSTANCES_ACCESSED = ("110103", "DCM", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = ("110104", "DCM", "DICOM Instances Transferred")
STUDY_DELETED = ("110105", "DCM", "DICOM Study Deleted")
EXPORT = ("110106", "DCM", "Export")
QUERY = ("110112", "DCM", "Query")
SECURITY_ALERT = ("110113", "DCM", "Security Alert")
USER_AUTHENTICATION = ("110114", "DCM", "User Authentication")

#: Every event MIMIC records, in code order: what ``mimic audit --event`` can select.
EVENTS = (APPLICATION_ACTIVITY, AUDIT_LOG_USED, BEGIN_TRANSFERRING, INSTANCES_ACCESSED,
          INSTANCES_TRANSFERRED, STUDY_DELETED, EXPORT, QUERY, SECURITY_ALERT,
          USER_AUTHENTICATION)

SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = 0, 4, 8

#: What a record is found and listed by (``AuditEntry.index_fields``; the table's columns).
INDEX_FIELDS = ("time", "event", "event_name", "event_type", "outcome", "identity",
                "trust_name", "calling_ae", "user", "studies")


class AuditSink(Protocol):
    """Where audit entries go; ``write`` may raise (the log counts and reports it)."""

    def write(self, entry: AuditEntry, details: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class TransactionalSink(AuditSink, Protocol):
    """A sink that can also write into a transaction its caller holds (the table), so that a
    record commits with the work it records, or not at all."""

    def write_in(self, conn: Any, entry: AuditEntry) -> None: ...


@dataclass(frozen=True, slots=True)
class Prepared:
    """A record built before the work it records commits (see ``AuditLog.prepare``)."""

    log: AuditLog
    sink: TransactionalSink
    entry: AuditEntry
    details: dict[str, Any]

    def write_in(self, conn: Any) -> None:
        """Into the caller's transaction; raises like the work's own statements do (the
        transaction then rolls back, and a retry of it writes the record once)."""
        self.sink.write_in(conn, self.entry)

    def committed(self) -> None:
        """The work committed: the record goes to the other sinks (syslog) too."""
        self.log.deliver(self.entry, self.details, skip=self.sink)


class BatchSink(AuditSink, Protocol):
    """A sink that can also write several entries in one transaction (the table)."""

    def write_batch(self, entries: list[AuditEntry]) -> None: ...


class _Waiting:
    __slots__ = ("done", "entry", "error")

    def __init__(self, entry: AuditEntry) -> None:
        self.entry = entry
        self.done = threading.Event()
        self.error: BaseException | None = None


class GroupCommitSink:
    """Group commit of audit records: one writer thread commits the records of concurrent
    callers together (one transaction, one commit), and each ``write`` returns only once
    its own record has committed, or raises as a single write would have.

    Why: on PostgreSQL every record is otherwise its own transaction (a round trip and a
    WAL flush), and a WADO-RS retrieve records two. The promise is unchanged: when
    ``write`` returns the record is durable, so a request still completes after its
    records (Begin Transferring before the first byte). A batch that fails is written
    again record by record, so one bad record fails only its own caller."""

    def __init__(self, sink: BatchSink, max_batch: int = 256) -> None:
        self.sink = sink
        self.max_batch = max_batch
        self._pending: list[_Waiting] = []
        self._ready = threading.Condition()
        self._closed = False
        #: Commits made, and records they carried (for tests and the benchmark's notes).
        self.commits = 0
        self.records = 0
        self._thread = threading.Thread(target=self._run, name="mimic-audit-writer",
                                        daemon=True)
        self._thread.start()

    def write(self, entry: AuditEntry, details: dict[str, Any]) -> None:
        waiting = _Waiting(entry)
        with self._ready:
            if self._closed:
                raise OSError("audit writer closed")
            self._pending.append(waiting)
            self._ready.notify()
        waiting.done.wait()
        # Taken out of the waiter, and this frame's reference dropped as it raises: the
        # error's traceback holds this frame and the caller's, which would otherwise live on
        # in a cycle (error, traceback, frame, waiter) until the garbage collector ran.
        error, waiting.error = waiting.error, None
        if error is not None:
            try:
                raise error
            finally:
                del error

    def write_in(self, conn: Any, entry: AuditEntry) -> None:
        """Into the caller's own transaction (a STOW-RS store): not batched."""
        self.sink.write_in(conn, entry)  # type: ignore[attr-defined]

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if not self._pending:  # closed and nothing left
                    return
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
            self._commit(batch)

    def _commit(self, batch: list[_Waiting]) -> None:
        try:
            self.sink.write_batch([w.entry for w in batch])
            self.commits += 1
            self.records += len(batch)
        except Exception:
            if len(batch) == 1:
                batch[0].error = sys.exc_info()[1]
            else:  # one bad record must not fail the others: each alone
                for waiting in batch:
                    self._commit([waiting])
                return
        for waiting in batch:
            waiting.done.set()

    def close(self) -> None:
        """Commit what is pending, stop the writer, close the sink."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(30)
        self.sink.close()


class FileSink:
    """JSON lines, one per record, flushed before ``write`` returns (the embedded default).

    Each line has the index fields, the record's details (for scripts) and ``xml``, the DICOM
    audit message itself. Each line is one ``write`` on a file opened ``O_APPEND``: several
    worker processes append to the same file, and a record must never interleave with
    another's. (CPython's buffered text file happens to pass a flushed long line through in
    one call too; here it is one call by construction, not by the io layers' current habits.)"""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd: int | None = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
        )

    def write(self, entry: AuditEntry, details: dict[str, Any]) -> None:
        line = {
            "EventDateTime": entry.when.isoformat(),
            "EventID": {"code": entry.event_code, "scheme": "DCM", "meaning": entry.event_name},
            "EventOutcomeIndicator": entry.outcome,
            **json_details(details),
            **entry.index_fields(),
            "xml": entry.xml,
        }
        data = (json.dumps(line, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            if self._fd is None:
                raise OSError("audit file closed")
            written = os.write(self._fd, data)
            if written != len(data):  # only on a full disk: the line is cut, say so
                raise OSError(f"audit record cut short ({written} of {len(data)} bytes)")

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class AuditLog:
    """Builds one audit message per record and gives it to every sink.

    ``path`` keeps the JSON-lines file (None: no file); ``sinks`` adds others (the table,
    syslog). ``failures`` counts sink writes that failed."""

    def __init__(
        self, path: Path | None, *, sinks: list[AuditSink] | None = None,
        archive: Archive | None = None, transactional: TransactionalSink | None = None,
    ) -> None:
        self.path = path
        self.archive = archive or Archive("MIMIC")
        self.sinks: list[AuditSink] = list(sinks or [])
        #: One of ``sinks`` that writes in a caller's transaction (the PostgreSQL table).
        self.transactional = transactional
        if path is not None:
            self.sinks.insert(0, FileSink(path))
        self.failures = 0
        self._lock = threading.Lock()

    def record(self, event: tuple[str, str, str], outcome: int, **details: Any) -> None:
        """Record one event; never raises for a sink's sake (see the class docstring)."""
        if not self.sinks:
            return
        try:
            entry = build(event, outcome, details, self.archive)
        except Exception:
            self._failed("building the audit message failed", event, None)
            return
        self.deliver(entry, details)

    def prepare(self, event: tuple[str, str, str], outcome: int,
                **details: Any) -> Prepared | None:
        """The record built now, for work that commits its audit row in its own transaction:
        ``write_in(conn)`` before the commit, ``committed()`` after. None when no sink writes
        in a caller's transaction (the file configuration: the caller records the usual way)
        or when the message cannot be built (counted and logged like a failed sink)."""
        sink = self.transactional
        if sink is None:
            return None
        try:
            return Prepared(self, sink, build(event, outcome, details, self.archive), details)
        except Exception:
            self._failed("building the audit message failed", event, None)
            return None

    def deliver(self, entry: AuditEntry, details: dict[str, Any],
                skip: AuditSink | None = None) -> None:
        """Give a built entry to every sink but ``skip``; a failing sink is counted."""
        for sink in list(self.sinks):
            if sink is skip:
                continue
            try:
                sink.write(entry, details)
            except Exception:
                self._failed("writing an audit record failed",
                             (entry.event_code, "DCM", entry.event_name), sink)

    def _failed(self, message: str, event: tuple[str, str, str], sink: Any) -> None:
        with self._lock:
            self.failures += 1
        # The exception may quote the record (patient data): its type only, at ERROR.
        log.error(message, extra={"event": event[2], "sink": type(sink).__name__
                                  if sink is not None else None, "failures": self.failures},
                  exc_info=log.isEnabledFor(logging.DEBUG))

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing an audit sink failed")
        self.sinks = []
        self.transactional = None


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What ``mimic audit`` selects: every field given must match."""

    since: datetime | None = None
    event: str | None = None
    identity: str | None = None
    study: str | None = None
    until: datetime | None = None

    def matches(self, fields: dict[str, Any]) -> bool:
        if self.since is not None and datetime.fromisoformat(fields["time"]) < self.since:
            return False
        if self.until is not None and datetime.fromisoformat(fields["time"]) > self.until:
            return False
        if self.event is not None and self.event not in (
            fields.get("event"), fields.get("event_name"), fields.get("event_type")
        ):
            return False
        if self.identity is not None and not any(
            self.identity in (fields.get(k) or "") for k in ("identity", "trust_name", "user",
                                                             "calling_ae")
        ):
            return False
        return self.study is None or self.study in (fields.get("studies") or [])

    def describe(self) -> str:
        """The selection as an Audit Log Used record quotes it."""
        parts = [f"{name}={value.isoformat() if isinstance(value, datetime) else value}"
                 for name, value in (("since", self.since), ("event", self.event),
                                     ("identity", self.identity), ("study", self.study),
                                     ("until", self.until))
                 if value is not None]
        return " ".join(parts) or "everything"


def event_selector(value: str) -> str:
    """The spelling the trail records of an event code (``110112``), its meaning (``Query``)
    or an event type (``login``), whatever its case, for ``AuditFilter.event``, which
    matches exactly. Raises ValueError, naming what is accepted, for any other value: a
    mistyped event (``Qurey``, ``query``) selected nothing, and the operator read an empty
    listing as "no such event in the trail"."""
    wanted = value.strip().casefold()
    for code, _scheme, meaning in EVENTS:
        if wanted in (code, meaning.casefold()):
            return code
    for name in EVENT_TYPES:
        if wanted == name:
            return name
    raise ValueError(
        f"{value!r} is no event MIMIC records; give an event code or its meaning ("
        + ", ".join(f"{code} {meaning}" for code, _scheme, meaning in EVENTS)
        + ") or an event type (" + ", ".join(EVENT_TYPES) + ")")


def read_file(path: Path, selection: AuditFilter) -> list[dict[str, Any]]:
    """The records of a JSON-lines audit file that match; lines written before the audit
    messages (no ``xml``) are skipped."""
    return list(_matching(path, selection))


def _matching(path: Path, selection: AuditFilter) -> Iterator[dict[str, Any]]:
    """Each record of the file that matches, oldest first, as it is read. Lines are read as
    bytes and each decoded alone: the file opened as UTF-8 text raised UnicodeDecodeError
    at the first undecodable byte (a block of garbage after a crash), and no record of
    the whole trail could be listed (``mimic audit``: a traceback)."""
    if not path.exists():
        return
    with open(path, "rb") as fh:
        for line in fh:
            for entry in records_in_line(line):
                if "xml" in entry and selection.matches(entry):
                    yield entry


#: How every record :class:`FileSink` writes begins (a JSON string can hold these bytes only
#: escaped, so they begin a record wherever they stand in a line).
_RECORD_START = b'{"EventDateTime":'


def records_in_line(line: bytes) -> Iterator[dict[str, Any]]:
    """The records (JSON objects) a line of the audit file holds: one, or none for a line
    cut short or of garbage; and after a record cut short, the one appended behind it.

    A process killed in its ``write`` of a record leaves the bytes written so far (a kill
    lands between two pages of a long write: a worker killed for memory, or by its
    supervisor), without their newline, and whichever process writes next appends its
    record to that line: skipped whole, the line lost that record too, whole as it was."""
    try:
        entry = json.loads(line)
    except ValueError:  # UnicodeDecodeError too
        entry = None
    else:
        if isinstance(entry, dict):
            yield entry
        return
    start = line.find(_RECORD_START, 1)
    while start != -1:
        end = line.find(_RECORD_START, start + 1)
        try:
            entry = json.loads(line[start:end if end != -1 else len(line)])
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            yield entry
        start = end


def read_file_newest(path: Path, selection: AuditFilter,
                     limit: int | None) -> list[dict[str, Any]]:
    """The newest ``limit`` records (None: all) of a JSON-lines audit file that match,
    newest first, their index fields only (not the message, nor the details): the file is
    streamed through a deque of ``limit`` entries. The console's audit page held every
    record of the trail with its message to keep the newest 500."""
    kept: deque[dict[str, Any]] = deque(
        ({k: entry.get(k) for k in INDEX_FIELDS} for entry in _matching(path, selection)),
        maxlen=limit)
    kept.reverse()
    return list(kept)
