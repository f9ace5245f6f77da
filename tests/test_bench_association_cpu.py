"""The per-association CPU benchmark still runs against MIMIC: a store, an echo and a find
per association, each checked (the count stored, the studies found). Figures belong to
``bench/`` runs, never to a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.dcmtk


def test_association_cpu_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "association_cpu.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "association_cpu.py"), "--rounds", "1",
         "--associations", "3", "--receivers", "mimic-embedded", "--output", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tls"] is True and result["associations"] == 3
    assert {(r["receiver"], r["kind"]) for r in result["runs"]} == {
        ("mimic-embedded", kind) for kind in ("store", "echo", "find")}
    assert all(r["wall_ms"] > 0 for r in result["runs"])
    assert set(result["median_cpu_ms"]["mimic-embedded"]) == {"store", "echo", "find"}
