"""``bench/fresh_fs.py``: a file system made for one benchmark run, and gone after it.

It needs root, ``mkfs.ext4`` and ``losetup`` (the benchmark machines and CI have them); where
they are missing, ``unavailable`` says so and these tests are skipped for that reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import fresh_fs

needs_fresh_fs = pytest.mark.skipif(fresh_fs.unavailable() is not None,
                                    reason=str(fresh_fs.unavailable()))


def _mounts() -> str:
    return Path("/proc/self/mounts").read_text()


@needs_fresh_fs
def test_a_fresh_file_system_is_a_new_ext4_gone_after_the_run(
    tmp_path: Path,
) -> None:
    point = tmp_path / "run"
    with fresh_fs.fresh_filesystem(point) as mounted:
        assert mounted == point
        entry = next(line.split() for line in _mounts().splitlines()
                     if line.split()[1] == str(point))
        assert entry[2] == "ext4" and entry[0].startswith("/dev/loop"), entry
        assert sorted(p.name for p in point.iterdir()) == ["lost+found"]  # nothing else
        (point / "object.dcm").write_bytes(b"x" * 100_000)
        stat = os.statvfs(point)
        assert stat.f_files <= 2 * fresh_fs.INODES  # made with the inode count asked for
        device = entry[0]
    assert str(point) not in _mounts()
    assert not point.exists()
    assert list(tmp_path.iterdir()) == []  # the image went with it
    assert device not in Path("/proc/partitions").read_text().split()  # loop detached


@needs_fresh_fs
def test_the_mount_goes_even_when_the_run_fails(tmp_path: Path) -> None:
    point = tmp_path / "run"
    with pytest.raises(RuntimeError, match="the run failed"), \
            fresh_fs.fresh_filesystem(point):
        (point / "partial").write_bytes(b"y")
        raise RuntimeError("the run failed")
    assert str(point) not in _mounts()
    assert list(tmp_path.iterdir()) == []


def test_without_root_it_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "root" in str(fresh_fs.unavailable())
