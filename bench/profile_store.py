"""Where a MIMIC server's time goes while it receives C-STOREs: a py-spy profile, summarised.

Starts ``mimic serve`` (embedded default, mutual TLS, or ``--config mimic-pg-files`` /
``mimic-pg-azurite``), attaches ``py-spy record`` to it (``--subprocesses``: worker processes
too; ``--gil``: only the thread holding the GIL is sampled, i.e. where each process's Python
CPU time goes; ``--all-threads`` samples every thread py-spy does not see as idle), sends
``store_throughput``'s small CT slices (``--kind large``: its CT images) over N associations
with dcmtk ``storescu``, and prints the functions with the most samples on top of the stack
(self) and anywhere in it (inclusive), as a share of all samples.

    .venv/bin/python bench/profile_store.py [--associations 4] [--count 960]

py-spy needs ptrace rights on the server (root, or ``kernel.yama.ptrace_scope=0``). The raw
collapsed stacks are kept in ``bench/results/profile_store.txt`` (flamegraph.pl reads them).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import receivers
from bench.compare import process_tree
from bench.store_throughput import (
    ROOT,
    BenchError,
    DataSet,
    make_large,
    make_pki,
    make_small,
    send,
)

RESULTS = ROOT / "bench" / "results"
PY_SPY = ROOT / ".venv" / "bin" / "py-spy"
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``handle_store (mimic_server/dimse/store.py:123)`` -> ``handle_store (.../store.py)``."""
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "mimic_server/", "lib/python3"):
        if marker in path:
            path = path[path.index(marker):].replace("site-packages/", "")
            break
    return f"{m['func']} ({path})"


def summarise(raw: str, top: int = 20) -> dict[str, object]:
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";") if f]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        self_counts[frames[-1]] += n
        for name in set(frames):
            incl_counts[name] += n
    return {
        "samples": total,
        "self": [(name, round(100 * c / total, 1)) for name, c in self_counts.most_common(top)],
        "inclusive": [(name, round(100 * c / total, 1))
                      for name, c in incl_counts.most_common(top * 2)],
    }


def sampled_send(
    server: receivers.Server, data: DataSet, associations: int, work: Path, *,
    sampler: Callable[[int], list[str]], warm_up: float,
) -> tuple[float, set[int]]:
    """Start ``server``, then the sampler its pid makes (py-spy, perf: ended by SIGINT), and
    send ``data`` over ``associations`` while it samples; the seconds of the send and the
    receiver's processes (itself and its workers). The server is stopped after, and its
    count of instances checked."""
    try:
        server.start()
        assert server.proc is not None
        proc = subprocess.Popen(sampler(server.proc.pid), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(warm_up)
        if proc.poll() is not None:
            raise BenchError(f"{Path(proc.args[0]).name} exited {proc.returncode}: "  # type: ignore[index]
                             f"{proc.stderr.read()}")  # type: ignore[union-attr]
        seconds = send(server, data, associations, work)
        pids = process_tree(server.proc.pid)
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
        stored = server.count()
    finally:
        server.stop()
        receivers.shutdown()
    if stored != data.count:
        raise BenchError(f"{server.label} holds {stored} of {data.count} instances")
    return seconds, pids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--count", type=int, default=960, help="objects sent")
    parser.add_argument("--kind", choices=("small", "large"), default="small",
                        help="CT slices of 39 KB or CT images of 525 KB")
    parser.add_argument("--config", default="mimic-embedded",
                        choices=["mimic-embedded", "mimic-pg-files", "mimic-pg-azurite"])
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--postgres", default=receivers.DEFAULT_POSTGRES)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--all-threads", action="store_true",
                        help="sample every non-idle thread, not only the one holding the GIL")
    parser.add_argument("--native", action="store_true",
                        help="C frames too (py-spy --native): OpenSSL, hashing, the kernel "
                        "calls, with --all-threads also what runs without the GIL")
    args = parser.parse_args()
    if not PY_SPY.exists():
        print("py-spy missing: .venv/bin/pip install -e '.[bench]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mimic-profile-") as tmp:
        work = Path(tmp)
        parts = max(4, args.associations)
        make = make_small if args.kind == "small" else make_large
        data = make(work / "in", args.count - args.count % parts, parts=parts)
        pki = make_pki(work / "pki")
        server = receivers.make_receiver(args.config, work / "run" / "server", pki,
                                         args.postgres)
        raw_path = work / "profile.txt"
        seconds, _ = sampled_send(
            server, data, args.associations, work, warm_up=2.0,  # py-spy attached
            sampler=lambda pid: [
                str(PY_SPY), "record", "--pid", str(pid), "--subprocesses",
                "--rate", str(args.rate), "--format", "raw", "--output", str(raw_path),
                *([] if args.all_threads else ["--gil"]),
                *(["--native"] if args.native else [])])
        raw = raw_path.read_text()
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(raw_path, RESULTS / "profile_store.txt")
    summary = summarise(raw, args.top)
    summary.update(gil_only=not args.all_threads, config=args.config,
                   associations=args.associations, count=data.count, seconds=round(seconds, 2),
                   instances_per_s=round(data.count / seconds, 1))
    (RESULTS / "profile_store.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{args.config}, {args.associations} assoc, {data.count} objects in {seconds:.1f} s "
          f"({data.count / seconds:.1f} inst/s, slowed by sampling); "
          f"{summary['samples']} samples "
          f"({'GIL holder' if not args.all_threads else 'non-idle threads'})")
    print("\nself (top of stack), % of samples:")
    for name, pct in summary["self"]:  # type: ignore[attr-defined]
        print(f"  {pct:5.1f}  {name}")
    print("\ninclusive (anywhere in the stack), % of samples:")
    for name, pct in summary["inclusive"]:  # type: ignore[attr-defined]
        print(f"  {pct:5.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
