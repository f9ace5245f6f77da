"""Study-level C-FIND latency over DICOM on a PostgreSQL index of 1,000,000 instances.

Bulk-loads synthetic index rows (100,000 studies, 50,000 patients, 2 series of 5 instances per
study) with COPY into a fresh database, starts ``mimic serve`` on it, and times C-FIND
requests from a pynetdicom SCU over TLS, from request to final response, for four query
kinds: PatientID, PatientName=<prefix>*, a one-day StudyDate range, AccessionNumber.

    .venv/bin/python bench/find_latency.py [--instances N] [--queries Q]

Prints p50 / p95 per query kind; writes bench/results/find_latency.json.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
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


def run(instances: int, queries: int) -> dict[str, dict[str, float]]:
    with database.server() as server_url, database.fresh_database(server_url) as url:
        t0 = time.monotonic()
        migrate(url)
        samples = load(url, instances)
        load_seconds = time.monotonic() - t0
        print(f"loaded {instances} instances in {load_seconds:.0f} s", flush=True)
        samples["PatientName"] = ["SMITH*", "VANELJO*", "CARDOMAR*", "ZETOKA*", "MARINJO*"]
        samples["StudyDate"] = [f"{d}-{d}" for d in samples["StudyDate"]]
        with tempfile.TemporaryDirectory() as tmp:
            mimic = MimicProcess(Path(tmp) / "data", database_url=url)
            mimic.start()
            try:
                ae = AE(ae_title="BENCH")
                ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
                ctx = client_context(mimic.client_cert, mimic.client_key, mimic.ca_cert)
                assoc = ae.associate(HOST, mimic.port, ae_title="MIMIC",
                                     tls_args=(ctx, "localhost"))
                assert assoc.is_established
                # Like TCP_NODELAY=1 for dcmtk: without it, Nagle + delayed ACK add ~40 ms.
                assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                results: dict[str, dict[str, float]] = {}
                for kind, values in samples.items():
                    times, matches = [], []
                    by_value: dict[str, list[float]] = {}
                    for n in range(queries):
                        value = values[n % len(values)]
                        query = identifier(kind, value)
                        begin = time.perf_counter()
                        answers = list(assoc.send_c_find(
                            query, StudyRootQueryRetrieveInformationModelFind))
                        times.append((time.perf_counter() - begin) * 1000)
                        assert answers[-1][0].Status == 0, answers[-1][0]
                        matches.append(len(answers) - 1)
                        by_value.setdefault(f"{value} ({len(answers) - 1})", []).append(
                            times[-1])
                    times.sort()
                    results[kind] = {
                        "p50_ms": round(statistics.median(times), 1),
                        "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
                        "mean_matches": round(statistics.mean(matches), 1),
                    }
                    if kind == "PatientName":  # few values: each one's median
                        results[kind]["median_ms_by_value"] = {
                            v: round(statistics.median(t), 1) for v, t in by_value.items()
                        }
                    print(f"{kind:16} p50 {results[kind]['p50_ms']:7.1f} ms   "
                          f"p95 {results[kind]['p95_ms']:7.1f} ms   "
                          f"matches {results[kind]['mean_matches']}", flush=True)
                assoc.release()
                server_side = [e["seconds"] * 1000 for e in mimic.log_entries()
                               if e.get("message") == "C-FIND"]
                if server_side:
                    server_side.sort()
                    results["_server_side_all"] = {
                        "p50_ms": round(statistics.median(server_side), 1),
                        "p95_ms": round(server_side[int(len(server_side) * 0.95) - 1], 1),
                    }
                    print(f"server side, all queries: p50 {results['_server_side_all']}",
                          flush=True)
            finally:
                mimic.stop()
        results["_load"] = {"instances": instances, "seconds": round(load_seconds, 1)}
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
