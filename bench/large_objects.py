"""Peak memory of MIMIC receiving very large objects: four 1 GiB C-STOREs at once.

Writes four 1 GiB Secondary Capture objects (a small header, zero pixels: sparse files),
starts ``mimic serve`` (TLS, embedded SQLite + file store) on a fresh data directory, sends
them with four dcmtk ``storescu`` processes at once, and reads the server's peak resident
memory (``VmHWM`` in ``/proc/<pid>/status``, reset before the transfer). Every object is
checked to be stored and indexed. The target (issue 12): peak below 400 MB.

    .venv/bin/python bench/large_objects.py [--size-mib 1024] [--count 4]

C-GET of a 1 GiB object is not measured yet: retrieval still reads each object whole.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.large_objects import write_large
from tests.support import MimicProcess, dcmtk_tls

MiB = 1 << 20


def _vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--count", type=int, default=4)
    args = parser.parse_args()
    if shutil.which("storescu") is None:
        print("storescu (dcmtk) is not installed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mimic-large-") as tmp:
        root = Path(tmp)
        files = [root / f"large{i}.dcm" for i in range(args.count)]
        for path in files:
            write_large(path, args.size_mib * MiB)
        server = MimicProcess(root / "data").start()
        try:
            assert server.proc is not None
            pid = server.proc.pid
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            idle = _vm(pid, "VmHWM")
            env = {**os.environ, "TCP_NODELAY": "1"}
            start = time.perf_counter()
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
        finally:
            server.stop()
    total = args.count * args.size_mib * MiB
    print(f"{args.count} x {args.size_mib} MiB at once over TLS: {seconds:.1f} s, "
          f"{total / seconds / 1e6:.0f} MB/s; stored {stored}/{args.count}")
    print(f"server peak RSS (VmHWM): idle {idle / 1e6:.0f} MB, during {peak / 1e6:.0f} MB")
    if failed or stored != args.count:
        print("a store failed", file=sys.stderr)
        return 1
    return 0 if peak < 400e6 else 1


if __name__ == "__main__":
    sys.exit(main())
