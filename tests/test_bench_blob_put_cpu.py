"""The blob put benchmark still runs both clients and reads back what each put; never a
timing threshold (figures: docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.azurite import AZURITE_BLOB

ROOT = Path(__file__).resolve().parents[1]


def test_blob_put_bench_runs_both_clients(tmp_path: Path) -> None:
    if not AZURITE_BLOB.exists():
        pytest.skip("azurite is not installed (scripts/test.sh installs it)")
    out = tmp_path / "blob_put_cpu.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "blob_put_cpu.py"), "--count", "3",
         "--rounds", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert set(result["summary"]) == {"small", "large"}
    for kind in ("small", "large"):
        assert set(result["rounds"][kind]) == {"current", "requests"}
        assert all(len(v) == 2 for v in result["rounds"][kind].values())
        assert result["summary"][kind]["current_ms"] > 0
