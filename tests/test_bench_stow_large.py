"""The STOW-RS large-object benchmark still runs: two parts past the in-memory bound sent at
once, both stored, and the bytes ``mimic web`` wrote counted. Figures belong to ``bench/``
runs."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_large_parts_are_stored_and_measured() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "stow_large.py"), "--size-mib", "12",
         "--count", "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    figures = re.search(r"stored 2/2 objects of 12 MiB in [\d.]+ s; mimic web's CPU [\d.]+ s, "
                        r"written (\d+) MiB", done.stdout)
    assert figures is not None, done.stdout
    fstype = subprocess.run(["df", "--output=fstype", tempfile.gettempdir()],
                            capture_output=True, text=True, check=False).stdout.split()
    if fstype[-1:] != ["tmpfs"]:  # tmpfs pages are never counted as written to storage
        # Each object written at least once (where the spool is named: once).
        assert int(figures.group(1)) >= 24
