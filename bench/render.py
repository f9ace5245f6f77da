"""Time to render 512 x 512 images: thumbnails (the target, issue 14: < 30 ms) and full size.

Real objects from pydicom-data: a 512 x 512 CT uncompressed (``693_UNCR.dcm``) and the same
CT in JPEG 2000 lossless (``693_J2KR.dcm``); an MR (``MR2_UNCR.dcm``, 1024 x 1024, every
other row and column kept, so 512 x 512) uncompressed and RLE-compressed here. Each case is
the stored Part 10 bytes in memory, as ``archive.read`` hands them over; each call includes
the header parse, the frame read, the decode, the presentation and the PNG/JPEG encoding.
One process, one thread; a few warm-up calls first. Wall time (p50, p95, min) and this
process's CPU time (p50), the steadier figure on a shared machine.

    .venv/bin/python bench/render.py [--repeat 50]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import PIL
import pydicom
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from mimic_server.render import render, thumbnail


def _bytes(name: str) -> bytes:
    return Path(str(get_testdata_file(name))).read_bytes()


def _mr_512(syntax: str) -> bytes:
    ds = dcmread(str(get_testdata_file("MR2_UNCR.dcm")))
    pixels = np.ascontiguousarray(ds.pixel_array[::2, ::2])
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if syntax == RLELossless:
        ds.compress(RLELossless)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def cases() -> dict[str, bytes]:
    return {
        "CT 512x512 uncompressed": _bytes("693_UNCR.dcm"),
        "CT 512x512 JPEG 2000 lossless": _bytes("693_J2KR.dcm"),
        "MR 512x512 uncompressed": _mr_512(ExplicitVRLittleEndian),
        "MR 512x512 RLE": _mr_512(RLELossless),
    }


OPERATIONS: dict[str, Callable[[bytes], bytes]] = {
    "thumbnail 128 JPEG": lambda data: thumbnail(data, (128, 128), "image/jpeg"),
    "thumbnail 128 PNG": lambda data: thumbnail(data, (128, 128), "image/png"),
    "rendered 512 JPEG": lambda data: render(data, media_type="image/jpeg"),
    "rendered 512 PNG": lambda data: render(data, media_type="image/png"),
}


def _time(operation: Callable[[bytes], bytes], data: bytes, repeat: int) -> dict[str, float]:
    for _ in range(3):
        operation(data)
    times, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        operation(data)
        times.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[min(len(times) - 1, int(len(times) * 0.95))], 2),
        "min_ms": round(times[0], 2),
        # CPU time of this process: what the call costs, less the other tenants' share
        "cpu_p50_ms": round(statistics.median(cpu), 2),
    }


def run(repeat: int) -> dict[str, dict[str, dict[str, float]]]:
    """case -> operation -> p50 / p95 / min in milliseconds."""
    return {
        case: {name: _time(op, data, repeat) for name, op in OPERATIONS.items()}
        for case, data in cases().items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    print(
        f"python {platform.python_version()}, pydicom {pydicom.__version__}, "
        f"numpy {np.__version__}, Pillow {PIL.__version__}"
    )
    results = run(args.repeat)
    for case, figures in results.items():
        for name, f in figures.items():
            print(
                f"{case:30} {name:19} p50 {f['p50_ms']:7.2f}  p95 {f['p95_ms']:7.2f}  "
                f"min {f['min_ms']:7.2f}  cpu p50 {f['cpu_p50_ms']:7.2f} ms"
            )
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "render.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
