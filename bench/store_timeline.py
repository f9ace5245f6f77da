"""Where one association's time goes, C-STORE by C-STORE: the stages of each object, timed inside
the server.

A sender that waits for each C-STORE response (dcmtk ``storescu``, most modalities) sees one
object take the sum of its stages, one after the other: its own turn and the transfer (from our
response being written to the next request's last fragment arriving), the hand-off to the
association thread, the handler (the received object: walk, header, SHA-256; the put; the index
write with its commit) and the way back to the socket. ``compare.py`` gives the objects per
second; this says which stage they went to, and CPU profiles (``profile_store.py``,
``profile_machine.py``) do not, since a stage that waits (an fsync, a thread hand-off, the
sender) costs time without CPU.

    .venv/bin/python bench/store_timeline.py --config mimic-pg-files --kind large \\
        --count 400 [--associations 1] [--plain]

The stages are timed by ``bench/timeline_probe/sitecustomize.py``, put on the server's
``PYTHONPATH`` (only MIMIC's own functions are wrapped, so pynetdicom's patched call sites stay
as the fence verified them: the script fails if the server's log says a patch fell back). Each
stage is reported as its mean milliseconds per C-STORE, summed over the worker processes, beside
the cycle: the run's seconds times the associations over the objects. Results go to
``bench/results/store_timeline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import receivers
from bench.store_throughput import ROOT, BenchError, make_large, make_pki, make_small, send

RESULTS = ROOT / "bench" / "results" / "store_timeline.json"
PROBE = ROOT / "bench" / "timeline_probe"


def merged(out: Path) -> dict[str, list[float]]:
    """Every worker's stages, summed: stage -> [count, seconds]."""
    stages: dict[str, list[float]] = {}
    for path in sorted(out.glob("timeline-*.json")):
        for stage, (count, seconds) in json.loads(path.read_text())["stages"].items():
            entry = stages.setdefault(stage, [0, 0.0])
            entry[0] += count
            entry[1] += seconds
    return stages


def report(stages: dict[str, list[float]], cycle_ms: float) -> list[dict[str, object]]:
    """Rows in the order the stages happen (the probe's names are indented by nesting)."""
    rows = [{"stage": stage, "count": int(count), "ms": round(1000 * seconds / count, 3)}
            for stage, (count, seconds) in stages.items() if count]
    order = ["request queued", "C-STORE handler", "  data set", "  keep", "    object put",
             "    index write", "handler returns", "response queued -> DUL",
             "response queued -> written", "peer"]
    rows.sort(key=lambda row: next((i for i, prefix in enumerate(order)
                                    if str(row["stage"]).startswith(prefix)), len(order)))
    rows.append({"stage": "cycle (run seconds x associations / objects)", "count": 0,
                 "ms": round(cycle_ms, 3)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="mimic-pg-files",
                        choices=["mimic-embedded", "mimic-pg-files", "mimic-pg-azurite"])
    parser.add_argument("--kind", choices=("small", "large"), default="large",
                        help="CT slices of 39 KB or CT images of 525 KB")
    parser.add_argument("--count", type=int, default=400, help="objects sent")
    parser.add_argument("--associations", type=int, default=1)
    parser.add_argument("--plain", action="store_true", help="plain TCP instead of mutual TLS")
    parser.add_argument("--postgres", default=receivers.DEFAULT_POSTGRES)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mimic-timeline-") as tmp:
        work = Path(tmp)
        out = work / "timeline"
        out.mkdir()
        parts = max(4, args.associations)
        make = make_small if args.kind == "small" else make_large
        data = make(work / "in", args.count - args.count % parts, parts=parts)
        pki = None if args.plain else make_pki(work / "pki")
        os.environ["MIMIC_TIMELINE_DIR"] = str(out)  # the server's environment is this one's
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(PROBE), *filter(None, [os.environ.get("PYTHONPATH")])])
        server = receivers.make_receiver(args.config, work / "run", pki, args.postgres)
        try:
            server.start()
            seconds = send(server, data, args.associations, work)
            stored = server.count()
        finally:
            server.stop()
            receivers.shutdown()
        log = server.log_path.read_text(errors="replace")
        if "library patch not applied" in log:
            raise BenchError("a fenced patch fell back in the timed server: not the usual path")
        if stored != data.count:
            raise BenchError(f"{server.label} holds {stored} of {data.count} instances")
        stages = merged(out)
    cycle_ms = 1000 * seconds * args.associations / data.count
    rows = report(stages, cycle_ms)
    result = {"config": args.config, "kind": args.kind, "count": data.count,
              "associations": args.associations, "tls": not args.plain,
              "seconds": round(seconds, 3), "instances_per_s": round(data.count / seconds, 1),
              "stages": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.config}, {args.kind}, {args.associations} assoc, "
          f"{'plain' if args.plain else 'TLS'}: {data.count} objects in {seconds:.2f} s "
          f"({data.count / seconds:.1f} inst/s)")
    for row in rows:
        print(f"  {row['ms']:8.3f} ms  {row['stage']}  ({row['count']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
