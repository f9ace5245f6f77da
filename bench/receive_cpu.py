"""The server CPU of receiving one C-STORE, without keeping it: DUL, DIMSE and the response.

Starts one in-process MIMIC server per variant (``--serve``: the real ``Archive``, mutual TLS,
the fence's patches, an in-memory object store), whose C-STORE handler is replaced by one
that only takes the request's command and data set as ``handle_store`` does and answers
Success: what the server then spends per object is reading PDUs off the TLS socket, the DUL
state machine, P-DATA decoding, fragment assembly, the command set, the hand-off to the
handler and the C-STORE-RSP, which is what this measures. A variant is a value of
``MIMIC_PATCHES_OFF`` (``pynetdicom``: every receive-path patch off). Each round sends
``--count`` objects with dcmtk ``storescu`` over one TLS association to each variant in turn
(order rotated from round to round) and reads the server process's CPU time
(``/proc/<pid>/stat``, utime + stime) before and after; medians over rounds are printed.

    .venv/bin/python bench/receive_cpu.py [--kind small|large|both] [--count 200]
        [--rounds 5] [--variants current,pynetdicom] [--profile] [--associations N]

``--profile``: one more run per variant under py-spy (GIL holder), the top frames printed.
``--full``: the server keeps its real C-STORE handler (embedded mode: SQLite index, file
store, fsyncs): the whole server's CPU per object, of which the receive path is a part.
``--postgres [URL]`` (with ``--full``): the index is a fresh PostgreSQL database per variant
(on the server of ``URL``, by default the local one), dropped afterwards: the PostgreSQL +
files configuration.
``--baseline PATH`` adds the variant ``baseline``: the server code of another checkout (a
worktree of main, say) run by this one's harness, for a before/after in one run.
``--callgrind``: each server runs under ``valgrind --tool=callgrind``, and what is reported is
the instructions it executed per C-STORE (every thread, user space), counted from after a
first association of other objects to the end of the sends: the same code and objects give
the same count to a few parts in a thousand, whatever else the machine does, so a change
this VM's drift hides in CPU seconds shows. Not counted: the kernel's work (system calls,
TCP, the page cache, fsync), and what the instruction count does not weigh (cache misses,
waits); valgrind also hides the CPU's SHA and VAES extensions from OpenSSL, so the hash and
TLS count as their plainer code. One round is enough. The server starts with callgrind's
instrumentation off (``--instr-atstart=no``: the interpreter's start and imports run about
four times faster, 15 s instead of a minute) and it is turned on before the first
association, so the counts are those of a server instrumented from the start (18.709 M and
18.705 M per small C-STORE, before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.receivers import DEFAULT_POSTGRES, Database

TICKS = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
#: The patches of the receive path, left off together by the variant ``pynetdicom``.
RECEIVE_PATCHES = ("bounded-receive", "idle-waits", "pdu-length-guard", "direct-responses",
                   "command-set-encoder", "received-command", "pdata-read", "dul-queues",
                   "acceptor-loop")
VARIANTS = {"current": "", "pynetdicom": ",".join(RECEIVE_PATCHES)}


def serve(data_dir: Path) -> None:
    """The child: a MIMIC archive whose C-STORE handler only takes the request."""
    from pynetdicom import evt

    from mimic_server.app import Archive
    from mimic_server.config import Settings
    from mimic_server.dimse.receiving import release_spool
    from mimic_server.dimse.unexpected import STATUS, guarded
    from mimic_server.errors import Status
    from mimic_server.storage.memory import MemoryStore

    def take(event: Any) -> int:
        request = event.request
        str(request.AffectedSOPClassUID or "")
        str(request.AffectedSOPInstanceUID or "")
        data_set = request.DataSet
        if hasattr(data_set, "getbuffer"):
            with data_set.getbuffer() as view:
                len(view)
        release_spool(data_set)
        return Status.SUCCESS

    profiles: list[Any] = []
    if os.environ.get("RECEIVE_CPU_PROFILE"):  # a cProfile of every thread started from here
        import cProfile

        def start_profile(*_: Any) -> None:
            profile = cProfile.Profile()
            profiles.append(profile)
            profile.enable()  # replaces this hook in the new thread

        threading.setprofile(start_profile)
    database_url = os.environ.get("RECEIVE_CPU_DATABASE_URL") or None
    if database_url:  # a fresh database (--postgres): this code's schema first
        from sqlalchemy import create_engine

        from mimic_server.index import schema

        engine = create_engine(database_url)
        schema.upgrade(engine)
        engine.dispose()
    settings = Settings(data_dir=data_dir, host=HOST, port=0, ops_port=0,
                        database_url=database_url)
    full = bool(os.environ.get("RECEIVE_CPU_FULL"))
    archive = Archive(settings, object_store=None if full else MemoryStore())
    archive.start()
    assert archive.server is not None
    if not full:
        archive.server.bind(evt.EVT_C_STORE, guarded(take, "C-STORE", STATUS["C-STORE"],
                                                     archive.metrics.handler_error))
    print(archive.address[1], flush=True)
    sys.stdin.read()  # until the parent closes it
    archive.stop(drain_seconds=0)
    if profiles:
        import pstats

        threading.setprofile(None)  # type: ignore[arg-type]
        for profile in profiles:
            profile.create_stats()
        stats = pstats.Stats(*profiles)
        stats.dump_stats(os.environ["RECEIVE_CPU_PROFILE"])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Receiver:
    def __init__(self, variant: str, work: Path, baseline: Path | None = None,
                 callgrind: bool = False, postgres: str | None = None) -> None:
        self.variant = variant
        self.data_dir = work / variant / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIMIC_")}
        #: The variant's own index database (``--postgres``), dropped by :meth:`stop`.
        self.database: Database | None = None
        if postgres:
            self.database = Database(postgres)
            self.database.create()
            env["RECEIVE_CPU_DATABASE_URL"] = self.database.sqlalchemy_url
        off = "" if variant == "baseline" else VARIANTS.get(variant, variant)
        if off:
            env["MIMIC_PATCHES_OFF"] = off
        self.log = open(work / f"{variant}.log", "wb")  # noqa: SIM115
        root = ["--root", str(baseline)] if variant == "baseline" and baseline else []
        #: Where callgrind writes its counts (``--callgrind``), each dump numbered after it.
        self.counts = work / f"{variant}.callgrind" if callgrind else None
        valgrind = (["valgrind", "--tool=callgrind", "--instr-atstart=no",
                     f"--callgrind-out-file={self.counts}"] if self.counts else [])
        self.proc = subprocess.Popen(
            [*valgrind, sys.executable, __file__, "--serve", str(self.data_dir), *root],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"{variant} did not start: {(work / f'{variant}.log').read_text()}")
        self.port = int(line)
        certs = self.data_dir / "certs"
        self.tls = ["+tls", str(certs / "clients" / "modality1" / "client.key"),
                    str(certs / "clients" / "modality1" / "client.pem"),
                    "+cf", str(certs / "ca" / "ca.pem")]

    def send(self, files: Path) -> float:
        """CPU seconds the server spent while ``storescu`` sent every file under ``files``."""
        before = cpu_seconds(self.proc.pid)
        done = subprocess.run(
            ["storescu", "-aet", "MODALITY1", "-aec", "MIMIC", *self.tls, "+sd", "+r",
             HOST, str(self.port), str(files)],
            env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=600,
        )
        time.sleep(0.3)  # the association's end, the threads' exit
        if done.returncode != 0 or "E: " in done.stderr:
            raise RuntimeError(f"storescu to {self.variant}: {done.stderr[-2000:]}")
        return cpu_seconds(self.proc.pid) - before

    def instructions(self, files: Path, warm: Path, associations: int) -> int:
        """Instructions the server (under callgrind) executed while ``storescu`` sent every
        file under ``files`` ``associations`` times, after one send of ``warm``."""
        assert self.counts is not None
        self._callgrind("--instr=on")
        self.send(warm)
        self._callgrind("--zero")
        for _ in range(associations):
            self.send(files)
        tag = f"measured-{time.monotonic_ns()}"
        self._callgrind(f"--dump={tag}")
        for dump in self.counts.parent.glob(self.counts.name + ".*"):
            count = instructions_of_dump(dump.read_text(errors="replace"), tag)
            if count is not None:
                return count
        raise RuntimeError(f"no callgrind dump {tag} of {self.variant}")

    def _callgrind(self, command: str) -> None:
        done = subprocess.run(["callgrind_control", command, str(self.proc.pid)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"callgrind_control {command}: {done.stdout}{done.stderr}")

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(120 if self.counts else 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        if self.database is not None:
            self.database.drop()


def instructions_of_dump(text: str, tag: str) -> int | None:
    """The instructions counted in a callgrind dump (its ``summary:`` line) if the dump is
    the one ``callgrind_control --dump=<tag>`` asked for, else None."""
    if f"desc: Trigger: dump {tag}\n" not in text:
        return None
    for line in text.splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise ValueError(f"a callgrind dump {tag} without its summary line")


def make_files(base: Path, kind: str, count: int) -> Path:
    from bench.store_throughput import make_large, make_small

    maker = make_small if kind == "small" else make_large
    maker(base, count, parts=1)
    return base


def profile(receiver: Receiver, files: Path, top: int = 25) -> list[tuple[str, float]]:
    from bench.profile_store import PY_SPY, summarise

    raw = files.parent / f"spy-{receiver.variant}.txt"
    spy = subprocess.Popen([str(PY_SPY), "record", "--pid", str(receiver.proc.pid), "--gil",
                            "--rate", "250", "--format", "raw", "--output", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    receiver.send(files)
    spy.send_signal(2)
    spy.wait(60)
    summary = summarise(raw.read_text(), top)
    return summary["inclusive"]  # type: ignore[return-value]


def count_instructions(receivers: list[Receiver], files: Path, warm: Path, count: int,
                       associations: int) -> dict[str, Any]:
    """Each receiver's instructions per C-STORE (``--callgrind``): the warm-up objects are
    others than the measured ones, so that with ``--full`` these are stored new, as in a
    comparison run, not sent again."""
    result: dict[str, Any] = {}
    print(f"{files.name} ({count} objects x {associations} association(s)), server "
          "instructions per C-STORE (callgrind):")
    for receiver in receivers:
        total = receiver.instructions(files, warm, associations)
        per_object = total / (count * associations)
        result[receiver.variant] = {"instructions": total, "per_c_store": round(per_object)}
        print(f"  {receiver.variant or 'current':<40} {per_object / 1e6:9.3f} M", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", type=Path, help="another checkout's server code")
    parser.add_argument("--kind", choices=["small", "large", "both"], default="both")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default="current,pynetdicom",
                        help="comma-separated: current, pynetdicom, or a MIMIC_PATCHES_OFF value "
                             "(names joined by '+')")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--full", action="store_true", help="keep the real C-STORE handler")
    parser.add_argument("--postgres", nargs="?", const=DEFAULT_POSTGRES, metavar="URL",
                        help="with --full: the index in a fresh PostgreSQL database per variant "
                             f"on this server (default {DEFAULT_POSTGRES})")
    parser.add_argument("--callgrind", action="store_true",
                        help="instructions per C-STORE under valgrind's callgrind, not CPU "
                             "seconds (one round)")
    parser.add_argument("--associations", type=int, default=1, metavar="N",
                        help="each send is N storescu runs one after another (one association "
                             "each); with --count 1, the set-up of an association is most of "
                             "what is measured (CPU ticks are 10 ms: N of 20 or more)")
    args = parser.parse_args()
    if args.serve is not None:
        if args.root is not None:
            sys.path.insert(0, str(args.root))  # before any import of mimic_server
        serve(args.serve)
        return 0
    if args.postgres and not args.full:
        parser.error("--postgres needs --full")
    if args.full:
        os.environ["RECEIVE_CPU_FULL"] = "1"  # inherited by the servers
    names = [v.replace("+", ",") for v in args.variants.split(",")]
    if args.baseline is not None:
        names.append("baseline")
    kinds = ["small", "large"] if args.kind == "both" else [args.kind]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mimic-receive-cpu-") as tmp:
        work = Path(tmp)
        receivers: list[Receiver] = []
        try:
            for name in names:
                receivers.append(Receiver(name, work, args.baseline, args.callgrind,
                                          args.postgres))
            for kind in kinds:
                files = make_files(work / "in" / kind, kind, args.count)
                count = sum(1 for p in files.rglob("*") if p.is_file())
                if args.callgrind:
                    results[kind] = count_instructions(
                        receivers, files, make_files(work / "warm" / kind, kind, 2),
                        count, args.associations)
                    continue
                for receiver in receivers:  # warm: imports, first association
                    receiver.send(files)
                samples: dict[str, list[float]] = {r.variant: [] for r in receivers}
                for n in range(args.rounds):
                    order = receivers[n % len(receivers):] + receivers[:n % len(receivers)]
                    for receiver in order:
                        spent = sum(receiver.send(files) for _ in range(args.associations))
                        samples[receiver.variant].append(
                            1000 * spent / (count * args.associations))
                results[kind] = {
                    v: {"median_ms": round(statistics.median(s), 3),
                        "rounds": [round(x, 3) for x in s]}
                    for v, s in samples.items()
                }
                print(f"{kind} ({count} objects x {args.associations} association(s) x "
                      f"{args.rounds} rounds), server CPU ms per C-STORE (median; rounds):")
                for v, r in results[kind].items():
                    print(f"  {v or 'current':<40} {r['median_ms']:7.3f}   {r['rounds']}")
                if args.profile:
                    for receiver in receivers:
                        print(f"\n  py-spy, {receiver.variant}, inclusive % of GIL samples:")
                        for name, pct in profile(receiver, files):
                            print(f"    {pct:5.1f}  {name}")
        finally:
            for receiver in receivers:
                receiver.stop()
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "receive_cpu.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
