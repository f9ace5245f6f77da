"""SQLite writers in several processes: the writer lock (``index/engine.py``) on and off.

``mimic serve``'s worker processes share one SQLite index. This times
``SqlIndex.upsert_instance`` alone (group commit on, as in the server) from ``--processes``
processes with ``--threads`` threads each (a thread per association), ``--count`` instances per
thread, into one fresh database file per run, with the ``flock`` writer lock (on) and with
SQLite's busy timeout alone (off: its busy handler sleeps 1, 2, 5, 10 ... ms and tries again).
The two alternate run by run (on, off, off, on, ...), so a machine whose speed drifts treats
both alike. Reported per setting: the median instances/s, commits per instance (group commit's
batches), the processes' CPU per instance, and the time spent waiting to begin a write
transaction (lock, busy handler and ``BEGIN IMMEDIATE``): per instance, and the longest wait.

    .venv/bin/python bench/sqlite_writers.py [--rounds 4] [--processes 2] [--threads 2]
        [--count 150]

Results are printed and written to ``bench/results/sqlite_writers.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "sqlite_writers.json"
PREFIX = "1.2.826.0.1.3680043.8.498.79."
COMMON = {"transfer_syntax_uid": "1.2.840.10008.1.2.1", "sha256": "0" * 64, "size": 1,
          "received_from": "bench"}


def writer(url: str, lock: bool, first: int, threads: int, count: int,
           start: Any, out: Any) -> None:
    """One worker process: ``threads`` threads upserting ``count`` instances each."""
    import pydicom

    from mimic_server.index.attributes import InstanceAttributes
    from mimic_server.index.engine import create_index_engine
    from mimic_server.index.repository import SqlIndex
    from tests.data import ct_small

    engine = create_index_engine(url, writer_lock=lock)
    index = SqlIndex(engine)
    committer = index.committer
    assert committer is not None
    begin = committer._begin
    begin_wait = [0.0, 0.0]  # total, longest

    def timed_begin() -> Any:  # the wait for the write lock (or the busy handler's sleeps)
        t0 = time.perf_counter()
        try:
            return begin()
        finally:
            waited = time.perf_counter() - t0
            begin_wait[0] += waited
            begin_wait[1] = max(begin_wait[1], waited)

    committer._begin = timed_begin  # type: ignore[method-assign]
    ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    work: list[list[InstanceAttributes]] = []
    for t in range(threads):
        items = []
        for i in range(count):
            ds.SeriesInstanceUID = f"{PREFIX}1.{first}.{t}.{i // 50}"
            ds.SOPInstanceUID = f"{PREFIX}2.{first}.{t}.{i}"
            items.append(InstanceAttributes.from_header(ds))
        work.append(items)
    errors: list[str] = []

    def run(items: list[InstanceAttributes]) -> None:
        for attrs in items:
            try:
                index.upsert_instance(attrs, object_key=attrs.sop_instance_uid, **COMMON)
            except Exception as exc:  # counted: the benchmark fails on any
                errors.append(repr(exc.__cause__ or exc))

    pool = [threading.Thread(target=run, args=(items,)) for items in work]
    start.wait()
    cpu0 = time.process_time()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put({"cpu": time.process_time() - cpu0, "batches": committer.batches,
             "instances": committer.instances, "begin_wait": begin_wait[0],
             "longest_begin_wait": begin_wait[1],
             "errors": errors})
    index.close()
    engine.dispose()


def run_once(lock: bool, processes: int, threads: int, count: int) -> dict[str, float]:
    from mimic_server.index import schema
    from mimic_server.index.engine import create_index_engine

    with tempfile.TemporaryDirectory(prefix="mimic-sqlite-writers-") as tmp:
        url = f"sqlite:///{tmp}/index.sqlite3"
        engine = create_index_engine(url)
        schema.upgrade(engine)
        engine.dispose()
        ctx = multiprocessing.get_context("spawn")
        start = ctx.Barrier(processes + 1)
        out = ctx.Queue()
        procs = [ctx.Process(target=writer, args=(url, lock, p, threads, count, start, out))
                 for p in range(processes)]
        for p in procs:
            p.start()
        start.wait()
        t0 = time.perf_counter()
        reports = [out.get(timeout=600) for _ in procs]
        seconds = time.perf_counter() - t0
        for p in procs:
            p.join(60)
        errors = [e for r in reports for e in r["errors"]]
        if errors:
            raise SystemExit(f"{len(errors)} upserts failed, e.g. {errors[0]}")
        total = processes * threads * count
        return {
            "instances_per_s": total / seconds,
            "commits_per_instance": sum(r["batches"] for r in reports) / total,
            "cpu_ms_per_instance": 1000 * sum(r["cpu"] for r in reports) / total,
            "begin_wait_ms_per_instance": 1000 * sum(r["begin_wait"] for r in reports) / total,
            "longest_begin_wait_ms": 1000 * max(r["longest_begin_wait"] for r in reports),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="threads per process")
    parser.add_argument("--count", type=int, default=150, help="instances per thread")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for r in range(args.rounds):
        order = ("on", "off") if r % 2 == 0 else ("off", "on")
        for setting in order:
            result = run_once(setting == "on", args.processes, args.threads, args.count)
            runs[setting].append(result)
            print(f"round {r + 1}/{args.rounds} lock {setting:3} "
                  + "  ".join(f"{k} {v:.2f}" for k, v in result.items()), flush=True)
    summary = {setting: {k: round(statistics.median(r[k] for r in results), 3)
                         for k in results[0]} for setting, results in runs.items()}
    ratio = summary["on"]["instances_per_s"] / summary["off"]["instances_per_s"]
    print(f"\nmedian of {args.rounds} rounds, {args.processes} processes x {args.threads} "
          f"threads x {args.count} instances:")
    for setting, figures in summary.items():
        print(f"  lock {setting:3} " + "  ".join(f"{k} {v}" for k, v in figures.items()))
    print(f"  lock on / off, instances/s: {ratio:.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"arguments": {**vars(args), "output": str(args.output)},
                                       "median": summary,
                                   "ratio_on_off": round(ratio, 3), "runs": runs},
                                  indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
