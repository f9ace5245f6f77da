"""The C-FIND latency benchmark still runs: a small index, both measuring clients.

Only that it runs and that both clients saw the same answers; never a timing threshold
(figures belong to ``bench/`` runs and docs/benchmarks.md).
"""

from __future__ import annotations

from bench import find_latency

KINDS = ("PatientID", "AccessionNumber", "StudyDate", "PatientName")


def test_find_latency_runs_with_both_clients(postgres_server: str) -> None:
    results = find_latency.run(20_000, 3, server_url=postgres_server)

    for client in ("findscu", "pynetdicom"):
        assert set(KINDS) <= set(results[client]), results[client]
        for kind in KINDS:
            figures = results[client][kind]
            assert 0 < figures["p50_ms"] <= figures["p95_ms"], (client, kind, figures)
    for kind in KINDS:  # the log parsing counted the same matches as pynetdicom received
        assert (
            results["findscu"][kind]["mean_matches"] == results["pynetdicom"][kind]["mean_matches"]
        ), kind
    assert results["findscu"]["PatientID"]["mean_matches"] >= 1
    assert results["findscu"]["AccessionNumber"]["mean_matches"] == 1
    assert results["server_side_all"]["p50_ms"] > 0
