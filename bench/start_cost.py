"""What a start of ``mimic serve`` costs each of its processes: CPU seconds until the server
says "listening", and resident and private memory once it does.

Each start is paid again by every worker of every start, by each replacement of a dead one
and by the test suite's servers (about 120 starts a run). Per round and per ``--workers``
value, starts ``mimic serve`` as the other benchmarks do (``store_throughput.MimicServer``:
embedded default, TLS with one development PKI made for the run, a fresh data directory),
waits for "listening", lets it settle for ``--settle`` seconds, reads each process's CPU time
(``/proc/<pid>/stat``: user + system) and memory (``/proc/<pid>/smaps_rollup``: Rss, and
Private_Clean + Private_Dirty: what the process alone holds), and stops it.
``--baseline DIR`` starts the code of another checkout too (its tree first on
``PYTHONPATH``, so that the supervisor and its workers import it), alternated with this
one within each round.

    .venv/bin/python bench/start_cost.py [--workers 2,1] [--rounds 3] [--baseline DIR]

Prints one line per start and the medians; writes bench/results/start_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.store_throughput import MimicServer, Pki, make_pki  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident, private) MB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        values[name] = int(rest.split()[0])
    private = values["Private_Clean"] + values["Private_Dirty"]
    return values["Rss"] / 1024, private / 1024


def start_once(workdir: Path, pki: Pki, workers: int, code: Path | None,
               settle: float) -> dict[str, Any]:
    """One start, as the other benchmarks start MIMIC (``store_throughput.MimicServer``: a
    fresh data directory, the shared development PKI, ready at its "listening" line):
    seconds to "listening", and each process's CPU and memory then."""
    server = MimicServer(workdir, pki)
    server.extra_environment = {"MIMIC_WORKERS": str(workers)}
    if code is not None:
        server.extra_environment["PYTHONPATH"] = str(code)
    started = time.monotonic()
    server.start()
    try:
        seconds = time.monotonic() - started
        time.sleep(settle)
        assert server.proc is not None
        lines = server.log_path.read_text(errors="replace").splitlines()
        workers_started = [json.loads(line) for line in lines if '"worker started"' in line]
        pids = [server.proc.pid] + [int(e["pid"]) for e in workers_started]
        processes = []
        for pid in pids:
            resident, private = memory_mb(pid)
            role = "worker" if pid != server.proc.pid else (
                "supervisor" if workers > 1 else "single process")
            processes.append({"role": role, "cpu_seconds": cpu_seconds(pid),
                              "rss_mb": round(resident, 1), "private_mb": round(private, 1)})
    finally:
        server.stop()
    return {"seconds": round(seconds, 3), "processes": processes,
            "cpu_seconds": round(sum(p["cpu_seconds"] for p in processes), 2)}


def run(workers: list[int], rounds: int, baseline: Path | None = None,
        settle: float = 0.5, log: bool = True) -> dict[str, Any]:
    codes: dict[str, Path | None] = {"current": None}
    if baseline is not None:
        codes["baseline"] = baseline
    starts: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="mimic-start-") as tmp:
        pki = make_pki(Path(tmp) / "pki")
        for round_no in range(rounds):
            order = list(codes) if round_no % 2 == 0 else list(reversed(codes))
            for count in workers:
                for label in order:
                    workdir = Path(tmp) / f"{label}-{count}-{round_no}"
                    result = start_once(workdir, pki, count, codes[label], settle)
                    starts.setdefault(f"{label}, workers {count}", []).append(result)
                    if log:
                        print(f"round {round_no + 1}/{rounds} {label:8} workers {count}: "
                              f"{result['seconds']:.2f} s to listening, CPU s "
                              f"{result['cpu_seconds']:.2f} ("
                              + ", ".join(f"{p['role']} {p['cpu_seconds']:.2f} s, "
                                          f"{p['rss_mb']:.0f} MB resident, "
                                          f"{p['private_mb']:.0f} private"
                                          for p in result["processes"]) + ")", flush=True)
    summary = {}
    for key, results in starts.items():
        by_role: dict[str, list[dict[str, Any]]] = {}
        for result in results:
            for p in result["processes"]:
                by_role.setdefault(p["role"], []).append(p)
        summary[key] = {
            "seconds": statistics.median(r["seconds"] for r in results),
            "cpu_seconds": statistics.median(r["cpu_seconds"] for r in results),
            "per_process": {role: {k: statistics.median(p[k] for p in ps)
                                   for k in ("cpu_seconds", "rss_mb", "private_mb")}
                            for role, ps in by_role.items()},
        }
    return {"rounds": rounds, "starts": starts, "medians": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="2,1", help="MIMIC_WORKERS values, e.g. 2,1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout, alternated")
    parser.add_argument("--settle", type=float, default=0.5,
                        help="seconds after 'listening' before the readings")
    args = parser.parse_args()
    result = run([int(w) for w in args.workers.split(",")], args.rounds, args.baseline,
                 args.settle)
    print("\nmedians:")
    for key, m in result["medians"].items():
        print(f"  {key}: {m['seconds']:.2f} s to listening, {m['cpu_seconds']:.2f} CPU s; "
              + "; ".join(f"{role} {v['cpu_seconds']:.2f} CPU s, {v['rss_mb']:.0f} MB "
                          f"resident, {v['private_mb']:.0f} private"
                          for role, v in m["per_process"].items()))
    out = ROOT / "bench" / "results" / "start_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
