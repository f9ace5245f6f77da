"""Where an idle ``mimic serve`` spends its CPU and its wake-ups, thread by thread.

Starts ``mimic serve`` (embedded default, TLS, the default worker count), opens
``associations`` TLS associations with pynetdicom and leaves them idle; then reads, for the
supervisor and each worker, every thread's CPU time (``/proc/<pid>/task/<tid>/schedstat``,
nanoseconds: ``stat``'s ticks of 10 ms are too coarse here) and its context switches
(``/proc/.../status``; nearly all voluntary: one each time the thread blocked, so about one
per wake-up, more where it then waited for the GIL) over the idle window. Threads are named
by ``py-spy dump --json`` (Python thread names and their innermost MIMIC / pynetdicom
frame). The account says which periodic wake-up costs what, which ``bench/idle_cpu.py``'s
one figure cannot.

    .venv/bin/python bench/idle_threads.py [--associations 10] [--idle 20] [--workers N]

Prints a table per process; writes bench/results/idle_threads.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from pynetdicom import _config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.idle_cpu import SETTINGS, _children, associate
from tests.support import MimicProcess

PY_SPY = Path(sys.executable).with_name("py-spy")


def processes(pid: int) -> list[int]:
    """The supervisor and its live descendants (the workers)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            pending += _children(current)
        except OSError:
            continue
    return found


def tasks(pid: int) -> dict[int, tuple[float, int]]:
    """Per thread: (CPU seconds, voluntary + involuntary context switches)."""
    result = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            # schedstat's first field: nanoseconds on a CPU
            cpu = int((task / "schedstat").read_text().split()[0]) / 1e9
            switches = 0
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
            result[int(task.name)] = (cpu, switches)
        except (OSError, IndexError):
            continue
    return result


def thread_names(pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name and innermost MIMIC/pynetdicom frame (py-spy)."""
    try:
        out = subprocess.run([str(PY_SPY), "dump", "--json", "-p", str(pid)],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return {}
    names = {}
    for thread in json.loads(out):
        frames = thread.get("frames") or []
        where = ""
        for frame in frames:
            if any(k in frame.get("filename", "") for k in ("mimic_server", "pynetdicom",
                                                           "socketserver", "uvicorn")):
                where = f"{frame['name']} ({Path(frame['filename']).name}:{frame['line']})"
                break
        names[int(thread.get("os_thread_id") or 0)] = (
            f"{thread.get('thread_name') or '?'} @ {where}" if where
            else str(thread.get("thread_name") or "?")
        )
    return names


def measure(work: Path, associations: int, idle: float, workers: int | None) -> dict[str, Any]:
    settings = dict(SETTINGS)
    if workers is not None:
        settings["workers"] = str(workers)
    mimic = MimicProcess(work / "data", **settings).start()
    try:
        assert mimic.proc is not None
        root = mimic.proc.pid
        time.sleep(1.0)
        open_assocs = [associate(mimic) for _ in range(associations)]
        time.sleep(1.0)
        pids = processes(root)
        names = {pid: thread_names(pid) for pid in pids}
        time.sleep(1.0)  # py-spy paused them: let that settle
        before = {pid: tasks(pid) for pid in pids}
        start = time.monotonic()
        time.sleep(idle)
        after = {pid: tasks(pid) for pid in pids}
        elapsed = time.monotonic() - start
        assert all(a.is_established for a in open_assocs)
        for assoc in open_assocs:
            assoc.release()
        report: dict[str, Any] = {"associations": associations, "idle_seconds": elapsed,
                                  "processes": []}
        for pid in pids:
            role = "supervisor" if pid == root else "worker"
            groups: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
            for tid, (cpu, switches) in after[pid].items():
                cpu0, switches0 = before[pid].get(tid, (0.0, 0))
                name = names[pid].get(tid, f"tid {tid} (not seen by py-spy)")
                if name.startswith("Thread-") or "(not seen" in name:
                    name = name.split(" @ ")[-1] if " @ " in name else name
                group = groups[name]
                group[0] += 1
                group[1] += cpu - cpu0
                group[2] += switches - switches0
            rows = sorted(
                ({"thread": k, "threads": int(v[0]),
                  "cpu_percent": round(100 * v[1] / elapsed, 3),
                  "wakeups_per_s": round(v[2] / elapsed, 1)} for k, v in groups.items()),
                key=lambda r: (-r["cpu_percent"], -r["wakeups_per_s"]),
            )
            report["processes"].append({
                "pid": pid, "role": role, "rows": rows,
                "cpu_percent": round(sum(r["cpu_percent"] for r in rows), 3),
                "wakeups_per_s": round(sum(r["wakeups_per_s"] for r in rows), 1),
            })
        report["cpu_percent"] = round(sum(p["cpu_percent"] for p in report["processes"]), 3)
        return report
    finally:
        mimic.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--associations", type=int, default=10)
    parser.add_argument("--idle", type=float, default=20.0, help="idle window, seconds")
    parser.add_argument("--workers", type=int, default=None, help="MIMIC_WORKERS (default: "
                        "the server's own default, the CPUs available)")
    args = parser.parse_args()
    _config.LOG_HANDLER_LEVEL = "none"
    with tempfile.TemporaryDirectory() as tmp:
        report = measure(Path(tmp), args.associations, args.idle, args.workers)
    print(f"{args.associations} idle TLS associations, {report['idle_seconds']:.1f} s; "
          f"load average {os.getloadavg()[0]:.2f}; total {report['cpu_percent']:.2f} % of "
          "one core\n")
    for proc in report["processes"]:
        print(f"{proc['role']} {proc['pid']}: {proc['cpu_percent']:.3f} % of one core, "
              f"{proc['wakeups_per_s']:.1f} wake-ups/s")
        print("| thread (count) | % of one core | wake-ups/s |")
        print("|---|---|---|")
        for row in proc["rows"]:
            print(f"| {row['thread']} ({row['threads']}) | {row['cpu_percent']:.3f} "
                  f"| {row['wakeups_per_s']:.1f} |")
        print()
    out = Path(__file__).resolve().parent / "results" / "idle_threads.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
