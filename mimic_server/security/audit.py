"""The audit trail: who connected, who was refused, what was stored (PS3.15 A.5 events).

Records are JSON lines, one per event, written to their own file: they name patients' studies
and instances, so they never go to the operational log. Field names follow the DICOM audit
message schema (EventID codes from DCM, EventOutcomeIndicator 0 / 4 / 8).
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: (code, coding scheme, meaning) from PS3.16 CID 400 "Audit Event ID".
INSTANCES_TRANSFERRED = ("110104", "DCM", "DICOM Instances Transferred")
SECURITY_ALERT = ("110113", "DCM", "Security Alert")
USER_AUTHENTICATION = ("110114", "DCM", "User Authentication")
APPLICATION_ACTIVITY = ("110100", "DCM", "Application Activity")
STUDY_DELETED = ("110105", "DCM", "DICOM Study Deleted")

SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = 0, 4, 8


class AuditLog:
    """Appends audit records to a file; each record is flushed before the call returns."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def record(
        self, event: tuple[str, str, str], outcome: int, **details: Any
    ) -> None:
        entry = {
            "EventDateTime": datetime.now(UTC).isoformat(),
            "EventID": {"code": event[0], "scheme": event[1], "meaning": event[2]},
            "EventOutcomeIndicator": outcome,
            **details,
        }
        line = json.dumps(entry, separators=(",", ":"), default=str)
        if self._file is None:
            return
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
