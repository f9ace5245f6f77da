"""The comparison's report (``bench/compare.py``): the best-round and median-round ratios
and the TLS cost, from a saved result. No receiver runs here."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import compare
from bench.store_throughput import DataSet


def _run(receiver: str, scenario: str, seconds: list[float]) -> dict[str, object]:
    instances = 100
    return {"receiver": receiver, "scenario": scenario, "instances": instances,
            "seconds": seconds, "instances_per_s": instances / min(seconds)}


def _result() -> dict[str, object]:
    scenarios = [{"data": "small", "associations": 1, "tls": tls} for tls in (True, False)]
    return {
        "rounds": 3,
        "receivers": ["orthanc-sqlite", "mimic-embedded"],
        "scenarios": scenarios,
        "runs": [
            # Orthanc: best 1.0 s, median 2.0 s; MIMIC: best 0.5 s (lucky), median 2.5 s.
            _run("orthanc-sqlite", "small-1-tls", [2.0, 1.0, 3.0]),
            _run("mimic-embedded", "small-1-tls", [0.5, 2.5, 3.0]),
            _run("orthanc-sqlite", "small-1-plain", [1.0, 1.0, 1.0]),
            _run("mimic-embedded", "small-1-plain", [0.5, 2.0, 2.0]),
        ],
    }


def test_the_median_rounds_are_reported_beside_the_best() -> None:
    text = compare.markdown(_result())
    best, medians = text.split("The same ratios of the median rounds")
    # Best rounds: 200 / 100 inst/s = 2.00; medians: 40 / 50 = 0.80.
    assert "| MIMIC, embedded default / Orthanc, SQLite index | TLS | 2.00 |" in best
    assert "| MIMIC, embedded default / Orthanc, SQLite index | TLS | 0.80 |" in medians
    # TLS cost, plain over TLS: best rounds 200 / 200 - 1 = +0 %; medians 50 / 40 - 1 = +25 %.
    assert "best rounds (plain / TLS - 1; target <= 10 %): small, 1 assoc +0 %" in text
    assert "median rounds (plain / TLS - 1; target <= 10 %): small, 1 assoc +25 %" in text


def test_the_file_system_is_settled_before_a_run(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Dirty blocks written back, the clean caches dropped where that is permitted, the
    inputs read in again; where the drop is refused, written back only."""
    part = tmp_path / "part0"
    part.mkdir()
    (part / "a.dcm").write_bytes(b"x" * 3000)
    data = DataSet("small", [part], 1, 3000)
    caches = tmp_path / "drop_caches"
    caches.write_text("")
    monkeypatch.setattr(compare, "DROP_CACHES", caches)
    assert compare.settle_file_system(data) == "dropped caches"
    assert caches.read_text() == "1"  # the page cache only, not the dentries and inodes
    monkeypatch.setattr(compare, "DROP_CACHES", tmp_path / "missing" / "drop_caches")
    assert compare.settle_file_system(data) == "written back"


def test_the_report_says_how_the_file_system_was_settled() -> None:
    result = _result()
    result.update(machine={"date_utc": "2026-12-02T16:00:00Z", "nproc": 2, "cpu": "x",
                           "loadavg_1_5_15": [0, 0, 0], "dcmtk": "storescu v3.6.7",
                           "python": "3.11", "pynetdicom": "3.0.4"},
                  data={"small": {"count": 100, "bytes": 4_000_000}}, mimic_environment={},
                  mimic_commit="abc", minutes=1.0, loadavg_at_end=[0, 0, 0], orthanc="")
    assert "settled" not in compare.section(result, [])  # a result saved before the option
    result["settled"] = ["dropped caches"]
    assert "file system settled (dropped caches" in compare.section(result, [])
    result["settled"] = ["off"]
    assert "settled" not in compare.section(result, [])
