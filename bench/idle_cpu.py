"""What idle associations cost the server, and C-ECHO / C-STORE round trips, with MIMIC's
event-driven waits and with pynetdicom's own polling loops, in one run.

For each round and each mode, starts ``mimic serve`` (embedded default, TLS), opens
``associations`` TLS associations with pynetdicom, lets them sit idle, and reads the server
process's CPU time (utime + stime of it and its descendants, ``/proc/<pid>/stat``) over the
idle window: % of one core. Then, on one of those associations, times ``round_trips`` C-ECHO
and C-STORE (CT_small, a new SOP Instance UID each) round trips, releases all but one
association and aborts that one, and records that the server's thread count returns to what
it was before. Mode ``pynetdicom`` starts the server with ``MIMIC_PATCHES_OFF=idle-waits``
(the fence leaves the waits off: pynetdicom's 1 ms polls run); mode ``sleeping-loop`` with
``MIMIC_PATCHES_OFF=acceptor-loop`` (the waits, but the association thread's loop still
sleeps 1 ms before each look at its queue, as pynetdicom's does); the modes alternate within a
round, several rounds (this VM's speed drifts), and the best CPU and the median latencies
over rounds are reported.

    .venv/bin/python bench/idle_cpu.py [--associations 10] [--idle 20] [--round-trips 300]
                                       [--rounds 3]

Prints a table; writes bench/results/idle_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mimic_server.net.requestor import keep_responses
from tests.data import ct_small
from tests.support import HOST, MimicProcess, client_context

MODES = {"mimic": {}, "pynetdicom": {"patches_off": "idle-waits"},
         "sleeping-loop": {"patches_off": "acceptor-loop"}}
TICKS = os.sysconf("SC_CLK_TCK")
#: Server settings: no network timeout within the idle window.
SETTINGS = {"network_timeout": "600", "max_associations": "64"}


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(c) for c in task.read_text().split()]
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants (worker processes, if any)."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            pending += _children(current)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def threads(pid: int) -> int:
    """Threads of ``pid`` and its live descendants (the workers hold the associations)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("Threads:"):
                    total += int(line.split()[1])
            pending += _children(current)
        except OSError:
            continue  # ended meanwhile
    return total


def associate(mimic: MimicProcess) -> Association:
    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = ae.dimse_timeout = 30
    ae.network_timeout = None  # idle on purpose
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ctx = client_context(mimic.client_cert, mimic.client_key, mimic.ca_cert)
    assoc = ae.associate(HOST, mimic.port, ae_title="MIMIC", tls_args=(ctx, "localhost"))
    if not assoc.is_established:
        raise RuntimeError("association not established")
    # pynetdicom's own race (issue 875, mimic_server/net/requestor.py) drops a response now
    # and then: the round trips' send_c_echo then waited out its DIMSE timeout and returned
    # an empty data set (one in some 600-1,800 round trips to the event-driven server).
    keep_responses(assoc)
    # Like TCP_NODELAY=1 for dcmtk: without it, Nagle + delayed ACK add ~40 ms.
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


def percentiles(milliseconds: list[float]) -> dict[str, float]:
    ordered = sorted(milliseconds)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 3),
    }


def round_trips(assoc: Association, count: int) -> dict[str, Any]:
    echo: list[float] = []
    statuses: list[int] = []
    for _ in range(count):
        begin = time.perf_counter()
        status = assoc.send_c_echo()
        echo.append((time.perf_counter() - begin) * 1000)
        statuses.append(int(status.Status))
    template = pydicom.dcmread(ct_small())
    store: list[float] = []
    for _ in range(count):
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        begin = time.perf_counter()
        status = assoc.send_c_store(template)
        store.append((time.perf_counter() - begin) * 1000)
        statuses.append(int(status.Status))
    return {"echo": percentiles(echo), "store": percentiles(store), "statuses": statuses}


def measure(mode: str, work: Path, associations: int, idle: float, count: int) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    mimic = MimicProcess(work / f"data-{mode}", **SETTINGS, **MODES[mode]).start()
    try:
        assert mimic.proc is not None
        pid = mimic.proc.pid
        time.sleep(1.0)  # the start's own work settles
        baseline_threads = threads(pid)
        open_assocs = [associate(mimic) for _ in range(associations)]
        time.sleep(1.0)  # handshakes and admissions done
        start_cpu, start = cpu_seconds(pid), time.monotonic()
        time.sleep(idle)
        used, elapsed = cpu_seconds(pid) - start_cpu, time.monotonic() - start
        still_open = sum(1 for a in open_assocs if a.is_established)
        open_threads = threads(pid)
        latency = round_trips(open_assocs[0], count)
        for assoc in open_assocs[:-1]:
            assoc.release()
        open_assocs[-1].abort()
        deadline = time.monotonic() + 30
        while threads(pid) > baseline_threads and time.monotonic() < deadline:
            time.sleep(0.05)
        return {
            "idle_cpu_percent": round(100 * used / elapsed, 2),
            "still_open_after_idle": still_open,
            "threads": {"before": baseline_threads, "open": open_threads,
                        "after_close": threads(pid)},
            **latency,
        }
    except Exception:
        for entry in mimic.log_entries():
            if entry.get("level") not in ("DEBUG", "INFO"):
                print(entry, file=sys.stderr)
        raise
    finally:
        mimic.stop()


def run(associations: int, idle: float, count: int, rounds: int) -> dict[str, Any]:
    _config.LOG_HANDLER_LEVEL = "none"
    per_mode: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(rounds):
            order = list(MODES)[n % len(MODES):] + list(MODES)[:n % len(MODES)]
            for mode in order:
                result = measure(mode, Path(tmp) / f"r{n}", associations, idle, count)
                per_mode[mode].append(result)
                print(f"round {n + 1} {mode}: {result['idle_cpu_percent']}% idle, echo "
                      f"{result['echo']}, store {result['store']}", flush=True)
    summary: dict[str, Any] = {"associations": associations, "idle_seconds": idle,
                               "round_trips": count, "rounds": rounds}
    for mode, results in per_mode.items():
        summary[mode] = {
            "idle_cpu_percent_best": min(r["idle_cpu_percent"] for r in results),
            "idle_cpu_percent_all": [r["idle_cpu_percent"] for r in results],
            **{f"{kind}_{q}": round(statistics.median(r[kind][q] for r in results), 3)
               for kind in ("echo", "store") for q in ("p50_ms", "p95_ms")},
            "rounds": results,
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--associations", type=int, default=10)
    parser.add_argument("--idle", type=float, default=20.0, help="idle window, seconds")
    parser.add_argument("--round-trips", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    summary = run(args.associations, args.idle, args.round_trips, args.rounds)
    print(f"\n{args.associations} idle TLS associations, {args.idle:.0f} s window; "
          f"{args.round_trips} round trips on one association\n")
    print("| server loops | idle CPU (% of one core, best) | C-ECHO p50 / p95 ms "
          "| C-STORE p50 / p95 ms |")
    print("|---|---|---|---|")
    for mode in MODES:
        m = summary[mode]
        print(f"| {mode} | {m['idle_cpu_percent_best']} | {m['echo_p50_ms']} / "
              f"{m['echo_p95_ms']} | {m['store_p50_ms']} / {m['store_p95_ms']} |")
    out = Path(__file__).resolve().parent / "results" / "idle_cpu.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
