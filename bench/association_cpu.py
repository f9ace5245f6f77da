"""The server's CPU per association, MIMIC beside its peers in one run: an association that
does one thing and ends, as a modality that opens one per image, a workstation that opens
one per query and a monitor that echoes do.

Each round starts each receiver afresh (the order rotating) and, for each kind, opens
``--associations`` associations one after another with dcmtk over mutual TLS (``--plain``:
plain TCP), after three of the same kind to warm it up, reading the receiver's CPU
(utime + stime of its processes, ``/proc``) before and after:

* ``store``: ``storescu``, one CT slice of 39 KB per association, a new one each time (the
  count is checked after the round);
* ``echo``: ``echoscu``, one C-ECHO;
* ``find``: ``findscu``, one study-level C-FIND (``PatientID=*``) that matches the five
  studies stored before it (its final response must be Success).

``storescp`` takes part in ``store`` and ``echo`` (it has no C-FIND), as the floor of what a
C++ server spends; so does ``pynetdicom`` (``bench/bare_pynetdicom.py``: a stock pynetdicom
AE, none of MIMIC's changes to it nor its work), what an association costs a Python server
built on the same library as it comes. CPU is counted in the kernel's ticks (10 ms), so a
kind's figure is only as exact as its associations are many: 100 (the default) put it within
a few per cent.

    .venv/bin/python bench/association_cpu.py                  # 3 rounds, about 3 minutes
    .venv/bin/python bench/association_cpu.py --rounds 1 --associations 40 \\
        --receivers mimic-embedded,orthanc-sqlite --kinds echo

Results go to ``bench/results/association_cpu.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import receivers  # noqa: E402
from bench.compare import available_receivers, git_commit, tree_cpu_seconds  # noqa: E402
from bench.store_throughput import (  # noqa: E402
    HOST,
    BenchError,
    Pki,
    Server,
    dcmtk_env,
    machine,
    make_pki,
    make_small,
)

RESULTS = ROOT / "bench" / "results" / "association_cpu.json"
RECEIVERS = ["storescp", "orthanc-sqlite", "mimic-embedded", "pynetdicom"]
#: Receivers with no C-FIND SCP.
NO_FIND = ("storescp", "pynetdicom")
KINDS = ["store", "echo", "find"]
WARM_UP = 3
#: The studies the stored slices belong to: what the C-FIND finds.
STUDIES = 5
#: findscu -v's line for each match.
_PENDING = re.compile(r"Find Response: \d+ \(Pending\)")


def _command(kind: str, server: Server, file: Path | None) -> list[str]:
    base = ["-aet", "BENCH", "-aec", server.called_ae, *server.tls_args()]
    if kind == "store":
        return ["storescu", *base, HOST, str(server.port), str(file)]
    if kind == "echo":
        return ["echoscu", *base, HOST, str(server.port)]
    return ["findscu", "-v", "-S", *base, "-k", "QueryRetrieveLevel=STUDY",
            "-k", "PatientID=*", "-k", "StudyInstanceUID", HOST, str(server.port)]


def _one(kind: str, server: Server, file: Path | None) -> None:
    done = subprocess.run(_command(kind, server, file), env=dcmtk_env(), capture_output=True,
                          text=True, timeout=60, check=False)
    out = done.stdout + done.stderr
    if done.returncode != 0 or "E: " in out:
        raise BenchError(f"{kind} to {server.label} failed ({done.returncode}):\n{out[-2000:]}")
    if kind == "find":
        if "Received Final Find Response (Success)" not in out:
            raise BenchError(f"C-FIND to {server.label} did not end in Success:\n{out[-2000:]}")
        if len(_PENDING.findall(out)) != STUDIES:
            raise BenchError(f"C-FIND to {server.label} did not find the {STUDIES} studies:\n"
                             f"{out[-3000:]}")


def measure(kind: str, server: Server, count: int, files: list[Path]) -> dict[str, float]:
    """Server CPU ms and wall ms per association, over ``count`` associations after the
    warm-up ones (``files``: one per store association, warm-up first)."""
    assert server.proc is not None
    for n in range(WARM_UP):
        _one(kind, server, files[n] if kind == "store" else None)
    time.sleep(0.3)  # the last association's end
    cpu = tree_cpu_seconds(server.proc.pid)
    start = time.perf_counter()
    for n in range(count):
        _one(kind, server, files[WARM_UP + n] if kind == "store" else None)
    wall = time.perf_counter() - start
    time.sleep(0.3)  # the last association's threads end
    cpu = tree_cpu_seconds(server.proc.pid) - cpu
    return {"cpu_ms": round(1000 * cpu / count, 3), "wall_ms": round(1000 * wall / count, 2)}


def run_round(labels: list[str], kinds: list[str], count: int, files: list[Path],
              pki: Pki | None, work: Path, postgres: str, round_no: int) -> list[dict[str, object]]:
    runs = []
    order = labels[round_no % len(labels):] + labels[:round_no % len(labels)]
    for label in order:
        server = receivers.make_receiver(label, work / f"r{round_no}" / label, pki, postgres)
        if label.startswith("orthanc"):
            server.extra_config = {"DicomAlwaysAllowFind": True}  # type: ignore[attr-defined]
        server.start()
        try:
            stored = 0
            for kind in kinds:
                if kind == "find" and (label in NO_FIND or (pki is None
                                                             and label.startswith("mimic"))):
                    continue  # MIMIC grants C-FIND to trusted certificates only
                if kind == "find" and stored == 0:  # something to find
                    for file in files[:STUDIES]:
                        _one("store", server, file)
                    stored = STUDIES
                figures = measure(kind, server, count, files[stored:] if kind == "store"
                                  else files)
                if kind == "store":
                    stored += WARM_UP + count
                runs.append({"round": round_no + 1, "receiver": label, "kind": kind, **figures})
                print(f"round {round_no + 1} {label:16s} {kind:6s} {figures['cpu_ms']:7.2f} ms "
                      f"CPU, {figures['wall_ms']:6.1f} ms wall per association", flush=True)
            if stored and server.count() != stored:
                raise BenchError(f"{label} holds {server.count()} instances, {stored} sent")
        finally:
            server.stop()
    return runs


def summary(runs: list[dict[str, object]], labels: list[str],
            kinds: list[str]) -> dict[str, dict[str, float]]:
    """Median CPU ms per association of each receiver and kind."""
    out: dict[str, dict[str, float]] = {}
    for label in labels:
        for kind in kinds:
            values = [float(r["cpu_ms"]) for r in runs  # type: ignore[arg-type]
                      if r["receiver"] == label and r["kind"] == kind]
            if values:
                out.setdefault(label, {})[kind] = round(statistics.median(values), 2)
    return out


def markdown(medians: dict[str, dict[str, float]], kinds: list[str]) -> str:
    lines = ["| receiver | " + " | ".join(kinds) + " |",
             "|---|" + "---:|" * len(kinds)]
    for label, figures in medians.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{figures[k]:.2f}" if k in figures else "—" for k in kinds) + " |")
    mimic = medians.get("mimic-embedded")
    for label, name in (("orthanc-sqlite", "Orthanc + SQLite"), ("pynetdicom", "pynetdicom")):
        other = medians.get(label)
        if mimic and other:
            lines.append(f"| MIMIC embedded / {name} | " + " | ".join(
                f"{mimic[k] / other[k]:.2f}" if k in mimic and other.get(k) else "—"
                for k in kinds) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--associations", type=int, default=100)
    parser.add_argument("--receivers", default=",".join(RECEIVERS))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--plain", action="store_true", help="plain TCP (default: mutual TLS)")
    parser.add_argument("--postgres", default=receivers.DEFAULT_POSTGRES)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    if not set(kinds) <= set(KINDS):
        parser.error(f"--kinds: {', '.join(KINDS)}")
    labels, notes = available_receivers(args.receivers.split(","), args.postgres)
    if args.plain and "find" in kinds and any(label.startswith("mimic") for label in labels):
        notes.append("find: not measured for MIMIC over plain TCP, where its access policy "
                     "grants no C-FIND (only a trusted certificate has grants)")
    for note in notes:
        print(note, file=sys.stderr)
    if not labels:
        print("no receiver can run here", file=sys.stderr)
        return 2
    runs: list[dict[str, object]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="mimic-association-cpu-") as tmp:
            work = Path(tmp)
            data = make_small(work / "in", STUDIES + WARM_UP + args.associations,
                              studies=STUDIES)
            files = sorted((p for d in data.parts for p in d.iterdir()),
                           key=lambda p: p.name)
            pki = None if args.plain else make_pki(work / "pki")
            for n in range(args.rounds):
                runs += run_round(labels, kinds, args.associations, files, pki, work,
                                  args.postgres, n)
    finally:
        receivers.shutdown()
    medians = summary(runs, labels, kinds)
    print(f"\nserver CPU ms per association, median of {args.rounds} round(s), "
          f"{'plain TCP' if args.plain else 'mutual TLS'}:\n{markdown(medians, kinds)}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "commit": git_commit(), "machine": machine(), "tls": not args.plain,
        "associations": args.associations, "rounds": args.rounds, "kinds": kinds,
        "runs": runs, "median_cpu_ms": medians, "notes": notes,
    }, indent=2) + "\n")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
