"""The file store's put benchmark still runs, on this checkout's store and on a baseline
checkout (here: the same one), and reads back every object it put (or it fails). Figures
belong to ``bench/`` runs, never to a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_file_put_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "file_put.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "file_put.py"), "--dir", str(tmp_path),
         "--size", "1000", "--threads", "1,2", "--count", "5", "--rounds", "2",
         "--baseline", str(ROOT), "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [line["threads"] for line in results] == [1, 2]
    for line in results:
        assert line["current"] > 0 and line["baseline"] > 0 and line["ratio"] > 0
        assert all(len(rates) == 2 for rates in line["rounds"].values())
    assert [p.name for p in tmp_path.iterdir()] == ["file_put.json"]  # stores removed
