"""The WADO-RS metadata benchmark still runs: both ways give one document (or it fails),
the walk writes nothing, the copy the object. Figures belong to ``bench/`` runs, never to a
test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wado_metadata_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "wado_metadata.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "wado_metadata.py"), "--dir", str(tmp_path),
         "--mib", "9", "--rounds", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [line["syntax"] for line in results] == ["1.2.840.10008.1.2.1",
                                                    "1.2.840.10008.1.2.1.99"]
    for line in results:
        assert line["walk"]["written_bytes"] < 1 << 20
        assert line["copy"]["written_bytes"] >= 9 << 20
        assert all(len(rounds) == 2 for rounds in line["rounds"].values())
    assert [p.name for p in tmp_path.iterdir()] == ["wado_metadata.json"]  # store removed
