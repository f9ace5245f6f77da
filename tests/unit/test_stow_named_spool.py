"""A large STOW-RS part through the ingest path into the file store: its spool file holds the
object as kept, so the store names it instead of copying it (one write of the object, as a
large C-STORE's); the object under its key is the one the index's SHA-256 names, the same
bytes a part held in memory gives. SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from mimic_server.index.repository import SqlIndex
from mimic_server.security.audit import AuditLog
from mimic_server.security.audit_records import Archive
from mimic_server.storage.filesystem import FilesystemStore
from mimic_server.web.dicomweb.stow_part import ReceivedPart
from tests.data import ct_small
from tests.large_objects import write_large
from tests.unit.test_stow_audit import _request


def _fed(data: bytes, spool: Path, in_memory: int) -> ReceivedPart:
    part = ReceivedPart({"content-type": "application/dicom"}, 1 << 30, spool,
                        in_memory=in_memory)
    for pos in range(0, len(data), 4096):
        part.write(memoryview(data[pos:pos + 4096]))
    part.end()
    return part


@pytest.mark.parametrize("large", [False, True], ids=["ct-small", "hashed-beside-the-put"])
def test_a_spooled_part_is_named_into_the_file_store(index: SqlIndex, tmp_path: Path,
                                                    large: bool) -> None:
    """A CT slice (hashed as it is parsed) and a 2 MiB object (over ``HASH_BESIDE_PUT``:
    hashed from its spool file beside the put that names it)."""
    store = FilesystemStore(tmp_path / "objects", spare_files=0)
    request = _request(index, AuditLog(None, archive=Archive("MIMIC")), store,  # type: ignore[arg-type]
                       tmp_path)
    if large:
        write_large(tmp_path / "large.dcm", 2 << 20)
        data = (tmp_path / "large.dcm").read_bytes()
    else:
        data = ct_small().read_bytes()
    spooled = _fed(data, tmp_path / "spool", in_memory=1024)
    inode = os.fstat(spooled._spool.fileno()).st_ino  # type: ignore[union-attr]
    request.keep(spooled)
    assert [s.sop_instance_uid for s in request.outcome.stored] == [
        spooled.declared.sop_instance_uid]  # type: ignore[union-attr]
    assert (store.spools_named, store.spools_copied) == (1, 0)
    with index.engine.connect() as conn:
        [row] = conn.exec_driver_sql("SELECT object_key, sha256, size FROM instances").all()
    kept = tmp_path / "objects" / row[0]
    assert kept.stat().st_ino == inode and kept.stat().st_nlink == 1
    content = kept.read_bytes()
    assert hashlib.sha256(content).hexdigest() == row[1] and len(content) == row[2]
    # What a part held in memory stores: the same bytes (the archive's File Meta, then the
    # data set as sent), copied.
    in_memory = _fed(data, tmp_path / "spool", in_memory=1 << 20)
    assert b"".join(bytes(c) for c in in_memory.received().chunks) == content
    in_memory.close()
    # The mode of a file the store makes, not the spool's 0600.
    umask = next(int(line.split()[1], 8) for line in
                 Path("/proc/self/status").read_text().splitlines()
                 if line.startswith("Umask:"))
    assert stat.S_IMODE(kept.stat().st_mode) == 0o666 & ~umask
    assert not list((tmp_path / "spool").iterdir())
    store.close()


def test_a_part_declaring_invalid_uids_is_refused_and_nothing_is_kept(
        index: SqlIndex, tmp_path: Path) -> None:
    """Refused at its File Meta (the archive's would be made of those UIDs): Failed SOP with
    0xC002, nothing spooled, stored or indexed, however large the part."""
    from mimic_server.codec.file_meta import encode_file_meta, read_file_meta

    store = FilesystemStore(tmp_path / "objects", spare_files=0)
    request = _request(index, AuditLog(None, archive=Archive("MIMIC")), store,  # type: ignore[arg-type]
                       tmp_path)
    write_large(tmp_path / "large.dcm", 12 << 20)
    data = (tmp_path / "large.dcm").read_bytes()
    read = read_file_meta(data)
    assert read is not None
    meta = encode_file_meta(read.sop_class_uid, "1.2.3.x", read.transfer_syntax_uid, "")
    part = _fed(meta + data[read.dataset_offset:], tmp_path / "spool", in_memory=1024)
    request.keep(part)
    assert request.outcome.stored == []
    assert [(f.sop_instance_uid, f.reason) for f in request.outcome.failed] == [
        ("1.2.3.x", 0xC002)]
    assert (store.spools_named, store.spools_copied) == (0, 0)
    assert list(store.iter_keys()) == []
    with index.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM instances").scalar() == 0
    assert not (tmp_path / "spool").exists()  # never spooled
    store.close()
