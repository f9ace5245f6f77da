"""HTTP refusals of the DICOMweb routes, answered as small JSON documents.

A route raises :class:`WebError`; the app's handler turns it into the response. Messages
are safe for logs and for the client: they never quote a query value (patient data).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mimic_server.logs import where

log = logging.getLogger(__name__)

#: What uvicorn says, at ERROR, of an app that returned with its answer unfinished.
UNFINISHED = "ASGI callable returned without completing response."
#: Set in the request's task when :class:`UnexpectedErrors` leaves an answer unfinished on
#: purpose (:class:`AnswerCut`); uvicorn logs :data:`UNFINISHED` in that same task.
_cut_on_purpose: ContextVar[bool] = ContextVar("mimic_answer_cut_on_purpose", default=False)


class _CutOnPurpose(logging.Filter):
    """Drops uvicorn's :data:`UNFINISHED` line for an answer broken off on purpose: it is
    logged already as the store's ('WADO-RS answer cut off'), and uvicorn's line after it
    read as a bug of the app. Any other unfinished answer keeps it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == UNFINISHED and _cut_on_purpose.get())


_CUT_ON_PURPOSE = _CutOnPurpose()


class WebError(Exception):
    """A refusal with its HTTP status (and headers such as WWW-Authenticate)."""

    def __init__(
        self, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class AnswerCut(Exception):
    """A streamed answer broken off once part of its body has left (its status with it):
    the store failed under an object being sent. Logged where it happened; the connection
    ends with the answer unfinished, so that no client takes what it got for the whole.
    Not a bug: :class:`UnexpectedErrors` does not log it as one."""


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None
                   ) -> Response:
    return JSONResponse({"status": status, "message": message}, status_code=status,
                        headers=dict(headers or {}))


async def handle_web_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WebError)
    return error_response(exc.status, exc.message, exc.headers)


class UnexpectedErrors:
    """The last catch of the web app: an exception no route turned into an answer (a bug)
    is logged at ERROR by its type and frames, never its message, and answered 500.

    Left to Starlette, it was re-raised to uvicorn, which logged its traceback at ERROR
    with the exception's message, and that can quote a request's values: a QIDO-RS match
    value, patient data (invariant 6)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        logging.getLogger("uvicorn.error").addFilter(_CUT_ON_PURPOSE)  # once: same filter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except ClientDisconnect:
            raise  # the client's doing, not a bug: as before
        except AnswerCut:
            # Logged where it was cut. Returning with the answer unfinished, the server
            # ends the connection (uvicorn closes it): the body is never ended as complete.
            if not started:
                await error_response(500, "unexpected error")(scope, receive, send)
            else:
                _cut_on_purpose.set(True)  # this request's task: uvicorn logs in it next
        except Exception as exc:
            log.error("unexpected error answering a request",
                      extra={"error": type(exc).__name__, "where": where(exc),
                             "method": scope.get("method", "")})
            if not started:  # else the answer is cut short: the connection ends with it
                await error_response(500, "unexpected error")(scope, receive, send)
