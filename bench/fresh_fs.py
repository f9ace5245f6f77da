"""A new ext4 file system for one profiled run: no inodes freed by the runs before it.

Why: on the benchmark VMs the root file system is ext4 without a journal, and there a new
file does not get an inode freed in the last seconds (``recently_deleted``): the search for a
free inode scans past each one. A run made right after the previous run's files were removed
paid up to 1 ms of CPU per object for it (docs/benchmarks.md, "Where the whole machine's CPU
goes"), and which receiver paid depended on the order of the runs. A file system made for the
run and thrown away after it has no recently freed inode and no other run's blocks.

It is journal-less ext4 like those roots, so freshness is the one difference, in a sparse
image on a loop device with direct I/O (its fsyncs reach the disk, its blocks are not cached
twice), inode tables written at ``mkfs`` time (lazy initialisation would leave a kernel
thread writing them during the run). It is a slower disk than the root's all the same: an
object's create, write, fsync, rename and directory fsync took 2.1 ms against 1.4 on the root
(5.4 with a journal), so it serves CPU profiles (``profile_machine.py --fresh-fs``), not
throughput comparisons. Making one needs root, ``mkfs.ext4``, ``losetup`` and loop devices:
:func:`unavailable` says what is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

#: Big enough for the largest run of the benchmarks (400 x 0.5 MB, an index, logs) many
#: times over; the image is sparse, so only what is written takes disk space.
SIZE = 4 << 30
#: Inodes: each object is a file (Orthanc adds two directory levels); 960 small objects.
INODES = 65536
TOOLS = ("mkfs.ext4", "losetup", "mount", "umount")


def unavailable() -> str | None:
    """Why a fresh file system cannot be made here, or None."""
    if os.geteuid() != 0:
        return "making a file system for each run needs root (mount, losetup)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} missing: apt-get install -y e2fsprogs mount"
    if not Path("/dev/loop-control").exists():
        return "no loop devices here (/dev/loop-control is missing)"
    return None


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


@contextlib.contextmanager
def fresh_filesystem(mount_point: Path, size: int = SIZE) -> Iterator[Path]:
    """Make, mount and yield ``mount_point`` on a new ext4; unmount and remove it after.

    The sparse image sits beside the mount point (``<name>.<random>.img``) and goes with it.
    """
    image = mount_point.with_name(f"{mount_point.name}.{uuid.uuid4().hex[:8]}.img")
    mount_point.mkdir(parents=True, exist_ok=False)
    device = ""
    mounted = False
    try:
        with open(image, "xb") as fh:
            fh.truncate(size)
        _run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-N", str(INODES),
             "-E", "lazy_itable_init=0", str(image))
        device = _run("losetup", "--find", "--show", "--direct-io=on", str(image))
        _run("mount", "-t", "ext4", device, str(mount_point))
        mounted = True
        yield mount_point
    finally:
        try:
            if mounted:
                try:
                    _run("umount", str(mount_point))
                except OSError:
                    _run("umount", "--lazy", str(mount_point))  # never leave it mounted
                    raise
        finally:
            if device:
                with contextlib.suppress(OSError):
                    _run("losetup", "--detach", device)
            with contextlib.suppress(FileNotFoundError):
                image.unlink()
            with contextlib.suppress(OSError):
                mount_point.rmdir()
