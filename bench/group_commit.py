"""What group commit is worth: MIMIC with ``MIMIC_GROUP_COMMIT`` on and off, interleaved.

Uses ``store_throughput``'s objects, senders and receiver (dcmtk ``storescu``, ``TCP_NODELAY=1``,
mutual TLS, counts verified after every run). For each index (embedded SQLite; PostgreSQL when
``--database-url`` names a server: a fresh database per run) and each number of associations,
the two settings alternate run by run (on, off, off, on, on, off, ...), so that a machine whose
speed drifts (shared, noisy) treats both alike. Reported: the best and the median of the rounds.

    .venv/bin/python bench/group_commit.py [--rounds N] [--count N] [--large N]
        [--database-url postgresql://postgres@127.0.0.1:5432/postgres]

Results are printed and written to ``bench/results/group_commit.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import store_throughput as st

RESULTS = st.ROOT / "bench" / "results" / "group_commit.json"


def run(data: st.DataSet, associations: int, pki: st.Pki, work: Path, database: str | None,
        group_commit: bool, n: int) -> float:
    st.MimicServer.postgres_server = database
    st.MimicServer.extra_env = {"MIMIC_GROUP_COMMIT": "true" if group_commit else "false",
                                "MIMIC_OPS_PORT": "0"}
    server = st.MimicServer(work / f"mimic-{n}", pki)
    try:
        return st.measure_once(server, data, associations, work)
    finally:
        shutil.rmtree(server.workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each setting")
    parser.add_argument("--count", type=int, default=600, help="small objects per run")
    parser.add_argument("--large", type=int, default=0, help="large objects per run (0: none)")
    parser.add_argument("--associations", default="1,4", help="comma-separated: 1 and/or 4")
    parser.add_argument("--database-url", metavar="URL",
                        help="also PostgreSQL: a server to create a database on per run")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    indexes: list[tuple[str, str | None]] = [("embedded", None)]
    if args.database_url:
        indexes.append(("postgresql", args.database_url))
    counts = [int(a) for a in args.associations.split(",")]
    results = []
    with st.terminated_as_exit(), tempfile.TemporaryDirectory(prefix="mimic-gc-") as tmp:
        work = Path(tmp)
        sets = [st.make_small(work / "in" / "small", args.count)]
        if args.large:
            sets.append(st.make_large(work / "in" / "large", args.large))
        pki = st.make_pki(work / "pki")
        before = st.machine()
        n = 0
        try:
            for index, database in indexes:
                for data in sets:
                    for associations in counts:
                        runs: dict[bool, list[float]] = {True: [], False: []}
                        for r in range(args.rounds):
                            order = (True, False) if r % 2 == 0 else (False, True)
                            for on in order:
                                n += 1
                                runs[on].append(run(data, associations, pki, work, database,
                                                    on, n))
                        row = {"index": index, "data": data.name, "count": data.count,
                               "associations": associations}
                        for on, label in ((True, "on"), (False, "off")):
                            rates = sorted(data.count / s for s in runs[on])
                            row[label] = {"best": round(rates[-1], 1),
                                          "median": round(statistics.median(rates), 1),
                                          "runs_inst_s": [round(x, 1) for x in rates]}
                        row["ratio_best"] = round(row["on"]["best"] / row["off"]["best"], 3)
                        row["ratio_median"] = round(row["on"]["median"] / row["off"]["median"],
                                                    3)
                        results.append(row)
                        print(f"{index:10} {data.name:5} {associations} assoc: on best "
                              f"{row['on']['best']:7.1f} median {row['on']['median']:7.1f} | "
                              f"off best {row['off']['best']:7.1f} median "
                              f"{row['off']['median']:7.1f} inst/s | x{row['ratio_best']:.2f}"
                              f" (medians x{row['ratio_median']:.2f})", flush=True)
        except st.BenchError as exc:
            print(f"BENCHMARK FAILED: {exc}", file=sys.stderr)
            return 1
        out = {"machine": before, "loadavg_at_end": st.machine()["loadavg_1_5_15"],
               "command": " ".join([".venv/bin/python", "bench/group_commit.py",
                                    *sys.argv[1:]]),
               "rounds": args.rounds, "tls": True, "results": results,
               "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(out, indent=2) + "\n")
        print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
