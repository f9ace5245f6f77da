"""The association count the workers share, so that ``MIMIC_MAX_ASSOCIATIONS`` stays a total.

A small file mapped by every worker: one 8-byte slot per worker holding its open
associations. A worker that admits an association adds its own count, exact, to the others'
slots, which each worker rewrites whenever it admits one and whenever one of its
connections closes or an association's thread ends (``net/server.py``), not on a timer: an
idle worker never writes. So the limit can be passed by associations admitted in the same
instant by different workers, and an association can be refused for one whose close
another worker is publishing in that instant: the edges are soft by that much (the
admissions and closes in flight at once), never by more. The supervisor zeroes the slot of
a worker that died.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

_SLOT = struct.Struct("<q")


class AssociationTable:
    """``slots`` counters in the file at ``path`` (created, zeroed, by the supervisor)."""

    def __init__(self, path: Path, slots: int, *, create: bool = False) -> None:
        self.path = path
        self.slots = slots
        size = slots * _SLOT.size
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    def publish(self, slot: int, count: int) -> None:
        _SLOT.pack_into(self._map, slot * _SLOT.size, count)

    def others(self, slot: int) -> int:
        return sum(
            _SLOT.unpack_from(self._map, i * _SLOT.size)[0]
            for i in range(self.slots) if i != slot
        )

    def total(self) -> int:
        return sum(_SLOT.unpack_from(self._map, i * _SLOT.size)[0] for i in range(self.slots))

    def admit(self, slot: int, own: int) -> int:
        """Publish this worker's count; the server's total (the admission check's count)."""
        self.publish(slot, own)
        return own + self.others(slot)

    def close(self) -> None:
        self._map.close()
