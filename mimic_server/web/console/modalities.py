"""The modalities page: every trust entry with what the policy grants it and what it did.

Sources, all read-only: the certificate source ``mimic serve`` trusts (the directory or Key
Vault, read by the composition root), the revoked entries it keeps (greyed), the access
policy (services per entry, as ``Policy.grants_for`` decides them for DIMSE), the index
(objects stored, counted by ``received_from``, which holds the peer's identity label
``CN (fingerprint prefix)``) and the audit trail (the last association, a ``login`` record
naming the entry's trust name).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from mimic_server.certs import TrustedCertificate
from mimic_server.index.engine import read_index
from mimic_server.index.models import AuditEvent, Instance
from mimic_server.security.audit import records_in_line
from mimic_server.security.grants import Service
from mimic_server.security.identity import Identity
from mimic_server.security.policy import Policy

#: An entry expiring sooner than this is flagged on the page.
EXPIRY_WARNING = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class TrustView:
    """What the page is built from: the trusted set now, and the revoked entries."""

    trusted: tuple[TrustedCertificate, ...]
    revoked: tuple[TrustedCertificate, ...] = ()


def stored_by_peer(engine: Engine) -> dict[str, tuple[int, datetime | None]]:
    """received_from -> (objects stored, last received) from the index."""
    statement = select(Instance.received_from, func.count(), func.max(Instance.received_at)) \
        .group_by(Instance.received_from)
    return read_index(engine, lambda conn: {
        str(row[0]): (int(row[1]), row[2]) for row in conn.execute(statement)
    })


def last_logins_in_table(engine: Engine) -> dict[str, str]:
    """trust name -> time of its latest successful association, from the audit table (one
    grouped query: the table holds every association's record)."""
    statement = (
        select(AuditEvent.trust_name, func.max(AuditEvent.event_time))
        .where(AuditEvent.event_type == "login", AuditEvent.outcome == 0,
               AuditEvent.trust_name.is_not(None))
        .group_by(AuditEvent.trust_name)
    )
    rows = read_index(engine, lambda conn: conn.execute(statement).all())
    return {str(name): (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()
            for name, when in rows}


def last_logins(records: Iterable[Mapping[str, Any]],
                latest: dict[str, str] | None = None) -> dict[str, str]:
    """trust name -> time of its latest successful association, from audit records (added
    to ``latest`` when given)."""
    latest = {} if latest is None else latest
    for record in records:
        name = record.get("trust_name")
        if not name or record.get("event_type") != "login" or record.get("outcome") != 0:
            continue
        when = str(record.get("time"))
        if when > latest.get(name, ""):
            latest[name] = when
    return latest


#: How much of the audit file's start ``LastLoginsInFile`` keeps to tell it was rewritten: its
#: first record names the time it was written, which a file cut and written again changes.
HEAD_BYTES = 256


class LastLoginsInFile:
    """trust name -> latest successful association, from a JSON-lines audit file read on
    from where the previous call stopped (embedded mode: the file grows by a record per
    association and is never cut). Each view of the modalities page parsed the whole trail
    again (100,000 associations: 2 to 3 s, every time); now the first view reads it once
    and later ones only what was appended. Another file at the path (rotated: another
    inode), a shorter one (truncated), or one whose first bytes are no longer those read
    (cut in place, as logrotate's copytruncate does, and grown past the offset again
    before the next view: read on from the old offset, the logins written since the cut
    were never seen) is read from its start. A line not yet ended (being written) is left
    for the next call. Thread-safe: one reader at a time."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._file: tuple[int, int] | None = None
        self._offset = 0
        #: The file's first bytes as read (up to HEAD_BYTES): an append-only file keeps them.
        self._head = b""
        self._latest: dict[str, str] = {}

    def __call__(self) -> dict[str, str]:
        with self._lock:
            try:
                fh = open(self._path, "rb")  # noqa: SIM115 (closed below)
            except FileNotFoundError:
                return {}
            with fh:
                stat = os.fstat(fh.fileno())
                if ((stat.st_dev, stat.st_ino) != self._file or stat.st_size < self._offset
                        or fh.read(len(self._head)) != self._head):
                    self._file, self._offset, self._latest = (stat.st_dev, stat.st_ino), 0, {}
                    self._head = b""
                fh.seek(self._offset)
                last_logins(self._records(fh), self._latest)
                if len(self._head) < min(self._offset, HEAD_BYTES):
                    fh.seek(0)
                    self._head = fh.read(min(self._offset, HEAD_BYTES))
            return dict(self._latest)

    def _records(self, fh: Any) -> Iterable[dict[str, Any]]:
        """Each whole line's record from the offset on, moving the offset past it (the
        lines ``audit.read_file`` lists: a JSON object with its message)."""
        for line in fh:
            if not line.endswith(b"\n"):
                return
            self._offset += len(line)
            for entry in records_in_line(line):  # cut short by a crash, undecodable: none
                if "xml" in entry:
                    yield entry


def describe(
    view: TrustView,
    policy: Policy | None,
    stored: Mapping[str, tuple[int, datetime | None]],
    logins: Mapping[str, str],
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    now = now or datetime.now(UTC)
    rows = []
    for entry, revoked in [(t, False) for t in view.trusted] + [(t, True) for t in view.revoked]:
        cert = entry.certificate
        fingerprint = entry.fingerprint
        objects, last_stored = 0, None
        for label, (count, when) in stored.items():
            # A client entry's objects carry its own fingerprint; a CA entry's carry those
            # of the certificates it issued, which only the audit trail ties to it.
            if label.endswith(f"({fingerprint[:16]})"):
                objects += count
                last_stored = when if last_stored is None or (when and when > last_stored) \
                    else last_stored
        services: list[str] = []
        if policy is not None and not revoked:
            identity = Identity(entry.common_name, fingerprint, entry.name, entry.ae_titles,
                                entry.rule)
            granted = policy.services_for(policy.grants_for(identity), None)
            services = [s.value for s in Service if s in granted]
        expires = cert.not_valid_after_utc
        rows.append({
            "name": entry.name, "kind": entry.kind, "common_name": entry.common_name,
            "fingerprint": fingerprint, "ae_titles": sorted(entry.ae_titles),
            "services": services, "not_before": cert.not_valid_before_utc.isoformat(),
            "expires": expires.isoformat(), "expired": expires < now,
            "expires_soon": now <= expires < now + EXPIRY_WARNING, "revoked": revoked,
            "objects_stored": objects,
            "last_stored": last_stored.isoformat() if last_stored else None,
            "last_association": logins.get(entry.name),
        })
    return rows


