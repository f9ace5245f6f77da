"""Merging the workers' ``/status/associations`` answers for the console's "now" page."""

from __future__ import annotations

from mimic_server.workers.status import fetch_status, merge_status


def _minute(minute: str, **counts: int) -> dict[str, object]:
    keys = ("stores", "queries", "retrieves", "failures", "associations", "bytes_stored")
    return {"minute": minute, **{k: counts.get(k, 0) for k in keys}}


def test_associations_are_listed_with_their_worker_and_minutes_summed() -> None:
    first = {"associations": [{"calling_ae": "CT1"}],
             "minutes": [_minute("10:00", stores=2, bytes_stored=10), _minute("10:01")]}
    second = {"associations": [{"calling_ae": "MR1"}, {"calling_ae": "US1"}],
              "minutes": [_minute("10:00", stores=1, failures=1), _minute("10:01", queries=3)]}
    merged = merge_status([(0, first), (1, second)])
    assert [(a["calling_ae"], a["worker"]) for a in merged["associations"]] == [  # type: ignore[index]
        ("CT1", 0), ("MR1", 1), ("US1", 1)]
    assert merged["minutes"] == [_minute("10:00", stores=3, failures=1, bytes_stored=10),
                                 _minute("10:01", queries=3)]
    assert merged["workers_unanswered"] == 0


def test_a_worker_that_does_not_answer_is_counted_not_fatal() -> None:
    merged = merge_status([(0, None), (1, {"associations": [], "minutes": []})])
    assert merged == {"associations": [], "minutes": [], "workers_unanswered": 1}
    assert fetch_status(None) is None
