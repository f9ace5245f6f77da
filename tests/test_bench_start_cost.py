"""The start-cost benchmark still runs: one start of ``mimic serve`` with two workers, every
process read. Behaviour only, never a time or a size (figures: docs/benchmarks.md)."""

from __future__ import annotations

from bench import start_cost


def test_start_cost_reads_every_process_of_a_start() -> None:
    result = start_cost.run([2], rounds=1, settle=0.0, log=False)
    [start] = result["starts"]["current, workers 2"]
    assert sorted(p["role"] for p in start["processes"]) == ["supervisor", "worker", "worker"]
    for process in start["processes"]:
        assert process["cpu_seconds"] > 0, process
        assert 0 < process["private_mb"] <= process["rss_mb"], process
    medians = result["medians"]["current, workers 2"]
    assert set(medians["per_process"]) == {"supervisor", "worker"}
