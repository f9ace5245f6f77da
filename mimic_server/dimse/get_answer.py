"""A C-GET refused before any sub-operation, answered without sub-operation counts.

pynetdicom's ``QueryRetrieveServiceClass._get_scp`` has no way for a handler to refuse a
C-GET: yielding zero sub-operations means Success, so a refusal announces one and then yields
its failure status, and pynetdicom answers that status with Number of Failed Sub-operations 1
and an Identifier whose Failed SOP Instance UID List is empty, though no sub-operation
existed. PS3.4 C.4.3.1.3.1 asks for the counts and the list when sub-operations were
performed; a refused C-MOVE (``move_answer``) carries neither.

The fence (``mimic_server/patches.py``) wraps ``_get_scp`` with :func:`answering_get_scp`:
for the duration of one C-GET the association carries a :class:`GetRefusal`, which the
handler marks when it refuses; the final C-GET response then goes without counts and without
an Identifier. Without the wrapper :func:`refusal_of` returns None and the refusal is
pynetdicom's (Failed 1, an empty list).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom.dimse_primitives import C_GET

from mimic_server.dimse.move_answer import sending_through

_ATTRIBUTE = "_mimic_get_refusal"
_PENDING = frozenset({0xFF00, 0xFF01})


@dataclass
class GetRefusal:
    """Whether the C-GET being answered was refused before any sub-operation."""

    refused: bool = False


def refusal_of(assoc: Any) -> GetRefusal | None:
    """The current C-GET's refusal mark on ``assoc``; None without the wrapper."""
    return getattr(assoc, _ATTRIBUTE, None)


def refuse(assoc: Any) -> None:
    """Mark the current C-GET on ``assoc`` refused before any sub-operation (if wrapped)."""
    refusal = refusal_of(assoc)
    if refusal is not None:
        refusal.refused = True


def answering_get_scp(original: Callable[..., None]) -> Callable[..., None]:
    """pynetdicom's C-GET service, whose final answer to a refusal carries no counts."""

    def _get_scp(self: Any, req: Any, context: Any) -> None:
        refusal = GetRefusal()
        send = self.dimse.send_msg  # per association; the C-STOREs of the C-GET go through it too

        def send_msg(primitive: Any, context_id: int) -> None:
            if refusal.refused and type(primitive) is C_GET and (
                    primitive.Status not in _PENDING):
                primitive.NumberOfRemainingSuboperations = None
                primitive.NumberOfCompletedSuboperations = None
                primitive.NumberOfFailedSuboperations = None
                primitive.NumberOfWarningSuboperations = None
                primitive.Identifier = None
            send(primitive, context_id)

        with sending_through(self, send_msg, _ATTRIBUTE, refusal):
            original(self, req, context)

    return _get_scp
