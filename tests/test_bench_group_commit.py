"""The group commit benchmark still runs: on and off, embedded and PostgreSQL, counts verified.

Only that it runs and every run stored every object (the benchmark checks the index counts
itself and fails otherwise); never a timing threshold (figures: docs/benchmarks.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_group_commit_bench_runs_on_and_off(postgres_server: str, tmp_path: Path) -> None:
    out = tmp_path / "group_commit.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "group_commit.py"), "--rounds", "1",
         "--count", "12", "--associations", "4", "--database-url", postgres_server,
         "--output", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(out.read_text())["results"]
    assert [(r["index"], r["associations"]) for r in results] == [
        ("embedded", 4), ("postgresql", 4)]
    for r in results:
        assert r["on"]["best"] > 0 and r["off"]["best"] > 0
