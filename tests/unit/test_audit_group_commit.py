"""``GroupCommitSink``: the audit records of concurrent callers share commits, and each
caller's ``write`` returns only once its own record has committed (or raises as its own
write would have); a failing batch fails only the bad record's caller. On the real table
(SQLite here; PostgreSQL is the configuration that uses it) every record is kept once."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from mimic_server.index import schema
from mimic_server.index.audit_table import AuditTable, read_table
from mimic_server.security import audit
from mimic_server.security.audit import AuditLog, GroupCommitSink
from mimic_server.security.audit_records import Archive, AuditEntry, build

pytestmark = pytest.mark.timeout(60)


def _entry(n: int) -> AuditEntry:
    return build(audit.BEGIN_TRANSFERRING, 0, {
        "peer": f"10.0.0.{n % 250}:4000", "identity": "DICOMweb", "service": "WADO-RS",
        "studies": {f"1.2.3.{n}": {"1.2.840.10008.5.1.4.1.1.2": 1}}}, Archive("MIMIC"))


class SlowTable:
    """A batch sink whose commits take a while (as a round trip to PostgreSQL does)."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.committed: list[str] = []
        self.batches: list[int] = []
        self.fail = fail or set()
        #: The first commit is held until the test has every caller waiting.
        self.release = threading.Event()
        self.taken = 0  # records in the commit being held

    def write_batch(self, entries: list[Any]) -> None:
        self.taken = len(entries) if not self.release.is_set() else self.taken
        self.release.wait(10)
        if any(e.studies[0] in self.fail for e in entries):
            raise OSError("constraint violated")
        self.batches.append(len(entries))
        self.committed += [e.studies[0] for e in entries]

    def write(self, entry: Any, details: dict[str, Any]) -> None:
        self.write_batch([entry])

    def close(self) -> None:
        pass


def _concurrently(sink: GroupCommitSink, table: SlowTable,
                  count: int) -> dict[int, BaseException | None]:
    outcome: dict[int, BaseException | None] = {}

    def one(n: int) -> None:
        entry = _entry(n)
        try:
            sink.write(entry, {})
        except Exception as exc:
            outcome[n] = exc
            return
        # Returned: the record has committed already.
        outcome[n] = None if entry.studies[0] in table.committed else AssertionError(n)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    while len(sink._pending) + table.taken < count:  # the writer holds some, the rest wait
        time.sleep(0.01)
    table.release.set()
    for t in threads:
        t.join()
    return outcome


def test_concurrent_records_share_commits_and_each_waits_for_its_own() -> None:
    table = SlowTable()
    sink = GroupCommitSink(table)  # type: ignore[arg-type]
    outcome = _concurrently(sink, table, 40)
    sink.close()
    assert outcome == dict.fromkeys(range(40))
    assert sorted(table.committed) == sorted(f"1.2.3.{n}" for n in range(40))
    # The first commit, then (if any were left) one for all that waited meanwhile.
    assert len(table.batches) <= 2 and sum(table.batches) == 40
    assert sink.commits == len(table.batches) and sink.records == 40


def test_a_bad_record_fails_only_its_own_caller() -> None:
    table = SlowTable(fail={"1.2.3.7"})
    sink = GroupCommitSink(table)  # type: ignore[arg-type]
    outcome = _concurrently(sink, table, 20)
    sink.close()
    assert isinstance(outcome.pop(7), OSError)
    assert outcome == {n: None for n in range(20) if n != 7}
    assert "1.2.3.7" not in table.committed and len(table.committed) == 19


def test_a_failure_is_counted_by_the_audit_log_like_a_sink_failure() -> None:
    table = SlowTable(fail={"1.2.3.0"})
    table.release.set()
    trail = AuditLog(None, sinks=[GroupCommitSink(table)],  # type: ignore[arg-type]
                     archive=Archive("MIMIC"))
    trail.record(audit.BEGIN_TRANSFERRING, 0, peer="10.0.0.1:1", identity="DICOMweb",
                 studies={"1.2.3.0": {"1.2.840.10008.5.1.4.1.1.2": 1}})
    assert trail.failures == 1
    trail.close()


class _Held:
    """Something a caller's frame holds (a received object, a request)."""


def test_a_failed_write_leaves_nothing_for_the_garbage_collector() -> None:
    """The caller's frames are in the failure's traceback: they are freed as the caller
    returns, not when the cyclic garbage collector next runs."""
    table = SlowTable(fail={"1.2.3.0"})
    table.release.set()
    sink = GroupCommitSink(table)  # type: ignore[arg-type]
    held: list[weakref.ref[_Held]] = []

    def caller() -> None:
        mine = _Held()
        held.append(weakref.ref(mine))
        with pytest.raises(OSError, match="constraint violated"):
            sink.write(_entry(0), {})

    enabled = gc.isenabled()
    gc.disable()
    try:
        caller()
        assert held[0]() is None, "the caller's frame lives on in a cycle"
    finally:
        if enabled:
            gc.enable()
        sink.close()


def test_on_the_table_every_record_is_kept_once(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    schema.upgrade(engine)
    sink = GroupCommitSink(AuditTable(engine))
    threads = [threading.Thread(target=sink.write, args=(_entry(n), {})) for n in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    rows = read_table(engine)
    assert sorted(r["studies"][0] for r in rows) == sorted(f"1.2.3.{n}" for n in range(30))
    engine.dispose()


def test_writes_after_close_are_refused() -> None:
    table = SlowTable()
    table.release.set()
    sink = GroupCommitSink(table)  # type: ignore[arg-type]
    sink.close()
    with pytest.raises(OSError, match="closed"):
        sink.write(_entry(1), {})
