"""An unexpected exception in a DIMSE handler: logged at ERROR, answered with a chosen status.

pynetdicom turns a handler's exception into its own failure status and writes the traceback
to its logger, which MIMIC silences (it prints identifiers and PDUs): without this guard a bug
is invisible. The log record names the exception type and where it was raised (module,
function, line of each frame), never its message: pydicom's messages can quote element
values, which may be patient data.

The statuses (conformance.md 2.2.5, 2.4): C-ECHO 0x0110 Processing Failure; C-STORE 0xC211,
C-FIND 0xC311, C-GET 0xC411, C-MOVE 0xC511, the codes pynetdicom answered before, all in the
"Cannot understand / Unable to process" failure range. Not 0xA700: an unexpected exception is
most likely a bug that recurs for the same request, and a transient status would make a
modality retry it for ever.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset

from mimic_server.dimse.get_answer import refuse
from mimic_server.errors import Status
from mimic_server.logs import where

log = logging.getLogger(__name__)

#: pynetdicom's own answer when a C-MOVE handler fails before naming the destination.
_MOVE_BEFORE_DESTINATION = 0xC514


def _log(service: str, status: int, exc: BaseException) -> None:
    log.error(
        "unexpected error in handler",
        extra={
            "service": service, "status": f"0x{status:04X}",
            "error": type(exc).__name__, "where": where(exc),
        },
    )


def _failure(status: int) -> Dataset:
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = "internal error (logged by the archive)"
    return answer


#: Told the service of every unexpected exception (the metrics count them).
OnError = Callable[[str], None]


def _nothing(service: str) -> None:
    """No one counts unexpected errors."""


def guarded(
    handler: Callable[..., Any], service: str, status: int, on_error: OnError = _nothing
) -> Callable[..., Any]:
    """``handler`` (C-ECHO, C-STORE) answering ``status`` on an unexpected exception."""

    @functools.wraps(handler)
    def guard(event: Any, *args: Any) -> Any:
        try:
            return handler(event, *args)
        except Exception as exc:
            _log(service, status, exc)
            on_error(service)
            return status if service == "C-ECHO" else _failure(status)

    return guard


def guarded_stream(
    handler: Callable[..., Iterator[Any]], service: str, status: int, preamble: int,
    on_error: OnError = _nothing,
) -> Callable[..., Iterator[Any]]:
    """A C-FIND / C-GET / C-MOVE handler answering ``status`` on an unexpected exception.

    ``preamble`` is how many protocol yields come before the ``(status, dataset)`` pairs
    (C-FIND 0; C-GET 1: the count; C-MOVE 2: the destination, the count); the missing ones
    are supplied before the failure. A C-MOVE that fails before naming its destination cannot
    answer a status of its own: pynetdicom answers 0xC514, logged here as such.
    """

    @functools.wraps(handler)
    def guard(event: Any, *args: Any) -> Iterator[Any]:
        yielded = 0
        try:
            for item in handler(event, *args):
                yield item
                yielded += 1
        except Exception as exc:
            on_error(service)
            if service == "C-MOVE" and yielded == 0:
                _log(service, _MOVE_BEFORE_DESTINATION, exc)
                # pynetdicom logs what it catches: a message without values.
                raise RuntimeError("unexpected error in the C-MOVE handler") from None
            _log(service, status, exc)
            if yielded < preamble:
                if service == "C-GET":  # no sub-operation existed: answered without counts
                    refuse(event.assoc)
                yield 1  # the number of sub-operations, before the failure
            yield _failure(status), None

    return guard


STATUS = {
    "C-ECHO": Status.PROCESSING_FAILURE,
    "C-STORE": Status.STORE_UNEXPECTED,
    "C-FIND": Status.FIND_UNEXPECTED,
    "C-GET": Status.GET_UNEXPECTED,
    "C-MOVE": Status.MOVE_UNEXPECTED,
}
