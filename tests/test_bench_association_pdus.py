"""The association PDU benchmark runs its three variants; never a timing threshold (figures:
docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_association_pdu_bench_runs_every_variant(tmp_path: Path) -> None:
    out = tmp_path / "association_pdus.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "association_pdus.py"), "--count", "2",
         "--rounds", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert result["contexts"] > 100
    for variant in ("current", "no-memo", "pynetdicom"):
        assert len(result["rounds"][variant]["decode_ms"]) == 2
        assert len(result["rounds"][variant]["contexts_ms"]) == 2
        assert result["summary"][variant]["encode_ms"] > 0
