"""The journal of an open association's received instances, for the trail that records them
per association (the JSON-lines file of the embedded mode).

There the DICOM Instances Transferred of received objects are written per study when the
association ends (``dimse/association.py``, PS3.15: one message per study and transfer). A
process killed with the association open (SIGKILL, the kernel's OOM killer) never reaches
that end, and the objects it had stored, indexed and answered Success for had no record,
ever. So each instance is also appended to the association's journal as it is acknowledged
(one ``write()``, after its index commit and before its Success goes out), and whoever finds
the journal of an association whose process is gone writes the records in its stead: the
supervisor when a worker dies, a start of the archive for those of a whole server killed.

- **One file per association** in ``DATA_DIR/audit-journal``
  (``Settings.audit_journal_path``), made at its first received instance (or failed
  C-STORE): a JSON header (the association's id, the requestor as its records name it,
  the trail's size then) and one short JSON array per instance, ``["S",
  study, SOP Class, SOP Instance, patient ID, patient name]``, or ``["F"]`` per failed
  C-STORE. It holds patient identifiers, as the trail does, and is made as the trail is
  (mode 0644 under the umask, in the owner-only data directory). No fsync (it would
  cost each C-STORE a disk flush): what it guards against is a killed process, whose
  finished writes the kernel keeps and writes out. A machine that stops (power, a kernel
  panic) can lose a journal's last lines, and so the records of instances an association
  that stop ended had received; the index keeps their ``received_from`` and
  ``received_at``.
- **Whose it is:** its writer holds an exclusive ``flock`` on it while the association
  lasts; the kernel drops the lock when the process ends, however it ends. A journal whose
  lock can be taken belongs to no live process. The writer takes the lock before the file
  has its name (made as ``.<id>.new`` and renamed), so no reader ever takes a live
  journal for an orphan. pids are no guide: a container's restarted server reuses them.
- **Never written twice:** every record written from a journal, at the association's end or
  by a recovery, carries the association's id (detail ``association``, in the JSON line;
  the message is unchanged). A recovery first looks in the trail, from the size it had
  when the journal was made, for the records of that id, and writes only the studies
  missing. A process killed between its records and the journal's removal, or a recovery
  killed in mid-way, thus writes nothing twice and loses nothing.
- **Torn lines:** a line without its newline is one whose ``write()`` the kill cut short;
  its instance was never answered Success, and the reader drops it.

A STOW-RS request is journaled the same way (``web/dicomweb/stow.py``: its records too are
written at its end), and each ``mimic web`` process writes, as it opens, the journals no
live process holds: the web worker that replaces a killed one writes its journals.

The PostgreSQL configuration writes each instance's record in its index transaction and
keeps no journal (``archive/ingest_audit.per_instance``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _string
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mimic_server.security import audit

if TYPE_CHECKING:
    from mimic_server.security.audit import AuditLog

log = logging.getLogger(__name__)

SUFFIX = ".journal"
#: A journal being made (its writer holds the lock and renames it at once); one left behind
#: by a process killed in between is empty, and removed once this old (seconds).
_NEW = ".new"
_NEW_LEFT_BEHIND = 60.0
_FORMAT = 1
_encode = json.JSONEncoder(separators=(",", ":")).encode


class Journal:
    """One association's journal (see the module docstring). Its C-STOREs come one after
    another (pynetdicom hands an association's DIMSE messages over one by one), so its
    appends take no lock."""

    __slots__ = ("_directory", "_fd", "_path", "_requestor", "_trail", "association")

    def __init__(self, directory: Path, trail: Path, requestor: Mapping[str, Any]) -> None:
        #: The id the association's records carry (``association``): unique across
        #: processes, restarts and reused pids.
        self.association = f"{os.getpid()}-{time.time_ns():x}-{secrets.token_hex(4)}"
        self._directory = directory
        self._trail = trail
        self._requestor = dict(requestor)
        self._fd: int | None = None
        self._path: Path | None = None

    def stored(self, study: str, sop_class: str, sop_instance: str, patient_id: str,
               patient_name: str) -> None:
        """An instance indexed, about to be answered Success."""
        # Written field by field with the json module's C string encoder (what json.dumps
        # does to each): 16 k instructions per instance here, 28 k through JSONEncoder.
        self._append(f'["S",{_string(study)},{_string(sop_class)},{_string(sop_instance)},'
                     f'{_string(patient_id)},{_string(patient_name)}]\n')

    def failed(self) -> None:
        """A C-STORE answered with a failure (the records' outcome and ``failed`` count)."""
        self._append('["F"]\n')

    def _append(self, line: str) -> None:
        if self._fd is None:
            if self._path is not None:  # could not be written: the association's end records
                return
            line = self._open() + line
            if self._fd is None:
                return
        try:
            os.write(self._fd, line.encode())
        except OSError as exc:
            self._broken(exc)

    def _open(self) -> str:
        """Make the file, locked before it has its name; the header to write first."""
        final = self._directory / f"{self.association}{SUFFIX}"
        self._path = final
        new = self._directory / f".{self.association}{_NEW}"
        try:
            fd = os.open(new, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL
                         | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            self._broken(exc)
            return ""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(new, final)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(new)
            self._broken(exc)
            return ""
        self._fd = fd
        try:
            offset = os.stat(self._trail).st_size
        except OSError:
            offset = 0
        return _encode({"format": _FORMAT, "association": self.association,
                        "trail_offset": offset, "requestor": self._requestor}) + "\n"

    def _broken(self, exc: OSError) -> None:
        """The journal cannot be written (a full disk, permissions): the association's end
        writes its records as before; only a kill before it would lose them. What was
        written stays, for a recovery should the process die."""
        log.error("audit journal cannot be written; the association's records depend on "
                  "its end", extra={"error": type(exc).__name__, "errno": exc.errno})
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def end(self, keep: bool = False) -> None:
        """The association's records are written: the journal goes (its lock with it).
        ``keep``: a record could not be written (a sink failed); the next recovery, whose
        look in the trail skips what was written, tries again."""
        if self._path is not None and not keep:
            with contextlib.suppress(OSError):
                os.unlink(self._path)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class Journals:
    """The journals' directory and the trail they stand in for."""

    def __init__(self, directory: Path, trail: Path) -> None:
        self.directory = directory
        self.trail = trail
        directory.mkdir(parents=True, exist_ok=True)

    def open(self, requestor: Mapping[str, Any]) -> Journal:
        """A journal for one association; its file is made at the first append."""
        return Journal(self.directory, self.trail, requestor)

    def recover(self, audit_log: AuditLog) -> Recovered:
        """The records of the associations no live process holds (:func:`recover`)."""
        return recover(self.directory, audit_log)


# -- reading ---------------------------------------------------------------------------------


@dataclass
class Contents:
    """What one journal says: whose association, and what it received."""

    association: str
    trail_offset: int
    requestor: dict[str, Any]
    #: Per study: instances per SOP Class; and each SOP Instance UID, in order.
    study_classes: dict[str, Counter[str]] = field(default_factory=dict)
    sop_instances: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    study_patients: dict[str, tuple[str, str]] = field(default_factory=dict)
    stored: int = 0
    failed: int = 0
    #: Lines that could not be read (not the last one cut short, which is expected).
    unreadable: int = 0


def read(data: bytes) -> Contents | None:
    """The contents of a journal's bytes; None when its header cannot be read (a write cut
    short before its first line ended: nothing was acknowledged). The last line without its
    newline is dropped: the kill cut its ``write()`` short, before its instance's Success."""
    lines = data.split(b"\n")
    lines.pop()  # after the last newline: empty, or a line cut short
    if not lines:
        return None
    try:
        header = json.loads(lines[0])
        contents = Contents(str(header["association"]), int(header["trail_offset"]),
                            dict(header["requestor"]))
    except (ValueError, KeyError, TypeError):
        return None
    for line in lines[1:]:
        try:
            item = json.loads(line)
            if item[0] == "S":
                _kind, study, sop_class, sop_instance, patient_id, patient_name = item
                contents.stored += 1
                contents.study_classes.setdefault(study, Counter())[sop_class] += 1
                contents.sop_instances.setdefault(study, {}).setdefault(
                    sop_class, []).append(sop_instance)
                contents.study_patients.setdefault(study, (patient_id, patient_name))
            elif item[0] == "F":
                contents.failed += 1
            else:
                raise ValueError(item[0])
        except (ValueError, TypeError, IndexError):
            contents.unreadable += 1
    return contents


# -- the records ------------------------------------------------------------------------------


def record_received(
    audit_log: AuditLog, requestor: Mapping[str, Any],
    study_classes: Mapping[str, Mapping[str, int]],
    study_patients: Mapping[str, tuple[str, str]], stored: int, failed: int, *,
    association: str | None = None,
    sop_instances: Mapping[str, Mapping[str, list[str]]] | None = None,
    written: frozenset[str] = frozenset(), failure_written: bool = False,
) -> int:
    """One association's DICOM Instances Transferred (received), per study, as its end
    writes them and as a recovery writes them for it: the one shape both share. ``written``:
    studies whose record is in the trail already (``failure_written``: the record of an
    association that stored nothing). Returns how many records were written."""
    tag = {"association": association} if association is not None else {}
    result = audit.SUCCESS if not failed else audit.MINOR_FAILURE
    records = 0
    for study_uid, classes in sorted(study_classes.items()):
        if study_uid in written:
            continue
        patient_id, patient_name = study_patients.get(study_uid, ("", ""))
        named = ({"sop_instances": {study_uid: dict(sop_instances[study_uid])}}
                 if sop_instances is not None and study_uid in sop_instances else {})
        audit_log.record(
            audit.INSTANCES_TRANSFERRED, result, received=True,
            studies={study_uid: dict(classes)}, instances=sum(classes.values()),
            failed=failed, patient_id=patient_id, patient_name=patient_name or None,
            **named, **requestor, **tag,
        )
        records += 1
    if failed and not stored and not failure_written:
        audit_log.record(audit.INSTANCES_TRANSFERRED, audit.MINOR_FAILURE, received=True,
                         instances=0, failed=failed, **requestor, **tag)
        records += 1
    return records


# -- recovery ---------------------------------------------------------------------------------


@dataclass
class Recovered:
    """What a recovery did, for its log line (counts only: no patient data)."""

    associations: int = 0
    records: int = 0
    instances: int = 0
    #: Journals left for the next recovery: a record could not be written.
    kept: int = 0
    #: Journals that could not be read, renamed ``*.unreadable`` for a person to look at.
    unreadable: int = 0
    #: Lines of recovered journals that could not be read (their instances unrecorded).
    unreadable_lines: int = 0


def recover(directory: Path, audit_log: AuditLog) -> Recovered:
    """Write the records of every association whose journal no live process holds, then
    remove the journal. Logs a WARNING with the counts when it wrote any (a process died
    with associations open), an ERROR for a journal kept or unreadable."""
    done = Recovered()
    if audit_log.path is None:
        return done
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return done
    for name in names:
        path = directory / name
        try:
            if name.endswith(SUFFIX):
                _recover_one(path, audit_log, done)
            elif name.startswith(".") and name.endswith(_NEW):
                _remove_left_behind(path)
        except OSError as exc:  # this one stays for the next recovery; the others go on
            done.kept += 1
            log.error("an audit journal could not be recovered", extra={
                "journal": name, "error": type(exc).__name__, "errno": exc.errno})
    if done.associations:
        log.warning("audit records written from an ended association's journal", extra={
            "associations": done.associations, "records": done.records,
            "instances": done.instances, "unreadable_lines": done.unreadable_lines,
        })
    if done.kept or done.unreadable:
        log.error("audit journals not recovered", extra={
            "kept": done.kept, "unreadable": done.unreadable, "directory": str(directory),
        })
    return done


def _recover_one(path: Path, audit_log: AuditLog, done: Recovered) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # ended meanwhile
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its association is open in a live process
            return
        if os.fstat(fd).st_nlink == 0:  # its association ended meanwhile, records written
            return
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
        contents = read(data)
        if contents is None:
            if b"\n" in data:  # a header that is no header: not ours to guess at
                os.rename(path, path.with_suffix(".unreadable"))
                done.unreadable += 1
            else:  # cut short in its first write: nothing was acknowledged
                os.unlink(path)
            return
        assert audit_log.path is not None
        written, failure_written = _written(audit_log.path, contents)
        failures = audit_log.failures
        records = record_received(
            audit_log, contents.requestor, contents.study_classes, contents.study_patients,
            contents.stored, contents.failed, association=contents.association,
            sop_instances=contents.sop_instances, written=written,
            failure_written=failure_written,
        )
        if audit_log.failures != failures:
            done.kept += 1  # the next recovery writes what is missing, nothing twice
            return
        os.unlink(path)
        done.associations += 1
        done.records += records
        done.instances += sum(sum(c.values()) for s, c in contents.study_classes.items()
                              if s not in written)
        done.unreadable_lines += contents.unreadable
    finally:
        os.close(fd)


def _written(trail: Path, contents: Contents) -> tuple[frozenset[str], bool]:
    """The studies whose records of this association are in the trail already, and whether
    its no-study failure record is: read from where the trail ended when the journal was
    made, only the lines that name the association."""
    needle = f'"association":"{contents.association}"'.encode()
    studies: set[str] = set()
    failure = False
    try:
        fh = open(trail, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return frozenset(), False
    with fh:
        if os.fstat(fh.fileno()).st_size >= contents.trail_offset:
            fh.seek(contents.trail_offset)
        for line in fh:
            if needle not in line:
                continue
            for entry in audit.records_in_line(line):
                if (entry.get("association") == contents.association
                        and entry.get("event") == audit.INSTANCES_TRANSFERRED[0]):
                    named: Iterable[str] = entry.get("studies") or ()
                    studies.update(named)
                    failure = failure or not entry.get("studies")
    return frozenset(studies), failure


def _remove_left_behind(path: Path) -> None:
    """A journal never named: its writer was killed between making and renaming it, before
    anything was written. Removed once old, and only if no live process holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if time.time() - os.fstat(fd).st_mtime < _NEW_LEFT_BEHIND:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        with contextlib.suppress(OSError):
            os.unlink(path)
    finally:
        os.close(fd)
