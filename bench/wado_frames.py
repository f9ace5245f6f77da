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
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from starlette.testclient import TestClient  # noqa: E402

from bench.wado_objects import medians, stored_objects  # noqa: E402
from mimic_server.query.finder import InstanceRef  # noqa: E402
from mimic_server.storage.filesystem import FilesystemStore  # noqa: E402
from mimic_server.web.dicomweb.app import build_dicomweb  # noqa: E402
from mimic_server.web.dicomweb.kept_copies import KeptCopies  # noqa: E402
from tests.dicomweb_doubles import InstanceFinder, web_context  # noqa: E402

STUDY, SERIES, INSTANCE = "1.2.826.0.1.3680043.8.498.10", "1.2.826.0.1.3680043.8.498.10.1", "1.2.3"
OCTETS = 'multipart/related; type="application/octet-stream"'
WAYS = ("kept", "per-request")
KEPT_BYTES = 2 << 30


def _io() -> tuple[int, int]:
    fields = dict(line.split(":") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"]), int(fields["wchar"])


def _pages(store: FilesystemStore, ref: InstanceRef, spool: Path, kept: bool,
           numbers: list[int]) -> tuple[float, float, int, int, list[str]]:
    """The frames ``numbers`` asked for one request at a time: wall and CPU seconds, bytes
    read and written, and each answer's SHA-256."""
    copies = KeptCopies(KEPT_BYTES) if kept else None
    ctx = web_context(store, InstanceFinder(ref), spool, copies)
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
    numbers = sorted({1 + (n * (mib - 1)) // max(1, requests - 1) for n in range(requests)})
    results = []
    for store, root, ref, stored in stored_objects(directory, "wado-frames-", mib):
        spool = root / "spool"
        spool.mkdir(exist_ok=True)
        seen: dict[str, list[tuple[float, float, int, int]]] = {way: [] for way in WAYS}
        answers: dict[str, list[str]] = {}
        for round_number in range(rounds):
            order = WAYS if round_number % 2 == 0 else tuple(reversed(WAYS))
            for way in order:
                *figures, answers[way] = _pages(store, ref, spool, way == "kept", numbers)
                seen[way].append(tuple(figures))  # type: ignore[arg-type]
        if answers["kept"] != answers["per-request"]:
            raise SystemExit(f"{ref.transfer_syntax_uid}: the frames from the kept copy differ")
        line: dict[str, Any] = {"syntax": ref.transfer_syntax_uid, "stored_bytes": stored,
                                "frames": mib, "requests": len(numbers), "rounds": seen}
        for way, values in seen.items():
            line[way] = medians(values, ("wall_s", "cpu_s", "read_bytes", "written_bytes"))
        line["wall_ratio"] = statistics.median(
            k[0] / p[0] for k, p in zip(seen["kept"], seen["per-request"], strict=True))
        results.append(line)
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
