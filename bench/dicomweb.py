"""DICOMweb through ``mimic web``: QIDO-RS study search latency on the C-FIND benchmark's
PostgreSQL index, and WADO-RS requests/s for one ~40 KB instance over HTTP/1.1 keep-alive.

QIDO: the index rows of ``bench/find_latency.py`` (``load``: 10 instances per study) are
COPYed into a fresh database; ``mimic web`` (bearer tokens of the tests' OIDC issuer double,
validated on every request) answers the same four study-level query kinds (PatientID,
AccessionNumber, a one-day StudyDate range, PatientName prefix), each asking for the same
attributes as the C-FIND benchmark, over one keep-alive connection; time from request to the
whole JSON body, and the ``mimic web`` process's CPU time per query.

WADO: ``mimic serve`` on an SQLite data directory receives one 40 KB CT instance over DIMSE;
``mimic web`` on the same directory serves it; ``wrk`` (Debian) when installed, else a Python
keep-alive client in threads, requests it for ``--seconds``. Beside requests/s it reports
the server's CPU time per request (utime + stime of ``mimic web`` and its worker processes,
from ``/proc``, over the run): on a shared machine wall figures follow the neighbours' load,
CPU per request follows MIMIC's own work.

    .venv/bin/python bench/dicomweb.py [--instances N] [--queries Q] [--seconds S]
    .venv/bin/python bench/dicomweb.py --qido-only --instances 1000000 --queries 100
    .venv/bin/python bench/dicomweb.py --wado-only [--seconds S] [--web-workers N]

Prints the figures; writes bench/results/dicomweb.json.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.find_latency import load, percentiles
from bench.idle_cpu import cpu_seconds
from mimic_server.config import Settings
from mimic_server.net.requestor import keep_responses
from mimic_server.web.parent import web_worker_count
from tests import database
from tests.conftest import migrate
from tests.oidc_double import OidcIssuerDouble
from tests.support import HOST, MimicProcess, associate, client_context
from tests.web_support import AUDIENCE, WebProcess

FIELDS = ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "AccessionNumber",
          "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedInstances")
ALL_ROLES = '{"Radiologist": ["find", "get"]}'


def _get(conn: http.client.HTTPConnection, path: str, token: str, accept: str) -> bytes:
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}", "Accept": accept})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status} {body[:200]!r}")
    return body


def _product_web_workers(data: Path) -> int:
    """What `mimic web` runs by default here (the test helper would otherwise ask for one)."""
    return web_worker_count(Settings(data_dir=data))


def qido(instances: int, queries: int, tmp: Path, issuer: OidcIssuerDouble) -> dict:
    with contextlib.ExitStack() as stack:
        server_url = stack.enter_context(database.server())
        url = stack.enter_context(database.fresh_database(server_url))
        t0 = time.monotonic()
        migrate(url)
        samples = load(url, instances)
        print(f"loaded {instances} instances in {time.monotonic() - t0:.0f} s", flush=True)
        samples["PatientName"] = ["SMITH*", "VANELJO*", "CARDOMAR*", "ZETOKA*", "MARINJO*"]
        samples["StudyDate"] = [f"{d}-{d}" for d in samples["StudyDate"]]
        (tmp / "qido").mkdir(parents=True, exist_ok=True)
        web = WebProcess(tmp / "qido" / "data", issuer, policy=None, web_roles=ALL_ROLES,
                         database_url=url, max_find_results="10000",
                         web_workers=str(_product_web_workers(tmp / "qido" / "data"))).start()
        token = issuer.mint(audience=AUDIENCE, roles=["Radiologist"], lifetime=3600)
        results: dict = {"instances": instances}
        try:
            conn = http.client.HTTPConnection(HOST, web.port, timeout=60)
            fields = "&".join(f"includefield={f}" for f in FIELDS)
            for kind, values in samples.items():
                times, matches = [], []
                cpu_before = cpu_seconds(web.proc.pid)
                for n in range(queries):
                    value = urllib.parse.quote(values[n % len(values)])
                    path = f"/dicomweb/studies?{kind}={value}&{fields}"
                    start = time.perf_counter()
                    body = _get(conn, path, token, "application/dicom+json")
                    times.append((time.perf_counter() - start) * 1000)
                    matches.append(len(json.loads(body)))
                cpu_ms = (cpu_seconds(web.proc.pid) - cpu_before) * 1000 / queries
                results[kind] = {**percentiles(times),
                                 "mean_matches": round(statistics.mean(matches), 1),
                                 "server_cpu_ms_per_query": round(cpu_ms, 2)}
                print(f"QIDO {kind:16} p50 {results[kind]['p50_ms']:7.1f} ms   "
                      f"p95 {results[kind]['p95_ms']:7.1f} ms   "
                      f"matches {results[kind]['mean_matches']}   "
                      f"server CPU {cpu_ms:5.1f} ms/query", flush=True)
            conn.close()
        finally:
            web.stop()
    return results


def forty_kb_instance(path: Path) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "BENCH1", "Bench^Web", "CT"
    ds.Rows, ds.Columns = 128, 156
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pixels = np.random.default_rng(1).integers(0, 4096, (128, 156), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def wado(seconds: float, tmp: Path, issuer: OidcIssuerDouble, connections: int,
         web_workers: int | None = None) -> dict:
    data = tmp / "wado" / "data"
    data.parent.mkdir(parents=True, exist_ok=True)
    server = MimicProcess(data).start()
    web = None
    try:
        ds = forty_kb_instance(tmp / "forty.dcm")
        ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
        assoc = associate(server.port, ctx, contexts=[ds.SOPClassUID],
                          transfer_syntaxes=[ExplicitVRLittleEndian])
        keep_responses(assoc)  # pynetdicom's own race drops a response now and then
        assert assoc.send_c_store(tmp / "forty.dcm").Status == 0
        assoc.release()
        size = server.object_for(ds.SOPInstanceUID).stat().st_size
        extra = {"web_workers": str(web_workers or _product_web_workers(data))}
        web = WebProcess(data, issuer, policy=None, web_roles=ALL_ROLES, **extra).start()
        token = issuer.mint(audience=AUDIENCE, roles=["Radiologist"], lifetime=3600)
        path = (f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}")
        accept = 'multipart/related; type="application/dicom"'
        conn = http.client.HTTPConnection(HOST, web.port, timeout=30)
        assert len(_get(conn, path, token, accept)) > size  # warm, and it works
        conn.close()
        result: dict = {"object_bytes": size, "connections": connections,
                        "seconds": seconds, "web_workers": web_workers or "default"}
        assert web.proc is not None
        cpu_before = cpu_seconds(web.proc.pid)
        if shutil.which("wrk"):
            result.update(_wrk(web.port, path, token, accept, seconds, connections))
        else:
            result.update(_threads(web.port, path, token, accept, seconds, connections))
        cpu = cpu_seconds(web.proc.pid) - cpu_before
        result["server_cpu_seconds"] = round(cpu, 3)
        result["server_cpu_ms_per_request"] = round(1000 * cpu / max(1, result["requests"]), 3)
        with open("/proc/loadavg") as fh:
            result["load_average"] = fh.read().split()[:3]
        print(f"WADO-RS {size} B instance: {result['requests_per_second']:.0f} requests/s, "
              f"server CPU {result['server_cpu_ms_per_request']:.2f} ms/request "
              f"({result['client']}, {connections} keep-alive connections, load average "
              f"{' '.join(result['load_average'])})", flush=True)
        return result
    finally:
        if web is not None:
            web.stop()
        server.stop()


def _wrk(port: int, path: str, token: str, accept: str, seconds: float,
         connections: int) -> dict:
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{int(seconds)}s",
         "-H", f"Authorization: Bearer {token}", "-H", f"Accept: {accept}",
         f"http://{HOST}:{port}{path}"],
        capture_output=True, text=True, timeout=seconds + 60,
    ).stdout
    rate = next(float(line.split()[1]) for line in out.splitlines()
                if line.startswith("Requests/sec"))
    count = next(int(line.split()[0]) for line in out.splitlines()
                 if "requests in" in line)
    errors = [line.strip() for line in out.splitlines() if "Non-2xx" in line or "errors" in line]
    return {"client": "wrk", "requests_per_second": rate, "requests": count,
            "wrk_errors": errors}


def _threads(port: int, path: str, token: str, accept: str, seconds: float,
             connections: int) -> dict:
    counts = [0] * connections
    deadline = time.monotonic() + seconds

    def run(n: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        while time.monotonic() < deadline:
            _get(conn, path, token, accept)
            counts[n] += 1

    threads = [threading.Thread(target=run, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"client": "python http.client threads", "requests_per_second": sum(counts) / seconds,
            "requests": sum(counts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--skip-qido", action="store_true")
    parser.add_argument("--qido-only", action="store_true", help="skip the WADO-RS part")
    parser.add_argument("--wado-only", action="store_true", help="skip the QIDO-RS part")
    parser.add_argument("--web-workers", type=int, default=None,
                        help="MIMIC_WEB_WORKERS for the WADO-RS run (default: the server's)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        issuer = OidcIssuerDouble(tmp).start()
        try:
            if not args.qido_only:
                results["wado"] = wado(args.seconds, tmp, issuer, args.connections,
                                       args.web_workers)
            if not (args.skip_qido or args.wado_only):
                results["qido"] = qido(args.instances, args.queries, tmp, issuer)
        finally:
            issuer.stop()
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "dicomweb.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
