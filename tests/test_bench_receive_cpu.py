"""The receive-path benchmark still runs: every C-STORE it sends, over MIMIC's receive path
and over pynetdicom's own (every receive-path patch off, or the negotiation's UIDs checked
anew), over two associations a send, is answered Success (``storescu`` exits 0, or the
benchmark fails). Figures belong to ``bench/`` runs, never to a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_receive_cpu_benchmark_runs_on_both_paths() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "receive_cpu.py"), "--kind", "both",
         "--count", "4", "--rounds", "1", "--associations", "2",
         "--variants", "current,pynetdicom,negotiation-uids"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((ROOT / "bench" / "results" / "receive_cpu.json").read_text())
    for kind in ("small", "large"):
        assert set(results[kind]) == {"current", "pynetdicom", "negotiation-uids"}
