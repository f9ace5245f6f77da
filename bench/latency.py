"""C-STORE throughput against cloud latency: MIMIC with PostgreSQL + Blob Storage (Azurite) when
every database and blob round trip costs milliseconds, over 1, 4, 16 and 32 associations.

In a cloud region an association's throughput is bounded by the round trips of each object
(the blob put, the index transaction); the archive's throughput has to come from many
associations at once. This VM's kernel has no ``netem`` qdisc, so the latency is added by
``bench/delay_proxy.py``, a user-space TCP proxy in its own process that forwards each chunk
after a fixed one-way delay: MIMIC's database URL and blob endpoint point at two proxies
(default 1 ms each way to PostgreSQL = 2 ms round trip; 2.5 ms each way to Azurite = 5 ms).

Three modes, interleaved per round: ``latency`` (the delays above), ``proxy-0`` (the same
proxies with no delay) and ``direct`` (no proxy): ``proxy-0`` against ``direct`` shows what the
proxy costs by itself. The measured round trips through each proxy (PostgreSQL ``SELECT 1``;
an HTTP request to Azurite) are reported beside the throughput.

Clients are dcmtk ``storescu`` processes (``TCP_NODELAY=1``, mutual TLS unless ``--plain``),
N processes for N associations, sharing the same ~40 KB CT slices; each run gets a fresh
database, Azurite and server, and its instance count is verified. The CPU seconds used by the
clients, the server (with any worker processes) and the proxies are recorded per run, to see
whether the two cores, not the latency, bound a figure.

    .venv/bin/python bench/latency.py [--quick] [--rounds 2] [--count 640]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import receivers
from bench.store_throughput import (
    HOST,
    ROOT,
    BenchError,
    DataSet,
    Pki,
    machine,
    make_pki,
    make_small,
    send,
    stop_process,
    tail,
    terminated_as_exit,
)
from tests.azurite import Azurite

RESULTS = ROOT / "bench" / "results" / "latency.json"
ASSOCIATIONS = (1, 4, 16, 32)
MODES = ("latency", "proxy-0", "direct")
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


# -- the proxies ------------------------------------------------------------------------------


class DelayProxy:
    """``bench/delay_proxy.py`` as a subprocess in front of one loopback port."""

    def __init__(self, target_port: int, delay_ms: float) -> None:
        self.target_port = target_port
        self.delay_ms = delay_ms
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> DelayProxy:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.delay_proxy", "--target",
             f"{HOST}:{self.target_port}", "--delay-ms", str(self.delay_ms)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            stop_process(self.proc, 5)
            raise BenchError(f"delay proxy did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def cpu_seconds(self) -> float:
        return process_cpu(self.proc.pid) if self.proc else 0.0

    def stop(self) -> None:
        stop_process(self.proc, 5)


def process_cpu(pid: int) -> float:
    """utime + stime of a process and of its live children (worker processes), seconds."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(stat.parent.name) == pid or int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / CLOCK_TICK
    return total


def database_cpu(name: str | None) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving database ``name`` (by process title);
    ``None``: of every process of the cluster but the postmaster (backends, WAL writer,
    checkpointer: the WAL flushes of commits are theirs too)."""
    out: dict[int, float] = {}
    marker = f" {name} ".encode() if name is not None else b""
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if not (proc / "cmdline").read_bytes().startswith(b"postgres: "):
                continue
            if marker and marker not in (proc / "cmdline").read_bytes():
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(proc.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICK
    return out


def database_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """Backends that started during the run count from zero."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


class BenchAzurite(Azurite):
    """Azurite as the benchmark runs it by default: blobs and metadata in memory
    (``--inMemoryPersistence``), ``--loose``, ``--disableTelemetry``. A blob service in a
    region is not a Node.js process on the same two cores, so the cheapest way to run the
    emulator is the fairest; ``--azurite-disk`` runs it as the tests do (files on disk)."""

    def arguments(self) -> list[str]:
        return ["--inMemoryPersistence", "--loose", "--disableTelemetry"]


def machine_cpu() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, from ``/proc/stat``: what the
    other users of a shared machine take shows as busy time that none of our processes used."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / CLOCK_TICK, idle / CLOCK_TICK


def pg_round_trip_ms(dsn: str, n: int = 200) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT 1")
        times = []
        for _ in range(n):
            t = time.perf_counter()
            conn.execute("SELECT 1")
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def http_round_trip_ms(port: int, n: int = 100) -> float:
    """One small request at a time on one keep-alive connection (Azurite answers at once)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    times = []
    try:
        for _ in range(n + 1):
            t = time.perf_counter()
            conn.request("GET", "/devstoreaccount1/nosuchcontainer?restype=container")
            conn.getresponse().read()
            times.append(time.perf_counter() - t)
    finally:
        conn.close()
    return statistics.median(times[1:]) * 1000


# -- the server under test --------------------------------------------------------------------


class LatencyMimic(receivers.MimicPostgresAzurite):
    """MIMIC with PostgreSQL + Azurite, both reached through delaying proxies (or directly)."""

    label = "mimic-pg-azurite"

    def __init__(self, workdir: Path, pki: Pki | None, postgres: str,
                 pg_proxy: DelayProxy | None, blob_delay_ms: float | None) -> None:
        super().__init__(workdir, pki, postgres)
        self.pg_proxy = pg_proxy
        self.blob_delay_ms = blob_delay_ms
        self.blob_proxy: DelayProxy | None = None
        if pg_proxy is not None:
            self.database_host = (HOST, pg_proxy.port)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.blob_delay_ms is not None:
            self.blob_proxy = DelayProxy(self.azurite.port, self.blob_delay_ms).start()
            self.blob_port = self.blob_proxy.port
        super().start()

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            if self.blob_proxy is not None:
                self.blob_proxy.stop()


@dataclass
class Run:
    mode: str
    associations: int
    seconds: float
    instances_per_s: float
    client_cpu_s: float
    server_cpu_s: float
    proxy_cpu_s: float
    #: The split of ``proxy_cpu_s``: the PostgreSQL proxy and the blob proxy.
    pg_proxy_cpu_s: float = 0.0
    blob_proxy_cpu_s: float = 0.0
    #: Azurite (one Node.js process) during the run.
    azurite_cpu_s: float = 0.0
    #: The PostgreSQL backends of the run's database.
    postgres_cpu_s: float = 0.0
    #: The whole machine during the run (every user's processes): busy and idle CPU seconds.
    machine_busy_s: float = 0.0
    machine_idle_s: float = 0.0


def measure(server: LatencyMimic, data: DataSet, associations: int, work: Path,
            pg_proxy: DelayProxy | None) -> Run:
    def blob_proxy() -> float:
        return server.blob_proxy.cpu_seconds() if server.blob_proxy else 0.0

    try:
        server.start()
        assert server.proc is not None
        pid = server.proc.pid
        azurite_pid = server.azurite.proc.pid if server.azurite.proc else -1
        cpu0 = process_cpu(pid)
        pg0 = pg_proxy.cpu_seconds() if pg_proxy else 0.0
        blob0 = blob_proxy()
        azurite0 = process_cpu(azurite_pid)
        pg_backends0 = database_cpu(server.database.name)
        busy0, idle0 = machine_cpu()
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds = send(server, data, associations, work)
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy1, idle1 = machine_cpu()
        server_cpu = process_cpu(pid) - cpu0
        pg_cpu = (pg_proxy.cpu_seconds() if pg_proxy else 0.0) - pg0
        blob_cpu = blob_proxy() - blob0
        azurite_cpu = process_cpu(azurite_pid) - azurite0
        postgres_cpu = database_cpu_delta(pg_backends0, database_cpu(server.database.name))
        stored = server.count()
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(server.workdir, ignore_errors=True)
    if stored != data.count:
        raise BenchError(f"MIMIC holds {stored} instances, {data.count} were sent "
                         f"({associations} assoc); its log:\n{tail(server.log_path)}")
    client = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    return Run("", associations, round(seconds, 3), round(data.count / seconds, 1),
               round(client, 2), round(server_cpu, 2), round(pg_cpu + blob_cpu, 2),
               round(pg_cpu, 2), round(blob_cpu, 2), round(azurite_cpu, 2),
               round(postgres_cpu, 2), round(busy1 - busy0, 2), round(idle1 - idle0, 2))


@contextlib.contextmanager
def pg_proxies(pg_port: int, delay_ms: float) -> Iterator[dict[str, DelayProxy | None]]:
    """The PostgreSQL proxies of the modes (one per mode, shared by its runs)."""
    proxies: dict[str, DelayProxy | None] = {"direct": None}
    try:
        proxies["proxy-0"] = DelayProxy(pg_port, 0.0).start()
        proxies["latency"] = DelayProxy(pg_port, delay_ms).start()
        yield proxies
    finally:
        for p in proxies.values():
            if p is not None:
                p.stop()


def calibrate(postgres: str, proxies: dict[str, DelayProxy | None], blob_delay_ms: float,
              work: Path) -> dict[str, dict[str, float]]:
    """Median round trip through each mode's path: PostgreSQL and Azurite."""
    info = psycopg.conninfo.conninfo_to_dict(postgres)
    out: dict[str, dict[str, float]] = {}
    azurite = receivers.shared_azurite(work)
    for mode, proxy in proxies.items():
        port = proxy.port if proxy else int(info.get("port", 5432))
        dsn = psycopg.conninfo.make_conninfo(postgres, host=HOST, port=port)
        blob_proxy = None
        if mode != "direct":
            blob_proxy = DelayProxy(azurite.port,
                                    blob_delay_ms if mode == "latency" else 0.0).start()
        try:
            out[mode] = {
                "postgres_rtt_ms": round(pg_round_trip_ms(dsn), 2),
                "blob_rtt_ms": round(http_round_trip_ms(
                    blob_proxy.port if blob_proxy else azurite.port), 2),
            }
        finally:
            if blob_proxy is not None:
                blob_proxy.stop()
    return out


def run(*, count: int, rounds: int, associations: tuple[int, ...], modes: tuple[str, ...],
        postgres: str, pg_delay_ms: float, blob_delay_ms: float, tls: bool,
        log: bool = True, azurite_disk: bool = False) -> dict[str, object]:
    parts = max(associations)
    if count % parts:
        raise BenchError(f"--count must be a multiple of {parts}")
    pg_port = int(psycopg.conninfo.conninfo_to_dict(postgres).get("port", 5432))
    with tempfile.TemporaryDirectory(prefix="mimic-latency-") as tmp:
        work = Path(tmp)
        data = make_small(work / "in", count, parts=parts)
        pki = make_pki(work / "pki") if tls else None
        before = machine()
        started = time.monotonic()
        runs: list[Run] = []
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(receivers.shutdown)
            if not azurite_disk:  # the shared Azurite of every run, started our way
                receivers._AZURITE.append(BenchAzurite(work / "azurite").start())
            proxies = cleanup.enter_context(pg_proxies(pg_port, pg_delay_ms))
            rtt = calibrate(postgres, {m: proxies[m] for m in modes}, blob_delay_ms, work)
            if log:
                for mode, figures in rtt.items():
                    print(f"{mode:8} round trip: PostgreSQL {figures['postgres_rtt_ms']:.2f} ms,"
                          f" Azurite {figures['blob_rtt_ms']:.2f} ms", flush=True)
            for r in range(rounds):
                rotated = modes[r % len(modes):] + modes[:r % len(modes)]
                for n in associations:
                    for mode in rotated:
                        blob_delay = None if mode == "direct" else (
                            blob_delay_ms if mode == "latency" else 0.0)
                        server = LatencyMimic(work / "run" / f"{mode}-{n}-{r}", pki, postgres,
                                              proxies[mode], blob_delay)
                        result = measure(server, data, n, work, proxies[mode])
                        result.mode = mode
                        runs.append(result)
                        if log:
                            print(f"round {r + 1}/{rounds} {mode:8} {n:3} assoc "
                                  f"{result.instances_per_s:8.1f} inst/s ({result.seconds:.2f} s;"
                                  f" CPU s: clients {result.client_cpu_s}, server "
                                  f"{result.server_cpu_s}, proxies {result.pg_proxy_cpu_s} pg +"
                                  f" {result.blob_proxy_cpu_s} blob, azurite "
                                  f"{result.azurite_cpu_s}, postgres {result.postgres_cpu_s};"
                                  f" machine busy "
                                  f"{result.machine_busy_s} idle {result.machine_idle_s})",
                                  flush=True)
        best: dict[str, dict[int, Run]] = {}
        for x in runs:
            current = best.setdefault(x.mode, {}).get(x.associations)
            if current is None or x.seconds < current.seconds:
                best[x.mode][x.associations] = x
        return {
            "machine": before,
            "loadavg_at_end": machine()["loadavg_1_5_15"],
            "mimic_environment": {k: v for k, v in os.environ.items()
                                  if k.startswith("MIMIC_")},
            "minutes": round((time.monotonic() - started) / 60, 1),
            "count": count,
            "bytes": data.total_bytes,
            "tls": tls,
            "azurite": "disk" if azurite_disk else "--inMemoryPersistence --loose",
            "rounds": rounds,
            "delay_ms_one_way": {"postgres": pg_delay_ms, "blob": blob_delay_ms},
            "round_trips": rtt,
            "runs": [x.__dict__ for x in runs],
            "best": {m: {n: x.__dict__ for n, x in sorted(v.items())} for m, v in best.items()},
        }


def markdown(result: dict[str, object]) -> str:
    best: dict[str, dict[int, dict[str, float]]] = result["best"]  # type: ignore[assignment]
    counts = sorted({n for v in best.values() for n in v})
    lines = ["| mode | " + " | ".join(f"{n} assoc" for n in counts)
             + " | x (most / 1 assoc) | PostgreSQL RTT | blob RTT |",
             "|---|" + "---:|" * (len(counts) + 3)]
    rtt: dict[str, dict[str, float]] = result["round_trips"]  # type: ignore[assignment]
    for mode in MODES:
        if mode not in best:
            continue
        row = best[mode]
        cells = [f"{row[n]['instances_per_s']:.1f}" if n in row else "—" for n in counts]
        one = row.get(counts[0], {}).get("instances_per_s")
        top = max(row[n]["instances_per_s"] for n in row)
        scale = f"{top / one:.1f}" if one else "—"
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {scale} | "
                     f"{rtt[mode]['postgres_rtt_ms']:.2f} ms | {rtt[mode]['blob_rtt_ms']:.2f} ms |")
    if "latency" in best and 1 in best["latency"] and 16 in best["latency"]:
        ratio = best["latency"][16]["instances_per_s"] / best["latency"][1]["instances_per_s"]
        lines += ["", f"With the injected latency, 16 associations / 1 association = "
                  f"**{ratio:.1f}x** (target >= 8x)."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 objects, 1 round")
    parser.add_argument("--count", type=int, help="small objects per run (default 640)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds, best kept (default 2)")
    parser.add_argument("--associations", default=",".join(map(str, ASSOCIATIONS)))
    parser.add_argument("--modes", default=",".join(MODES), help="latency, proxy-0, direct")
    parser.add_argument("--pg-delay-ms", type=float, default=1.0, help="one way (default 1)")
    parser.add_argument("--blob-delay-ms", type=float, default=2.5, help="one way (default 2.5)")
    parser.add_argument("--plain", action="store_true", help="plain TCP instead of mutual TLS")
    parser.add_argument("--azurite-disk", action="store_true",
                        help="Azurite as the tests run it (files on disk), not in memory")
    parser.add_argument("--postgres", default=receivers.DEFAULT_POSTGRES)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    for reason in (receivers.azurite_missing(),):
        if reason:
            print(reason, file=sys.stderr)
            return 2
    if shutil.which("storescu") is None:
        print("storescu (dcmtk) is not installed: sudo apt-get install -y dcmtk", file=sys.stderr)
        return 2
    count = args.count or (64 if args.quick else 640)
    rounds = args.rounds or (1 if args.quick else 2)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if set(modes) - set(MODES):
        parser.error(f"modes are {', '.join(MODES)}")
    with terminated_as_exit():
        try:
            result = run(count=count, rounds=rounds,
                         associations=tuple(int(x) for x in args.associations.split(",")),
                         modes=modes, postgres=args.postgres, pg_delay_ms=args.pg_delay_ms,
                         blob_delay_ms=args.blob_delay_ms, tls=not args.plain,
                         azurite_disk=args.azurite_disk)
        except BenchError as exc:
            print(f"BENCHMARK FAILED: {exc}", file=sys.stderr)
            return 1
    result["command"] = " ".join([".venv/bin/python", "bench/latency.py", *sys.argv[1:]])
    print()
    print(markdown(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
