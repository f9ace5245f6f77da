"""What the fuzzing layer checks on the server it attacked: invariants, read from outside."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement

from tests.support import MimicProcess


def thread_count(server: MimicProcess) -> int:
    """The server process's threads, from ``/proc/<pid>/status``."""
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: in /proc/PID/status")


def parses_to_end(data: bytes) -> str | None:
    """Why pydicom does not read this Part 10 file whole and to its exact end, or ``None``.

    pydicom itself forgives a value cut short or a few trailing bytes, so the lengths of the
    top-level values and the end of the last one are checked as well; every value is
    converted (sequences included).
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        read = list(ds._dict.values())  # before conversion replaces the raw elements
        for element in ds.iterall():
            _ = element.value
    except Exception as exc:
        return f"pydicom cannot read it: {exc!r}"
    if ds.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return None  # positions are in the inflated stream; pydicom read it whole
    raws = [e for e in read if isinstance(e, RawDataElement)]
    for raw in raws:
        if raw.length != 0xFFFFFFFF and raw.value is not None and len(raw.value) != raw.length:
            return f"{raw.tag} is {len(raw.value)} bytes, not {raw.length}"
    last = max(read, key=lambda e: getattr(e, "value_tell", None) or e.file_tell or 0)
    defined = isinstance(last, RawDataElement) and last.length != 0xFFFFFFFF
    if defined and last.value_tell + last.length != len(data):  # nothing may follow it
        return f"the last element ends at {last.value_tell + last.length} of {len(data)}"
    return None


def invalid_objects(server: MimicProcess) -> list[str]:
    """Every stored object that is not indexed or does not parse to its end, and every
    non-empty leftover in ``.incoming``; an empty list when the archive is sound."""
    problems = []
    root = server.data_dir / "objects"
    indexed = {row[0] for row in server._query("SELECT object_key FROM instances")}
    stored = {str(p.relative_to(root)) for p in server.stored_objects()}
    problems += [f"indexed but not stored: {key}" for key in indexed - stored]
    problems += [f"stored but not indexed: {key}" for key in stored - indexed]
    for key in sorted(stored):
        why = parses_to_end((root / key).read_bytes())
        if why is not None:
            problems.append(f"{key}: {why}")
    incoming = root / ".incoming"
    if incoming.exists():
        problems += [
            f"leftover {p.name}" for p in incoming.rglob("*") if p.is_file() and p.stat().st_size
        ]
    return problems
