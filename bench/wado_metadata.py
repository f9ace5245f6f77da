"""WADO-RS metadata of a large or Deflated object: walked without its bulk, against the
spooled copy it was read from before, in one run.

    .venv/bin/python bench/wado_metadata.py [--dir DIR] [--mib 256] [--rounds 5] \
        [--json out.json]

Two objects are put in a file store under ``--dir`` (default: the system's temporary
directory): ``--mib`` MiB of native pixels in Explicit VR Little Endian, and the same
Deflated (its repeating pixels deflate some 250:1; ``tests/large_objects.large_image``).
Each is read as the ``metadata`` route reads it (``archive.read.open_verified``: a hash
pass for an object over 8 MiB) and its metadata made both ways, in alternating order each
round:

- ``walk``: ``wado.walked_header`` (``codec/header_stream.py``), what the route does now;
- ``copy``: ``wado.copied`` (an anonymous copy in a spool directory, a Deflated one
  inflated there) and ``wado.header_of``, what it did before.

The two documents must be equal, or the run fails. Printed per object and way: the median
wall seconds and CPU seconds of the process, and the bytes it wrote (``wchar`` of
``/proc/self/io``: the spool copy); with the median of the rounds' walk / copy ratios.
Figures: docs/benchmarks.md; never a threshold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydicom.uid import DeflatedExplicitVRLittleEndian  # noqa: E402

from bench.wado_objects import medians, stored_objects  # noqa: E402
from mimic_server.archive.read import open_verified  # noqa: E402
from mimic_server.web.dicomweb import wado  # noqa: E402

URL = "https://archive.example/dicomweb/studies/1/series/2/instances/3"


def _written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def _walk(ctx: Any, obj: Any) -> dict[str, Any]:
    ds = wado.walked_header(obj, obj.ref.transfer_syntax_uid == DeflatedExplicitVRLittleEndian)
    if ds is None:
        raise SystemExit("the walk did not vouch for the object")
    return wado.metadata_json(ds, URL)


def _copy(ctx: Any, obj: Any) -> dict[str, Any]:
    with wado.copied(ctx, obj) as source:
        return wado.metadata_json(wado.header_of(source), URL)


WAYS: dict[str, Callable[[Any, Any], dict[str, Any]]] = {"walk": _walk, "copy": _copy}


def measure(directory: Path, mib: int, rounds: int) -> list[dict[str, Any]]:
    results = []
    for store, root, ref, stored in stored_objects(directory, "wado-metadata-", mib, 2000):
        ctx = SimpleNamespace(ingest=SimpleNamespace(spool_dir=root / "spool"))
        seen: dict[str, list[tuple[float, float, int]]] = {way: [] for way in WAYS}
        documents: dict[str, Any] = {}
        for round_number in range(rounds):
            order = list(WAYS) if round_number % 2 == 0 else list(reversed(WAYS))
            for way in order:
                wall, cpu, wrote = time.perf_counter(), time.process_time(), _written()
                obj = open_verified(store, ref)
                assert obj is not None
                documents[way] = WAYS[way](ctx, obj)
                seen[way].append((time.perf_counter() - wall, time.process_time() - cpu,
                                  _written() - wrote))
        if documents["walk"] != documents["copy"]:
            raise SystemExit(f"{ref.transfer_syntax_uid}: the walk's document is not the copy's")
        line: dict[str, Any] = {"syntax": ref.transfer_syntax_uid, "stored_bytes": stored,
                                "pixel_mib": mib, "rounds": seen}
        for way, values in seen.items():
            line[way] = medians(values, ("wall_s", "cpu_s", "written_bytes"))
        line["wall_ratio"] = statistics.median(
            w[0] / c[0] for w, c in zip(seen["walk"], seen["copy"], strict=True))
        results.append(line)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--mib", type=int, default=256, help="MiB of pixels per object")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    results = measure(args.dir, args.mib, args.rounds)
    for line in results:
        print(f"{line['syntax']} ({line['stored_bytes'] / (1 << 20):.1f} MiB stored, "
              f"{line['pixel_mib']} MiB of pixels): " + "; ".join(
                  f"{way} {line[way]['wall_s']:.3f} s wall, {line[way]['cpu_s']:.3f} s CPU, "
                  f"{line[way]['written_bytes'] / (1 << 20):.0f} MiB written"
                  for way in WAYS) + f"; walk / copy {line['wall_ratio']:.2f} "
              "(median of the rounds' ratios)")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
