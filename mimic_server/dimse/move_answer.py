"""C-MOVE final statuses that pynetdicom's C-MOVE service cannot express on its own.

In pynetdicom's ``QueryRetrieveServiceClass._move_scp`` a handler that
yields ``(None, None)`` as its destination gets ``0xA801`` *Move Destination unknown*, and a
destination that does not accept the sub-association gets ``0xA801`` too; a handler cannot
refuse before the sub-association with any other status (yielding zero sub-operations means
Success). PS3.4 C.4.2.1.4 wants ``0x0124`` *Not Authorized*, ``0xA900`` / ``0xC000`` for a bad
Identifier, and (Table C.4-2) ``0xA702`` *Unable to perform sub-operations* when none can be
performed.

The fence (``mimic_server/patches.py``) wraps ``_move_scp`` with :func:`answering_move_scp`
(the smallest change that keeps pynetdicom's flow): for
the duration of one C-MOVE the association carries a :class:`MoveAnswer`, which the handler
fills; a ``0xA801`` response that pynetdicom is about to send is then given the handler's
status, Error Comment and failed count instead. Without the wrapper, :func:`answer_of`
returns None and the handler's refusals are pynetdicom's ``0xA801``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_ATTRIBUTE = "_mimic_move_answer"
_UNKNOWN = 0xA801


@dataclass
class MoveAnswer:
    """What replaces pynetdicom's 0xA801 in one C-MOVE's final response, if anything."""

    status: int | None = None
    comment: str | None = None
    #: Number of Failed Sub-operations to report with ``status``.
    failed: int | None = None
    #: Called once if ``status`` replaced an 0xA801 (e.g. to log an unreachable destination).
    on_used: Callable[[], None] | None = None


def answer_of(assoc: Any) -> MoveAnswer | None:
    """The current C-MOVE's answer on ``assoc``; None without the wrapper."""
    return getattr(assoc, _ATTRIBUTE, None)


def answering_move_scp(original: Callable[..., None]) -> Callable[..., None]:
    """pynetdicom's C-MOVE service, whose 0xA801 the handler may replace."""

    def _move_scp(self: Any, req: Any, context: Any) -> None:
        answer = MoveAnswer()
        dimse = self.dimse
        send = dimse.send_msg  # per association; DIMSE messages are handled one at a time

        def send_msg(rsp: Any, context_id: int) -> None:
            if rsp.Status == _UNKNOWN and answer.status is not None:
                rsp.Status = answer.status
                rsp.ErrorComment = answer.comment
                if answer.failed is not None:
                    rsp.NumberOfFailedSuboperations = answer.failed
                    rsp.NumberOfCompletedSuboperations = rsp.NumberOfWarningSuboperations = 0
                if answer.on_used is not None:
                    answer.on_used()
            send(rsp, context_id)

        # An association may already carry its own send_msg (net/observe.py): put it back.
        own = dimse.__dict__.get("send_msg")
        setattr(self.assoc, _ATTRIBUTE, answer)
        dimse.send_msg = send_msg  # type: ignore[method-assign]
        try:
            original(self, req, context)
        finally:
            if own is None:
                del dimse.send_msg
            else:
                dimse.send_msg = own  # type: ignore[method-assign]
            delattr(self.assoc, _ATTRIBUTE)

    return _move_scp
