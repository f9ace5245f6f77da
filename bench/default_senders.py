"""C-STORE from dcmtk ``storescu`` at its defaults (Nagle's algorithm on) beside the same
sender with ``TCP_NODELAY=1``, to MIMIC and its peers, in one run.

Every other benchmark here gives dcmtk ``TCP_NODELAY=1``, as the issue's comparison does.
A modality, workstation or router left at dcmtk's defaults (and many other DICOM stacks)
keeps Nagle's algorithm on: it writes a message in several calls and holds back the last,
short segment until the receiver has acknowledged everything before it, which a receiver
that delays its acknowledgements (Linux: up to 40 ms) makes each message wait for. This
benchmark shows what such a sender gets from each receiver.

Each round, for each scenario (small / large objects, TLS / plain TCP, one association) and
each receiver (the order rotating): a fresh receiver is sent the files by one ``storescu``
with ``TCP_NODELAY`` unset (dcmtk's default), then a fresh one by ``storescu`` with
``TCP_NODELAY=1``; the count is checked after every run. The receivers keep their own
settings (``bench/receivers.py``).

    .venv/bin/python bench/default_senders.py                 # 2 rounds, about 4 minutes
    .venv/bin/python bench/default_senders.py --rounds 1 --receivers mimic-embedded,storescp

Results go to ``bench/results/default_senders.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import receivers  # noqa: E402
from bench.compare import available_receivers, git_commit  # noqa: E402
from bench.store_throughput import (  # noqa: E402
    BenchError,
    DataSet,
    Pki,
    dcmtk_env,
    machine,
    make_large,
    make_pki,
    make_small,
    send,
)

RESULTS = ROOT / "bench" / "results" / "default_senders.json"
RECEIVERS = ["storescp", "orthanc-sqlite", "orthanc-pg", "mimic-embedded", "mimic-pg-files"]
#: The sender's two settings: dcmtk's default, and what every other benchmark here uses.
SENDERS = {"defaults": "TCP_NODELAY unset", "nodelay": "TCP_NODELAY=1"}


def sender_env(sender: str) -> dict[str, str]:
    if sender == "nodelay":
        return dcmtk_env()
    return {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}


def run(*, rounds: int, small: int, large: int, labels: list[str], postgres: str,
        tls_modes: tuple[bool, ...] = (True, False), log: bool = True) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="mimic-senders-") as tmp:
        work = Path(tmp)
        sets: dict[str, DataSet] = {}
        if small:
            sets["small"] = make_small(work / "in" / "small", small)
        if large:
            sets["large"] = make_large(work / "in" / "large", large)
        pki = make_pki(work / "pki")
        seconds: dict[str, list[float]] = {}
        started, commit, before = time.monotonic(), git_commit(), machine()
        try:
            for r in range(rounds):
                order = labels[r % len(labels):] + labels[:r % len(labels)]
                for tls in tls_modes:
                    for name, data in sets.items():
                        for label in order:
                            for sender in SENDERS:
                                took = once(label, data, tls, sender, pki, postgres,
                                            work / "run" / f"{label}-{name}-{tls}-{sender}-{r}")
                                key = f"{label}|{name}|{'TLS' if tls else 'plain'}|{sender}"
                                seconds.setdefault(key, []).append(round(took, 3))
                                if log:
                                    print(f"round {r + 1}/{rounds} {name:5} "
                                          f"{'TLS' if tls else 'plain':5} {label:15} "
                                          f"{SENDERS[sender]:17} {data.count / took:7.1f} "
                                          f"inst/s ({took:.2f} s)", flush=True)
        finally:
            receivers.shutdown()
        counts = {name: data.count for name, data in sets.items()}
        return {
            "machine": before,
            "mimic_commit": commit,
            "orthanc": receivers.orthanc_version() if any(
                lb.startswith("orthanc") for lb in labels) else "",
            "rounds": rounds,
            "minutes": round((time.monotonic() - started) / 60, 1),
            "counts": counts,
            "runs": [{"receiver": receiver, "data": data, "transport": transport,
                      "sender": sender, "seconds": v,
                      "best_inst_per_s": round(counts[data] / min(v), 1),
                      "median_inst_per_s": round(counts[data] / statistics.median(v), 1)}
                     for key, v in seconds.items()
                     for receiver, data, transport, sender in [key.split("|")]],
        }


def once(label: str, data: DataSet, tls: bool, sender: str, pki: Pki, postgres: str,
         workdir: Path) -> float:
    """One ``storescu`` over one association to a fresh receiver; the wall seconds. Raises
    ``BenchError`` unless the receiver holds every object."""
    server = receivers.make_receiver(label, workdir, pki if tls else None, postgres)
    server.start()
    try:
        took = send(server, data, 1, workdir.parent, env=sender_env(sender))
        held = server.count()
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(server.workdir, ignore_errors=True)
    if held != data.count:
        raise BenchError(f"{label} holds {held} of {data.count} ({data.name}, {sender})")
    return took


def table(result: dict[str, object]) -> str:
    """Markdown: instances/s, best / median of rounds, per receiver and scenario, with the
    sender at its defaults and with TCP_NODELAY=1."""
    runs = {(r["receiver"], r["data"], r["transport"], r["sender"]): r
            for r in result["runs"]}  # type: ignore[attr-defined]
    labels = list(dict.fromkeys(k[0] for k in runs))
    columns = list(dict.fromkeys((k[1], k[2], k[3]) for k in runs))
    head = "| receiver | " + " | ".join(
        f"{d}, {t}, {SENDERS[s]}" for d, t, s in columns) + " |"
    lines = [head, "|---|" + "---:|" * len(columns)]
    for label in labels:
        cells = []
        for d, t, s in columns:
            r = runs.get((label, d, t, s))
            cells.append(f"{r['best_inst_per_s']} / {r['median_inst_per_s']}" if r else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--small", type=int, default=100, help="CT slices of 39 KB")
    parser.add_argument("--large", type=int, default=40, help="CT images of 525 KB")
    parser.add_argument("--receivers", default=",".join(RECEIVERS))
    parser.add_argument("--plain-only", action="store_true", help="no TLS runs")
    parser.add_argument("--postgres", default=receivers.DEFAULT_POSTGRES)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if shutil.which("storescu") is None:
        print("dcmtk's storescu is not installed (apt-get install dcmtk)", file=sys.stderr)
        return 2
    labels, notes = available_receivers(args.receivers.split(","), args.postgres)
    for note in notes:
        print(note, flush=True)
    if not labels:
        return 2
    result = run(rounds=args.rounds, small=args.small, large=args.large, labels=labels,
                 postgres=args.postgres,
                 tls_modes=(False,) if args.plain_only else (True, False))
    result["notes"] = notes
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print("instances/s, best / median of rounds")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
