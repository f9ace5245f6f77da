"""Refused connections, counted into one audit record per source and reason per interval.

A refused connection costs the peer one TCP connect; an audit record per refusal let any
host on the network grow the audit trail at will (2,000 probes wrote 1,859 records). Here
each (source address, reason) pair gets one Security Alert record per interval with a
count, written at the interval's end and at stop. The number of distinct pairs held is
bounded; beyond it refusals are counted under source ``"other"``.

The log line follows the same aggregation (a WARNING per refusal let a peer at 1,000
connections/s write a million lines an hour into Log Analytics): the first refusal of a
pair in an interval is logged at once by the listener (:meth:`RefusalAudit.note` says
so), the others as one ``connection refused`` line with their ``count`` at the interval's
end. Summing ``count`` over the lines gives the number of refusals.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from mimic_server.security import audit
from mimic_server.security.audit import AuditLog

log = logging.getLogger(__name__)

#: Distinct (source, reason) pairs held per interval before they are lumped together.
MAX_KEYS = 1000
OTHER = "other"


class RefusalAudit:
    """Counts refusals; a thread writes the counts every ``interval`` seconds.

    ``event``, ``message`` and ``details`` name what is counted (by default a refused
    connection: a Security Alert). With ``first_recorded`` the caller writes the first
    refusal of a pair in an interval itself, at once, as it would a single one (the console's
    refused sign-ins: a User Authentication record with its reason), and the interval's
    record counts the repeats only, so that summing ``count`` still gives every refusal."""

    def __init__(self, audit_log: AuditLog, interval: float, *,
                 event: tuple[str, str, str] = audit.SECURITY_ALERT,
                 message: str = "connection refused", details: dict[str, Any] | None = None,
                 first_recorded: bool = False) -> None:
        self.audit_log = audit_log
        self.interval = interval
        self.event = event
        self.message = message
        self.details = dict(details or {})
        self.first_recorded = first_recorded
        self._counts: Counter[tuple[str, str]] = Counter()
        self._since = datetime.now(UTC)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="mimic-refusal-audit", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def note(self, source: str, reason: str) -> bool:
        """Count one refused connection from ``source`` (an address, without port); True
        when it is the first of its source and reason this interval (log it now)."""
        with self._lock:
            key = (source, reason)
            if key not in self._counts and len(self._counts) >= MAX_KEYS:
                key = (OTHER, OTHER)  # a hard bound, whatever the peers and reasons
            self._counts[key] += 1
            return self._counts[key] == 1

    def flush(self) -> None:
        """Write one record per (source, reason) counted since the last flush; never raises
        (a full disk must not stop the caller, which may be the listener's shutdown)."""
        now = datetime.now(UTC)
        with self._lock:
            counts, self._counts = self._counts, Counter()
            since, self._since = self._since, now
        for (source, reason), count in sorted(counts.items()):
            if count > 1:  # the first was logged when it happened
                log.warning(
                    self.message,
                    extra={"peer": source, "reason": reason, "count": count - 1,
                           "interval_start": since.isoformat(), "interval_end": now.isoformat()},
                )
            recorded = count - 1 if self.first_recorded else count
            if not recorded:
                continue
            try:
                self.audit_log.record(
                    self.event, audit.MINOR_FAILURE, **self.details, peer=source,
                    reason=reason, count=recorded, IntervalStart=since.isoformat(),
                    IntervalEnd=now.isoformat(),
                )
            except Exception:
                log.exception(
                    "writing the audit record of refusals failed",
                    extra={"peer": source, "reason": reason, "count": count},
                )

    def close(self) -> None:
        """Stop the thread and write what was counted."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()
