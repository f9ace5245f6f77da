"""CPU time per object of the ingest path, in process, over real PostgreSQL + file store.

The wall clock of this shared 2-core machine drifts by up to ~1.7x from minute to minute;
the CPU time a thread spends on one object does not depend on what else runs (much less so).
This drives what a C-STORE handler does after the data set has arrived (``dimse/store.py``
-> ``archive/ingest.py``: File Meta, walk, header parse, SHA-256, DICOM JSON, index
attributes, the audit record, the file store put with its fsyncs, the index upsert with the
audit row in one transaction) in a loop on one thread, and reports per object:

- the CPU time of the process (``time.process_time``: this thread and the put's helper), in
  total and per phase;
- the wall time per phase (the waits: fsyncs, the PostgreSQL round trips and commit).

Interleaved rounds of ``--count`` objects; the median over rounds is printed. ``--variants``
switches fast paths off for some rounds, to compare a change with what it replaced in one
run: ``before`` (the put before the transaction and the instance insert through SQLAlchemy),
``serial-put``, ``sqlalchemy-insert``; ``pydicom-header`` (the received header read
through pydicom's ``Dataset``); ``before-audit`` (the next three together),
``sqlalchemy-audit`` (the audit row through SQLAlchemy), ``pre-ping`` (a ping before every
transaction), ``lxml-audit`` (the audit message as an lxml tree), ``pglz-header`` (headers
compressed with PostgreSQL's default pglz, before migration 0004), ``hash-first`` (every
data set hashed when received, none beside its put). ``--whole`` measures
``archive.ingest.ingest`` as one phase after ``received``, as a C-STORE calls it. On
PostgreSQL the CPU of the database's backends is reported per object too (``database``,
beside the process's phases; not in ``total``). PostgreSQL is
the server on 127.0.0.1:5432 (``--postgres``); a fresh database per run, dropped afterwards;
``--index sqlite`` measures the embedded default's SQLite index instead.

    .venv/bin/python bench/ingest_cpu.py                    # small and large, 300 each
    .venv/bin/python bench/ingest_cpu.py --kind small --count 500 --rounds 5
    .venv/bin/python bench/ingest_cpu.py --profile         # cProfile of one round, top 30
    .venv/bin/python bench/ingest_cpu.py --variants pydicom-header,current  # before / after
    .venv/bin/python bench/ingest_cpu.py --index-only --variants current,unkept-connection
    .venv/bin/python bench/ingest_cpu.py --whole --index sqlite
    .venv/bin/python bench/ingest_cpu.py --kind both --count 100 --rounds 8 \
        --variants current,before-audit,sqlalchemy-audit,pre-ping,lxml-audit
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pickle
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.latency import database_cpu, database_cpu_delta  # noqa: E402
from mimic_server.archive import ingest as ingest_module  # noqa: E402
from mimic_server.archive.ingest import ReceivedObject, ingest, keep  # noqa: E402
from mimic_server.archive.ingest_audit import prepare_received  # noqa: E402
from mimic_server.codec import dicom_json  # noqa: E402
from mimic_server.codec.file_meta import encode_file_meta  # noqa: E402
from mimic_server.codec.header import parse_header  # noqa: E402
from mimic_server.codec.structure import check_structure  # noqa: E402
from mimic_server.index import schema  # noqa: E402
from mimic_server.index.attributes import InstanceAttributes  # noqa: E402
from mimic_server.index.audit_table import AuditTable  # noqa: E402
from mimic_server.index.engine import create_index_engine  # noqa: E402
from mimic_server.index.repository import SqlIndex  # noqa: E402
from mimic_server.security.audit import AuditLog  # noqa: E402
from mimic_server.security.audit_records import Archive as AuditedArchive  # noqa: E402
from mimic_server.storage.filesystem import FilesystemStore  # noqa: E402

PREFIX = "1.2.826.0.1.3680043.10.511."
REQUESTOR = {
    "peer": "127.0.0.1:40000", "identity": "CN=bench-modality", "trust_name": "bench",
    "calling_ae": "STORESCU", "called_ae": "MIMIC", "service": "C-STORE", "user": None,
}
PHASES = ("received", "attributes", "audit", "put", "index")


def datasets(kind: str, count: int, batch: str,
             cache_dir: Path | None = None) -> list[tuple[str, str, str, bytes]]:
    """``count`` data sets (class UID, instance UID, transfer syntax, bytes as on the wire):
    CT_small.dcm copies (~39 KB) or 512x512 16-bit CT images (~525 KB). With ``cache_dir``
    (``--cache-inputs``) kept there for the next run (each run has a fresh database): a run
    under valgrind then counts the ingest, not the making of its input."""
    if cache_dir is None:
        return _make(kind, count)
    cache = cache_dir / f"mimic-ingest-cpu-{kind}-{count}-{batch}.pickle"
    if cache.exists():
        return pickle.loads(cache.read_bytes())  # our own file
    made = _make(kind, count)
    cache.write_bytes(pickle.dumps(made))
    return made


def _make(kind: str, count: int) -> list[tuple[str, str, str, bytes]]:
    source = Path(pydicom.data.DATA_ROOT) / "test_files" / "CT_small.dcm"
    template = pydicom.dcmread(source)
    if kind == "large":
        template.Rows = template.Columns = 512
        template.PixelData = bytes(range(256)) * (512 * 512 * 2 // 256)
    studies = [generate_uid(PREFIX) for _ in range(4)]
    series = [[generate_uid(PREFIX) for _ in range(2)] for _ in studies]
    out = []
    for n in range(count):
        ds = template.copy()
        ds.StudyInstanceUID = studies[n % 4]
        ds.SeriesInstanceUID = series[n % 4][n % 2]
        ds.SOPInstanceUID = generate_uid(PREFIX)
        ds.InstanceNumber = n + 1
        buffer = io.BytesIO()
        pydicom.filewriter.write_dataset(pydicom.filebase.DicomFileLike(buffer), ds)
        syntax = str(template.file_meta.TransferSyntaxUID)
        out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax, buffer.getvalue()))
    return out


class Clock:
    """Thread CPU and wall time per phase."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)

    def run(self, phase: str, fn: Callable[[], Any]) -> Any:
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            return fn()
        finally:
            self.cpu[phase] += time.process_time() - c0
            self.wall[phase] += time.perf_counter() - w0


def one_round(objects: list[tuple[str, str, str, bytes]], store: FilesystemStore,
              index: SqlIndex, audit_log: AuditLog, index_only: bool = False,
              whole: bool = False) -> Clock:
    """``index_only``: the last phase is the index upsert alone (with its audit row), no put.
    ``whole``: after ``received``, one phase ``ingest`` (``archive.ingest.ingest``: the
    attributes, the audit record, the put and the index, overlapped as a C-STORE runs them).
    """
    clock = Clock()
    for sop_class, sop_instance, syntax, data in objects:
        def received(sop_class: str = sop_class, sop_instance: str = sop_instance,
                     syntax: str = syntax, data: bytes = data) -> ReceivedObject:
            meta = encode_file_meta(sop_class, sop_instance, syntax, "STORESCU")
            return ReceivedObject.of(meta, memoryview(data), syntax)

        obj = clock.run("received", received)
        if whole:
            clock.run("ingest", lambda obj=obj, sop_class=sop_class, sop_instance=sop_instance:
                      ingest(store, index, obj, sop_class_uid=sop_class,
                             sop_instance_uid=sop_instance, received_from="CN=bench-modality",
                             audit_record=lambda found: prepare_received(audit_log, found,
                                                                         REQUESTOR)))
            continue
        attrs = clock.run("attributes", lambda obj=obj: InstanceAttributes.from_header(obj.header))
        record = clock.run("audit", lambda attrs=attrs: prepare_received(audit_log, attrs,
                                                                         REQUESTOR))
        if index_only:
            clock.run("index", lambda obj=obj, attrs=attrs, record=record:
                      index.upsert_instance(
                          attrs, transfer_syntax_uid=obj.transfer_syntax_uid,
                          object_key=f"bench/{attrs.sop_instance_uid}", sha256=obj.digest(),
                          size=obj.size, received_from="CN=bench-modality",
                          in_transaction=record.write_in if record is not None else None))
            continue
        clock.run("put+index", lambda obj=obj, attrs=attrs, record=record: keep(
            store, index, obj, attrs, "CN=bench-modality", record))
    return clock


def _summary(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    phases = list(rounds[0]["cpu"])
    summary = {
        "cpu_ms": {p: statistics.median(r["cpu"][p] for r in rounds) for p in phases},
        "wall_ms": {p: statistics.median(r["wall"][p] for r in rounds) for p in phases},
    }
    summary["cpu_ms"]["total"] = statistics.median(
        sum(v for p, v in r["cpu"].items() if p != "database") for r in rounds)
    summary["wall_ms"]["total"] = statistics.median(sum(r["wall"].values()) for r in rounds)
    return summary


@contextlib.contextmanager
def _switched(target: Any, **values: Any) -> Iterator[None]:
    """``target`` (the index, the audit table, a module) with some of its fast paths switched
    off for a round (``--variants``)."""
    saved = {name: getattr(target, name) for name in values}
    try:
        for name, value in values.items():
            setattr(target, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(target, name, value)


@contextlib.contextmanager
def _all(*switches: contextlib.AbstractContextManager[None]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for switch in switches:
            stack.enter_context(switch)
        yield


def _lxml_audit(_index: SqlIndex, _table: AuditTable) -> contextlib.AbstractContextManager[None]:
    """The audit message built as an lxml tree and serialised (the builder kept as the
    tests' oracle), and the address check of its participants uncached: as before."""
    from mimic_server.security import audit_records
    from tests import audit_message_lxml

    return _all(_switched(audit_records, am=audit_message_lxml,
                          _looks_like_ip=audit_records._looks_like_ip.__wrapped__))


def _pre_ping(index: SqlIndex, _table: AuditTable) -> contextlib.AbstractContextManager[None]:
    """A ping before every transaction (``pool_pre_ping=True``, as before)."""
    return _switched(index.engine.pool, _pre_ping=True)


def _sqlalchemy_audit(_index: SqlIndex,
                      table: AuditTable) -> contextlib.AbstractContextManager[None]:
    """The audit row through SQLAlchemy's execute (as before)."""
    return _switched(table, _driver_insert=None)


def _walk_then_dataset(dataset: memoryview, syntax: UID) -> Dataset:
    check_structure(dataset, syntax)
    return parse_header(dataset, syntax)


@contextlib.contextmanager
def _pydicom_header(_index: SqlIndex, _table: AuditTable) -> Iterator[None]:
    """As before the scanned header: the whole structure walk, then the header as pydicom's
    ``Dataset`` of raw elements (``parse_header``), whose DICOM JSON and index keys then go
    through the Dataset (the per-VR readers are today's in both)."""
    saved = ingest_module.read_checked_header
    ingest_module.read_checked_header = _walk_then_dataset  # type: ignore[assignment]
    try:
        yield
    finally:
        ingest_module.read_checked_header = saved


@contextlib.contextmanager
def _unkept_connection(index: SqlIndex, _table: AuditTable) -> Iterator[None]:
    """Every batch checks its connection out of the pool and gives it back after its commit
    (as before): the group commit keeps none for the next batch."""
    committer = index.committer
    assert committer is not None
    committer.close()  # and no batch keeps one while closed
    try:
        yield
    finally:
        committer._closed = False


@contextlib.contextmanager
def _pglz_header(index: SqlIndex, _table: AuditTable) -> Iterator[None]:
    """Headers compressed with PostgreSQL's default ``pglz`` (before migration 0004)."""
    if index.engine.dialect.name != "postgresql":
        yield
        return
    with index.engine.begin() as conn:
        before = conn.exec_driver_sql(
            "SELECT attcompression FROM pg_attribute "
            "WHERE attrelid = 'instances'::regclass AND attname = 'header'").scalar_one()
        conn.exec_driver_sql("ALTER TABLE instances ALTER COLUMN header SET COMPRESSION pglz")
    method = {"l": "lz4", "p": "pglz"}.get(before, "DEFAULT")  # as the migration left it
    try:
        yield
    finally:
        with index.engine.begin() as conn:
            conn.exec_driver_sql(
                f"ALTER TABLE instances ALTER COLUMN header SET COMPRESSION {method}")


def _never(_attrs: object) -> bool:
    return False


#: What each variant switches off: the earlier paths, to measure a change in one run.
VARIANTS: dict[str, Callable[[SqlIndex, AuditTable],
                             contextlib.AbstractContextManager[None]]] = {
    "current": lambda index, table: _switched(index),
    "serial-put": lambda index, table: _switched(index, overlaps_put=_never),
    "sqlalchemy-insert": lambda index, table: _switched(index, _driver_insert=None),
    "before": lambda index, table: _switched(index, overlaps_put=_never, _driver_insert=None,
                                             _insert_with_audit=None),
    "pydicom-header": _pydicom_header,
    "sqlalchemy-audit": _sqlalchemy_audit,
    "pre-ping": _pre_ping,
    "lxml-audit": _lxml_audit,
    # Every element of the header read again: no entry kept from the instance before.
    "unremembered-json": lambda index, table: _switched(dicom_json, _LAST={}, _LAST_LIMIT=-1),
    "unkept-connection": _unkept_connection,
    "pglz-header": _pglz_header,
    # PostgreSQL: every C-STORE in a transaction (BEGIN, two inserts, COMMIT), not one statement.
    "transaction": lambda index, table: _switched(index, _insert_with_audit=None),
    # Every data set hashed when it is received, before the put (no hash beside the put).
    "hash-first": lambda index, table: _switched(ingest_module, HASH_BESIDE_PUT=1 << 62),
    "before-audit": lambda index, table: _all(
        _sqlalchemy_audit(index, table), _pre_ping(index, table), _lxml_audit(index, table)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("small", "large", "both"), default="both")
    parser.add_argument("--count", type=int, default=300, help="objects per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--index", choices=("postgresql", "sqlite"), default="postgresql",
                        help="the index database: PostgreSQL (--postgres) or a SQLite file "
                        "(the embedded default's)")
    parser.add_argument("--no-fsync", action="store_true", help="file store without fsync")
    parser.add_argument("--profile", action="store_true", help="cProfile one round")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--cache-inputs", type=Path, metavar="DIR",
                        help="keep the generated objects here for the next run (valgrind)")
    parser.add_argument("--index-only", action="store_true",
                        help="no put: the last phase is the index upsert alone")
    parser.add_argument("--whole", action="store_true",
                        help="one phase 'ingest' after 'received': attributes, audit record, "
                        "put and index as a C-STORE overlaps them")
    parser.add_argument("--variants", default="current",
                        help=f"comma-separated, interleaved per round: {', '.join(VARIANTS)}")
    args = parser.parse_args()

    name = f"mimic_cpu_{uuid.uuid4().hex[:8]}"
    sqlite_dir = tempfile.TemporaryDirectory(prefix="mimic-cpu-index-")
    if args.index == "sqlite":
        engine = create_index_engine(f"sqlite:///{sqlite_dir.name}/index.sqlite3")
    else:
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = args.postgres.rsplit("/", 1)[0] + "/" + name
        engine = create_index_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    results: dict[str, Any] = {}
    measure_database = args.index == "postgresql"
    try:
        schema.upgrade(engine)
        index = SqlIndex(engine)
        table = AuditTable(engine)
        audit_log = AuditLog(None, sinks=[table], transactional=table,
                             archive=AuditedArchive("MIMIC", host="bench"))
        with tempfile.TemporaryDirectory(prefix="mimic-cpu-") as tmp:
            store = FilesystemStore(Path(tmp) / "objects", fsync=not args.no_fsync)
            kinds = ("small", "large") if args.kind == "both" else (args.kind,)
            variants = args.variants.split(",")
            for kind in kinds:
                warm = datasets(kind, 20, "warm", args.cache_inputs)
                for variant in variants:
                    with VARIANTS[variant](index, table):
                        one_round(warm, store, index, audit_log,  # caches, connections
                                  args.index_only, args.whole)
                rounds: dict[str, list[dict[str, dict[str, float]]]] = defaultdict(list)
                for n in range(args.rounds):
                    # Rotate the order: a drift of the machine touches every variant.
                    for variant in variants[n % len(variants):] + variants[:n % len(variants)]:
                        objects = datasets(kind, args.count, f"{n}-{variant}",
                                           args.cache_inputs)
                        profiler = cProfile.Profile() if args.profile else None
                        database_before = database_cpu(name) if measure_database else {}
                        with VARIANTS[variant](index, table):
                            if profiler is not None:
                                profiler.enable()
                            clock = one_round(objects, store, index, audit_log,
                                              args.index_only, args.whole)
                            if profiler is not None:
                                profiler.disable()
                                print(f"--- {kind}, {variant}")
                                stats = pstats.Stats(profiler).sort_stats("tottime")
                                stats.print_stats(30)
                                stats.sort_stats("cumulative").print_stats(40)
                        if measure_database:  # its backends (the WAL writer's share not)
                            used = database_cpu_delta(database_before, database_cpu(name))
                            clock.cpu["database"] = used
                            clock.wall["database"] = 0.0
                        rounds[variant].append({
                            "cpu": {k: v / args.count * 1e3 for k, v in clock.cpu.items()},
                            "wall": {k: v / args.count * 1e3 for k, v in clock.wall.items()},
                        })
                    args.profile = False
                results[kind] = {}
                for variant in variants:
                    summary = _summary(rounds[variant])
                    results[kind][variant] = summary
                    print(f"{kind}, {variant}: {args.count} objects x {args.rounds} rounds, "
                          "median ms/object")
                    print(f"  {'phase':<12}{'CPU':>8}{'wall':>8}")
                    for p in summary["cpu_ms"]:
                        print(f"  {p:<12}{summary['cpu_ms'][p]:8.3f}"
                              f"{summary['wall_ms'][p]:8.3f}")
            store.close()
            index.close()
    finally:
        engine.dispose()
        sqlite_dir.cleanup()
        if args.index == "postgresql":
            with psycopg.connect(args.postgres, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
