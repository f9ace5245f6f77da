"""C-GET throughput: MIMIC beside Orthanc, each retrieving what it was sent, in one run.

Each round, for each receiver (the order rotating): a fresh server is loaded by dcmtk
``storescu`` (four associations) and its count checked; then every study is retrieved by
dcmtk ``getscu`` (Study Root C-GET), first over one association at a time (the studies one
after the other: a workstation opening a study), then every study at once (one association
each: several readers), and the files received are counted and checked against those sent
(SOP Instance UID and Pixel Data, by SHA-256). Plain TCP: the
``getscu`` of dcmtk 3.6.7 has no TLS.

MIMIC is granted C-GET by a policy file (``[default]`` all services: lab mode has no
certificate to bind a rule to); Orthanc by ``DicomAlwaysAllowGet``. Both keep their
defaults otherwise (``bench/receivers.py``).

    .venv/bin/python bench/retrieve.py                   # 3 rounds, small and large
    .venv/bin/python bench/retrieve.py --rounds 1 --small 96 --large 0 \\
        --receivers mimic-embedded

Results go to ``bench/results/retrieve.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pydicom  # noqa: E402

from bench import receivers  # noqa: E402
from bench.compare import available_receivers, git_commit  # noqa: E402
from bench.store_throughput import (  # noqa: E402
    HOST,
    BenchError,
    DataSet,
    MimicServer,
    Server,
    dcmtk_env,
    machine,
    make_large,
    make_small,
    send,
    wait_exited,
)

RESULTS = ROOT / "bench" / "results" / "retrieve.json"
RECEIVERS = ["orthanc-sqlite", "orthanc-pg", "mimic-embedded", "mimic-pg-files"]
#: Which Orthanc each MIMIC configuration is read against.
PEERS = {"mimic-embedded": "orthanc-sqlite", "mimic-pg-files": "orthanc-pg"}
MODES = ("one at a time", "all at once")


def studies(data: DataSet) -> dict[str, dict[str, str]]:
    """Study Instance UID -> {SOP Instance UID: SHA-256 of its Pixel Data} of what is sent."""
    found: dict[str, dict[str, str]] = {}
    for part in data.parts:
        for path in sorted(part.iterdir()):
            study, sop, pixels = identity(path)
            found.setdefault(study, {})[sop] = pixels
    return found


def identity(path: Path) -> tuple[str, str, str]:
    """(Study, SOP Instance UID, SHA-256 of the Pixel Data) of a file: what must come back.
    Not the data set's bytes: ``getscu`` writes what it received through dcmtk, which
    re-encodes it (group lengths, padding), whatever the archive sent."""
    ds = pydicom.dcmread(path)
    return (str(ds.StudyInstanceUID), str(ds.SOPInstanceUID),
            hashlib.sha256(ds.PixelData).hexdigest())


def get_study(server: Server, study: str, out: Path) -> subprocess.Popen[bytes]:
    out.mkdir(parents=True)
    log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115 - closed by the caller's wait
    return subprocess.Popen(
        ["getscu", "-S", "-aet", "BENCH", "-aec", server.called_ae, "-to", "300",
         "-ta", "300", "-td", "300", "-k", "QueryRetrieveLevel=STUDY",
         "-k", f"StudyInstanceUID={study}", "-od", str(out), HOST, str(server.port)],
        env=dcmtk_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def retrieve(server: Server, expected: dict[str, dict[str, str]], mode: str,
             work: Path) -> float:
    """Every study by C-GET in ``mode``; the wall seconds. Raises ``BenchError`` unless every
    object came back with the data set that was sent."""
    out = work / f"get-{server.label}-{mode.replace(' ', '-')}"
    shutil.rmtree(out, ignore_errors=True)
    uids = list(expected)
    try:
        start = time.perf_counter()
        if mode == "one at a time":
            for i, study in enumerate(uids):
                _finished(get_study(server, study, out / str(i)), out / str(i))
        else:
            procs = [(get_study(server, study, out / str(i)), out / str(i))
                     for i, study in enumerate(uids)]
            for proc, where in procs:
                _finished(proc, where)
        seconds = time.perf_counter() - start
        for i, study in enumerate(uids):
            got = {identity(p)[1]: identity(p)[2] for p in (out / str(i)).iterdir()}
            if got != expected[study]:
                raise BenchError(
                    f"{server.label} ({mode}): study {i} came back with {len(got)} objects "
                    f"of {len(expected[study])}, "
                    f"{sum(got.get(k) != v for k, v in expected[study].items())} not as sent")
        return seconds
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _finished(proc: subprocess.Popen[bytes], out: Path) -> None:
    code = wait_exited(proc, 900)
    assert proc.stdout is None
    if code != 0:
        raise BenchError(f"getscu exited {code}:\n{out.with_suffix('.log').read_text()[-2000:]}")


def prepared(label: str, workdir: Path, postgres: str, policy: Path) -> Server:
    server = receivers.make_receiver(label, workdir, None, postgres)
    if isinstance(server, MimicServer):
        server.extra_environment = {"MIMIC_POLICY_FILE": str(policy)}
    if isinstance(server, receivers.OrthancServer):
        server.extra_config = {"DicomAlwaysAllowGet": True}
    return server


def run(*, rounds: int, small: int, large: int, labels: list[str], postgres: str,
        log: bool = True) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="mimic-retrieve-") as tmp:
        work = Path(tmp)
        policy = work / "policy.toml"
        policy.write_text('[default]\nservices = ["all"]\n')
        sets = {}
        if small:
            sets["small"] = make_small(work / "in" / "small", small)
        if large:
            sets["large"] = make_large(work / "in" / "large", large)
        expected = {name: studies(data) for name, data in sets.items()}
        seconds: dict[str, list[float]] = {}
        started, commit, before = time.monotonic(), git_commit(), machine()
        try:
            for r in range(rounds):
                order = labels[r % len(labels):] + labels[:r % len(labels)]
                for name, data in sets.items():
                    for label in order:
                        server = prepared(label, work / "run" / f"{label}-{name}-{r}",
                                          postgres, policy)
                        try:
                            server.start()
                            send(server, data, 4, work)
                            held = server.count()
                            if held != data.count:
                                raise BenchError(f"{label} holds {held} of {data.count}")
                            for mode in MODES:
                                took = retrieve(server, expected[name], mode, work)
                                seconds.setdefault(f"{label}|{name}|{mode}", []).append(
                                    round(took, 3))
                                if log:
                                    print(f"round {r + 1}/{rounds} {name:5} {mode:13} "
                                          f"{label:15} {data.count / took:7.1f} inst/s "
                                          f"({took:.2f} s)", flush=True)
                        finally:
                            try:
                                server.stop()
                            finally:
                                shutil.rmtree(server.workdir, ignore_errors=True)
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
            "studies": {name: len(e) for name, e in expected.items()},
            "runs": [{"receiver": k.split("|")[0], "data": k.split("|")[1],
                      "mode": k.split("|")[2], "seconds": v,
                      "best_inst_per_s": round(counts[k.split("|")[1]] / min(v), 1),
                      "median_inst_per_s": round(
                          counts[k.split("|")[1]] / statistics.median(v), 1)}
                     for k, v in seconds.items()],
        }


def table(result: dict[str, object]) -> str:
    """Markdown: instances/s (best / median of rounds) and MIMIC / its Orthanc."""
    runs = {(r["receiver"], r["data"], r["mode"]): r
            for r in result["runs"]}  # type: ignore[attr-defined]
    labels = list(dict.fromkeys(k[0] for k in runs))
    columns = list(dict.fromkeys((k[1], k[2]) for k in runs))
    head = "| receiver | " + " | ".join(f"{d}, {m}" for d, m in columns) + " |"
    lines = [head, "|---|" + "---:|" * len(columns)]
    for label in labels:
        cells = []
        for d, m in columns:
            r = runs.get((label, d, m))
            cells.append(f"{r['best_inst_per_s']} / {r['median_inst_per_s']}" if r else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for label, peer in PEERS.items():
        if label in labels and peer in labels:
            cells = []
            for d, m in columns:
                a, b = runs.get((label, d, m)), runs.get((peer, d, m))
                cells.append(f"{a['best_inst_per_s'] / b['best_inst_per_s']:.2f} / "
                             f"{a['median_inst_per_s'] / b['median_inst_per_s']:.2f}"
                             if a and b else "")
            lines.append(f"| {label} / {peer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", type=int, default=960, help="CT slices of 39 KB")
    parser.add_argument("--large", type=int, default=400, help="CT images of 525 KB")
    parser.add_argument("--receivers", default=",".join(RECEIVERS))
    parser.add_argument("--postgres", default=receivers.DEFAULT_POSTGRES)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if shutil.which("getscu") is None:
        print("dcmtk's getscu is not installed (apt-get install dcmtk)", file=sys.stderr)
        return 2
    labels, notes = available_receivers(args.receivers.split(","), args.postgres)
    for note in notes:
        print(note, flush=True)
    if not labels:
        return 2
    result = run(rounds=args.rounds, small=args.small, large=args.large, labels=labels,
                 postgres=args.postgres)
    result["notes"] = notes
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print("instances/s, best / median of rounds")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
