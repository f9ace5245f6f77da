"""HTTP refusals of the DICOMweb routes, answered as small JSON documents.

A route raises :class:`WebError`; the app's handler turns it into the response. Messages
are safe for logs and for the client: they never quote a query value (patient data).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class WebError(Exception):
    """A refusal with its HTTP status (and headers such as WWW-Authenticate)."""

    def __init__(
        self, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None
                   ) -> Response:
    return JSONResponse({"status": status, "message": message}, status_code=status,
                        headers=dict(headers or {}))


async def handle_web_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WebError)
    return error_response(exc.status, exc.message, exc.headers)
