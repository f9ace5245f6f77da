"""The console's "now" page across worker processes: each worker's open associations and
per-minute counts, asked from its loopback status port and merged into one answer; and the
scrape's request that each worker write its sampled metrics first.

A worker that does not answer within the timeout is left out (and counted in
``workers_unanswered``): the page shows what the others know rather than nothing.
"""

from __future__ import annotations

import http.client
import json
import logging
import urllib.request
from typing import Any

log = logging.getLogger(__name__)

TIMEOUT = 1.0
_COUNTS = ("stores", "queries", "retrieves", "failures", "associations", "bytes_stored")


def fetch_status(port: int | None) -> dict[str, Any] | None:
    """One worker's ``/status/associations``, or None when it does not answer."""
    if port is None:
        return None
    try:
        url = f"http://127.0.0.1:{port}/status/associations"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            body: dict[str, Any] = json.load(answer)
            return body
    except (OSError, ValueError, http.client.HTTPException) as exc:
        # HTTPException: a worker that died in the middle of its answer (IncompleteRead,
        # BadStatusLine: not OSError); it raised out of the console's status.
        log.warning("worker status unavailable", extra={"port": port,
                                                        "error": type(exc).__name__})
        return None


def sample_worker(port: int | None) -> bool:
    """Have one worker write the values its metrics read by callback (its ``/metrics``
    samples them before it answers), so that the supervisor's scrape reads them current:
    asked at scrape time rather than written on a timer. False when it does not answer
    (the scrape then has that worker's values as last written)."""
    if port is None:
        return False
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                    timeout=TIMEOUT) as answer:
            answer.read()
        return True
    except (OSError, http.client.HTTPException) as exc:  # HTTPException: as above
        log.warning("worker metrics unavailable", extra={"port": port,
                                                         "error": type(exc).__name__})
        return False


def merge_status(answers: list[tuple[int, dict[str, Any] | None]]) -> dict[str, object]:
    """The workers' answers as one: associations listed with their worker, minutes summed."""
    associations: list[dict[str, Any]] = []
    minutes: dict[str, dict[str, Any]] = {}
    unanswered = 0
    for worker, answer in answers:
        if answer is None:
            unanswered += 1
            continue
        for association in answer.get("associations", []):
            associations.append({**association, "worker": worker})
        for entry in answer.get("minutes", []):
            total = minutes.setdefault(entry["minute"], {"minute": entry["minute"],
                                                         **dict.fromkeys(_COUNTS, 0)})
            for key in _COUNTS:
                total[key] += int(entry.get(key, 0))
    return {"associations": associations,
            "minutes": [minutes[m] for m in sorted(minutes)],
            "workers_unanswered": unanswered}
