"""The operator console: a Starlette app the `mimic web` composition root mounts at ``/``.

Pages are static files (HTML, JS modules, CSS; no inline script or style); the data comes
from the console's JSON endpoints under ``/console/api/``, each behind the session check
(:mod:`.auth`), and images from the DICOMweb routes (rendered frames and thumbnails, with
the same session). Searches travel in POST bodies: no patient data in any URL.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mimic_server.errors import MimicError, QueryError
from mimic_server.security import audit
from mimic_server.security.audit import AuditFilter, event_selector
from mimic_server.web.console import auth, modalities
from mimic_server.web.console.access import ConsoleUser, Right
from mimic_server.web.console.context import ConsoleContext
from mimic_server.web.console.gate import Refused
from mimic_server.web.console.headers import HeadersIfAbsent, SecurityHeaders
from mimic_server.web.console.studies import SearchError

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_AUDIT_RECORDS = 500
#: A console request body (a search form, a filter) is a few hundred bytes.
MAX_BODY_BYTES = 64 * 1024
_AUDIT_FIELDS = ("time", "event", "event_name", "event_type", "outcome", "identity",
                 "trust_name", "calling_ae", "user", "studies")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


#: What a page's source may raise when it is down: the certificate source (Key Vault
#: unreachable or refusing: ConfigurationError), the index or the audit table (SQLAlchemy,
#: which ``read_index`` passes on as it is) or the audit file (OSError).
SOURCE_DOWN = (MimicError, SQLAlchemyError, OSError)


def _unavailable(what: str, exc: Exception) -> JSONResponse:
    """503 naming the source that failed, and a WARNING by its type: a source that is down
    is not a bug of the console. Left to ``UnexpectedErrors`` it was a 500 "Internal Server
    Error" and an ERROR "unexpected error" for a Key Vault or database outage. The message
    of a MimicError is written to be shown (the vault's URL and its answer); SQLAlchemy's
    may quote a statement's values, so only its type is."""
    log.warning("console source unavailable", extra={"source": what,
                                                      "error": type(exc).__name__})
    reason = str(exc) if isinstance(exc, MimicError) else type(exc).__name__
    return _error(503, f"{what} cannot be read now ({reason})")


class _Down(Exception):
    """A page's source that did not answer: which one, and its error."""

    def __init__(self, source: str, error: Exception) -> None:
        super().__init__(source)
        self.source = source
        self.error = error


class BadBody(Exception):
    """A console POST body refused (its message is safe to show)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    """A JSON number as a float, refused past a float's range (1e999 is Infinity)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number past a float's range")
    return value


async def _json_body(request: Request) -> dict[str, Any]:
    """The body's JSON object ({} for none): at most :data:`MAX_BODY_BYTES`, read as it
    comes, and plain JSON. Python's parser takes NaN and Infinity (``int()`` of them was a
    500) and recurses into nesting (a 100,000-deep list was a RecursionError, a 500 logged
    as a bug); request.json() read a body of any size whole."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadBody(413, f"the body is over {MAX_BODY_BYTES // 1024} KiB")
    if not body.strip():
        return {}
    try:
        value = json.loads(body, parse_constant=_not_a_number, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        raise BadBody(400, "the body is not JSON") from exc
    if not isinstance(value, dict):
        raise BadBody(400, "the body must be a JSON object")
    return value


def build_console(ctx: ConsoleContext) -> HeadersIfAbsent:
    signin = auth.routes(ctx)

    @auth.guard(ctx, Right.STUDIES, page=True)
    async def index(request: Request, user: ConsoleUser) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def signed_out(request: Request) -> Response:
        # Where the issuer sends the browser back after its own sign-out; or, straight from
        # /auth/logout, with ?issuer=unreachable when the issuer's session could not be
        # ended: that page says so, as the user may have to close the browser.
        page = "signed-out-issuer-unreachable.html" \
            if request.query_params.get("issuer") == "unreachable" else "signed-out.html"
        return FileResponse(STATIC / page, media_type="text/html")

    @auth.guard(ctx, Right.STUDIES)
    async def me(request: Request, user: ConsoleUser) -> Response:
        rights = ctx.roles.rights(user.roles)
        return JSONResponse({"name": user.name, "operator": Right.OPERATE in rights,
                             "expires": user.expires})

    @auth.guard(ctx, Right.STUDIES)
    async def search(request: Request, user: ConsoleUser) -> Response:
        if ctx.studies is None:
            return _error(503, "no index")
        try:
            form = await _json_body(request)
        except BadBody as exc:
            return _error(exc.status, str(exc))
        gate = ctx.query_gate(request) if ctx.query_gate is not None else None
        try:
            result = await anyio.to_thread.run_sync(ctx.studies.search, form, gate)
        except Refused as exc:
            return _error(exc.status, str(exc))
        except (SearchError, QueryError) as exc:
            return _error(400, str(exc))
        except MimicError as exc:
            return _error(503, str(exc))
        return JSONResponse(result)

    @auth.guard(ctx, Right.STUDIES)
    async def study(request: Request, user: ConsoleUser) -> Response:
        if ctx.studies is None:
            return _error(503, "no index")
        try:
            form = await _json_body(request)
        except BadBody as exc:
            return _error(exc.status, str(exc))
        gate = ctx.query_gate(request) if ctx.query_gate is not None else None
        try:
            result = await anyio.to_thread.run_sync(ctx.studies.contents, form.get("study"),
                                                    gate)
        except Refused as exc:
            return _error(exc.status, str(exc))
        except (SearchError, QueryError) as exc:
            return _error(400, str(exc))
        except MimicError as exc:
            return _error(503, str(exc))
        if not result["series"]:
            return _error(404, "no such study")
        return JSONResponse(result)

    @auth.guard(ctx, Right.OPERATE)
    async def trusted(request: Request, user: ConsoleUser) -> Response:
        if ctx.trust is None:
            return _error(503, "no certificate source")
        try:
            rows = await anyio.to_thread.run_sync(_modalities)
        except _Down as down:
            return _unavailable(down.source, down.error)
        return JSONResponse({"modalities": rows})

    def _modalities() -> list[dict[str, Any]]:
        assert ctx.trust is not None
        try:
            view = ctx.trust()
        except SOURCE_DOWN as exc:
            raise _Down("the certificate source", exc) from exc
        try:
            stored = modalities.stored_by_peer(ctx.engine) if ctx.engine is not None else {}
            logins: dict[str, str] = {}
            if ctx.last_logins is not None:
                logins = ctx.last_logins()
            elif ctx.audit_records is not None:
                logins = modalities.last_logins(
                    ctx.audit_records(AuditFilter(event="login"), None))
        except SOURCE_DOWN as exc:
            raise _Down("the index or the audit trail", exc) from exc
        return modalities.describe(view, ctx.policy, stored, logins)

    @auth.guard(ctx, Right.OPERATE)
    async def now(request: Request, user: ConsoleUser) -> Response:
        if ctx.serve_status is None:
            return _error(503, "no `mimic serve` status URL")
        try:
            status = await anyio.to_thread.run_sync(ctx.serve_status)
        except Exception as exc:
            log.warning("mimic serve status unavailable", extra={"error": type(exc).__name__})
            return _error(502, f"`mimic serve` status unavailable ({type(exc).__name__})")
        return JSONResponse(status)

    @auth.guard(ctx, Right.OPERATE)
    async def audit_trail(request: Request, user: ConsoleUser) -> Response:
        if ctx.audit_records is None:
            return _error(503, "no audit trail")
        try:
            form = await _json_body(request)
        except BadBody as exc:
            return _error(exc.status, str(exc))
        try:
            selection = _audit_filter(form)
        except ValueError as exc:
            return _error(400, str(exc))
        # One more than shown, to say whether there are more: the trail is read newest
        # first and no further (it may be hundreds of MiB).
        try:
            records = await anyio.to_thread.run_sync(ctx.audit_records, selection,
                                                     MAX_AUDIT_RECORDS + 1)
        except SOURCE_DOWN as exc:
            return _unavailable("the audit trail", exc)
        newest = records[:MAX_AUDIT_RECORDS]
        if ctx.audit_log is not None:  # reading the trail is itself audited (PS3.15 A.5.3.2)
            shown = selection.describe()
            await anyio.to_thread.run_sync(functools.partial(
                ctx.audit_log.record, audit.AUDIT_LOG_USED, audit.SUCCESS,
                identity="web console", user=user.name, audit_log=ctx.audit_uri,
                peer=request.client.host if request.client else "", filter=shown))
        return JSONResponse({
            "records": [{k: r.get(k) for k in _AUDIT_FIELDS} for r in newest],
            "more": len(records) > MAX_AUDIT_RECORDS,
        })

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/signed-out", signed_out, methods=["GET"]),
        Route("/auth/login", signin["login"], methods=["GET"]),
        Route("/auth/callback", signin["callback"], methods=["GET"], name="auth_callback"),
        Route("/auth/logout", signin["logout"], methods=["POST"]),
        Route("/console/api/me", me, methods=["GET"]),
        Route("/console/api/studies", search, methods=["POST"]),
        Route("/console/api/study", study, methods=["POST"]),
        Route("/console/api/modalities", trusted, methods=["GET"]),
        Route("/console/api/now", now, methods=["GET"]),
        Route("/console/api/audit", audit_trail, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return SecurityHeaders(Starlette(routes=routes))


def _audit_filter(form: dict[str, Any]) -> AuditFilter:
    def text(name: str) -> str | None:
        value = form.get(name)
        if value in (None, ""):
            return None
        if not isinstance(value, str) or len(value) > 128 or not value.isprintable():
            raise ValueError(f"{name} must be printable text")
        return value.strip()

    def when(name: str) -> datetime | None:
        value = text(name)
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"{name} must be an ISO 8601 time") from exc
        return parsed if parsed.tzinfo else parsed.astimezone()

    event = text("event")
    # A mistyped event (``Qurey``, ``query``) selected nothing: an empty page read as "no
    # such event in the trail". The CLI's selector: any case, else 400 naming the events.
    return AuditFilter(since=when("since"),
                       event=event_selector(event) if event is not None else None,
                       identity=text("identity"), study=text("study"), until=when("until"))
