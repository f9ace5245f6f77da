"""The WADO-RS frames benchmark still runs: both ways give the same frames (or it fails), the
kept copy is made once, a copy per request once per request. Figures belong to ``bench/``
runs, never to a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def test_wado_frames_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "wado_frames.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "wado_frames.py"), "--dir", str(tmp_path),
         "--mib", "12", "--requests", "3", "--rounds", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [line["syntax"] for line in results] == ["1.2.840.10008.1.2.1",
                                                    "1.2.840.10008.1.2.1.99"]
    for line in results:
        assert line["requests"] == 3
        assert 12 * MiB <= line["kept"]["written_bytes"] < 13 * MiB  # one copy
        assert line["per-request"]["written_bytes"] >= 3 * 12 * MiB  # one a request
        assert all(len(rounds) == 2 for rounds in line["rounds"].values())
    assert [p.name for p in tmp_path.iterdir()] == ["wado_frames.json"]  # store removed
