"""``mimic reconcile``: find (and with ``fix``, repair) drift between object store and index.

Two kinds of drift exist by design of the write path (put, then index, then delete-on-failure):

* **orphan objects**: in the store, no index row points at them (a crash or a failed delete
  between put and commit). Nothing was acknowledged for them. *Fix*: delete the object.
* **broken rows**: an index row whose object is missing or no longer hashes to the row's
  SHA-256. The archive acknowledged that instance but can no longer deliver it (C-MOVE/C-GET
  fail that sub-operation). *Fix*: remove the instance row (and parents left empty) and the
  bad object, recorded in the audit trail with its SOP Instance UID so the sender can be
  asked to send it again (the operational log gets counts only: no patient data). Restore the object
  from a blob version or backup *before* fixing, if one exists.

* **empty rows**: a series row no instance names, a study no series names, a patient no
  study names (left by an instance sent again under another study before the move removed
  them, or by a removal cut short). C-FIND answers each with nothing in it. *Fix*: remove
  the row (and the parents it leaves empty) if it still names no child.

An object that cannot be read *now* (the store throttles, times out, resets the connection; a
file gives EIO, EACCES, EMFILE) is neither: it is **unreadable**, drift that is reported and
keeps the exit status at 1, and that ``fix`` never touches. Only the store's own word
(``KeyError``: not there) makes an object missing, and only bytes read to their end that hash
to another SHA-256 make it corrupt; a store still failing when ``fix`` re-checks must not turn
an acknowledged instance into a removed one (invariant 1).

A file in the object directory whose name is no key (``lost+found/#1234`` after e2fsck,
``.DS_Store``), or whose name is one no put of the archive makes (``README.txt``, a blob
someone parked in the container: :func:`~mimic_server.storage.keys.is_object_key`) and that
no index row names, was never put by the archive: it is **foreign**, reported (counted; named with
``--json``) and never deleted, and it is no drift (it would keep the exit status at 1 for
good). After e2fsck it may hold an acknowledged object that lost its name: the rows found
missing are the ones to compare it with before ``fix``.

Races with a running server are handled, not excluded: the store is listed before the index
is read; an orphan is deleted only if, ``settle_seconds`` after it was seen, still no row
points at it (a C-STORE between put and commit has finished by then); a row is removed only
if it still points at the object that was checked (a re-sent instance may have switched it).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from mimic_server.errors import OutOfResources
from mimic_server.index import maintenance
from mimic_server.index.maintenance import EmptyRow, ObjectRef
from mimic_server.security import audit
from mimic_server.storage import ObjectStore
from mimic_server.storage.keys import is_object_key, study_of_key

log = logging.getLogger(__name__)

_READ = 1024 * 1024


@dataclass
class Report:
    """What reconcile found and what it repaired; ``remaining`` decides the exit status."""

    objects: int = 0
    instances: int = 0
    orphans: list[str] = field(default_factory=list)
    missing: list[ObjectRef] = field(default_factory=list)
    corrupt: list[ObjectRef] = field(default_factory=list)
    #: Could not be read at all this time: reported, never fixed (the store may recover).
    unreadable: list[ObjectRef] = field(default_factory=list)
    deleted_orphans: list[str] = field(default_factory=list)
    removed_instances: list[str] = field(default_factory=list)
    #: Files in the store that are not keys (the store's own word): never touched, no drift.
    foreign: list[str] = field(default_factory=list)
    #: Drift that went away by itself before it was fixed (a concurrent C-STORE, a restore).
    resolved: int = 0
    #: Objects ``fix`` was to delete and the store refused to (an immutability policy, a
    #: read-only or failing disk): left in the store, drift for the next run.
    undeleted: list[str] = field(default_factory=list)
    #: Series, study and patient rows with nothing under them (C-FIND answers them empty).
    empty: list[EmptyRow] = field(default_factory=list)
    removed_empty: int = 0

    @property
    def drift(self) -> int:
        return (len(self.orphans) + len(self.missing) + len(self.corrupt)
                + len(self.unreadable) + len(self.empty))

    @property
    def remaining(self) -> int:
        fixed = (len(self.deleted_orphans) + len(self.removed_instances) + self.removed_empty
                 + self.resolved)
        # An undeleted orphan was never counted fixed; the bad object of a removed row was
        # (its row is gone), yet it is left in the store: an orphan now, still drift.
        orphans = set(self.orphans)
        return self.drift - fixed + sum(1 for key in self.undeleted if key not in orphans)

    def as_dict(self, with_keys: bool) -> dict[str, Any]:
        result: dict[str, Any] = {
            "objects": self.objects,
            "instances": self.instances,
            "orphan_objects": len(self.orphans),
            "missing_objects": len(self.missing),
            "corrupt_objects": len(self.corrupt),
            "unreadable_objects": len(self.unreadable),
            "foreign_files": len(self.foreign),
            "deleted_orphans": len(self.deleted_orphans),
            "removed_instances": len(self.removed_instances),
            "undeleted_objects": len(self.undeleted),
            "empty_rows": len(self.empty),
            "removed_empty_rows": self.removed_empty,
            "remaining": self.remaining,
        }
        if with_keys:
            result["orphans"] = self.orphans
            result["missing"] = [_ref(r) for r in self.missing]
            result["corrupt"] = [_ref(r) for r in self.corrupt]
            result["unreadable"] = [_ref(r) for r in self.unreadable]
            result["foreign"] = self.foreign
            result["removed"] = self.removed_instances
            result["undeleted"] = self.undeleted
            result["empty"] = [f"{table} {row_id}" for table, row_id in self.empty]
        return result


def reconcile(
    store: ObjectStore,
    engine: Engine,
    *,
    fix: bool = False,
    settle_seconds: float = 60.0,
    audit_log: audit.AuditLog | None = None,
    sleep: Callable[[float], None] = time.sleep,
    store_may_be_empty: bool = False,
    index_may_be_empty: bool = False,
) -> Report:
    """Compare every object with every index row; hash every indexed object.

    With ``fix``, the rows of missing objects are kept when the store lists no object at
    all, unless ``store_may_be_empty``; and the orphan objects are kept when the index
    names no instance at all, unless ``index_may_be_empty``. Raises ``OutOfResources`` if
    the store or the index cannot be read at all.
    """
    report = Report()
    stored = set(store.iter_keys(report.foreign))  # before the index: module docstring
    indexed: set[str] = set()
    for ref in maintenance.object_refs(engine):
        report.instances += 1
        indexed.add(ref.object_key)
        state = _check(store, ref) if ref.object_key in stored else _check_absent(store, ref)
        if state == "missing":
            report.missing.append(ref)
        elif state == "corrupt":
            report.corrupt.append(ref)
        elif state == "unreadable":
            report.unreadable.append(ref)
    for key in sorted(stored - indexed):
        if is_object_key(key):
            report.orphans.append(key)
        else:
            # A name the store takes but no put of the archive made (README.txt beside the
            # objects, a backup parked in the container): someone else's, never deleted.
            report.foreign.append(key)
            stored.discard(key)
    report.objects = len(stored)
    report.empty = maintenance.empty_rows(engine)
    if report.foreign:
        # Their names may be anything (a UID): counted here, named at DEBUG and by --json.
        log.warning("files in the object store that are not objects: left alone",
                    extra={"foreign_files": len(report.foreign)})
        log.debug("foreign files", extra={"names": report.foreign})
    log.info("reconcile found", extra=report.as_dict(with_keys=False))
    if fix:
        _fix(store, engine, report, settle_seconds, sleep, audit_log or audit.AuditLog(None),
             store_may_be_empty, index_may_be_empty)
    return report


def _check_absent(store: ObjectStore, ref: ObjectRef) -> str:
    # Not in the listing; it may have been put after the listing (a new C-STORE).
    try:
        present = store.exists(ref.object_key)
    except (OutOfResources, OSError) as exc:
        return _unreadable(ref, exc)
    return _check(store, ref) if present else "missing"


def _check(store: ObjectStore, ref: ObjectRef) -> str:
    """"ok", "missing" (the store says it is not there), "corrupt" (read whole, another
    SHA-256) or "unreadable" (the store failed: no verdict on the bytes)."""
    digest = hashlib.sha256()
    try:
        with store.open(ref.object_key) as fh:
            while block := fh.read(_READ):
                digest.update(block)
    except KeyError:
        return "missing"
    except (OutOfResources, OSError) as exc:
        # OSError: a file opened fine and then failed its read (EIO); the store's open()
        # alone turns errors into OutOfResources.
        return _unreadable(ref, exc)
    return "ok" if digest.hexdigest() == ref.sha256 else "corrupt"


def _unreadable(ref: ObjectRef, exc: Exception) -> str:
    # The key holds UIDs (patient data): named at DEBUG only; --json reports it.
    log.warning("object unreadable", extra={"error": type(exc).__name__})
    log.debug("unreadable object key", extra={"key": ref.object_key})
    return "unreadable"


def _fix(
    store: ObjectStore,
    engine: Engine,
    report: Report,
    settle_seconds: float,
    sleep: Callable[[float], None],
    audit_log: audit.AuditLog,
    store_may_be_empty: bool,
    index_may_be_empty: bool,
) -> None:
    broken = report.missing + report.corrupt
    if report.missing and report.objects == 0 and not store_may_be_empty:
        # A store that lists nothing while the index names objects is far likelier a volume
        # not mounted, or the wrong container, than an archive whose every object was lost:
        # removing the rows would empty the index. Kept, and said (exit 1 stays).
        log.error("the object store lists no object while the index names some: is it "
                  "mounted? the instances whose objects are missing are kept "
                  "(--store-may-be-empty removes them)",
                  extra={"missing_objects": len(report.missing)})
        broken = report.corrupt
    for ref in broken:
        state = _check(store, ref)
        if state == "ok":
            report.resolved += 1  # restored meanwhile (from a blob version, a backup)
            continue
        if state == "unreadable":
            # No verdict now: the row and its object stay, and so does the drift (exit 1).
            log.warning("instance kept in the index: its object cannot be read now")
            continue
        if maintenance.remove_instance(engine, ref.sop_instance_uid, ref.object_key):
            report.removed_instances.append(ref.sop_instance_uid)
            # The UIDs name a patient's instance: audit trail, not the operational log.
            audit_log.record(
                audit.INSTANCES_ACCESSED, audit.MINOR_FAILURE, action_code="D",
                action="reconcile removed instance", service="reconcile",
                studies=_studies(ref.object_key), SOPInstanceUID=ref.sop_instance_uid,
                object_key=ref.object_key,
                reason=f"reconcile removed an instance whose object is {state}",
            )
            log.warning("instance removed from the index: its object is missing or corrupt")
            _delete(store, ref.object_key, report)  # corrupt bytes serve nobody
        else:
            report.resolved += 1  # the row was switched to new bytes meanwhile
    orphans = report.orphans
    if orphans and report.instances == 0 and not index_may_be_empty:
        # The mirror of the empty store: an index that names nothing while the store holds
        # objects is far likelier another index than the archive's (a SQLite file created
        # afresh at a mistyped path, a PostgreSQL database other than the archive's) than an
        # archive none of whose stores ever committed: deleting them would empty the store.
        log.error("the index names no instance while the object store holds objects: is it "
                  "the archive's index? the orphan objects are kept "
                  "(--index-may-be-empty deletes them)",
                  extra={"orphan_objects": len(orphans)})
        orphans = []
    if orphans and settle_seconds > 0:
        sleep(settle_seconds)
    for key in orphans:
        if maintenance.refers_to(engine, key):
            report.resolved += 1  # its C-STORE committed after all
            continue
        if not _delete(store, key, report):
            continue
        report.deleted_orphans.append(key)
        audit_log.record(
            audit.INSTANCES_ACCESSED, audit.SUCCESS, action_code="D",
            action="reconcile deleted orphan object", service="reconcile",
            studies=_studies(key), object_key=key,
            reason="reconcile deleted an object no index row refers to",
        )
    for row in report.empty:
        # Rows only: no instance, no object, nothing a sender must send again.
        if maintenance.remove_empty_row(engine, row):
            report.removed_empty += 1
        else:
            report.resolved += 1  # an instance was filed under it meanwhile


def _delete(store: ObjectStore, key: str, report: Report) -> bool:
    """Delete one object; a store that refuses (a locked immutability policy keeps orphans
    until their retention ends, deploy.md) leaves it as drift, and the run goes on to the
    next object and its report instead of ending at the first (exit 2, nothing printed)."""
    try:
        store.delete(key)
    except (OutOfResources, OSError) as exc:
        # The key holds UIDs (patient data): named at DEBUG only; --json lists it.
        log.warning("object could not be deleted: left in the store",
                    extra={"error": str(exc) if isinstance(exc, OutOfResources)
                           else type(exc).__name__})
        log.debug("undeleted object key", extra={"key": key})
        report.undeleted.append(key)
        return False
    return True


def _studies(object_key: str) -> list[str]:
    study = study_of_key(object_key)
    return [study] if study else []


def _ref(ref: ObjectRef) -> dict[str, str]:
    return {"sop_instance_uid": ref.sop_instance_uid, "key": ref.object_key}
