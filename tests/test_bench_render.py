"""The rendering benchmark still runs on its real objects (no timing threshold: figures
belong to bench/ runs and docs/benchmarks.md)."""

from __future__ import annotations

from bench import render as render_bench


def test_render_benchmark_runs_every_case_and_operation() -> None:
    results = render_bench.run(repeat=1)
    assert len(results) == 4
    for figures in results.values():
        assert set(figures) == set(render_bench.OPERATIONS)
        assert all(f["p50_ms"] > 0 for f in figures.values())
