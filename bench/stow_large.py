"""Large objects through STOW-RS: time, ``mimic web``'s CPU and the bytes it writes.

Writes ``--count`` Secondary Capture objects of ``--size-mib`` (zero pixels, sparse files),
starts ``mimic serve`` and ``mimic web`` (embedded SQLite + file store, bearer tokens of the
OIDC issuer double) on a fresh data directory, and sends them all at once, one STOW-RS
request each, the body streamed in 1 MiB pieces (chunked). Every object must be answered
stored and indexed with its size. Measured over the sends: the wall time, the CPU seconds of
the web process and its workers, the bytes they wrote (``write_bytes`` of
``/proc/<pid>/io``: the bytes they sent, or dirtied for, the storage layer) and their peak
memory (sampled as ``bench/large_objects.py`` samples the DICOM server's: shared pages
once). A part past 8 MiB is spooled as it arrives; the file store names the spool file (one
write of the object) where it can, else copies it (two).

    .venv/bin/python bench/stow_large.py [--size-mib 1024] [--count 4] [--rounds 1]

To compare with other code, run it with ``PYTHONPATH`` at that checkout (the servers are
started with the same interpreter and environment).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compare import tree_cpu_seconds
from bench.large_objects import PeakMemory, _family
from tests.large_objects import write_large
from tests.web_support import AUDIENCE, serve_and_web

MiB = 1 << 20
BOUNDARY = "stow-large-bench"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def written_bytes(pid: int) -> int:
    """``write_bytes`` summed over ``pid`` and its living descendants."""
    total = 0
    for member in _family(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/io").read_text().splitlines():
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
    return total


def _body(path: Path) -> Iterator[bytes]:
    yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    with open(path, "rb") as fh:
        while chunk := fh.read(MiB):
            yield chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def _send(url: str, token: str, path: Path, answers: dict[Path, int]) -> None:
    response = requests.post(url + "/studies", data=_body(path), timeout=3600, headers={
        "Content-Type": CONTENT_TYPE, "Authorization": f"Bearer {token}"})
    answers[path] = response.status_code


def one_round(work: Path, files: list[tuple[Path, str]]) -> dict[str, float]:
    """Fresh servers, every file sent at once; the figures of the sends."""
    with serve_and_web(work) as (server, web, issuer):
        assert web.proc is not None
        token = issuer.mint(audience=AUDIENCE, roles=["Radiologist"])
        pid = web.proc.pid
        answers: dict[Path, int] = {}
        threads = [threading.Thread(target=_send, args=(web.url, token, path, answers))
                   for path, _ in files]
        cpu, written, start = tree_cpu_seconds(pid), written_bytes(pid), time.monotonic()
        with PeakMemory(pid) as memory:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        seconds = time.monotonic() - start
        cpu, written = tree_cpu_seconds(pid) - cpu, written_bytes(pid) - written
        stored = 0
        for path, uid in files:
            if answers.get(path) == 200 and server.object_for(uid).stat().st_size > (
                    path.stat().st_size - 4096):
                stored += 1
        return {"seconds": seconds, "cpu_s": cpu, "written_mib": written / MiB,
                "stored": stored, "peak_mb": memory.peak.unique / 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mimic-stow-large-") as scratch:
        root = Path(scratch)
        files = []
        for n in range(args.count):
            path = root / f"large-{n}.dcm"
            files.append((path, write_large(path, args.size_mib * MiB)))
        rounds = []
        for number in range(args.rounds):
            work = root / f"round-{number}"
            work.mkdir()
            figures = one_round(work, files)
            rounds.append(figures)
            print(f"round {number + 1}: stored {figures['stored']}/{args.count} objects of "
                  f"{args.size_mib} MiB in {figures['seconds']:.2f} s; mimic web's CPU "
                  f"{figures['cpu_s']:.2f} s, written {figures['written_mib']:.0f} MiB, peak "
                  f"memory {figures['peak_mb']:.0f} MB",
                  flush=True)
    if args.rounds > 1:
        print("medians: " + ", ".join(
            f"{key} {statistics.median(r[key] for r in rounds):.2f}"
            for key in ("seconds", "cpu_s", "written_mib")))
    return 0 if all(r["stored"] == args.count for r in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
