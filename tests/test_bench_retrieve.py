"""The C-GET benchmark still runs against MIMIC and checks every object it gets back (or
fails). Figures belong to ``bench/`` runs, never to a test."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.dcmtk


def test_retrieve_benchmark_runs(tmp_path: Path) -> None:
    if shutil.which("getscu") is None:
        pytest.fail("dcmtk's getscu is missing: scripts/test.sh installs dcmtk")
    out = tmp_path / "retrieve.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "retrieve.py"), "--rounds", "1",
         "--small", "20", "--large", "8", "--receivers", "mimic-embedded",
         "--output", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["counts"] == {"small": 20, "large": 8}
    runs = {(r["data"], r["mode"]) for r in result["runs"]}
    assert runs == {(d, m) for d in ("small", "large")
                    for m in ("one at a time", "all at once")}
    assert all(r["best_inst_per_s"] > 0 for r in result["runs"])
