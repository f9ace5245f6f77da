"""The file store's spare temporary files: taken by puts, made ahead, swept at start."""

from __future__ import annotations

import time
from pathlib import Path

from mimic_server.storage.filesystem import FilesystemStore


def _incoming(root: Path) -> list[Path]:
    return list((root / ".incoming").iterdir())


def _wait_for_spares(root: Path, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(_incoming(root)) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def _settled(store: FilesystemStore) -> None:
    deadline = time.monotonic() + 10
    while store._refilling and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not store._refilling


def test_puts_use_spares_made_ahead(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = FilesystemStore(root, spare_files=4)
    for n in range(10):
        store.put(f"a/{n}.dcm", [b"x" * n, memoryview(b"yz")], "0" * 64)
        _wait_for_spares(root, 2)
    for n in range(10):
        with store.open(f"a/{n}.dcm") as fh:
            assert fh.read() == b"x" * n + b"yz"  # a spare holds nothing of its own
    _settled(store)
    spares = _incoming(root)
    assert 1 <= len(spares) <= 4 and all(p.stat().st_size == 0 for p in spares)
    assert sorted(store.iter_keys()) == sorted(f"a/{n}.dcm" for n in range(10))


def test_spares_are_swept_at_start(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = FilesystemStore(root, spare_files=4)
    store.put("a/1.dcm", [b"data"], "0" * 64)
    _settled(store)
    assert _incoming(root)
    FilesystemStore(root)
    assert not _incoming(root)
    assert list(FilesystemStore(root, spare_files=0).iter_keys()) == ["a/1.dcm"]


def test_without_spares_puts_create_their_own(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = FilesystemStore(root, spare_files=0)
    store.put("a/1.dcm", [b"data"], "0" * 64)
    with store.open("a/1.dcm") as fh:
        assert fh.read() == b"data"
    assert not _incoming(root)


def test_spares_swept_by_another_store_do_not_fail_puts(tmp_path: Path) -> None:
    """`mimic reconcile` opens the same directory (and sweeps .incoming) while the server
    runs: the server's spares vanish, and its puts must still succeed."""
    root = tmp_path / "objects"
    server = FilesystemStore(root, spare_files=4)
    server.put("a/0.dcm", [b"first"], "0" * 64)
    _settled(server)
    assert server._spares
    FilesystemStore(root, spare_files=0)  # sweeps the server's spares away
    for n in range(1, 8):
        server.put(f"a/{n}.dcm", [b"data"], "0" * 64)
    assert sorted(server.iter_keys()) == sorted(f"a/{n}.dcm" for n in range(8))
