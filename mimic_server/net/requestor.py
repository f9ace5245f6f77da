"""A requestor association's responses reach the thread that waits for them.

pynetdicom runs each association in a thread of its own (``Association._run_reactor``) that
takes any DIMSE message off the association's queue, to serve a peer's request. A thread that
sends a request (``send_c_store``, ``send_c_find``...) first pauses it: it clears
``_reactor_checkpoint``, waits until ``_is_paused``, sends, then waits for the response on the
same queue. But the association thread sets ``_is_paused`` *before* its
``_reactor_checkpoint.wait()`` and clears it only after that wait has returned, so for a moment
after it has passed the checkpoint it still reads as paused. A sender that clears the
checkpoint in that moment goes on; if the association thread then loses the CPU (another
thread holds the GIL) until the response has arrived, it takes the response off the queue,
logs "Received unexpected C-STORE service message" and drops it. The sender waits out its
DIMSE timeout and aborts the association (pynetdicom issue 875). Measured here (ad-hoc runs,
four busy threads in the requesting process): 3 of 1,000 and 11 of 2,000 C-FIND exchanges
with ``mimic serve`` lost a response, and one C-STORE in 374 to dcmtk ``storescp``.

MIMIC is a requestor for C-MOVE: each sub-association to a Move Destination sends C-STOREs
this way, in a process whose other associations keep the GIL busy. :func:`keep_responses`
makes the association thread's look at the queue and the sender's clear of the checkpoint
exclude each other: the look takes a message only while the checkpoint is set, under a lock
that the clear takes too. Once ``clear()`` has returned, no look is under way and none takes
a message until the sender sets the checkpoint again (pynetdicom does, once it has its final
response). The fence (``mimic_server/patches.py``, ``requestor-responses``) applies it only
where the pynetdicom code it relies on is the verified one.
"""

from __future__ import annotations

import threading
from typing import Any

from pynetdicom.dimse import DIMSEServiceProvider


class _GuardedCheckpoint(threading.Event):
    """``Association._reactor_checkpoint`` whose ``clear`` waits for a look in progress."""

    def __init__(self) -> None:
        super().__init__()
        self.looking = threading.Lock()

    def clear(self) -> None:
        with self.looking:
            super().clear()


class _GuardedDIMSE(DIMSEServiceProvider):
    """The association thread's look at the queue, taken only while nobody paused it."""

    def get_msg(self, block: bool = False) -> Any:
        if block:  # a sender's own wait for its response
            return super().get_msg(block=True)
        checkpoint: _GuardedCheckpoint = self.assoc._reactor_checkpoint  # keep_responses'
        with checkpoint.looking:
            if not checkpoint.is_set():
                return None, None  # a sender paused the reactor: the message is its own
            return super().get_msg(block=False)


def keep_responses(assoc: Any) -> None:
    """Guard a requestor association whose association thread is not running a request: from
    an ``EVT_ESTABLISHED`` handler (run by ``AE.associate`` before it starts that thread), or
    once ``associate`` has returned and before the first request."""
    if type(assoc.dimse) is not DIMSEServiceProvider:
        return  # already guarded, or another class MIMIC does not know
    checkpoint = _GuardedCheckpoint()
    if assoc._reactor_checkpoint.is_set():
        checkpoint.set()
    assoc._reactor_checkpoint = checkpoint
    assoc.dimse.__class__ = _GuardedDIMSE
