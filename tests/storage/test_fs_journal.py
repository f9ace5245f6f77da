"""The start-up warning for an object directory on ext4 without a journal: what the kernel
says about the directory's device, read from a /sys and /proc made for each case, from a
real pair of loop-mounted file systems where this machine lets us mount, and the warning
as the server logs it."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mimic_server.backends import open_object_store
from mimic_server.config import Settings
from mimic_server.storage.fs_journal import without_journal


def _kernel(tmp_path: Path, directory: Path, *, device: str = "vdz",
            journal_task: str | None = None, jbd2: list[str] | None = None,
            ext4: bool = True) -> tuple[Path, Path]:
    """A /sys and a /proc that say what the case needs about ``directory``'s device."""
    sys_root, proc_root = tmp_path / "sys", tmp_path / "proc"
    st = os.stat(directory)
    block = sys_root / "dev" / "block"
    block.mkdir(parents=True)
    (block / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}").symlink_to(
        f"../../devices/virtual/block/{device}")
    if ext4:
        (sys_root / "fs" / "ext4" / device).mkdir(parents=True)
        if journal_task is not None:
            (sys_root / "fs" / "ext4" / device / "journal_task").write_text(journal_task + "\n")
    if jbd2 is not None:
        (proc_root / "fs" / "jbd2").mkdir(parents=True)
        for name in jbd2:
            (proc_root / "fs" / "jbd2" / name).mkdir()
    return sys_root, proc_root


@pytest.mark.parametrize(("journal_task", "jbd2", "expected"), [
    ("<none>", None, True),            # the journal thread's file says there is none
    ("10293", None, False),            # a journal thread's pid
    (None, ["vdz-8"], False),          # an older kernel: the journal listed under jbd2
    (None, ["vdzz-8", "vda-8"], True),  # others' journals only (vdzz is not vdz)
    (None, [], True),
    (None, None, False),               # nothing readable to judge by: no warning
])
def test_the_journal_is_read_from_what_the_kernel_says(
    tmp_path: Path, journal_task: str | None, jbd2: list[str] | None, expected: bool
) -> None:
    directory = tmp_path / "objects"
    directory.mkdir()
    sys_root, proc_root = _kernel(tmp_path, directory, journal_task=journal_task, jbd2=jbd2)
    assert without_journal(directory, sys_root, proc_root) is expected


def test_another_file_system_or_no_block_device_is_not_judged(tmp_path: Path) -> None:
    directory = tmp_path / "objects"
    directory.mkdir()
    sys_root, proc_root = _kernel(tmp_path, directory, ext4=False, jbd2=[])
    assert without_journal(directory, sys_root, proc_root) is False
    shutil.rmtree(sys_root / "dev")  # tmpfs, overlay, btrfs: no /sys/dev/block entry
    assert without_journal(directory, sys_root, proc_root) is False
    assert without_journal(tmp_path / "missing", sys_root, proc_root) is False


def _mounted(image: Path, mount_point: Path, *mkfs_options: str) -> bool:
    subprocess.run(["truncate", "-s", "32M", str(image)], check=True)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", *mkfs_options, str(image)],
                          capture_output=True, check=False)
    mount_point.mkdir()
    return made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop", str(image), str(mount_point)],
        capture_output=True, check=False).returncode == 0


def test_real_ext4_with_and_without_a_journal(tmp_path: Path) -> None:
    """Where loop mounts are allowed (CI runs as root), the kernel's own answer."""
    if shutil.which("mkfs.ext4") is None or os.geteuid() != 0:
        pytest.skip("needs mkfs.ext4 and root for loop mounts")
    journalled, bare = tmp_path / "journalled", tmp_path / "bare"
    mounted = []
    try:
        for point, options in ((journalled, ()), (bare, ("-O", "^has_journal"))):
            if not _mounted(tmp_path / f"{point.name}.img", point, *options):
                pytest.skip("this machine does not allow loop mounts")
            mounted.append(point)
        assert without_journal(journalled) is False
        assert without_journal(bare) is True
    finally:
        for point in mounted:
            subprocess.run(["umount", str(point)], check=False)


@pytest.mark.parametrize("bare", [True, False])
def test_the_server_says_so_at_start_without_patient_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    bare: bool,
) -> None:
    monkeypatch.setattr("mimic_server.backends.without_journal", lambda directory: bare)
    settings = Settings(data_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="mimic_server.backends"):
        open_object_store(settings).close()  # type: ignore[attr-defined]
        open_object_store(settings, warn=False).close()  # type: ignore[attr-defined]
    warnings = [r for r in caplog.records if "without a journal" in r.getMessage()]
    assert len(warnings) == (1 if bare else 0)
    if bare:
        assert "e2fsck" in warnings[0].getMessage()
        assert warnings[0].objects == str(settings.objects_dir)  # type: ignore[attr-defined]

