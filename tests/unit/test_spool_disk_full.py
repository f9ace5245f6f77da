"""A spool whose disk fills: the C-STORE is answered Out of Resources (0xA700), the
association goes on, and no descriptor is left; a STOW-RS part is refused the same way.

The spool is a buffered file: a write that fails can leave bytes in its buffer, so closing
it (which flushes) fails again, and the last bytes of a data set may reach the disk only at
its end. Both used to escape: into the DUL thread (an A-ABORT, logged as a bug) or into the
handler (0xC211, which a modality does not retry)."""

from __future__ import annotations

import errno
import io
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE

from mimic_server.dimse import receiving
from mimic_server.dimse.store import handle_store
from mimic_server.dimse.unexpected import STATUS, guarded
from mimic_server.errors import OutOfResources
from mimic_server.index import schema
from mimic_server.index.engine import create_index_engine
from mimic_server.index.repository import SqlIndex
from mimic_server.security.policy import Policy
from mimic_server.storage.memory import MemoryStore
from mimic_server.web.dicomweb import stow_part
from mimic_server.web.dicomweb.stow_part import ReceivedPart
from tests.spooled import FILE_META, SOP_INSTANCE, acceptor, data_set, dul_events


class _FillingDisk(io.RawIOBase):
    """A spool file on a disk with ``room`` bytes left: a write past it fails (ENOSPC)."""

    def __init__(self, directory: Path, room: int) -> None:
        self.file = tempfile.TemporaryFile(dir=directory, buffering=0)  # noqa: SIM115
        self.room = room

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def readinto(self, buffer: Any) -> int:
        return self.file.readinto(buffer)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def fileno(self) -> int:
        return self.file.fileno()

    def close(self) -> None:
        self.file.close()
        super().close()


class _Disk:
    """Where the spools go: each on a disk with ``room`` bytes left when it is opened."""

    def __init__(self) -> None:
        self.room = 1 << 40
        self.opened: list[_FillingDisk] = []

    def open_anonymous(self, directory: Path) -> tuple[io.BufferedRandom, bool]:
        raw = _FillingDisk(directory, self.room)
        self.opened.append(raw)
        return io.BufferedRandom(raw), False

    def all_closed(self) -> bool:
        return bool(self.opened) and all(raw.closed for raw in self.opened)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> _Disk:
    spools = _Disk()
    monkeypatch.setattr(receiving, "open_anonymous", spools.open_anonymous)
    monkeypatch.setattr(stow_part, "open_anonymous", spools.open_anonymous)
    return spools


def _store_over(tmp_path: Path, max_pdu: int) -> tuple[list[str], str | None, int]:
    """One C-STORE of a 96 KiB data set received as the DUL does (spooled past 4 KiB), then
    answered by the guarded handler: (the DUL events it queued, the status answered, the
    objects kept plus the instances indexed)."""
    raw = data_set(96 * 1024)
    engine = create_index_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    schema.upgrade(engine)
    assoc = acceptor(tmp_path / "spool", SecondaryCaptureImageStorage)
    request = C_STORE()
    request.MessageID, request.AffectedSOPClassUID, request.Priority = 1, \
        SecondaryCaptureImageStorage, 0
    request.AffectedSOPInstanceUID, request.DataSet = SOP_INSTANCE, io.BytesIO(raw)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    events: list[str] = []
    for pdata in message.encode_msg(1, max_pdu):
        assoc.dimse.receive_primitive(pdata)
        events += dul_events(assoc)
    status = None
    store = MemoryStore()
    if not assoc.dimse.msg_queue.empty():
        _, received = assoc.dimse.msg_queue.get_nowait()
        event = SimpleNamespace(assoc=assoc, request=received,
                                context=SimpleNamespace(
                                    transfer_syntax=ExplicitVRLittleEndian,
                                    abstract_syntax=SecondaryCaptureImageStorage))
        answer = guarded(handle_store, "C-STORE", STATUS["C-STORE"])(
            event, store, SqlIndex(engine), Policy("MIMIC"))
        status = f"0x{int(getattr(answer, 'Status', answer)):04X}"
    with engine.connect() as conn:
        indexed = conn.exec_driver_sql("SELECT count(*) FROM instances").scalar_one()
    engine.dispose()
    return events, status, len(list(store.iter_keys())) + indexed


def test_a_spool_with_room_stores(tmp_path: Path, disk: _Disk) -> None:
    assert _store_over(tmp_path, 16384) == ([], "0x0000", 2)  # the object, its row
    assert disk.all_closed()


@pytest.mark.parametrize("max_pdu", [4096, 16384])
def test_a_full_disk_is_out_of_resources_not_an_abort(
    tmp_path: Path, disk: _Disk, max_pdu: int
) -> None:
    """No room at all: the first flush fails, some of it still buffered (every fragment of
    a 4 KiB PDU is); closing the spool then fails too."""
    disk.room = 0
    events, status, kept = _store_over(tmp_path, max_pdu)
    assert events == []  # no A-ABORT: the association goes on
    assert status == "0xA700"
    assert kept == 0  # nothing stored, nothing indexed
    assert disk.all_closed()


def test_a_disk_full_at_the_last_bytes_is_out_of_resources(
    tmp_path: Path, disk: _Disk
) -> None:
    """Room for all but the last 100 bytes, which are still in the write buffer as the
    data set ends: the flush at its end fails."""
    disk.room = len(FILE_META) + len(data_set(96 * 1024)) - 100
    events, status, kept = _store_over(tmp_path, 4096)
    assert events == []
    assert status == "0xA700"
    assert kept == 0
    assert disk.all_closed()


def _part(tmp_path: Path, data: bytes) -> ReceivedPart:
    part = ReceivedPart({"content-type": "application/dicom"}, 1 << 30, tmp_path / "spool",
                        in_memory=1024)
    for start in range(0, len(data), 1000):
        part.write(memoryview(data[start:start + 1000]))
    part.end()
    return part


@pytest.mark.parametrize("short", [None, 100], ids=["no-room", "last-bytes"])
def test_a_stow_part_on_a_full_disk_is_out_of_resources(
    tmp_path: Path, disk: _Disk, short: int | None
) -> None:
    data = FILE_META + data_set(96 * 1024)
    disk.room = 0 if short is None else len(data) - short
    part = _part(tmp_path, data)
    with pytest.raises(OutOfResources):
        part.received()
    part.close()
    assert disk.all_closed()
