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
status, Error Comment and failed sub-operations instead. Without the wrapper,
:func:`answer_of` returns None and the handler's refusals are pynetdicom's ``0xA801``.

A final response whose sub-operations failed (``0xA702`` for a destination that could not be
reached) carries their UIDs in an Identifier's Failed SOP Instance UID List (0008,0058):
PS3.4 C.4.2.1.4.2 requires that list with a status of Failure, Refused, Warning or Cancel
once any sub-operation failed, as pynetdicom's own ``0xA702`` (all sent, all failed) has it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

_ATTRIBUTE = "_mimic_move_answer"
_UNKNOWN = 0xA801


@dataclass
class MoveAnswer:
    """What replaces pynetdicom's 0xA801 in one C-MOVE's final response, if anything."""

    status: int | None = None
    comment: str | None = None
    #: The SOP Instance UIDs of the sub-operations failed with ``status``: their number
    #: is the Number of Failed Sub-operations, they are the Failed SOP Instance UID List.
    failed: list[str] | None = None
    #: Called once if ``status`` replaced an 0xA801 (e.g. to log an unreachable destination).
    on_used: Callable[[], None] | None = None
    #: Whether ``status`` replaced an 0xA801: what the requestor was told, for the audit
    #: trail (``dimse/audited.py``), which pynetdicom gives no other sign of when the
    #: sub-association could not be established (it drops the handler unread).
    used: bool = False


def answer_of(assoc: Any) -> MoveAnswer | None:
    """The current C-MOVE's answer on ``assoc``; None without the wrapper."""
    return getattr(assoc, _ATTRIBUTE, None)


def answering_move_scp(original: Callable[..., None]) -> Callable[..., None]:
    """pynetdicom's C-MOVE service, whose 0xA801 the handler may replace."""

    def _move_scp(self: Any, req: Any, context: Any) -> None:
        answer = MoveAnswer()
        send = self.dimse.send_msg  # per association; DIMSE messages are handled one at a time

        def send_msg(rsp: Any, context_id: int) -> None:
            if rsp.Status == _UNKNOWN and answer.status is not None:
                rsp.Status = answer.status
                rsp.ErrorComment = answer.comment
                if answer.failed is not None:
                    rsp.NumberOfFailedSuboperations = len(answer.failed)
                    rsp.NumberOfCompletedSuboperations = rsp.NumberOfWarningSuboperations = 0
                    if answer.failed:
                        rsp.Identifier = _failed_list(answer.failed, context)
                answer.used = True
                if answer.on_used is not None:
                    answer.on_used()
            send(rsp, context_id)

        with sending_through(self, send_msg, _ATTRIBUTE, answer):
            original(self, req, context)

    return _move_scp


@contextlib.contextmanager
def sending_through(
    scp: Any, send_msg: Callable[[Any, int], None], attribute: str, state: object,
) -> Iterator[None]:
    """The service's DIMSE messages go through ``send_msg`` while one request is answered,
    with ``state`` on the association as ``attribute`` for its handler; the association's
    own ``send_msg`` (``net/observe.py``), if it carried one, is put back after."""
    dimse = scp.dimse
    own = dimse.__dict__.get("send_msg")
    setattr(scp.assoc, attribute, state)
    dimse.send_msg = send_msg
    try:
        yield
    finally:
        if own is None:
            del dimse.send_msg
        else:
            dimse.send_msg = own
        delattr(scp.assoc, attribute)


def _failed_list(uids: list[str], context: Any) -> BytesIO | None:
    """An Identifier of only Failed SOP Instance UID List (0008,0058), encoded in the C-MOVE
    context's transfer syntax (as pynetdicom encodes its own); None if it cannot be (UIDs
    from the index always can): the response still goes, with its counts."""
    identifier = Dataset()
    identifier.FailedSOPInstanceUIDList = uids
    syntax = context.transfer_syntax[0]
    data = encode(identifier, syntax.is_implicit_VR, syntax.is_little_endian,
                  syntax.is_deflated)
    return None if data is None else BytesIO(data)
