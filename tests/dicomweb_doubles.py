"""The DICOMweb app over a store and a finder double, without an index or an audit trail:
for the WADO-RS tests of large objects and ``bench/wado_frames.py``."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mimic_server.query.finder import InstanceRef
from mimic_server.security.audit import AuditLog
from mimic_server.security.policy import Policy
from mimic_server.web.dicomweb.context import DicomWebContext
from mimic_server.web.dicomweb.kept_copies import KeptCopies


class InstanceFinder:
    """A ``Finder`` that knows ``refs`` by SOP Instance UID (kept up to date by the caller:
    ``current`` gives what it holds now); with one alone, it answers any UID with it."""

    def __init__(self, *refs: InstanceRef) -> None:
        self.refs = {ref.sop_instance_uid: ref for ref in refs}

    def instances(self, query: Any) -> list[InstanceRef]:
        return list(self.refs.values())

    def instance(self, study: str, series: str, sop_instance: str) -> list[InstanceRef]:
        if len(self.refs) == 1 and sop_instance not in self.refs:
            return list(self.refs.values())
        return [self.refs[sop_instance]]

    def current(self, ref: InstanceRef) -> InstanceRef | None:
        return self.refs.get(ref.sop_instance_uid)


class RecordedDetails:
    """An audit sink keeping each record's details, for tests that read what was recorded."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, entry: Any, details: dict[str, Any]) -> None:
        self.records.append(details)

    def close(self) -> None:
        pass

    def transferred(self) -> dict[str, Any]:
        """The one DICOM Instances Transferred record (the one with a ``failed`` count)."""
        [record] = [r for r in self.records if "failed" in r]
        return record


class _NoAuditSink:
    def write(self, entry: Any, details: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def web_context(store: Any, finder: InstanceFinder, spool_dir: Path,
                copies: KeptCopies | None = None,
                audit: AuditLog | None = None) -> DicomWebContext:
    """Everything granted (``auth="none"``), audit records dropped unless ``audit``."""
    return DicomWebContext(
        finder=finder, store=store, policy=Policy("MIMIC"),  # type: ignore[arg-type]
        audit=audit or AuditLog(None, sinks=[_NoAuditSink()]), tokens=None, auth="none",
        ingest=SimpleNamespace(spool_dir=spool_dir), copies=copies)
