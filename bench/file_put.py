"""Puts per second of the file store (``storage/filesystem.py``), by thread count.

    .venv/bin/python bench/file_put.py [--dir DIR] [--size 39000] [--threads 1,4] \
        [--count 150] [--rounds 6] [--baseline PATH] [--json out.json]

A C-STORE of the embedded and PostgreSQL + files configurations waits for its object's put:
the write, the rename into place and the fsyncs. This measures the put alone. Each round runs,
for each thread count and each code (this checkout's store, and with ``--baseline`` the store
of another checkout, e.g. a ``git worktree`` of an earlier commit, the two in alternating
order), a child process that opens a store in a new directory under ``--dir`` (default: the
system's temporary directory; name a directory on the file system to measure, a journalled
ext4 for instance), waits for its spare files, puts ``--count`` objects of ``--size`` random
bytes from each of ``--threads`` threads into one series' directory, reads every object back
and compares it, and removes the directory. It prints the median puts/s of each code and,
with a baseline, the median of the per-round ratios (the figure to read on a VM whose speed
drifts). Figures: docs/benchmarks.md; never a threshold.
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
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def child(code: Path, directory: Path, size: int, threads: int, count: int) -> float:
    """Puts/s of ``code``'s store in a new directory under ``directory``."""
    sys.path.insert(0, str(code))
    from mimic_server.storage.filesystem import FilesystemStore

    payload = os.urandom(size)
    root = directory / f"file-put-{uuid.uuid4().hex}"
    store = FilesystemStore(root)
    try:
        _spares_made(store)
        keys = [[f"ab/1.2.3/1.2.3.4/1.2.3.4.{t}.{n}.{uuid.uuid4().hex[:16]}.dcm"
                 for n in range(count)] for t in range(threads)]

        def put_all(mine: list[str]) -> None:
            for key in mine:
                store.put(key, [payload], None)

        with ThreadPoolExecutor(max_workers=threads) as pool:
            start = time.perf_counter()
            list(pool.map(put_all, keys))  # each thread's list of keys; raises a put's error
            seconds = time.perf_counter() - start
        for mine in keys:
            for key in mine:
                with store.open(key) as fh:
                    if fh.read() != payload:
                        raise SystemExit(f"{key}: not the bytes put")
        if len(list(store.iter_keys())) != threads * count:
            raise SystemExit("the store does not hold every object put")
        return threads * count / seconds
    finally:
        _spares_made(store)  # a spare made after close() would be left behind
        store.close()
        shutil.rmtree(root, ignore_errors=True)


def _spares_made(store: Any) -> None:
    """Wait for the store's spare-making thread to finish its round."""
    deadline = time.monotonic() + 10
    while store._refilling and time.monotonic() < deadline:
        time.sleep(0.01)


def run(code: Path, directory: Path, size: int, threads: int, count: int) -> float:
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(code), "--dir", str(directory),
         "--size", str(size), "--threads", str(threads), "--count", str(count)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{code}: {done.stderr[-2000:]}")
    return float(done.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--size", type=int, default=39_000, help="bytes per object")
    parser.add_argument("--threads", default="1,4", help="comma-separated thread counts")
    parser.add_argument("--count", type=int, default=150, help="objects per thread")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    thread_counts = [int(n) for n in args.threads.split(",")]
    if args.child is not None:
        print(child(args.child, args.dir, args.size, thread_counts[0], args.count))
        return 0
    codes = {"current": ROOT}
    if args.baseline is not None:
        codes["baseline"] = args.baseline.resolve()
    rates: dict[int, dict[str, list[float]]] = {n: {name: [] for name in codes}
                                                 for n in thread_counts}
    for round_number in range(args.rounds):
        order = list(codes) if round_number % 2 == 0 else list(reversed(codes))
        for threads in thread_counts:
            for name in order:
                rates[threads][name].append(
                    run(codes[name], args.dir, args.size, threads, args.count))
    results = []
    for threads, by_code in rates.items():
        line = {"threads": threads, "size": args.size,
                **{name: statistics.median(values) for name, values in by_code.items()},
                "rounds": by_code}
        text = f"{threads} thread(s), {args.size} B: " + ", ".join(
            f"{name} {statistics.median(values):.0f} puts/s" for name, values in by_code.items())
        if "baseline" in by_code:
            ratio = statistics.median(
                c / b for c, b in zip(by_code["current"], by_code["baseline"], strict=True))
            line["ratio"] = ratio
            text += f", current / baseline {ratio:.2f} (median of the rounds' ratios)"
        print(text)
        results.append(line)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
