"""Back-pressure for long streams of pending responses (C-FIND matches).

pynetdicom's DUL reactor either sends one queued primitive *or* reads the socket on each
turn of its loop, sending first. A handler that queues answers faster than the reactor writes
them keeps the outgoing queue non-empty for the whole stream, so a C-CANCEL from the peer is
read only after the last match has been queued: cancel never works, and every answer of a
large result sits in memory at once. Pausing the producer until the queue has drained, every
so often, bounds that memory and gives the reactor its turn to read an incoming C-CANCEL.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pynetdicom.association import Association

#: Queued primitives (a pending response is one or two P-DATA) before the producer waits.
HIGH_WATER = 32
#: Longest pause for one drain; a peer that stops reading is the network timeout's business.
DRAIN_DEADLINE = 5.0


def let_the_reactor_breathe(assoc: Association) -> None:
    """Wait, if the outgoing queue is past its high-water mark, until it has drained."""
    outgoing = assoc.dul.to_provider_queue
    if outgoing.qsize() < HIGH_WATER:
        return
    deadline = time.monotonic() + DRAIN_DEADLINE
    while outgoing.qsize() and time.monotonic() < deadline and assoc.is_established:
        time.sleep(0.0005)
    # One reactor turn with nothing to send: it reads whatever the peer has sent meanwhile.
    time.sleep(0.001)
