"""Peak memory of MIMIC with very large objects: four 1 GiB C-STOREs at once, then a C-GET.

Writes four 1 GiB Secondary Capture objects (a small header, zero pixels: sparse files),
starts ``mimic serve`` (TLS, embedded SQLite + file store, its default worker processes) on
a fresh data directory, sends them with four dcmtk ``storescu`` processes at once, and
reads the server's memory. Every object is checked to be stored and indexed. Then one of
them is retrieved by C-GET over TLS with pynetdicom as the SCU (spooling what it receives
to a file), and the data set received is compared with the one sent (SHA-256, read in
pieces). The targets (issue 12): the server's peak below 400 MB for both.

The server is a supervisor and its workers, whose pages are partly shared (the interpreter,
the libraries), so its memory is read from each process's ``/proc/<pid>/smaps_rollup``
every :data:`SAMPLE_EVERY` seconds during the transfer, the largest kept (:class:`Memory`):
the private pages of every process and the shared ones once (checked against the kernel's
page frames), what the target is read against, beside the summed RSS, a bound above. A
spike shorter than the sampling interval can be missed; the spooled data set's buffers grow
and shrink with the transfer, not in spikes. ``VmHWM`` summed (each process's peak, reset
before the transfer) is printed too: above even the summed RSS, as the peaks need not
coincide.

    .venv/bin/python bench/large_objects.py [--size-mib 1024] [--count 4] [--no-get] [--whole]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compare import tree_cpu_seconds
from tests.large_objects import write_large
from tests.support import HOST, MimicProcess, client_context, dcmtk_tls

MiB = 1 << 20


def _family(pid: int) -> list[int]:
    """``pid`` and its live descendants: the supervisor and its worker processes, if any."""
    family, pending = [], [pid]
    while pending:
        current = pending.pop()
        family.append(current)
        try:  # a process that exits meanwhile: Path.glob does not suppress its scan's error
            tasks = list(Path(f"/proc/{current}/task").glob("*/children"))
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError):
                pending += [int(c) for c in task.read_text().split()]
    return family


def _vm(pid: int, field: str) -> int:
    """``field`` summed over the server's processes: with worker processes the sum of their
    peaks, an upper bound of the server's peak (they need not peak at the same moment)."""
    total = 0
    for member in _family(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1]) * 1024
    return total


#: Seconds between two samples of the server's memory.
SAMPLE_EVERY = 0.025
_ROLLUP = ("Rss", "Private_Clean", "Private_Dirty", "Shared_Clean", "Shared_Dirty")


@dataclass(frozen=True)
class Memory:
    """The server's resident memory in bytes, summed over its processes, two ways.

    ``unique``: the private pages of every process, and the shared pages of the process that
    maps most (a worker): the server's resident pages, each once. A bound below in general
    (the shared pages of the others are not counted), exact when those are among the
    largest's: the processes are started afresh, not forked, so they share no data page,
    only the pages of the files they map (the interpreter, the libraries), and the workers
    map the same ones, the supervisor fewer. ``rss``: every process's RSS, the shared pages
    once per process: a bound above. (The PSS, which splits each shared page between every
    process of the machine that maps it, the benchmark's own included, read below
    ``unique``.) Neither counts the page cache of the objects written."""

    unique: int = 0
    rss: int = 0

    def most(self, other: Memory) -> Memory:
        return Memory(max(self.unique, other.unique), max(self.rss, other.rss))

    def megabytes(self) -> str:
        return f"{self.unique / 1e6:.0f} MB (summed RSS {self.rss / 1e6:.0f} MB)"


def _memory(pid: int) -> Memory:
    """The server's memory now: ``pid`` and its descendants."""
    return _memory_of(_family(pid))


def _memory_of(pids: list[int]) -> Memory:
    """The memory of these processes together. One that has exited (no file, or a zombie's
    empty one) counts 0; any other failure to read one is raised, not taken for 0."""
    private = rss = shared_most = 0
    for member in pids:
        try:
            text = Path(f"/proc/{member}/smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        kib = {}
        for line in text.splitlines()[1:]:
            name, _, rest = line.partition(":")
            if name in _ROLLUP:
                kib[name] = int(rest.split()[0]) * 1024
        rss += kib.get("Rss", 0)
        private += kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)
        shared_most = max(shared_most, kib.get("Shared_Clean", 0) + kib.get("Shared_Dirty", 0))
    return Memory(private + shared_most, rss)


class PeakMemory:
    """The most :func:`_memory` sampled while the ``with`` block runs, each figure its own
    largest; how many samples, and the longest time between two (the sampler shares the GIL
    with the benchmark's C-GET client)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = Memory()
        self.samples = 0
        self.longest_gap = 0.0
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _take(self) -> None:
        self.peak = self.peak.most(_memory(self.pid))
        self.samples += 1

    def _run(self) -> None:
        try:
            last = time.monotonic()
            while True:
                self._take()
                if self._done.wait(SAMPLE_EVERY):
                    return
                now = time.monotonic()
                self.longest_gap, last = max(self.longest_gap, now - last), now
        except BaseException as exc:  # said at the block's end, not lost with the thread
            self._error = exc

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self._done.set()
        self._thread.join()
        if kind is not None:  # the transfer's own error is the one to see
            if self._error is not None:
                print(f"sampling the server's memory failed too: {self._error!r}",
                      file=sys.stderr)
            return
        if self._error is not None:
            raise RuntimeError("sampling the server's memory failed") from self._error
        self._take()

    def report(self) -> str:
        return (f"peak {self.peak.megabytes()}; {self.samples} samples, at most "
                f"{1000 * self.longest_gap:.0f} ms apart")


def _reset_peaks(pid: int) -> None:
    for member in _family(pid):
        with contextlib.suppress(OSError):
            Path(f"/proc/{member}/clear_refs").write_text("5")  # VmHWM back to VmRSS


def _dataset_digest(path: Path) -> str:
    """SHA-256 of a Part 10 file's data set (after its File Meta group), read in pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        head = fh.read(144)
        fh.seek(144 + struct.unpack_from("<L", head, 140)[0])
        while piece := fh.read(MiB):
            digest.update(piece)
    return digest.hexdigest()


def c_get(server: MimicProcess, path: Path) -> tuple[int, str | None, float]:
    """C-GET the object written at ``path``: (final status, digest of the data set
    received, seconds)."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE, _config, build_role, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        PatientRootQueryRetrieveInformationModelGet as GET,
    )

    from mimic_server.net.requestor import keep_responses

    _config.STORE_RECV_CHUNKED_DATASET = True  # the SCU spools to a file
    header = pydicom.dcmread(path, stop_before_pixels=True)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.PatientID = header.PatientID
    identifier.StudyInstanceUID = header.StudyInstanceUID
    identifier.SeriesInstanceUID = header.SeriesInstanceUID
    identifier.SOPInstanceUID = header.SOPInstanceUID
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(_dataset_digest(event.dataset_path))
        return 0x0000

    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ae.maximum_pdu_size = 131072
    ae.add_requested_context(GET)
    ae.add_requested_context(header.SOPClassUID, [ExplicitVRLittleEndian])
    ctx = client_context(server.client_cert, server.client_key, server.ca_cert)
    start = time.perf_counter()
    assoc = ae.associate(
        HOST, server.port, ae_title="MIMIC", tls_args=(ctx, "localhost"),
        ext_neg=[build_role(header.SOPClassUID, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    status = -1
    if assoc.is_established:
        keep_responses(assoc)  # pynetdicom's own race could drop the final response
        for answer, _ in assoc.send_c_get(identifier, GET):
            if answer and answer.Status != 0xFF00:
                status = int(answer.Status)
        assoc.release()
    seconds = time.perf_counter() - start
    return status, (received[0] if received else None), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--no-get", action="store_true", help="skip the C-GET")
    parser.add_argument(
        "--whole", action="store_true",
        help="leave the streamed-send patch off: C-GET holds the object whole (to compare)",
    )
    args = parser.parse_args()
    if shutil.which("storescu") is None:
        print("storescu (dcmtk) is not installed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mimic-large-") as tmp:
        root = Path(tmp)
        files = [root / f"large{i}.dcm" for i in range(args.count)]
        for path in files:
            write_large(path, args.size_mib * MiB)
        extra = {"MIMIC_PATCHES_OFF": "streamed-send"} if args.whole else None
        server = MimicProcess(root / "data", env=extra).start()
        try:
            assert server.proc is not None
            pid = server.proc.pid
            processes = len(_family(pid))
            _reset_peaks(pid)
            idle, idle_memory = _vm(pid, "VmHWM"), _memory(pid)
            env = {**os.environ, "TCP_NODELAY": "1"}
            cpu_before = tree_cpu_seconds(pid)
            start = time.perf_counter()
            with PeakMemory(pid) as stored_memory:
                peers = [
                    subprocess.Popen(
                        ["storescu", *dcmtk_tls(server), "-aet", "MODALITY1", "-aec", "MIMIC",
                         "localhost", str(server.port), str(path)],
                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                    )
                    for path in files
                ]
                failed = [p.wait() for p in peers].count(0) != len(peers)
            seconds = time.perf_counter() - start
            cpu = tree_cpu_seconds(pid) - cpu_before
            peak = _vm(pid, "VmHWM")
            stored = server.instance_count()
            get_unique = 0
            if not args.no_get and stored:
                sent = _dataset_digest(files[0])
                _reset_peaks(pid)
                get_idle, get_idle_memory = _vm(pid, "VmHWM"), _memory(pid)
                with PeakMemory(pid) as retrieved_memory:
                    get_status, got, get_seconds = c_get(server, files[0])
                get_peak, get_unique = _vm(pid, "VmHWM"), retrieved_memory.peak.unique
        finally:
            server.stop()
    total = args.count * args.size_mib * MiB
    print(f"{args.count} x {args.size_mib} MiB at once over TLS: {seconds:.1f} s, "
          f"{total / seconds / 1e6:.0f} MB/s, the server's CPU {cpu:.2f} s; "
          f"stored {stored}/{args.count}")
    print(f"server memory, {processes} processes: idle {idle_memory.megabytes()}; during the "
          f"C-STOREs {stored_memory.report()}; summed VmHWM idle {idle / 1e6:.0f} MB, during "
          f"{peak / 1e6:.0f} MB")
    if failed or stored != args.count:
        print("a store failed", file=sys.stderr)
        return 1
    if args.no_get:
        return 0 if stored_memory.peak.unique < 400e6 else 1
    identical = got == sent
    print(f"C-GET of {args.size_mib} MiB over TLS (pynetdicom SCU, 128 KiB PDUs): "
          f"{get_seconds:.1f} s, {args.size_mib * MiB / get_seconds / 1e6:.0f} MB/s; "
          f"status 0x{get_status:04X}, byte-identical: {identical}")
    print(f"server memory during the C-GET: before {get_idle_memory.megabytes()}; "
          f"{retrieved_memory.report()}; summed VmHWM before {get_idle / 1e6:.0f} MB, during "
          f"{get_peak / 1e6:.0f} MB")
    if get_status != 0 or not identical:
        print("the C-GET failed or its data set differs", file=sys.stderr)
        return 1
    return 0 if max(stored_memory.peak.unique, get_unique) < 400e6 else 1


if __name__ == "__main__":
    sys.exit(main())
