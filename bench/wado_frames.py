"""WADO-RS frames of a large or Deflated object asked for one request at a time, as a viewer
pages through them: from the verified copy kept after the first request, against a copy made
per request (``MIMIC_WEB_KEPT_COPIES_BYTES=0``, what every request did before), in one run.

    .venv/bin/python bench/wado_frames.py [--dir DIR] [--mib 256] [--requests 16] \
        [--rounds 3] [--json out.json]

Two objects are put in a file store under ``--dir`` (default: the system's temporary
directory): ``--mib`` frames of 1 MiB of native pixels in Explicit VR Little Endian, and the
same Deflated (its repeating pixels deflate some 250:1; ``tests/large_objects.large_image``).
For each, ``--requests`` frames spread over the object are asked for in turn through the
DICOMweb app (Starlette's test client, no network), both ways, in alternating order each
round; the ``kept`` way starts each round without a copy (a new process's first request).

The frames must be the same both ways, or the run fails. Printed per object and way: the
median wall seconds and CPU seconds of the process for all the requests, and the bytes it
read and wrote (``rchar`` / ``wchar`` of ``/proc/self/io``: the store's reads, the spool
copies); with the median of the rounds' kept / per-request wall ratios. Figures:
docs/benchmarks.md; never a threshold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from mimic_server.query.finder import InstanceRef  # noqa: E402
from mimic_server.security.audit import AuditLog  # noqa: E402
from mimic_server.security.policy import Policy  # noqa: E402
from mimic_server.storage.filesystem import FilesystemStore  # noqa: E402
from mimic_server.web.dicomweb.app import build_dicomweb  # noqa: E402
from mimic_server.web.dicomweb.context import DicomWebContext  # noqa: E402
from mimic_server.web.dicomweb.kept_copies import KeptCopies  # noqa: E402
from tests.large_objects import large_image  # noqa: E402

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
STUDY, SERIES, INSTANCE = "1.2.826.0.1.3680043.8.498.10", "1.2.826.0.1.3680043.8.498.10.1", "1"
OCTETS = 'multipart/related; type="application/octet-stream"'
WAYS = ("kept", "per-request")
KEPT_BYTES = 2 << 30


class _Finder:
    def __init__(self, ref: InstanceRef) -> None:
        self.ref = ref

    def instance(self, study: str, series: str, sop_instance: str) -> list[InstanceRef]:
        return [self.ref]

    def current(self, ref: InstanceRef) -> InstanceRef | None:
        return self.ref


class _Sink:
    def write(self, entry: Any, details: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _io() -> tuple[int, int]:
    fields = dict(line.split(":") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"]), int(fields["wchar"])


def _pages(store: FilesystemStore, ref: InstanceRef, spool: Path, kept: bool,
           numbers: list[int]) -> tuple[float, float, int, int, list[str]]:
    """The frames ``numbers`` asked for one request at a time: wall and CPU seconds, bytes
    read and written, and each answer's SHA-256."""
    copies = KeptCopies(KEPT_BYTES) if kept else None
    ctx = DicomWebContext(
        finder=_Finder(ref), store=store, policy=Policy("MIMIC"),  # type: ignore[arg-type]
        audit=AuditLog(None, sinks=[_Sink()]), tokens=None, auth="none",
        ingest=SimpleNamespace(spool_dir=spool), copies=copies)
    client = TestClient(build_dicomweb(ctx))
    path = f"/studies/{STUDY}/series/{SERIES}/instances/{INSTANCE}/frames/"
    digests = []
    try:
        read, wrote = _io()
        wall, cpu = time.perf_counter(), time.process_time()
        for number in numbers:
            answer = client.get(path + str(number), headers={"Accept": OCTETS})
            if answer.status_code != 200:
                raise SystemExit(f"frame {number}: {answer.status_code} {answer.text[:200]}")
            body = answer.content
            boundary = answer.headers["content-type"].split("boundary=")[1].strip('"')
            body = body.split(b"\r\n\r\n", 1)[1].rsplit(f"\r\n--{boundary}--".encode(), 1)[0]
            digests.append(hashlib.sha256(body).hexdigest())
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        now_read, now_wrote = _io()
    finally:
        if copies is not None:
            copies.close()
    return wall, cpu, now_read - read, now_wrote - wrote, digests


def measure(directory: Path, mib: int, requests: int, rounds: int) -> list[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="wado-frames-", dir=directory))
    store = FilesystemStore(root / "store")
    spool = root / "spool"
    spool.mkdir()
    numbers = sorted({1 + (n * (mib - 1)) // max(1, requests - 1) for n in range(requests)})
    results = []
    try:
        for syntax in (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
            data, _ds = large_image(512, 1024, mib, syntax)  # 1 MiB a frame
            key = f"ab/1/2/{syntax}.dcm"
            store.put(key, [data], None)
            ref = InstanceRef(SECONDARY_CAPTURE, INSTANCE, syntax, key,
                              hashlib.sha256(data).hexdigest())
            seen: dict[str, list[tuple[float, float, int, int]]] = {way: [] for way in WAYS}
            answers: dict[str, list[str]] = {}
            for round_number in range(rounds):
                order = WAYS if round_number % 2 == 0 else tuple(reversed(WAYS))
                for way in order:
                    *figures, answers[way] = _pages(store, ref, spool, way == "kept", numbers)
                    seen[way].append(tuple(figures))  # type: ignore[arg-type]
            if answers["kept"] != answers["per-request"]:
                raise SystemExit(f"{syntax}: the frames from the kept copy differ")
            line: dict[str, Any] = {"syntax": syntax, "stored_bytes": len(data),
                                    "frames": mib, "requests": len(numbers), "rounds": seen}
            for way, values in seen.items():
                line[way] = {"wall_s": statistics.median(v[0] for v in values),
                             "cpu_s": statistics.median(v[1] for v in values),
                             "read_bytes": statistics.median(v[2] for v in values),
                             "written_bytes": statistics.median(v[3] for v in values)}
            line["wall_ratio"] = statistics.median(
                k[0] / p[0] for k, p in zip(seen["kept"], seen["per-request"], strict=True))
            results.append(line)
            store.delete(key)
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--mib", type=int, default=256, help="frames of 1 MiB per object")
    parser.add_argument("--requests", type=int, default=16, help="frames asked for")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    results = measure(args.dir, args.mib, args.requests, args.rounds)
    for line in results:
        print(f"{line['syntax']} ({line['stored_bytes'] / (1 << 20):.1f} MiB stored, "
              f"{line['frames']} frames of 1 MiB, {line['requests']} requests): " + "; ".join(
                  f"{way} {line[way]['wall_s']:.3f} s wall, {line[way]['cpu_s']:.3f} s CPU, "
                  f"{line[way]['read_bytes'] / (1 << 20):.0f} MiB read, "
                  f"{line[way]['written_bytes'] / (1 << 20):.0f} MiB written"
                  for way in WAYS) + f"; kept / per-request {line['wall_ratio']:.2f} "
              "(median of the rounds' ratios)")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
