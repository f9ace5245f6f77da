"""What `mimic serve` is doing now, for the operator console: per-minute counts of the last
hour and the open associations, served as JSON by the ops listener (``/status/associations``).

:class:`Activity` is a sink of :mod:`mimic_server.net.observe` beside the Prometheus
metrics (:class:`Tee` hands every count to both). Nothing here holds patient data: services,
status categories, peers' addresses, AE titles, certificate identities and user names only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol


class Sink(Protocol):
    """What ``net.observe`` counts into (its own ``Sink``; web/ does not import net/)."""

    def association(self, outcome: str) -> None: ...

    def request_answered(self, service: str, status: str, seconds: float) -> None: ...

    def stored(self, size: int) -> None: ...

MINUTES = 60


class Activity:
    """Counts per minute (UTC), the last ``minutes`` kept."""

    def __init__(self, minutes: int = MINUTES, clock: Callable[[], float] = time.time) -> None:
        self._minutes = minutes
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[int, dict[str, int]] = {}

    def _add(self, key: str, amount: int = 1) -> None:
        minute = int(self._clock() // 60)
        with self._lock:
            bucket = self._counts.get(minute)
            if bucket is None:
                bucket = self._counts[minute] = {}
                for old in [m for m in self._counts if m <= minute - self._minutes]:
                    del self._counts[old]
            bucket[key] = bucket.get(key, 0) + amount

    # -- observe.Sink ------------------------------------------------------------------------

    def association(self, outcome: str) -> None:
        self._add("associations" if outcome == "accepted" else f"associations_{outcome}")

    def request_answered(self, service: str, status: str, seconds: float) -> None:
        if status == "failure":
            self._add("failures")
        elif service == "C-STORE" and status in ("success", "warning"):
            self._add("stores")
        elif service == "C-FIND":
            self._add("queries")
        elif service in ("C-GET", "C-MOVE"):
            self._add("retrieves")

    def stored(self, size: int) -> None:
        self._add("bytes_stored", size)

    # -- reading -----------------------------------------------------------------------------

    def minutes(self) -> list[dict[str, Any]]:
        """One entry per minute of the last ``minutes``, oldest first, zeros included."""
        now = int(self._clock() // 60)
        with self._lock:
            counts = {m: dict(c) for m, c in self._counts.items()}
        keys = ("stores", "queries", "retrieves", "failures", "associations", "bytes_stored")
        return [
            {"minute": datetime.fromtimestamp(m * 60, UTC).isoformat(),
             **{k: counts.get(m, {}).get(k, 0) for k in keys}}
            for m in range(now - self._minutes + 1, now + 1)
        ]


class Tee:
    """One observe sink that hands every count to several."""

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = sinks

    def association(self, outcome: str) -> None:
        for sink in self.sinks:
            sink.association(outcome)

    def request_answered(self, service: str, status: str, seconds: float) -> None:
        for sink in self.sinks:
            sink.request_answered(service, status, seconds)

    def stored(self, size: int) -> None:
        for sink in self.sinks:
            sink.stored(size)
