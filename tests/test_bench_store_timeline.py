"""The C-STORE timeline benchmark still runs and still times every stage: its probe wraps
only MIMIC's own functions (the fence's patches all stay applied, or the benchmark fails) and
every stage it names is met once per C-STORE. Figures belong to ``bench/`` runs, never to a
test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_stage_of_every_store_is_timed(tmp_path: Path) -> None:
    output = tmp_path / "timeline.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "store_timeline.py"), "--config",
         "mimic-embedded", "--kind", "small", "--count", "8", "--output", str(output)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    counts = {row["stage"].strip(): row["count"] for row in result["stages"]}
    assert result["count"] == 8
    for stage in ("request queued -> C-STORE handler starts", "C-STORE handler",
                  "data set -> received object (walk, header, SHA-256)", "keep (put, index)",
                  "object put (file store)", "index write (commit included)",
                  "handler returns -> response queued",
                  "response queued -> written to the socket"):
        assert counts[stage] == 8, stage
    # the sender's turn is between two objects of one association
    assert counts["peer: C-STORE-RSP written -> next request's last fragment in"] == 7
    assert all(row["ms"] >= 0 for row in result["stages"])
