"""Whether the object directory lies on an ext2/ext3/ext4 file system without a journal.

Such a file system is left inconsistent by a crash or a power loss until ``e2fsck`` repairs
it. A put renames its temporary file into place: on a journalled file system the rename is
one atomic metadata change, but without a journal the disk may hold the object's new name
while the temporary directory still holds the old one, two names for one inode whose link
count says one. The store's sweep at start then unlinks the temporary name and frees the
inode of an object acknowledged just before the crash. No order of writes and fsyncs in
the put avoids that (the temporary name's removal is not made durable by anything the put
waits for); a file system check before start does. The server says so at start.

The kernel tells, without privileges: ``stat`` gives the directory's device, whose name
``/sys/dev/block/MAJOR:MINOR`` links to; ``/sys/fs/ext4/NAME/journal_task`` is the journal
thread's pid, or ``<none>`` (kernels without that file: ``/proc/fs/jbd2/NAME-*`` lists a
journal). Anything else (another file system, no block device, unreadable) is not
reported: the warning is advice, never a refusal.
"""

from __future__ import annotations

import os
from pathlib import Path

SYS = Path("/sys")
PROC = Path("/proc")


def without_journal(directory: Path, sys_root: Path = SYS, proc_root: Path = PROC) -> bool:
    """True when ``directory`` is on a file system of the ext4 driver that has no journal."""
    try:
        device = os.stat(directory).st_dev
        link = os.readlink(sys_root / "dev" / "block" / f"{os.major(device)}:{os.minor(device)}")
    except OSError:
        return False  # no block device (tmpfs, overlay, btrfs, NFS): not ours to judge
    name = os.path.basename(link)
    ext4 = sys_root / "fs" / "ext4" / name
    if not ext4.is_dir():
        return False
    try:
        return (ext4 / "journal_task").read_text().strip() == "<none>"
    except OSError:
        pass
    jbd2 = proc_root / "fs" / "jbd2"
    try:
        return not any(entry.startswith(name + "-") for entry in os.listdir(jbd2))
    except OSError:
        return False
