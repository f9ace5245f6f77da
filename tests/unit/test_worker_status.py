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


def test_a_worker_that_dies_in_the_middle_of_its_answer_is_one_that_does_not_answer() -> None:
    """A worker killed while it answers (its headers sent, its body cut short, or its status
    line) raised http.client's own errors, which are not OSError: out of the supervisor's
    scrape (/metrics 500) and its console status, instead of leaving that worker out."""
    import socket
    import threading

    from mimic_server.workers.status import sample_worker

    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"ass",
        b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n# HELP mimic",
        b"HTTP/1.1 2",
    ]
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for answer in answers * 2:
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(answer)  # then the connection closes: the worker died

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        for _ in answers:
            assert fetch_status(port) is None
        for _ in answers:
            assert sample_worker(port) is False
    finally:
        server.join(10)
        listener.close()
