"""C-MOVE final statuses that pynetdicom's C-MOVE service cannot express on its own.

Verified on pynetdicom 3.0.4 (``QueryRetrieveServiceClass._move_scp``). There a handler that
yields ``(None, None)`` as its destination gets ``0xA801`` *Move Destination unknown*, and a
destination that does not accept the sub-association gets ``0xA801`` too; a handler cannot
refuse before the sub-association with any other status (yielding zero sub-operations means
Success). PS3.4 C.4.2.1.4 wants ``0x0124`` *Not Authorized*, ``0xA900`` / ``0xC000`` for a bad
Identifier, and (Table C.4-2) ``0xA702`` *Unable to perform sub-operations* when none can be
performed.

:func:`install` wraps ``_move_scp`` (the smallest change that keeps pynetdicom's flow): for
the duration of one C-MOVE the association carries a :class:`MoveAnswer`, which the handler
fills; a ``0xA801`` response that pynetdicom is about to send is then given the handler's
status, Error Comment and failed count instead. Without :func:`install`, :func:`answer_of`
returns None and the handler's refusals are pynetdicom's ``0xA801``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom.service_class import QueryRetrieveServiceClass

VERIFIED_ON = "pynetdicom 3.0.4"
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
    """The current C-MOVE's answer on ``assoc``; None without :func:`install`."""
    return getattr(assoc, _ATTRIBUTE, None)


def install() -> None:
    """Wrap pynetdicom's C-MOVE service once per process."""
    original = QueryRetrieveServiceClass._move_scp
    if getattr(original, "_mimic_move_answer", False):
        return

    def _move_scp(self: QueryRetrieveServiceClass, req: Any, context: Any) -> None:
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

        setattr(self.assoc, _ATTRIBUTE, answer)
        dimse.send_msg = send_msg  # type: ignore[method-assign]
        try:
            original(self, req, context)
        finally:
            del dimse.send_msg
            delattr(self.assoc, _ATTRIBUTE)

    _move_scp._mimic_move_answer = True  # type: ignore[attr-defined]
    QueryRetrieveServiceClass._move_scp = _move_scp  # type: ignore[method-assign]
