"""The DUL's two P-DATA actions, taught to write a whole DIMSE message at once.

pynetdicom sends a message as one P-DATA primitive per PDU: each goes through the DUL's
queue, wakes its thread, runs the state machine's action (DT-1 in Sta6, AR-7 in Sta8), is
encoded by ``P_DATA_TF`` and written by its own ``send``. A C-STORE sub-operation of a
0.5 MB CT image to a peer that takes 16 KiB PDUs (dcmtk's default) is 33 such turns, which
made a C-GET of large objects 2-2.5x slower than Orthanc's (``docs/benchmarks.md``).
``codec/command_set.direct_response_sender`` encodes the messages it builds into one
:class:`~mimic_server.codec.command_set.EncodedPData`; the actions here write its bytes in
one ``send`` and give every other primitive to pynetdicom's own steps, which they repeat
(``P_DATA_TF`` of the primitive, ``DULServiceProvider._send``). Applied by the fence
(``mimic_server/patches.py``, ``pdata-batches``), which pins both actions' source and the
``_send`` whose ``EVT_PDU_SENT`` a batch does not trigger (the sender only batches where
nothing is bound to that event).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.pdu import P_DATA_TF

from mimic_server.codec.command_set import EncodedPData

#: pynetdicom's logger, whose warning a closed connection gets, as from ``_send``.
LOGGER = logging.getLogger("pynetdicom.dul")


def sending_batches(next_state: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """A replacement of the action (DT-1: ``Sta6``, AR-7: ``Sta8``) that sends the P-DATA
    primitive first in the DUL's queue: an :class:`EncodedPData` in one write, any other as
    the action it replaces does."""

    def make(original: Callable[..., str]) -> Callable[..., str]:
        def action(dul: Any) -> str:
            primitive = dul.to_provider_queue.get(False)
            if isinstance(primitive, EncodedPData):
                if dul.socket is not None:
                    write(dul.socket, primitive.encoded)
                else:
                    LOGGER.warning("Attempted to send data over closed connection")
            else:
                dul._send(P_DATA_TF(primitive))
            return next_state

        action.__doc__ = original.__doc__
        return action

    return make


def write(transport: Any, data: bytes) -> None:
    """``AssociationSocket.send`` (pinned by the fence) without its copy of what is left
    after each partial write: a batch is a whole message (up to 8 MiB held whole), and a
    socket with a timeout, as pynetdicom's are, takes it a part at a time. Each ``send``
    has the socket's timeout, as pynetdicom's have; a failure is the transport's Evt17."""
    try:
        rest = memoryview(data)
        while rest:
            rest = rest[transport.socket.send(rest):]
        evt.trigger(transport.assoc, evt.EVT_DATA_SENT, {"data": data})
    except Exception:
        transport.event_queue.put("Evt17")  # Transport connection closed
