"""The audit JSON-lines file with several writer processes (``MIMIC_WORKERS``): every record
stays one whole line, however long, whatever the others write meanwhile."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from mimic_server.security import audit

WRITERS, RECORDS = 4, 40


def _write(path: str, writer: int) -> None:
    log = audit.AuditLog(Path(path))
    for n in range(RECORDS):
        # Longer than any stdio buffer: a buffered writer splits it into several writes.
        log.record(audit.APPLICATION_ACTIVITY, audit.SUCCESS, action="started",
                   reason=f"{writer}-{n}-" + "x" * 70_000)
    log.close()


def test_records_from_several_processes_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write, args=(str(path), w)) for w in range(WRITERS)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    reasons = {"-".join(json.loads(line)["reason"].split("-")[:2]) for line in lines[:-1]}
    assert len(lines) - 1 == WRITERS * RECORDS
    assert reasons == {f"{w}-{n}" for w in range(WRITERS) for n in range(RECORDS)}


def test_a_record_cut_short_by_a_killed_writer_does_not_take_the_next_one_along(
    tmp_path: Path,
) -> None:
    """A worker killed in its write of a long record (the kernel stops a write between two
    pages for SIGKILL) leaves the record's first bytes without their newline; the next
    record, from whichever process, is appended on the same line. Reading skipped that line
    whole, and lost a record written whole; both readers keep it now."""
    from mimic_server.security.audit import AuditFilter, read_file
    from mimic_server.web.console.modalities import LastLoginsInFile

    path = tmp_path / "audit.jsonl"
    log = audit.AuditLog(path)
    log.record(audit.APPLICATION_ACTIVITY, audit.SUCCESS, action="started", reason="first")
    log.record(audit.APPLICATION_ACTIVITY, audit.SUCCESS, action="started",
               reason="cut" + "x" * 70_000)
    log.close()
    whole = path.read_bytes()
    cut = whole[: whole.index(b"cut") + 30_000]  # the killed writer's bytes so far
    path.write_bytes(cut)
    for reason in ("after", "later"):
        log = audit.AuditLog(path)
        log.record(audit.APPLICATION_ACTIVITY, audit.SUCCESS, action="stopped", reason=reason)
        log.close()
    assert [r["reason"] for r in read_file(path, AuditFilter())] == ["first", "after", "later"]
    with open(path, "rb") as fh:  # the console's reader of the same file
        assert len(list(LastLoginsInFile(path)._records(fh))) == 3
