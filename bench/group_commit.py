"""What group commit is worth: MIMIC with ``MIMIC_GROUP_COMMIT`` on and off, interleaved.

Uses ``store_throughput``'s objects, senders and MIMIC receiver (dcmtk ``storescu``,
``TCP_NODELAY=1``, mutual TLS, counts verified after every run). For each index (embedded
SQLite; PostgreSQL when ``--database-url`` names a server: a fresh database per run) and each
number of associations, the two settings alternate run by run (on, off, off, on, ...), so
that a machine whose speed drifts (shared, noisy) treats both alike. Reported: the best and
the median of the rounds.

    .venv/bin/python bench/group_commit.py [--rounds N] [--count N] [--large N]
        [--database-url postgresql://postgres@127.0.0.1:5432/postgres] [--index-only]

``--index-only`` times ``SqlIndex.upsert_instance`` alone (an audit row each) from one thread
per association, ``--count`` instances each: the part group commit changes, without the DICOM
stack around it, and far less exposed to the machine's noise.

Results are printed and written to ``bench/results/group_commit.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg

from bench import store_throughput as st

RESULTS = st.ROOT / "bench" / "results" / "group_commit.json"
#: Settings of the runs with group commit on (``--in-flight``).
EXTRA_ON: dict[str, str] = {}


class Mimic(st.MimicServer):
    """``store_throughput``'s MIMIC receiver with the group commit setting and, with a
    PostgreSQL server, a fresh database per run (made as an operator would:
    ``mimic db upgrade``) instead of the embedded index."""

    postgres_server: str | None = None
    extra_env: dict[str, str] = {}

    def __init__(self, workdir: Path, pki: st.Pki | None) -> None:
        super().__init__(workdir, pki)
        self.database: str | None = None

    def start(self) -> None:
        if self.postgres_server is not None:
            self.database = _create_database(self.postgres_server)
        super().start()

    def stop(self) -> None:
        super().stop()
        if self.postgres_server is not None and self.database is not None:
            _drop_database(self.postgres_server, self.database)
            self.database = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        cmd, env = super().command()
        env.update(self.extra_env, MIMIC_OPS_PORT="0")
        if self.database is not None:
            env["MIMIC_DATABASE_URL"] = self.database
        return cmd, env

    def count(self) -> int:
        if self.database is None:
            return super().count()
        url = self.database.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM instances").fetchone()
            return int(row[0]) if row else 0


def _create_database(server_url: str) -> str:
    """A fresh database on the PostgreSQL server at the current schema; its SQLAlchemy URL."""
    name = f"mimic_bench_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{server_url.rsplit('/', 1)[0]}/{name}".replace(
        "postgresql://", "postgresql+psycopg://")
    out = subprocess.run([*st.MIMIC[:-1], "db", "upgrade", "--database-url", url],
                         capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "MIMIC_OPS_PORT": "0"})
    if out.returncode != 0:
        _drop_database(server_url, url)
        raise st.BenchError(f"mimic db upgrade failed: {out.stderr}")
    return url


def _drop_database(server_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(data: st.DataSet, associations: int, pki: st.Pki | None, work: Path, database: str | None,
        group_commit: bool, n: int) -> float:
    Mimic.postgres_server = database
    Mimic.extra_env = {"MIMIC_GROUP_COMMIT": "true" if group_commit else "false",
                       **(EXTRA_ON if group_commit else {})}
    server = Mimic(work / f"mimic-{n}", pki)
    try:
        return st.measure_once(server, data, associations, work)
    finally:
        shutil.rmtree(server.workdir, ignore_errors=True)


def index_only(database: str | None, threads: int, per_thread: int, group_commit: bool,
               work: Path, n: int, in_flight: int | None = None) -> float:
    """Instances/s of ``SqlIndex.upsert_instance`` alone (with an audit row each, as in the
    PostgreSQL configuration) from ``threads`` threads: the part group commit changes,
    without the DICOM stack around it."""
    import copy
    import threading
    from datetime import UTC, datetime
    from types import SimpleNamespace

    import pydicom.data
    from pydicom.uid import generate_uid

    from mimic_server.index import schema
    from mimic_server.index.attributes import InstanceAttributes
    from mimic_server.index.audit_table import AuditTable
    from mimic_server.index.engine import create_index_engine
    from mimic_server.index.repository import SqlIndex

    url = (_create_database(database) if database
           else f"sqlite:///{work / f'index-{n}.sqlite3'}")
    engine = create_index_engine(url)
    try:
        if not database:
            schema.upgrade(engine)
        index = SqlIndex(engine, group_commit=group_commit, in_flight=in_flight)
        base = pydicom.dcmread(Path(pydicom.data.DATA_ROOT) / "test_files" / "CT_small.dcm",
                               stop_before_pixels=True)
        entry = SimpleNamespace(when=datetime.now(UTC), event_code="110104", event_type=None,
                                outcome=0, identity="bench", trust_name=None, calling_ae="B",
                                user=None, studies=(str(base.StudyInstanceUID),),
                                xml="<AuditMessage/>" * 100)
        attrs = []
        for _ in range(threads * per_thread):
            ds = copy.deepcopy(base)
            ds.SOPInstanceUID = generate_uid(st.UID_PREFIX)
            attrs.append(InstanceAttributes.from_header(ds))

        def sender(part: list[InstanceAttributes]) -> None:
            for a in part:
                index.upsert_instance(
                    a, transfer_syntax_uid="1.2.840.10008.1.2.1", object_key=a.sop_instance_uid,
                    sha256="0" * 64, size=1, received_from="bench",
                    in_transaction=lambda conn: AuditTable.write_in(conn, entry))

        workers = [threading.Thread(target=sender, args=(attrs[i::threads],))
                   for i in range(threads)]
        start = time.perf_counter()
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        seconds = time.perf_counter() - start
        if index.count_instances() != len(attrs):
            raise st.BenchError("index holds fewer instances than were upserted")
        index.close()
        return len(attrs) / seconds
    finally:
        engine.dispose()
        if database:
            _drop_database(database, url)


def _summarize(row: dict[str, object], rates_by_setting: dict[bool, list[float]]) -> None:
    """Best and median instances/s of each setting into ``row``, and print it."""
    figures = {}
    for on, label in ((True, "on"), (False, "off")):
        rates = sorted(rates_by_setting[on])
        figures[label] = {"best": round(rates[-1], 1),
                          "median": round(statistics.median(rates), 1),
                          "runs_inst_s": [round(x, 1) for x in rates]}
    row.update(figures)
    row["ratio_best"] = round(figures["on"]["best"] / figures["off"]["best"], 3)
    row["ratio_median"] = round(figures["on"]["median"] / figures["off"]["median"], 3)
    print(f"{row['index']:10} {row['data']:5} {row['associations']} assoc: on best "
          f"{figures['on']['best']:7.1f} median {figures['on']['median']:7.1f} | off best "
          f"{figures['off']['best']:7.1f} median {figures['off']['median']:7.1f} inst/s | "
          f"x{row['ratio_best']:.2f} (medians x{row['ratio_median']:.2f})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each setting")
    parser.add_argument("--count", type=int, default=600, help="small objects per run")
    parser.add_argument("--large", type=int, default=0, help="large objects per run (0: none)")
    parser.add_argument("--associations", default="1,4", help="comma-separated: 1 and/or 4")
    parser.add_argument("--database-url", metavar="URL",
                        help="also PostgreSQL: a server to create a database on per run")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--index-only", action="store_true",
                        help="upsert_instance alone from threads (one per association), "
                        "--count instances per thread, no DICOM")
    parser.add_argument("--in-flight", type=int, metavar="N",
                        help="MIMIC_GROUP_COMMIT_IN_FLIGHT of the runs with group commit "
                        "(default: MIMIC's own)")
    args = parser.parse_args()
    if args.in_flight:
        EXTRA_ON["MIMIC_GROUP_COMMIT_IN_FLIGHT"] = str(args.in_flight)
    indexes: list[tuple[str, str | None]] = [("embedded", None)]
    if args.database_url:
        indexes.append(("postgresql", args.database_url))
    counts = [int(a) for a in args.associations.split(",")]
    results = []
    with st.terminated_as_exit(), tempfile.TemporaryDirectory(prefix="mimic-gc-") as tmp:
        work = Path(tmp)
        sets = [] if args.index_only else [st.make_small(work / "in" / "small", args.count)]
        if args.large and not args.index_only:
            sets.append(st.make_large(work / "in" / "large", args.large))
        pki = None if args.index_only else st.make_pki(work / "pki")
        before = st.machine()
        n = 0
        try:
            for index, database in indexes:
                if args.index_only:
                    for threads in counts:
                        got: dict[bool, list[float]] = {True: [], False: []}
                        for r in range(args.rounds):
                            for on in (True, False) if r % 2 == 0 else (False, True):
                                n += 1
                                got[on].append(index_only(database, threads, args.count, on,
                                                          work, n, args.in_flight))
                        row = {"index": index, "data": "upsert_instance only",
                               "count": threads * args.count, "associations": threads}
                        _summarize(row, got)
                        results.append(row)
                    continue
                for data in sets:
                    for associations in counts:
                        runs: dict[bool, list[float]] = {True: [], False: []}
                        for r in range(args.rounds):
                            order = (True, False) if r % 2 == 0 else (False, True)
                            for on in order:
                                n += 1
                                runs[on].append(run(data, associations, pki, work, database,
                                                    on, n))
                        row = {"index": index, "data": data.name, "count": data.count,
                               "associations": associations}
                        _summarize(row, {on: [data.count / s for s in runs[on]]
                                         for on in runs})
                        results.append(row)
        except st.BenchError as exc:
            print(f"BENCHMARK FAILED: {exc}", file=sys.stderr)
            return 1
        out = {"machine": before, "loadavg_at_end": st.machine()["loadavg_1_5_15"],
               "command": " ".join([".venv/bin/python", "bench/group_commit.py",
                                    *sys.argv[1:]]),
               "rounds": args.rounds, "tls": True, "results": results,
               "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(out, indent=2) + "\n")
        print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
