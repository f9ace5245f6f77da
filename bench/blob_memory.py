"""Peak RSS of storing and retrieving one large object through the Blob Storage store.

    .venv/bin/python -m bench.blob_memory [--mib 200]

Starts its own Azurite (``node_modules/.bin/azurite-blob``, loopback). The put runs like a
C-STORE: the whole received object is already in memory (file meta + one memoryview), so
what matters is RSS *above* that baseline. The read runs in a fresh process that streams
the blob, hashes it and keeps nothing, so its peak RSS is the store's read cost plus the
interpreter.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mimic_server.storage.azure_blob import AzureBlobStore, blob_service_client

MiB = 1024 * 1024
KEY = "ab/1.2.3/1.2.3.4/1.2.3.4.5.0000000000000000.dcm"


def _peak_mib() -> float:
    """VmHWM, the peak RSS of this process image (ru_maxrss would carry the parent's over
    fork + exec on Linux, hiding the child's own figure)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _store(connection_string: str) -> AzureBlobStore:
    return AzureBlobStore(blob_service_client(connection_string=connection_string), "bench")


def _read(connection_string: str) -> dict[str, float]:
    before = _peak_mib()
    store, digest, started = _store(connection_string), hashlib.sha256(), time.monotonic()
    with store.open(KEY) as fh:
        while block := fh.read(MiB):
            digest.update(block)
    return {"read_baseline_mib": before, "read_peak_mib": _peak_mib(),
            "read_seconds": time.monotonic() - started, "sha256": digest.hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--read-only", metavar="CONNECTION_STRING", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read_only:
        print(json.dumps(_read(args.read_only)))
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.azurite import Azurite

    with tempfile.TemporaryDirectory() as tmp:
        azurite = Azurite(Path(tmp)).start()
        try:
            dataset = bytearray(b"\x5a") * (args.mib * MiB - 132)  # pages touched: resident
            chunks = (b"\x00" * 128 + b"DICM", memoryview(dataset))
            digest = hashlib.sha256(chunks[0])
            digest.update(dataset)
            sha256 = digest.hexdigest()
            baseline, started = _peak_mib(), time.monotonic()
            _store(azurite.connection_string).put(KEY, chunks, sha256)
            result = {"object_mib": args.mib, "put_baseline_mib": baseline,
                      "put_peak_mib": _peak_mib(), "put_seconds": time.monotonic() - started}
            child = subprocess.run(
                [sys.executable, "-m", "bench.blob_memory", "--read-only",
                 azurite.connection_string],
                capture_output=True, text=True, check=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
            read = json.loads(child.stdout)
            assert read.pop("sha256") == sha256, "read back different bytes"
            result.update(read)
        finally:
            azurite.stop()
    print(json.dumps({k: round(v, 1) for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
