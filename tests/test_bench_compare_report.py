"""The comparison's report (``bench/compare.py``): the best-round and median-round ratios
and the TLS cost, from a saved result. No receiver runs here."""

from __future__ import annotations

from bench import compare


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
    # TLS cost, plain over TLS - 1, best / median rounds, for every receiver. MIMIC: best
    # 200 / 200 - 1 = +0 %, medians 50 / 40 - 1 = +25 %; Orthanc: 100 / 100 - 1 = +0 %,
    # 100 / 50 - 1 = +100 %.
    assert "TLS cost per receiver (plain TCP / TLS - 1), best / median rounds:" in text
    assert "| MIMIC, embedded default (target <= 10 %) | +0 % / +25 % |" in text
    assert "| Orthanc, SQLite index | +0 % / +100 % |" in text
