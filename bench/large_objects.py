"""Peak memory of MIMIC with very large objects: four 1 GiB C-STOREs at once, then a C-GET.

Writes four 1 GiB Secondary Capture objects (a small header, zero pixels: sparse files),
starts ``mimic serve`` (TLS, embedded SQLite + file store, its default worker processes) on
a fresh data directory, sends them with four dcmtk ``storescu`` processes at once, and
reads the server's memory. Every object is checked to be stored and indexed. Then one of
them is retrieved by C-GET over TLS with pynetdicom as the SCU (spooling what it receives
to a file), and the data set received is compared with the one sent (SHA-256, read in
pieces). The targets (issue 12): the server's peak below 400 MB for both.

The server is a supervisor and its workers, so its memory is measured two ways:

* **PSS summed over its processes** (``/proc/<pid>/smaps_rollup``), sampled every
  :data:`SAMPLE_EVERY` seconds during the transfer, the largest sum kept: each page counted
  once, a page shared by several processes (the interpreter, the libraries) split between
  them. This is the server's memory, and what the target is read against. A spike shorter
  than the sampling interval can be missed; the spooled data set's buffers grow and shrink
  with the transfer, not in spikes.
* **``VmHWM`` summed** (each process's peak resident memory, reset before the transfer): an
  upper bound, counting every shared page once per process and adding peaks that need not
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.large_objects import write_large
from tests.support import HOST, MimicProcess, client_context, dcmtk_tls

MiB = 1 << 20


def _family(pid: int) -> list[int]:
    """``pid`` and its live descendants: the supervisor and its worker processes, if any."""
    family, pending = [], [pid]
    while pending:
        current = pending.pop()
        family.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
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


#: Seconds between two samples of the server's PSS.
SAMPLE_EVERY = 0.025


def _pss(pid: int) -> int:
    """PSS in bytes summed over the server's processes (0 for one that has just exited)."""
    total = 0
    for member in _family(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


class PeakPss:
    """The largest :func:`_pss` sampled while the ``with`` block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, _pss(self.pid))
            if self._done.wait(SAMPLE_EVERY):
                return

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, _pss(self.pid))


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
            idle, idle_pss = _vm(pid, "VmHWM"), _pss(pid)
            env = {**os.environ, "TCP_NODELAY": "1"}
            start = time.perf_counter()
            with PeakPss(pid) as store_pss:
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
            peak = _vm(pid, "VmHWM")
            stored = server.instance_count()
            get_pss = 0
            if not args.no_get and stored:
                sent = _dataset_digest(files[0])
                _reset_peaks(pid)
                get_idle, get_idle_pss = _vm(pid, "VmHWM"), _pss(pid)
                with PeakPss(pid) as retrieve_pss:
                    get_status, got, get_seconds = c_get(server, files[0])
                get_peak, get_pss = _vm(pid, "VmHWM"), retrieve_pss.peak
        finally:
            server.stop()
    total = args.count * args.size_mib * MiB
    print(f"{args.count} x {args.size_mib} MiB at once over TLS: {seconds:.1f} s, "
          f"{total / seconds / 1e6:.0f} MB/s; stored {stored}/{args.count}")
    print(f"server memory, {processes} processes: PSS idle {idle_pss / 1e6:.0f} MB, "
          f"peak {store_pss.peak / 1e6:.0f} MB; summed VmHWM idle {idle / 1e6:.0f} MB, "
          f"during {peak / 1e6:.0f} MB")
    if failed or stored != args.count:
        print("a store failed", file=sys.stderr)
        return 1
    if args.no_get:
        return 0 if store_pss.peak < 400e6 else 1
    identical = got == sent
    print(f"C-GET of {args.size_mib} MiB over TLS (pynetdicom SCU, 128 KiB PDUs): "
          f"{get_seconds:.1f} s, {args.size_mib * MiB / get_seconds / 1e6:.0f} MB/s; "
          f"status 0x{get_status:04X}, byte-identical: {identical}")
    print(f"server memory during the C-GET: PSS before {get_idle_pss / 1e6:.0f} MB, peak "
          f"{get_pss / 1e6:.0f} MB; summed VmHWM before {get_idle / 1e6:.0f} MB, during "
          f"{get_peak / 1e6:.0f} MB")
    if get_status != 0 or not identical:
        print("the C-GET failed or its data set differs", file=sys.stderr)
        return 1
    return 0 if max(store_pss.peak, get_pss) < 400e6 else 1


if __name__ == "__main__":
    sys.exit(main())
