"""The SQLite writers benchmark still runs, lock on and off, and every upsert succeeds (the
benchmark fails on any error); never a timing threshold (figures: docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sqlite_writers_bench_runs_with_the_lock_on_and_off(tmp_path: Path) -> None:
    out = tmp_path / "sqlite_writers.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sqlite_writers.py"), "--rounds", "1",
         "--count", "6", "--output", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"on", "off"}
    for setting in ("on", "off"):
        assert result["median"][setting]["instances_per_s"] > 0
        assert 0 < result["median"][setting]["commits_per_instance"] <= 1
