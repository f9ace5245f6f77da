"""The journal of an association's received instances (``security/audit_journal.py``): read
back whole but for a line a kill cut short, recovered only when no live process holds it,
and never written to the trail twice."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

from mimic_server.security import audit
from mimic_server.security.audit_journal import Journal, Journals, read, record_received, recover

REQUESTOR = {"peer": "127.0.0.1:40000", "identity": "CN=modality1", "trust_name": "modality1",
             "calling_ae": "MODALITY1", "called_ae": "MIMIC", "service": "C-STORE",
             "user": None}
CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_A, STUDY_B = "1.2.3.1", "1.2.3.2"


def journal_file(directory: Path) -> Path:
    [path] = [p for p in directory.iterdir() if p.suffix == ".journal"]
    return path


def trail(tmp_path: Path) -> audit.AuditLog:
    return audit.AuditLog(tmp_path / "audit.jsonl")


def records(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    if not path.exists():
        return []
    return [r for line in path.read_bytes().splitlines() for r in audit.records_in_line(line)
            if r.get("event") == "110104"]


def _write_and_die(directory: str, trail_path: str, failed: bool) -> None:
    """A process that journals three instances of two studies and ends without its
    association's end: its lock goes with it, as a killed worker's does."""
    journal = Journal(Path(directory), Path(trail_path), REQUESTOR)
    journal.stored(STUDY_A, CT, "1.2.3.1.1", "PAT-1", "Doe^Jane")
    journal.stored(STUDY_A, CT, "1.2.3.1.2", "PAT-1", "Doe^Jane")
    journal.stored(STUDY_B, CT, "1.2.3.2.1", "PAT-2", "")
    if failed:
        journal.failed()
    os._exit(0)


def died_with_journal(tmp_path: Path, failed: bool = False) -> Path:
    directory = tmp_path / "audit-journal"
    Journals(directory, tmp_path / "audit.jsonl")
    process = multiprocessing.get_context("spawn").Process(
        target=_write_and_die, args=(str(directory), str(tmp_path / "audit.jsonl"), failed))
    process.start()
    process.join(60)
    assert process.exitcode == 0
    return directory


def test_a_line_cut_short_by_a_kill_is_dropped_and_the_rest_read(tmp_path: Path) -> None:
    directory = tmp_path / "audit-journal"
    journal = Journals(directory, tmp_path / "audit.jsonl").open(REQUESTOR)
    journal.stored(STUDY_A, CT, "1.2.3.1.1", "PAT-1", "Doe^Jane")
    journal.stored(STUDY_A, CT, "1.2.3.1.2", "PAT-1", "Doe^Jane")
    data = journal_file(directory).read_bytes()
    whole = read(data)
    assert whole is not None and whole.stored == 2 and whole.unreadable == 0
    # The next line's write() cut short: never answered Success, so not in the journal.
    torn = read(data + b'["S","1.2.3.1","1.2.840.10008.5.1.4.1.1.2","1.2.3.1.3","PA')
    assert torn is not None
    assert torn.stored == 2 and torn.unreadable == 0
    assert torn.sop_instances == {STUDY_A: {CT: ["1.2.3.1.1", "1.2.3.1.2"]}}
    assert torn.study_patients == {STUDY_A: ("PAT-1", "Doe^Jane")}
    assert torn.requestor == REQUESTOR and torn.association == journal.association
    # Cut in its first write (header and first instance are one write): nothing to read.
    assert read(data[: data.index(b"\n") - 3]) is None
    assert read(b"") is None
    journal.end()
    assert not list(directory.iterdir())


def test_a_live_associations_journal_is_left_alone(tmp_path: Path) -> None:
    directory = tmp_path / "audit-journal"
    journal = Journals(directory, tmp_path / "audit.jsonl").open(REQUESTOR)
    journal.stored(STUDY_A, CT, "1.2.3.1.1", "PAT-1", "Doe^Jane")
    log = trail(tmp_path)
    done = recover(directory, log)
    assert done.associations == 0 and not records(tmp_path)
    assert journal_file(directory).exists()
    journal.end()
    log.close()


def test_a_dead_processes_journal_is_written_per_study_then_removed(tmp_path: Path) -> None:
    directory = died_with_journal(tmp_path)
    log = trail(tmp_path)
    done = recover(directory, log)
    log.close()
    assert (done.associations, done.records, done.instances) == (1, 2, 3)
    assert not list(directory.iterdir())
    written = records(tmp_path)
    assert [r["studies"] for r in written] == [[STUDY_A], [STUDY_B]]
    first, second = written
    assert first["outcome"] == audit.SUCCESS and first["failed"] == 0
    assert first["instances"] == 2 and first["patient_id"] == "PAT-1"
    assert first["sop_instances"] == {STUDY_A: {CT: ["1.2.3.1.1", "1.2.3.1.2"]}}
    assert second["patient_name"] is None  # as the association's end writes an empty name
    assert all(r["calling_ae"] == "MODALITY1" and r["received"] for r in written)
    assert first["association"] == second["association"]
    assert 'UID="1.2.3.1.2"' in first["xml"]


def test_a_failed_store_gives_the_records_their_failure_outcome(tmp_path: Path) -> None:
    directory = died_with_journal(tmp_path, failed=True)
    log = trail(tmp_path)
    recover(directory, log)
    log.close()
    assert [(r["outcome"], r["failed"]) for r in records(tmp_path)] == [
        (audit.MINOR_FAILURE, 1), (audit.MINOR_FAILURE, 1)]


def test_records_already_in_the_trail_are_not_written_again(tmp_path: Path) -> None:
    """The association's end wrote study A's record and was killed before study B's (or
    before the journal's removal): the recovery writes B's alone; a second recovery
    (the first killed after its records) writes nothing."""
    directory = died_with_journal(tmp_path)
    contents = read(journal_file(directory).read_bytes())
    assert contents is not None
    log = trail(tmp_path)
    log.record(audit.APPLICATION_ACTIVITY, audit.SUCCESS, action="started")  # another's
    record_received(log, REQUESTOR, {STUDY_A: contents.study_classes[STUDY_A]},
                    contents.study_patients, contents.stored, 0,
                    association=contents.association)
    kept = journal_file(directory).read_bytes()
    done = recover(directory, log)
    assert (done.associations, done.records, done.instances) == (1, 1, 1)
    assert sorted(r["studies"][0] for r in records(tmp_path)) == [STUDY_A, STUDY_B]
    journal_file_again = directory / f"{contents.association}.journal"
    journal_file_again.write_bytes(kept)  # as if the removal had not happened
    done = recover(directory, log)
    log.close()
    assert done.records == 0 and not list(directory.iterdir())
    assert len(records(tmp_path)) == 2


def test_an_unreadable_journal_is_kept_aside_not_guessed_at(tmp_path: Path) -> None:
    directory = tmp_path / "audit-journal"
    directory.mkdir()
    (directory / "x.journal").write_bytes(b"not a header\n" + json.dumps(
        ["S", STUDY_A, CT, "1.2.3.1.1", "PAT-1", ""]).encode() + b"\n")
    (directory / "y.journal").write_bytes(b'{"format":1,"assoc')  # cut in its first write
    log = trail(tmp_path)
    done = recover(directory, log)
    log.close()
    assert done.unreadable == 1 and not records(tmp_path)
    assert sorted(p.name for p in directory.iterdir()) == ["x.unreadable"]
