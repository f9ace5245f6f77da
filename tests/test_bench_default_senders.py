"""The benchmark of senders at dcmtk's defaults still runs against MIMIC, over TLS and plain
TCP, with Nagle's algorithm on and off, and checks every count (or fails). Figures belong to
``bench/`` runs, never to a test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.dcmtk


def test_default_senders_benchmark_runs(tmp_path: Path) -> None:
    """One worker process per server (``MIMIC_WORKERS=1``, passed through to each of the
    eight): what is checked is the senders' side, and each server starts in half the time."""
    out = tmp_path / "default_senders.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "default_senders.py"), "--rounds", "1",
         "--small", "12", "--large", "4", "--receivers", "mimic-embedded",
         "--output", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "MIMIC_WORKERS": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["counts"] == {"small": 12, "large": 4}
    runs = {(r["data"], r["transport"], r["sender"]) for r in result["runs"]}
    assert runs == {(d, t, s) for d in ("small", "large") for t in ("TLS", "plain")
                    for s in ("defaults", "nodelay")}
    assert all(r["best_inst_per_s"] > 0 for r in result["runs"])
