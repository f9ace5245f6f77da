"""The comparison's report (``bench/compare.py``): the best-round and median-round ratios
and the TLS cost, from a saved result. No receiver runs here."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

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


def test_the_tls_cost_in_cpu_per_object_is_reported_for_receivers_and_senders() -> None:
    result = _result()
    cpu = {  # per round: (the receiver's CPU seconds, the senders'), for 100 objects
        ("mimic-embedded", "small-1-tls"): ([0.40, 0.44, 0.50], [0.12, 0.12, 0.30]),
        ("mimic-embedded", "small-1-plain"): ([0.40, 0.40, 0.10], [0.10, 0.10, 0.10]),
        ("orthanc-sqlite", "small-1-tls"): ([0.50, 0.50, 0.50], [0.12, 0.12, 0.12]),
    }
    for run in result["runs"]:  # type: ignore[attr-defined]
        mine = cpu.get((run["receiver"], run["scenario"]))
        if mine is not None:
            run["cpu_seconds"], run["sender_cpu_seconds"] = mine
    text = compare.markdown(result)
    assert "TLS cost in CPU per object (TLS / plain TCP - 1;" in text
    # Medians of the rounds: MIMIC 4.4 against 4.0 ms per object (+10 %), its senders 1.2
    # against 1.0 (+20 %); Orthanc has no plain run with CPU recorded: no row.
    assert "| MIMIC, embedded default (target <= 10 %) | +10 % (4.40 / 4.00) |" in text
    assert "| the senders (`storescu`), to MIMIC, embedded default | +20 % (1.20 / 1.00) |" in text
    assert "to Orthanc" not in text.split("TLS cost in CPU per object")[1]


def _rounds_with_failures(monkeypatch: pytest.MonkeyPatch, failures: dict[str, int],
                          error: type[Exception]) -> tuple[dict, list[str], list[str]]:
    """``rounds_run`` over two receivers, one round, with each receiver's first
    ``failures[label]`` sends failing with ``error``: (results, retried, runs made)."""
    made: list[str] = []

    def make_receiver(label: str, workdir: Path, *_: object) -> SimpleNamespace:
        made.append(workdir.name)
        return SimpleNamespace(label=label)

    def measure_once(server: SimpleNamespace, *_: object) -> tuple[float, float]:
        if failures.get(server.label, 0) > 0:
            failures[server.label] -= 1
            raise error(f"storescu to {server.label} exited 167:\n")
        return 1.0, 0.5

    monkeypatch.setattr(compare.receivers, "make_receiver", make_receiver)
    monkeypatch.setattr(compare, "measure_once", measure_once)
    results: dict = {}
    retried: list[str] = []
    data = SimpleNamespace(count=10, total_bytes=1000)
    compare.rounds_run(1, ["orthanc-pg", "mimic-embedded"],
                       [compare.Scenario("small", 1, True)], {"small": data},  # type: ignore[dict-item]
                       None, "", Path("/nonexistent"), results, False, retried)  # type: ignore[arg-type]
    return results, retried, made


def test_a_run_whose_sender_failed_once_is_run_again_and_noted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    results, retried, made = _rounds_with_failures(
        monkeypatch, {"orthanc-pg": 1}, compare.SenderFailed)
    assert {key: runs.seconds for key, runs in results.items()} == {
        ("orthanc-pg", "small-1-tls"): [1.0], ("mimic-embedded", "small-1-tls"): [1.0]}
    assert retried == ["round 1, small-1-tls, orthanc-pg: storescu to orthanc-pg exited 167:; "
                       "run again"]
    assert made == ["orthanc-pg-small-1-tls-0", "orthanc-pg-small-1-tls-0-again",
                    "mimic-embedded-small-1-tls-0"]  # a fresh receiver for the second try


def test_a_second_failure_or_a_wrong_count_ends_the_benchmark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(compare.SenderFailed):
        _rounds_with_failures(monkeypatch, {"mimic-embedded": 2}, compare.SenderFailed)
    with pytest.raises(compare.BenchError):  # a count mismatch is never retried
        _rounds_with_failures(monkeypatch, {"mimic-embedded": 1}, compare.BenchError)
