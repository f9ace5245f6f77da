"""The QIDO-RS part of the DICOMweb benchmark still runs on a small index (no timing
threshold: figures belong to bench/ runs and docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

from bench import dicomweb
from tests.oidc_double import OidcIssuerDouble

KINDS = ("PatientID", "AccessionNumber", "StudyDate", "PatientName")


def test_qido_benchmark_runs_every_query_kind(tmp_path: Path) -> None:
    issuer = OidcIssuerDouble(tmp_path).start()
    try:
        results = dicomweb.qido(20_000, 3, tmp_path, issuer)
    finally:
        issuer.stop()
    assert results["instances"] == 20_000
    for kind in KINDS:
        figures = results[kind]
        assert 0 < figures["p50_ms"] <= figures["p95_ms"], (kind, figures)
        assert figures["server_cpu_ms_per_query"] >= 0, (kind, figures)
    assert results["AccessionNumber"]["mean_matches"] == 1
    assert results["PatientID"]["mean_matches"] >= 1


def test_wado_benchmark_runs_and_reports_server_cpu(tmp_path: Path) -> None:
    issuer = OidcIssuerDouble(tmp_path).start()
    try:
        result = dicomweb.wado(2, tmp_path, issuer, 2, web_workers=2)
    finally:
        issuer.stop()
    assert result["requests"] > 0 and result["requests_per_second"] > 0
    assert result["server_cpu_ms_per_request"] > 0
    assert result["web_workers"] == 2 and len(result["load_average"]) == 3
    assert not result.get("wrk_errors")
