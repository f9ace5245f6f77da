"""Study-level C-FIND latency over DICOM on a PostgreSQL index of 1,000,000 instances.

Bulk-loads synthetic index rows (100,000 studies, 50,000 patients, 2 series of 5 instances per
study) with COPY into a fresh database, starts ``mimic serve`` on it, and times C-FIND
requests over TLS, from request to final response, for four query kinds: PatientID,
PatientName=<prefix>*, a one-day StudyDate range, AccessionNumber. Two clients ask the same
queries, each over one association: dcmtk ``findscu`` (C++, like the workstations that query
an archive; its log timestamps each request and final response) and a pynetdicom SCU (whose
own receiving and decoding costs ~0.8 ms per match, so it shows less of the archive).

    .venv/bin/python bench/find_latency.py [--instances N] [--queries Q]

Prints p50 / p95 per query kind; writes bench/results/find_latency.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import psycopg
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mimic_server.net.requestor import keep_responses
from tests import database
from tests.conftest import migrate
from tests.support import HOST, MimicProcess, client_context

ROOT = "1.2.826.0.1.3680043.8.498"
SYLLABLES = ["AN", "BER", "CAR", "DO", "EL", "FI", "GAR", "HO", "IN", "JO", "KA", "LO", "MAR",
             "NO", "OS", "PE", "RI", "SA", "TO", "VAN", "WI", "ZE"]
FIRST = ["JOHN", "MARY", "ALEX", "EVA", "JAN", "ANNA", "OMAR", "LI", "SARA", "PAUL"]
MODALITIES = ["CT", "MR", "CR", "US", "DX", "MG", "NM", "PT"]


def surname(rng: random.Random) -> str:
    if rng.random() < 0.0004:
        return "SMITH"
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))


def load(url: str, instances: int) -> dict[str, list[str]]:
    """COPY synthetic rows; return sample values to query for."""
    rng = random.Random(1234)
    studies = instances // 10
    patients = max(1, studies // 2)
    start = date(2015, 1, 1)
    samples: dict[str, list[str]] = {"PatientID": [], "AccessionNumber": [], "StudyDate": []}
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    now = "2026-01-01 00:00:00+00"
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy("COPY patients (id, patient_key, patient_id, issuer_of_patient_id, "
                      "patient_name, patient_birth_date, patient_sex, created_at) "
                      "FROM STDIN") as cp:
            for p in range(1, patients + 1):
                pid = f"P{p:08d}"
                name = f"{surname(rng)}^{rng.choice(FIRST)}"
                cp.write_row((p, f"\\{pid}", pid, "", name, "19700101", "O", now))
                if p % 997 == 0:
                    samples["PatientID"].append(pid)
        with cur.copy("COPY studies (id, patient_fk, study_instance_uid, study_date, study_time, "
                      "accession_number, study_id, study_description, referring_physician_name, "
                      "created_at) FROM STDIN") as cp:
            for s in range(1, studies + 1):
                day = (start + timedelta(days=rng.randrange(3650))).strftime("%Y%m%d")
                acc = f"A{s:09d}"
                cp.write_row((s, (s - 1) % patients + 1, f"{ROOT}.1.{s}", day, "120000", acc,
                              str(s % 10000), "BENCH STUDY", "", now))
                if s % 1999 == 0:
                    samples["AccessionNumber"].append(acc)
                    samples["StudyDate"].append(day)
        with cur.copy("COPY series (id, study_fk, series_instance_uid, modality, series_number, "
                      "series_description, series_date, series_time, body_part_examined, "
                      "created_at) FROM STDIN") as cp:
            for s in range(1, studies * 2 + 1):
                cp.write_row((s, (s + 1) // 2, f"{ROOT}.2.{s}", MODALITIES[s % 8], s % 2 + 1,
                              "", "", "", "", now))
        with cur.copy("COPY instances (id, series_fk, sop_instance_uid, sop_class_uid, "
                      "instance_number, transfer_syntax_uid, specific_character_set, size, "
                      "sha256, object_key, header, received_from, received_at) FROM STDIN") as cp:
            for i in range(1, instances + 1):
                series = (i - 1) // 5 + 1
                cp.write_row((i, series, f"{ROOT}.3.{i}", "1.2.840.10008.5.1.4.1.1.2", i % 5 + 1,
                              "1.2.840.10008.1.2.1", "", 40000, "0" * 64, f"bench/{i}.dcm",
                              "{}", "bench", now))
        for table in ("patients", "studies", "series", "instances"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))")
        conn.commit()
        conn.autocommit = True
        cur.execute("VACUUM ANALYZE")
    return samples


def identifier(kind: str, value: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate",
                    "AccessionNumber", "StudyDescription", "ModalitiesInStudy",
                    "NumberOfStudyRelatedInstances"):
        setattr(ds, keyword, "")
    setattr(ds, kind, value)
    return ds


def percentiles(milliseconds: list[float]) -> dict[str, float]:
    times = sorted(milliseconds)
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
    }


def summarise(kind: str, measured: list[tuple[str, float, int]]) -> dict:
    """p50 / p95 of one query kind; for PatientName (few values) each value's median too."""
    result: dict = {
        **percentiles([ms for _, ms, _ in measured]),
        "mean_matches": round(statistics.mean(n for _, _, n in measured), 1),
    }
    if kind == "PatientName":
        by_value: dict[str, list[float]] = {}
        for value, ms, n in measured:
            by_value.setdefault(f"{value} ({n})", []).append(ms)
        result["median_ms_by_value"] = {
            v: round(statistics.median(t), 1) for v, t in by_value.items()
        }
    return result


def time_pynetdicom(mimic: MimicProcess, plan: list[tuple[str, str]]) -> list[tuple[float, int]]:
    """(milliseconds, matches) per query, over one association of a pynetdicom SCU."""
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ctx = client_context(mimic.client_cert, mimic.client_key, mimic.ca_cert)
    assoc = ae.associate(HOST, mimic.port, ae_title="MIMIC", tls_args=(ctx, "localhost"))
    assert assoc.is_established
    keep_responses(assoc)  # pynetdicom's own race would drop a match now and then
    # Like TCP_NODELAY=1 for dcmtk: without it, Nagle + delayed ACK add ~40 ms.
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    measured = []
    try:
        for kind, value in plan:
            query = identifier(kind, value)
            begin = time.perf_counter()
            answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
            measured.append(((time.perf_counter() - begin) * 1000, len(answers) - 1))
            assert answers[-1][0].Status == 0, answers[-1][0]
    finally:
        assoc.release()
    return measured


LOG_CONFIG = """\
log4cplus.rootLogger = INFO, file
log4cplus.appender.file = log4cplus::FileAppender
log4cplus.appender.file.File = {log}
log4cplus.appender.file.layout = log4cplus::PatternLayout
log4cplus.appender.file.layout.ConversionPattern = %D{{%H:%M:%S.%Q}} %m%n
"""


def time_findscu(
    mimic: MimicProcess, plan: list[tuple[str, str]], work: Path
) -> list[tuple[float, int]]:
    """(milliseconds, matches) per query, from one dcmtk ``findscu`` over one TLS association.

    findscu sends every query file given to it on the same association; its log, with
    microsecond timestamps, says when each C-FIND-RQ went out and its final response came in.
    """
    files = []
    for n, (kind, value) in enumerate(plan):
        path = work / f"q{n:04d}.dcm"
        identifier(kind, value).save_as(path, implicit_vr=False, little_endian=True)
        files.append(str(path))
    log = work / "findscu.log"
    config = work / "findscu-log.cfg"
    config.write_text(LOG_CONFIG.format(log=log))
    command = ["findscu", "-lc", str(config), "-S", "-aet", "BENCH", "-aec", "MIMIC",
               "+tls", str(mimic.client_key), str(mimic.client_cert), "+cf", str(mimic.ca_cert),
               HOST, str(mimic.port), *files]
    subprocess.run(command, check=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=600)
    measured: list[tuple[float, int]] = []
    sent, matches = 0.0, 0
    for line in log.read_text(errors="replace").splitlines():
        stamp, _, message = line.partition(" ")
        if message.startswith("Sending Find Request"):
            sent, matches = _seconds(stamp), 0
        elif message.startswith("Find Response:"):
            matches += 1
        elif message.startswith("Received Final Find Response"):
            assert message.endswith("(Success)"), message
            elapsed = (_seconds(stamp) - sent) % 86400
            measured.append((elapsed * 1000, matches))
    assert len(measured) == len(plan), f"{len(measured)} of {len(plan)} queries answered"
    return measured


def _seconds(stamp: str) -> float:
    """``HH:MM:SS.mmm.uuu`` (log4cplus ``%Q``) as seconds since midnight."""
    clock, _, fraction = stamp.partition(".")
    hours, minutes, seconds = (int(x) for x in clock.split(":"))
    return hours * 3600 + minutes * 60 + seconds + float(fraction.replace(".", "")) / 1e6


def run(instances: int, queries: int, server_url: str | None = None) -> dict[str, dict]:
    """Load, serve, time both clients; ``server_url`` is a PostgreSQL server to create the
    database on (default: 127.0.0.1:5432 when reachable, else one started for the run)."""
    with contextlib.ExitStack() as stack:
        if server_url is None:
            server_url = stack.enter_context(database.server())
        url = stack.enter_context(database.fresh_database(server_url))
        return _run_on(url, instances, queries)


def _run_on(url: str, instances: int, queries: int) -> dict[str, dict]:
    t0 = time.monotonic()
    migrate(url)
    samples = load(url, instances)
    load_seconds = time.monotonic() - t0
    print(f"loaded {instances} instances in {load_seconds:.0f} s", flush=True)
    samples["PatientName"] = ["SMITH*", "VANELJO*", "CARDOMAR*", "ZETOKA*", "MARINJO*"]
    samples["StudyDate"] = [f"{d}-{d}" for d in samples["StudyDate"]]
    plan = [(kind, values[n % len(values)])
            for kind, values in samples.items() for n in range(queries)]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        mimic = MimicProcess(Path(tmp) / "data", database_url=url)
        mimic.start()
        try:
            for client, timer in (
                ("findscu", lambda: time_findscu(mimic, plan, Path(tmp))),
                ("pynetdicom", lambda: time_pynetdicom(mimic, plan)),
            ):
                timed = timer()
                results[client] = {}
                for kind in samples:
                    measured = [
                        (value, ms, n)
                        for (k, value), (ms, n) in zip(plan, timed, strict=True)
                        if k == kind
                    ]
                    results[client][kind] = summary = summarise(kind, measured)
                    print(
                        f"{client:10} {kind:16} p50 {summary['p50_ms']:7.1f} ms   "
                        f"p95 {summary['p95_ms']:7.1f} ms   "
                        f"matches {summary['mean_matches']}",
                        flush=True,
                    )
                if "median_ms_by_value" in results[client].get("PatientName", {}):
                    print(
                        f"{client:10} PatientName by value (median ms): "
                        f"{results[client]['PatientName']['median_ms_by_value']}"
                    )
            server_side = [
                e["seconds"] * 1000 for e in mimic.log_entries() if e.get("message") == "C-FIND"
            ]
            if server_side:
                results["server_side_all"] = percentiles(server_side)
                print(f"server side, all queries: {results['server_side_all']}", flush=True)
        finally:
            mimic.stop()
    results["load"] = {"instances": instances, "seconds": round(load_seconds, 1)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    results = run(args.instances, args.queries)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "find_latency.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
