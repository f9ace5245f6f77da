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

A second row of slots holds the connections each worker *holds* (TLS handshakes in progress
and associations), for the balance of accepts (``net/server.py``): a worker about to accept
a connection while another holds fewer leaves it to that one for a moment. A worker writes
it when its accept loop wakes, after each accept and when an association ends; a worker that
does not accept (not started yet, draining, dead) shows :data:`NOT_ACCEPTING`, so that no
one waits for it.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

_SLOT = struct.Struct("<q")
#: The held count of a worker that does not accept connections.
NOT_ACCEPTING = 1 << 62


class AssociationTable:
    """``slots`` counters in the file at ``path`` (created, zeroed, by the supervisor)."""

    def __init__(self, path: Path, slots: int, *, create: bool = False) -> None:
        self.path = path
        self.slots = slots
        size = 2 * slots * _SLOT.size
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        if create:
            for slot in range(slots):
                self.hold(slot, NOT_ACCEPTING)

    def publish(self, slot: int, count: int) -> None:
        _SLOT.pack_into(self._map, slot * _SLOT.size, count)

    def published(self, slot: int) -> int:
        """The open associations worker ``slot`` last published (read by the supervisor
        for a worker that died: the associations it took with it)."""
        return int(_SLOT.unpack_from(self._map, slot * _SLOT.size)[0])

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

    def hold(self, slot: int, held: int) -> None:
        """The connections worker ``slot`` holds, or :data:`NOT_ACCEPTING`."""
        _SLOT.pack_into(self._map, (self.slots + slot) * _SLOT.size, held)

    def least_held_elsewhere(self, slot: int) -> int:
        """The fewest connections another accepting worker holds (:data:`NOT_ACCEPTING`
        when no other worker accepts)."""
        return min(
            (_SLOT.unpack_from(self._map, (self.slots + i) * _SLOT.size)[0]
             for i in range(self.slots) if i != slot),
            default=NOT_ACCEPTING,
        )

    def close(self) -> None:
        self._map.close()
