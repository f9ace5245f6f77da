"""The receive-path benchmark still runs: every C-STORE it sends, over MIMIC's receive path
and over pynetdicom's own (every receive-path patch off, or the negotiation's UIDs checked
anew), over two associations a send, is answered Success (``storescu`` exits 0, or the
benchmark fails). Figures belong to ``bench/`` runs, never to a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_receive_cpu_counts_instructions_under_callgrind() -> None:
    """``--callgrind``: the server runs under valgrind, every C-STORE is answered, and the
    count read from the dump asked for is a positive number per C-STORE."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "receive_cpu.py"), "--callgrind", "--kind",
         "small", "--count", "2", "--variants", "current"],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((ROOT / "bench" / "results" / "receive_cpu.json").read_text())
    counted = results["small"]["current"]
    assert counted["per_c_store"] > 100_000
    assert counted["instructions"] == pytest.approx(2 * counted["per_c_store"], abs=1)


def test_a_callgrind_dump_is_read_only_if_it_is_the_one_asked_for() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.receive_cpu import instructions_of_dump

    dump = ("version: 1\ncreator: callgrind-3.19.0\npid: 7\ncmd:  python\npart: 1\n\n"
            "desc: I1 cache: \ndesc: Trigger: dump measured-5\n\npositions: line\n"
            "events: Ir\nsummary: 533202723\n\n\ntotals: 586813432\n")
    assert instructions_of_dump(dump, "measured-5") == 533202723
    assert instructions_of_dump(dump, "measured-50") is None
    assert instructions_of_dump(dump.replace("dump measured-5", "Program termination"),
                                "measured-5") is None
    with pytest.raises(ValueError):
        instructions_of_dump(dump.replace("summary: 533202723\n", ""), "measured-5")
