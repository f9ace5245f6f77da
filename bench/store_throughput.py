"""C-STORE throughput of MIMIC against dcmtk ``storescp`` (the reference), same files, same run.

Synthesizes two sets of objects once into a temp directory:

* small: CT slices of ~40 KB, copies of pydicom's ``CT_small.dcm`` with new Study / Series /
  SOP Instance UIDs (a few studies);
* large: 512x512 16-bit MONOCHROME2 CT images (~0.5 MB each) with pseudo-random pixel data,
  explicit VR little endian;

then sends each set with dcmtk ``storescu`` (``TCP_NODELAY=1``), over one association (one
``storescu`` process sending everything) and over four at once (four processes, a quarter
each), to MIMIC and to ``storescp``, with TLS (MIMIC's mutual TLS vs ``storescp +tls``, both
with the development PKI) and plain (``mimic serve --no-tls`` vs plain ``storescp``). Every
scenario gets a fresh MIMIC data directory and a fresh ``storescp`` output directory, on
loopback, on a free port.

    .venv/bin/python bench/store_throughput.py [--quick] [--repeat N] [--target-only]

``--repeat N`` runs each server N times per scenario (fresh receiver each time) and keeps the
fastest run, for a shared or noisy machine.

Time is wall-clock from the start of the ``storescu`` processes until the last one has
finished (servers are already listening). MB/s counts the bytes of the files sent (1 MB =
10^6 bytes). The counts are verified (MIMIC: rows of ``instances`` in its SQLite index;
storescp: files in its output directory): a mismatch is an error. Results are printed and
written to ``bench/results/store_throughput.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pynetdicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "store_throughput.json"
MIMIC = [str(ROOT / ".venv" / "bin" / "mimic"), "serve"]
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's prefix for generated UIDs
PARALLEL = 4
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
#: MIMIC_WORKERS for the MIMIC server (``--workers``); None: the server's default.
WORKERS: int | None = None
SEND_TIMEOUT = 900.0  # per scenario and server


class BenchError(RuntimeError):
    """The benchmark could not produce a valid figure (count mismatch, failed peer, ...)."""


class SenderFailed(BenchError):
    """A ``storescu`` of a run exited with an error, timed out or reported errors: the run
    has no figure (``compare.py`` tries it once more with a fresh receiver)."""


# -- helpers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def dcmtk_env() -> dict[str, str]:
    # Without TCP_NODELAY each C-STORE waits ~88 ms (Nagle + delayed ACK) on loopback.
    return {**os.environ, "TCP_NODELAY": "1"}


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{proc.args} exited {proc.returncode}:\n{tail(log)}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.1)
    raise BenchError(f"{proc.args} did not listen on {port} within {timeout} s:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_exited(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """``proc.wait(timeout)`` that returns when the process ends, not up to 50 ms later.

    ``Popen.wait`` with a timeout polls, sleeping 1, 2, 4 ... ms and then 50 ms at a time:
    a process that ends 120 ms after the wait began is seen at 163 ms. That put every timed
    run on a 50 ms grid (a C-GET of 100 objects read as 215 or 266 ms, never between). Here
    the wait is on the process's pidfd (Linux 5.3), which becomes readable as it exits.
    Raises ``subprocess.TimeoutExpired`` as ``wait`` does, the process left running."""
    if proc.poll() is not None:
        return proc.returncode
    pidfd = os.pidfd_open(proc.pid)  # not reaped yet (only we reap it): the pid is its own
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(max(0.0, timeout) * 1000):
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(pidfd)
    return proc.wait()  # it has ended: reaped at once


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait, then SIGKILL: only the process this script started."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# -- data -------------------------------------------------------------------------------------


@dataclass
class DataSet:
    name: str
    parts: list[Path]  # PARALLEL directories; together they hold every file
    count: int
    total_bytes: int


def _split_dirs(base: Path, parts: int = PARALLEL) -> list[Path]:
    dirs = [base / f"part{i}" for i in range(parts)]
    for d in dirs:
        d.mkdir(parents=True)
    return dirs


def make_small(base: Path, count: int, studies: int = 5, parts: int = PARALLEL) -> DataSet:
    """Copies of CT_small.dcm (~39 KB), each with new Study/Series/SOP Instance UIDs."""
    source = Path(pydicom.data.DATA_ROOT) / "test_files" / "CT_small.dcm"
    template = pydicom.dcmread(source)
    dirs = _split_dirs(base, parts)
    study_uids = [generate_uid(UID_PREFIX) for _ in range(studies)]
    series_uids = [[generate_uid(UID_PREFIX) for _ in range(2)] for _ in range(studies)]
    total = 0
    for n in range(count):
        study = n % studies
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.StudyInstanceUID = study_uids[study]
        ds.SeriesInstanceUID = series_uids[study][n % 2]
        ds.SOPInstanceUID = generate_uid(UID_PREFIX)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n + 1
        path = dirs[n % parts] / f"small{n:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return DataSet("small", dirs, count, total)


def make_large(base: Path, count: int, studies: int = 4, parts: int = PARALLEL) -> DataSet:
    """512x512 16-bit MONOCHROME2 CT images, explicit VR little endian, noisy pixel data."""
    dirs = _split_dirs(base, parts)
    rng = np.random.default_rng(20261123)
    study_uids = [generate_uid(UID_PREFIX) for _ in range(studies)]
    series_uids = [generate_uid(UID_PREFIX) for _ in range(studies)]
    frame_uids = [generate_uid(UID_PREFIX) for _ in range(studies)]
    yy, xx = np.mgrid[0:512, 0:512]
    phantom = (1000 * (((xx - 256) ** 2 + (yy - 256) ** 2) < 200**2)).astype(np.int32)
    total = 0
    for n in range(count):
        study = n % studies
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid(UID_PREFIX)
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20261123"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber = f"BENCH{study:04d}"
        ds.Modality = "CT"
        ds.Manufacturer = "MIMIC BENCH"
        ds.ReferringPhysicianName = ""
        ds.PatientName = f"BENCH^LARGE{study}"
        ds.PatientID = f"BENCHL{study:04d}"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uids[study]
        ds.SeriesInstanceUID = series_uids[study]
        ds.StudyID = str(study + 1)
        ds.SeriesNumber = 1
        ds.InstanceNumber = n // studies + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(n // studies)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.FrameOfReferenceUID = frame_uids[study]
        ds.SliceThickness = 1.0
        ds.PixelSpacing = [0.7, 0.7]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = 512
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        noise = rng.integers(0, 200, size=(512, 512), dtype=np.int32)
        ds.PixelData = (phantom + noise + 24).astype("<u2").tobytes()
        path = dirs[n % parts] / f"large{n:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return DataSet("large", dirs, count, total)


# -- servers ----------------------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(cert_dir: Path) -> Pki:
    """The development PKI, made once by ``mimic certs init`` and shared by every TLS run."""
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "mimic"), "certs", "init", "--cert-dir", str(cert_dir),
         "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if out.returncode != 0:
        raise BenchError(f"mimic certs init failed: {out.stderr}")
    info = json.loads(out.stdout)
    return Pki(
        ca=Path(info["ca_cert"]),
        server_cert=cert_dir / "server" / "server.pem",
        server_key=cert_dir / "server" / "server.key",
        client_cert=Path(info["client_cert"]),
        client_key=Path(info["client_key"]),
    )


class Server:
    """One receiver for one scenario: start, count what it holds, stop."""

    label = ""
    called_ae = ""

    def __init__(self, workdir: Path, pki: Pki | None) -> None:
        self.workdir = workdir
        self.pki = pki
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.label}.log"

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd, env = self.command()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                start_new_session=True,
            )
        self.ready()

    def ready(self) -> None:
        assert self.proc is not None
        wait_for_port(self.port, self.proc, self.log_path, START_TIMEOUT)

    def count(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        stop_process(self.proc)

    def tls_args(self) -> list[str]:
        if self.pki is None:
            return []
        return ["+tls", str(self.pki.client_key), str(self.pki.client_cert),
                "+cf", str(self.pki.ca)]


#: Settings that pick the configuration under test (index, object store, TLS, where): never
#: taken from the caller's environment. Every other ``MIMIC_*`` variable passes through.
CONFIGURATION_SETTINGS = frozenset(
    f"MIMIC_{name}" for name in (
        "CONFIG_FILE", "DATA_DIR", "CERT_DIR", "TLS", "HOST", "PORT", "DATABASE_URL",
        "DATABASE_AUTH", "BLOB_ACCOUNT_URL", "BLOB_CONNECTION_STRING", "BLOB_CONTAINER",
        "KEYVAULT_URL", "LOG_FORMAT", "OPS_PORT", "SPOOL_DIR",
    )
)


class MimicServer(Server):
    label = "mimic"
    called_ae = "MIMIC"
    #: Settings a benchmark adds (``retrieve.py``: the policy file that grants C-GET).
    extra_environment: dict[str, str] = {}  # replaced per server, never mutated

    def environment(self) -> dict[str, str]:
        """The caller's environment (``MIMIC_WORKERS`` and other tuning pass through) minus
        the settings that choose the configuration under test, which the benchmark sets."""
        env = {k: v for k, v in os.environ.items() if k not in CONFIGURATION_SETTINGS}
        env.update(self.extra_environment)
        env.update(MIMIC_DATA_DIR=str(self.workdir / "data"), MIMIC_LOG_FORMAT="json",
                   MIMIC_OPS_PORT="0")  # 8080 may be taken on a shared machine
        if WORKERS is not None:
            env["MIMIC_WORKERS"] = str(WORKERS)
        if self.pki is not None:
            env["MIMIC_CERT_DIR"] = str(self.pki.ca.parent.parent)
        return env

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = self.environment()
        tls = ["--tls"] if self.pki is not None else ["--no-tls"]
        return [*MIMIC, "--host", HOST, "--port", str(self.port), *tls], env

    def ready(self) -> None:
        # The "listening" log line, not a probe connection: MIMIC audits bare TCP probes.
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"mimic serve exited {self.proc.returncode}:\n"
                                 f"{tail(self.log_path)}")
            if '"message": "listening"' in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise BenchError(f"mimic serve did not start:\n{tail(self.log_path)}")

    def count(self) -> int:
        db = self.workdir / "data" / "index.sqlite3"
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return int(conn.execute("SELECT count(*) FROM instances").fetchone()[0])


class StorescpServer(Server):
    label = "storescp"
    called_ae = "STORESCP"

    @property
    def out_dir(self) -> Path:
        return self.workdir / "out"

    def command(self) -> tuple[list[str], dict[str, str]]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # Single process (no --fork: not with TLS, so not plain either, to compare alike);
        # its largest receive PDU (131072) so the reference is not held back by 16 KB PDUs.
        cmd = ["storescp", "-aet", self.called_ae, "-pdu", "131072", "-od", str(self.out_dir)]
        if self.pki is not None:
            cmd += ["+tls", str(self.pki.server_key), str(self.pki.server_cert),
                    "+cf", str(self.pki.ca)]
        return [*cmd, str(self.port)], dcmtk_env()

    def count(self) -> int:
        return sum(1 for p in self.out_dir.rglob("*") if p.is_file())


# -- one scenario -----------------------------------------------------------------------------


@dataclass
class Figure:
    server: str
    seconds: float  # the best run
    runs_seconds: list[float]
    instances: int
    bytes: int
    instances_per_s: float
    mb_per_s: float


@dataclass
class Scenario:
    data: str
    associations: int
    tls: bool
    instances: int
    bytes: int
    mimic: Figure
    storescp: Figure
    ratio: float  # MIMIC / storescp, instances/s (equals the MB/s ratio: same bytes)

    @property
    def name(self) -> str:
        return f"{self.data}, {self.associations} assoc, {'TLS' if self.tls else 'plain'}"


def send(server: Server, data: DataSet, associations: int, work: Path,
         env: dict[str, str] | None = None) -> float:
    """Run the storescu processes; return the wall-clock seconds until all have finished.
    ``env``: theirs (default :func:`dcmtk_env`, Nagle's algorithm off)."""
    if associations < 1 or len(data.parts) % associations:
        raise BenchError(f"{associations} associations cannot share {len(data.parts)} parts")
    groups = [data.parts[i::associations] for i in range(associations)]
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    env = dcmtk_env() if env is None else env
    try:
        start = time.perf_counter()
        for i, dirs in enumerate(groups):
            log = work / f"storescu-{server.label}-{i}.log"
            cmd = [
                "storescu", "-aet", "BENCH", "-aec", server.called_ae,
                "-ta", "300", "-to", "300", "-td", "300",
                *server.tls_args(), "+sd", "+r", HOST, str(server.port),
                *[str(d) for d in dirs],
            ]
            with open(log, "wb") as fh:
                proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            procs.append((proc, log))
        deadline = start + SEND_TIMEOUT
        for proc, log in procs:
            try:
                wait_exited(proc, max(1.0, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired as exc:
                raise SenderFailed(f"storescu to {server.label} timed out after "
                                 f"{SEND_TIMEOUT} s:\n{tail(log)}") from exc
        elapsed = time.perf_counter() - start
        for proc, log in procs:
            if proc.returncode != 0:
                raise SenderFailed(f"storescu to {server.label} exited {proc.returncode}:\n"
                                 f"{tail(log)}")
            text = log.read_text(errors="replace")
            if "E: " in text or "F: " in text:
                raise SenderFailed(f"storescu to {server.label} reported errors:\n{tail(log)}")
        return elapsed
    finally:
        for proc, _ in procs:
            stop_process(proc, 5)


def measure_once(server: Server, data: DataSet, associations: int, work: Path) -> float:
    server.start()
    try:
        seconds = send(server, data, associations, work)
        stored = server.count()
    finally:
        server.stop()
    if stored != data.count:
        raise BenchError(f"{server.label} holds {stored} instances, {data.count} were sent "
                         f"({data.name}, {associations} assoc); its log:\n{tail(server.log_path)}")
    return seconds


def measure(
    make: type[Server], pki: Pki | None, data: DataSet, associations: int, work: Path,
    repeat: int,
) -> Figure:
    """Best of ``repeat`` runs, each on a fresh receiver (the machine may be shared)."""
    runs = []
    for n in range(repeat):
        server = make(work / f"{make.label}-{n}", pki)
        runs.append(measure_once(server, data, associations, work))
        shutil.rmtree(server.workdir, ignore_errors=True)  # free the disk for the next run
    seconds = min(runs)
    return Figure(
        server=make.label,
        seconds=round(seconds, 3),
        runs_seconds=[round(r, 3) for r in runs],
        instances=data.count,
        bytes=data.total_bytes,
        instances_per_s=round(data.count / seconds, 1),
        mb_per_s=round(data.total_bytes / seconds / 1e6, 2),
    )


def run_scenario(
    data: DataSet, associations: int, pki: Pki | None, work: Path, repeat: int
) -> Scenario:
    tag = f"{data.name}-{associations}-{'tls' if pki else 'plain'}"
    scen_dir = work / tag
    scen_dir.mkdir()
    ref = measure(StorescpServer, pki, data, associations, scen_dir, repeat)
    mim = measure(MimicServer, pki, data, associations, scen_dir, repeat)
    return Scenario(
        data=data.name, associations=associations, tls=pki is not None,
        instances=data.count, bytes=data.total_bytes, mimic=mim, storescp=ref,
        ratio=round(mim.instances_per_s / ref.instances_per_s, 3),
    )


# -- reporting --------------------------------------------------------------------------------


def machine() -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    dcmtk = subprocess.run(["storescu", "--version"], capture_output=True, text=True,
                           timeout=10, check=False).stdout.splitlines()
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "dcmtk": dcmtk[0].strip() if dcmtk else "",
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def print_table(scenarios: list[Scenario]) -> None:
    head = (f"{'scenario':28} {'MIMIC inst/s':>12} {'MIMIC MB/s':>10} "
            f"{'storescp inst/s':>15} {'storescp MB/s':>13} {'ratio':>6}")
    print(head)
    print("-" * len(head))
    for s in scenarios:
        print(f"{s.name:28} {s.mimic.instances_per_s:12.1f} {s.mimic.mb_per_s:10.2f} "
              f"{s.storescp.instances_per_s:15.1f} {s.storescp.mb_per_s:13.2f} "
              f"{s.ratio:6.3f}")


@contextlib.contextmanager
def terminated_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` (processes, temp dirs) runs."""
    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="~100 small / ~40 large objects, a smoke run")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per server and scenario; the best is kept (default 1)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--target-only", action="store_true",
                        help="only the issue's target scenario: small objects, TLS, 1 assoc")
    parser.add_argument("--associations", type=int, choices=(1, PARALLEL), default=None,
                        help=f"only scenarios with this many associations (1 or {PARALLEL})")
    parser.add_argument("--workers", type=int, default=None,
                        help="MIMIC_WORKERS for mimic serve (default: its own, the CPUs)")
    args = parser.parse_args()
    global WORKERS
    WORKERS = args.workers
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            print(f"{tool} (dcmtk) is not installed", file=sys.stderr)
            return 2
    small_n, large_n = (100, 40) if args.quick else (1000, 400)

    with terminated_as_exit(), tempfile.TemporaryDirectory(prefix="mimic-bench-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        sets = [make_small(work / "in" / "small", small_n),
                make_large(work / "in" / "large", large_n)]
        for d in sets:
            print(f"{d.name}: {d.count} files, {d.total_bytes / 1e6:.1f} MB "
                  f"({d.total_bytes / d.count / 1e3:.1f} KB each)", flush=True)
        print(f"synthesized in {time.monotonic() - t0:.1f} s", flush=True)
        pki = make_pki(work / "pki")
        before = machine()
        scenarios: list[Scenario] = []
        try:
            for tls in (True,) if args.target_only else (True, False):
                for data in sets[:1] if args.target_only else sets:
                    counts = (1,) if args.target_only else (1, PARALLEL)
                    if args.associations is not None:
                        counts = (args.associations,)
                    for associations in counts:
                        s = run_scenario(data, associations, pki if tls else None, work,
                                     max(1, args.repeat))
                        scenarios.append(s)
                        print(f"{s.name:28} MIMIC {s.mimic.instances_per_s:8.1f} inst/s "
                              f"{s.mimic.mb_per_s:7.2f} MB/s | storescp "
                              f"{s.storescp.instances_per_s:8.1f} inst/s "
                              f"{s.storescp.mb_per_s:7.2f} MB/s | ratio {s.ratio:.3f}",
                              flush=True)
        except BenchError as exc:
            print(f"BENCHMARK FAILED: {exc}", file=sys.stderr)
            return 1
        print()
        print_table(scenarios)
        result = {
            "machine": before,
            "loadavg_at_end": machine()["loadavg_1_5_15"],
            "command": " ".join([".venv/bin/python", "bench/store_throughput.py",
                                 *sys.argv[1:]]),
            "quick": args.quick,
            "repeat": max(1, args.repeat),
            "data": {d.name: {"count": d.count, "bytes": d.total_bytes} for d in sets},
            "scenarios": [{**asdict(s), "name": s.name} for s in scenarios],
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
