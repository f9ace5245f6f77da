"""Sign-in, sign-out and the session check of every console route.

``/auth/login`` starts an authorization code flow with PKCE (:mod:`.oidc`) and keeps its
state, nonce and verifier in a signed cookie that lives ten minutes and is sent only to
``/auth/`` (beside the browser's other sign-ins under way, up to :data:`MAX_PENDING`);
``/auth/callback`` completes the one its ``state`` names and sets the session cookie;
``/auth/logout`` (POST) revokes the session and ends the browser's session at the issuer
too (OpenID Connect RP-Initiated Logout: on to its ``end_session_endpoint``, through a page
that goes there at once, :func:`continue_at_issuer`).
Signing out of the console alone left the issuer's session in place, and on a shared
workstation the next person's "sign in" was answered by the issuer without a question, as
the previous user. Whether or not the issuer's session ended (an issuer without the
endpoint, one that is down, a tab closed at its page), the browser's next sign-in asks for
``prompt=login``: a marker cookie (``SIGNED_OUT_COOKIE``) set at sign-out, until a sign-in
completes. Cookies are HttpOnly, SameSite=Lax (the
issuer's redirect back is a cross-site top-level navigation, which Strict would strip) and
Secure unless the console is reached over plain HTTP on a loopback address (development
and tests).

Each sign-in and each refused one is an audit record (User Authentication, ``login``), like
an association's; the refusal's reason is safe (no token, no code). The calls to the
issuer's token endpoint are limited per peer (:mod:`.exchanges`): past the limit the
callback is answered 429 with Retry-After.
"""

from __future__ import annotations

import functools
import html
import ipaddress
import logging
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)

from mimic_server.config import origin_of
from mimic_server.security import audit
from mimic_server.security.tokens import TokenUser
from mimic_server.web.console.access import ConsoleUser, Right
from mimic_server.web.console.context import ConsoleContext
from mimic_server.web.console.oidc import Pending, SignInRefused
from mimic_server.web.console.sessions import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SIGNED_OUT_COOKIE,
    SessionsUnavailable,
)
from mimic_server.web.dicomweb.errors import WebError

log = logging.getLogger(__name__)

LOGIN_SECONDS = 600
#: Sign-ins one browser may have under way at once (its tabs): each its own state.
MAX_PENDING = 4
#: The most a browser keeps of one cookie, its name and value together (RFC 6265 6.1's
#: minimum, Chromium's and Firefox's maximum): a longer Set-Cookie is dropped without a word.
MAX_COOKIE_BYTES = 4096
SESSION = "session"
LOGIN = "login"
#: How long a sign-out's marker (``SIGNED_OUT_COOKIE``) is kept, at least: a shift, and at
#: least a console session's lifetime. Past it an issuer session that outlived the sign-out
#: (no end_session_endpoint, the issuer down) may sign the browser in without asking again.
SIGNED_OUT_SECONDS = 12 * 3600
#: Where the issuer sends the browser back after its sign-out (post_logout_redirect_uri;
#: Entra ID requires it among the app's registered redirect URIs).
SIGNED_OUT_PATH = "/signed-out"
#: The reason of a callback refused by ``ConsoleContext.token_exchanges`` (one reason, so
#: that its refusals are counted as one per peer and interval).
TOO_MANY_EXCHANGES = "too many sign-ins from this address"
#: Retry-After (seconds) of a request refused because its session could not be checked.
RETRY_AFTER = 5
#: The page of a sign-out the index could not record (``app.STATIC``'s, which imports us).
SIGN_OUT_FAILED_PAGE = Path(__file__).parent / "static" / "sign-out-failed.html"
SESSION_UNCHECKED_PAGE = Path(__file__).parent / "static" / "session-unchecked.html"


def secure_cookies(request: Request) -> bool:
    """Secure unless plain HTTP to a loopback host (where a Secure cookie would be lost)."""
    return request.url.scheme == "https" or not loopback_host(request)


def loopback_host(request: Request) -> bool:
    """Whether the request names ``localhost`` or a loopback address (development, tests)."""
    host = (request.url.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redirect_uri(ctx: ConsoleContext, request: Request) -> str:
    """The registered redirect URI, else this request's own origin's ``/auth/callback``
    (behind a TLS-terminating ingress the request looks like HTTP: set
    ``MIMIC_WEB_OIDC_REDIRECT_URI`` there)."""
    return ctx.redirect_uri or f"{request.url.scheme}://{request.url.netloc}/auth/callback"


def post_logout_redirect_uri(ctx: ConsoleContext, request: Request) -> str:
    """The console's signed-out page as the issuer must name it, under the console's public
    URL: ``MIMIC_WEB_BASE_URL``, else the registered redirect URI's (what is before its
    ``/auth/callback``), else this request's own origin (as :func:`redirect_uri` derives)."""
    if ctx.base_url:
        return ctx.base_url.rstrip("/") + SIGNED_OUT_PATH
    if ctx.redirect_uri:
        parts = urllib.parse.urlsplit(ctx.redirect_uri.strip())
        path = parts.path.rstrip("/")
        prefix = path[:-len("/auth/callback")] if path.endswith("/auth/callback") else ""
        return f"{parts.scheme}://{parts.netloc}{prefix}{SIGNED_OUT_PATH}"
    return f"{request.url.scheme}://{request.url.netloc}{SIGNED_OUT_PATH}"


def current_user(ctx: ConsoleContext, request: Request) -> ConsoleUser | None:
    """The session's user, or None (no cookie, forged, expired, signed out);
    :class:`SessionsUnavailable` when whether it was signed out cannot be read (the index
    does not answer). It may read the index: call it in a worker thread."""
    return _session_user(ctx.signer.open(SESSION, request.cookies.get(SESSION_COOKIE)))


def _session_user(body: dict[str, Any] | None) -> ConsoleUser | None:
    if body is None:
        return None
    roles = body.get("roles")
    if not isinstance(roles, list):
        return None
    return ConsoleUser(str(body.get("sub", "")), str(body.get("name", "")),
                       frozenset(str(r) for r in roles), str(body.get("sid", "")),
                       int(body["exp"]))


def console_user_source(ctx: ConsoleContext) -> Callable[[Request], TokenUser | None]:
    """How the DICOMweb routes recognise a console session (``DicomWebContext.user_sources``):
    the session's user with its roles, which the DICOMweb policy entry maps to services as
    it does a bearer token's. A request with a bearer token is left to the token."""

    def source(request: Request) -> TokenUser | None:
        if request.headers.get("authorization"):
            return None
        try:
            user = current_user(ctx, request)
        except SessionsUnavailable as exc:
            _unchecked(exc)
            raise WebError(503, str(exc), {"Retry-After": str(RETRY_AFTER)}) from exc
        if user is None:
            return None
        return TokenUser(subject=user.subject, name=user.name, roles=user.roles,
                         issuer=ctx.oidc.issuer if ctx.oidc is not None else "")

    return source


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _unchecked(exc: SessionsUnavailable) -> None:
    """A session that could not be checked against the signed-out sessions: a WARNING by
    the error's type (a driver's message may name hosts and users), as the console's other
    sources that are down (``app._unavailable``)."""
    cause = exc.__cause__ or exc
    log.warning("console session cannot be checked", extra={"error": type(cause).__name__})


def _sessions_unavailable(exc: SessionsUnavailable, page: bool) -> Response:
    """503 for a request whose session could not be checked: refused, never served on a
    session that may have been signed out through another replica. A page's navigation
    gets a page (``static/session-unchecked.html``: the console's CSP, no script, a link to
    try again), where the browser showed the JSON answer as raw text; an API call, JSON."""
    _unchecked(exc)
    if page:
        return FileResponse(SESSION_UNCHECKED_PAGE, status_code=503, media_type="text/html",
                            headers={"Retry-After": str(RETRY_AFTER)})
    response = _error(503, str(exc))
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


def guard(
    ctx: ConsoleContext, right: Right, *, page: bool = False,
) -> Callable[[Callable[[Request, ConsoleUser], Awaitable[Response]]],
              Callable[[Request], Awaitable[Response]]]:
    """Wrap a route: 503 when sign-in is not configured, 401 (a page: a redirect to the
    sign-in) without a session, 403 without the right, and for a POST from another origin."""

    def wrap(handler: Callable[[Request, ConsoleUser], Awaitable[Response]]) -> Callable[
        [Request], Awaitable[Response]
    ]:
        async def route(request: Request) -> Response:
            if ctx.oidc is None:
                return _error(503, "console sign-in is not configured (MIMIC_WEB_OIDC_CLIENT_ID)")
            try:
                # In a thread: the check reads the index (a pool's wait, a slow database),
                # which the event loop and every other request on it must not wait for.
                user = await anyio.to_thread.run_sync(current_user, ctx, request)
            except SessionsUnavailable as exc:
                return _sessions_unavailable(exc, page)
            if user is None:
                if page:
                    return RedirectResponse("/auth/login", status_code=303)
                return _error(401, "sign in first")
            if right not in ctx.roles.rights(user.roles):
                await _alert(ctx, request, user, "the user's roles do not grant this route")
                return _error(403, "your roles do not allow this page")
            if request.method == "POST" and not _same_origin(ctx, request):
                await _alert(ctx, request, user, "cross-origin request refused")
                return _error(403, "cross-origin request refused")
            return await handler(request, user)

        return route

    return wrap


def continue_at_issuer(url: str) -> HTMLResponse:
    """The sign-out's answer when the issuer's session is to end too: a page that goes on
    to ``url`` at once (a meta refresh; a link for a browser that does not follow it), not
    a redirect. The sign-out is a form POST from a console page whose CSP says
    ``form-action 'self'``, which browsers apply to every redirect of the form's
    navigation: Chromium refused a 303 to the issuer (and Entra ID's own redirects to a
    federated sign-out would be refused as well). A page's meta refresh is a navigation of
    its own, outside the form's; it needs no script, which the CSP forbids inline."""
    target = html.escape(url, quote=True)
    return HTMLResponse(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"refresh\" content=\"0;url={target}\">\n"
        "<title>MIMIC console: signing out</title>\n<link rel=\"icon\" href=\"data:,\">\n"
        "<link rel=\"stylesheet\" href=\"/static/console.css\">\n</head>\n<body>\n<main>\n"
        "  <h1>Signed out of MIMIC</h1>\n"
        f"  <p><a href=\"{target}\">Continue to sign out of the sign-in service</a></p>\n"
        "</main>\n</body>\n</html>\n")


def _sign_out_failed() -> FileResponse:
    """503 for a sign-out the index could not record, as a page: the sign-out is a form
    POST, a navigation, and the browser showed a JSON answer as raw text. A static page of
    the console's (its CSP, no script), with a form that signs out again: the cookie is
    left to the browser so that the next sign-out records what this one could not. It names
    neither the session nor the user."""
    return FileResponse(SIGN_OUT_FAILED_PAGE, status_code=503, media_type="text/html",
                        headers={"Retry-After": str(RETRY_AFTER)})


def _may_end_issuer_session(ctx: ConsoleContext, request: Request,
                            user: ConsoleUser | None) -> bool:
    """Whether a sign-out goes on to the issuer's end_session_endpoint. Ending the issuer's
    session signs the browser out of every application of that issuer (all of Microsoft
    365 with Entra ID), which another site must not be able to do with a form posted here:
    not when the Origin is another's (and the browser does not say same-origin); with no
    Origin, only for a request that brought a live session (the cookie is SameSite=Lax: a
    cross-site POST does not carry it); with our Origin, also a session that has expired
    meanwhile (its owner's click, whose issuer session outlives it)."""
    origin = request.headers.get("origin")
    same_site_fetch = request.headers.get("sec-fetch-site") == "same-origin"
    if origin is None:
        return user is not None or same_site_fetch
    return origin in _origins(ctx, request) or same_site_fetch


def _same_origin(ctx: ConsoleContext, request: Request) -> bool:
    """A state-changing request must come from the console's own pages: its Origin (which
    browsers send with every POST) must be ours, and a JSON body cannot be sent cross-site
    without a CORS preflight the console never grants.

    Ours is this request's own origin, or the console's public one as configured: behind a
    TLS-terminating ingress (Container Apps) the request arrives as ``http://`` while the
    browser's Origin is ``https://``, and uvicorn trusts X-Forwarded-Proto from loopback
    only. A browser's ``Sec-Fetch-Site: same-origin`` (a header page scripts cannot set)
    says the same whatever the ingress did to the URL."""
    origin = request.headers.get("origin")
    if origin is not None and origin not in _origins(ctx, request) and \
            request.headers.get("sec-fetch-site") != "same-origin":
        return False
    content_type = request.headers.get("content-type", "")
    return content_type.split(";")[0].strip() == "application/json"


def _origins(ctx: ConsoleContext, request: Request) -> set[str]:
    """This request's origin and the configured public ones (base URL, redirect URI)."""
    found = {f"{request.url.scheme}://{request.url.netloc}"}
    for url in (ctx.base_url, ctx.redirect_uri):
        origin = origin_of(url)
        if origin is not None:
            found.add(origin)
    return found


def routes(ctx: ConsoleContext) -> dict[str, Callable[[Request], Awaitable[Response]]]:
    issuer_calls = ctx.issuer_calls

    async def refused(peer: str, reason: str) -> None:
        """A stranger's refused sign-in costs one request: the first of a peer and reason
        in an interval is logged and recorded, the repeats are counted into one line and
        one record at the interval's end (``ctx.sign_in_refusals``), as refused DICOM
        connections are; a WARNING and a record each let anyone grow both at will."""
        counter = ctx.sign_in_refusals
        if counter is not None and not counter.note(peer, reason):
            return
        log.warning("console sign-in refused", extra={"reason": reason, "peer": peer,
                                                      "count": 1})
        await _audit(ctx, audit.MINOR_FAILURE, peer=peer, reason=reason)

    async def login(request: Request) -> Response:
        if ctx.oidc is None:
            return _error(503, "console sign-in is not configured (MIMIC_WEB_OIDC_CLIENT_ID)")
        pending = Pending.new()
        # The first sign-in after a sign-out from this browser: the issuer must ask who it
        # is, not answer from a session of the user who signed out.
        ask = SIGNED_OUT_COOKIE in request.cookies
        try:
            url = await anyio.to_thread.run_sync(
                functools.partial(ctx.oidc.authorization_url, pending,
                                  redirect_uri(ctx, request), ask_credentials=ask),
                limiter=issuer_calls)
        except SignInRefused as exc:
            log.warning("console sign-in cannot start", extra={"reason": str(exc)})
            return _error(502, f"sign-in cannot start: {exc}")
        response = RedirectResponse(url, status_code=303)
        # Beside the browser's other sign-ins under way (another tab's): one cookie held
        # one, and each tab's /auth/login overwrote the last's, whose callback was then
        # refused "the sign-in state does not match" (and the refusal took the cookie with
        # it: every tab of a session that ended together was refused).
        under_way = _pending(ctx.signer.open(LOGIN, request.cookies.get(LOGIN_COOKIE)))
        keep_login(ctx, request, response,
                   [(pending, time.time() + LOGIN_SECONDS), *under_way][:MAX_PENDING])
        return response

    async def callback(request: Request) -> Response:
        if ctx.oidc is None:
            return _error(503, "console sign-in is not configured (MIMIC_WEB_OIDC_CLIENT_ID)")
        peer = request.client.host if request.client else ""
        under_way = _pending(ctx.signer.open(LOGIN, request.cookies.get(LOGIN_COOKIE)))
        params = request.query_params
        state, code = params.get("state", ""), params.get("code", "")
        # This callback's sign-in; the browser's others stay under way, whatever happens.
        this = next((p for p in under_way if p[0].matches(state)), None)
        others = [p for p in under_way if p is not this]
        try:
            if params.get("error"):
                raise SignInRefused(
                    f"the issuer ended the sign-in ({_error_code(params['error'])})")
            if not under_way:
                raise SignInRefused("no sign-in in progress (or it expired)")
            if this is None:
                raise SignInRefused("the sign-in state does not match")
            pending, until = this
            if not ctx.used_logins.first_use(pending.state, until):
                raise SignInRefused("this sign-in was already completed or refused")
            ctx.oidc.check(pending, state, code)
            # Answered here, before the issuer's threads: a flood waits for no issuer call.
            retry_after = ctx.token_exchanges.admit(peer)
            if retry_after is not None:
                await refused(peer, TOO_MANY_EXCHANGES)
                response = _error(429, f"sign-in refused: {TOO_MANY_EXCHANGES}; "
                                       f"try again in {retry_after} s")
                response.headers["Retry-After"] = str(retry_after)
                keep_login(ctx, request, response, others)
                return response
            user = await anyio.to_thread.run_sync(
                ctx.oidc.complete, pending, state, code, redirect_uri(ctx, request),
                limiter=issuer_calls)
        except SignInRefused as exc:
            await refused(peer, str(exc))
            response = _error(400, f"sign-in refused: {exc}")
            keep_login(ctx, request, response, others)
            return response
        rights = ctx.roles.rights(user.roles)
        if not rights:
            log.warning("console sign-in refused", extra={
                "reason": "no console role", "user": user.name, "peer": peer})
            await _audit(ctx, audit.MINOR_FAILURE, peer=peer, user=user.name,
                         reason="no console role")
            response = _error(403, "signed in, but your roles do not include a console role")
            keep_login(ctx, request, response, others)
            return response
        session = {"sub": user.subject, "name": user.name, "roles": sorted(user.roles),
                   "sid": secrets.token_urlsafe(16)}
        sealed = ctx.signer.seal(SESSION, session, ctx.session_seconds)
        if len(SESSION_COOKIE) + 1 + len(sealed) > MAX_COOKIE_BYTES:
            # A browser drops the cookie and comes back without a session: / sent it to the
            # issuer again, which signed it in again, until the browser gave up on too many
            # redirects (a roles claim of some 120 group ids), each lap a sign-in recorded.
            reason = (f"the token's roles claim ({len(user.roles)} names) is too long for a "
                      f"session cookie")
            log.warning("console sign-in refused", extra={
                "reason": reason, "user": user.name, "peer": peer})
            await _audit(ctx, audit.MINOR_FAILURE, peer=peer, user=user.name, reason=reason)
            response = _error(403, f"signed in, but {reason}: assign this application fewer "
                                   f"roles or groups, or name a shorter claim in "
                                   f"MIMIC_OIDC_ROLES_CLAIM")
            keep_login(ctx, request, response, others)
            return response
        log.info("console sign-in", extra={"user": user.name, "peer": peer,
                                           "operator": Right.OPERATE in rights})
        await _audit(ctx, audit.SUCCESS, peer=peer, user=user.name)
        response = RedirectResponse("/", status_code=303)
        keep_login(ctx, request, response, others)
        if SIGNED_OUT_COOKIE in request.cookies:  # asked for credentials: this user's now
            response.delete_cookie(SIGNED_OUT_COOKIE, path="/auth/")
        response.set_cookie(
            SESSION_COOKIE, sealed,
            max_age=int(ctx.session_seconds), path="/", httponly=True,
            secure=secure_cookies(request), samesite="lax",
        )
        return response

    async def logout(request: Request) -> Response:
        # Whatever its Origin: ending a session is harmless to its owner (a forged sign-out
        # is a nuisance at most), and a refused one left the session alive behind an
        # ingress whose scheme the console could not see. A POST all the same, so that no
        # link or image ends it.
        peer = request.client.host if request.client else ""
        # Signed out already or not: a sign-out the index did not take (it was down) is
        # recorded by the next one, which this replica would otherwise refuse as signed out.
        signed = _session_user(ctx.signer.open(
            SESSION, request.cookies.get(SESSION_COOKIE), check_revoked=False))
        user = None
        if signed is not None:
            try:
                ended = await anyio.to_thread.run_sync(
                    ctx.signer.revoke, signed.session_id, signed.expires)
            except SessionsUnavailable as exc:
                # Ended in this process (and its workers), not for the other replicas: the
                # browser keeps its cookie, so that signing out again records it.
                cause = exc.__cause__ or exc
                log.error("console sign-out not recorded in the index", extra={
                    "error": type(cause).__name__, "user": signed.name, "peer": peer})
                return _sign_out_failed()
            if ended:  # not already signed out: a live session, recorded once
                user = signed
                await _audit(ctx, audit.SUCCESS, event_type="logout", peer=peer,
                             user=user.name)
        response: Response = RedirectResponse(SIGNED_OUT_PATH, status_code=303)
        if ctx.oidc is not None and _may_end_issuer_session(ctx, request, user):
            try:
                end = await anyio.to_thread.run_sync(
                    ctx.oidc.end_session_url, post_logout_redirect_uri(ctx, request),
                    limiter=issuer_calls)
            except SignInRefused as exc:
                # The discovery document could not be read (this process had not read it
                # yet): the console's session is ended all the same, the page says the
                # issuer's may not be, and the marker below still makes the next sign-in
                # ask. Logged for a real session only: anyone may POST here.
                if user is not None:
                    log.warning("console sign-out did not reach the issuer",
                                extra={"reason": str(exc), "user": user.name, "peer": peer})
                response = RedirectResponse(f"{SIGNED_OUT_PATH}?issuer=unreachable",
                                            status_code=303)
            else:
                if end is not None:
                    response = continue_at_issuer(end)
        response.delete_cookie(SESSION_COOKIE, path="/")
        response.set_cookie(
            SIGNED_OUT_COOKIE, "1", max_age=int(max(SIGNED_OUT_SECONDS, ctx.session_seconds)),
            path="/auth/", httponly=True, secure=secure_cookies(request), samesite="lax",
        )
        return response

    return {"login": login, "callback": callback, "logout": logout}


def _pending(body: dict[str, Any] | None) -> list[tuple[Pending, float]]:
    """The sign-ins under way in an opened login cookie, newest first, with their expiry;
    those expired are left out."""
    now = time.time()
    found = []
    for item in (body or {}).get("pending", ()):
        try:
            pending = Pending(str(item["state"]), str(item["nonce"]), str(item["verifier"]))
            until = float(item["exp"])
        except (KeyError, TypeError, ValueError):
            continue  # ours are well formed: nothing else is signed with this purpose
        if until >= now:
            found.append((pending, until))
    return found


def keep_login(ctx: ConsoleContext, request: Request, response: Response,
               under_way: list[tuple[Pending, float]]) -> None:
    """The login cookie holding ``under_way`` (each expiring on its own, the cookie with the
    last of them), or deleted when nothing is under way."""
    if not under_way:
        if LOGIN_COOKIE in request.cookies:
            response.delete_cookie(LOGIN_COOKIE, path="/auth/")
        return
    lifetime = max(until for _, until in under_way) - time.time()
    response.set_cookie(
        LOGIN_COOKIE,
        ctx.signer.seal(LOGIN, {"pending": [
            {"state": p.state, "nonce": p.nonce, "verifier": p.verifier, "exp": int(until)}
            for p, until in under_way]}, lifetime),
        max_age=max(1, int(lifetime)), path="/auth/", httponly=True,
        secure=secure_cookies(request), samesite="lax",
    )


def _error_code(value: str) -> str:
    """The issuer's ``error`` parameter as the refusal quotes it: its first 64 characters
    reduced to those RFC 6749 (4.1.2.1) allows in an error code, printable ASCII but ``"``
    and ``\\``. Anyone can send a browser to the callback with any ``error``: the reason
    goes into the WARNING log line, the audit record and the response, none of which may
    carry a control character (a forged log line, a record cut short) a stranger chose."""
    code = "".join(c for c in value[:64] if " " <= c <= "~" and c not in '"\\')
    if not code:
        return "no error code"
    # Refusals are counted by reason (security/refusals.py): a code of the stranger's
    # choosing made each refusal a first one (a WARNING line and a record each), and grew
    # the counts without bound. The codes RFC 6749 4.1.2.1 and OIDC Core 3.1.2.6 define
    # are named; any other is "another error code".
    return code if code in _ISSUER_ERRORS else "another error code"


_ISSUER_ERRORS = frozenset({
    "invalid_request", "unauthorized_client", "access_denied", "unsupported_response_type",
    "invalid_scope", "server_error", "temporarily_unavailable", "interaction_required",
    "login_required", "account_selection_required", "consent_required",
    "invalid_request_uri", "invalid_request_object", "request_not_supported",
    "request_uri_not_supported", "registration_not_supported",
})


async def _audit(ctx: ConsoleContext, outcome: int, **details: Any) -> None:
    """A User Authentication record, written in a worker thread: on PostgreSQL it is an
    INSERT, which a slow index would make every request of this worker wait for, on the
    event loop (``/healthz`` included, so that the platform restarted a worker that was
    only waiting)."""
    if ctx.audit_log is None:
        return
    details.setdefault("event_type", "login")
    await anyio.to_thread.run_sync(functools.partial(
        ctx.audit_log.record, audit.USER_AUTHENTICATION, outcome, identity="web console",
        **details))


async def _alert(ctx: ConsoleContext, request: Request, user: ConsoleUser,
                 reason: str) -> None:
    """A signed-in user refused a route: a Security Alert (Use of Restricted Function), as
    the access policy records its refusals; it costs a session, so one each. In a worker
    thread, as :func:`_audit`."""
    if ctx.audit_log is None:
        return
    await anyio.to_thread.run_sync(functools.partial(
        ctx.audit_log.record, audit.SECURITY_ALERT, audit.MINOR_FAILURE,
        event_type="use-of-restricted-function", identity="web console",
        peer=request.client.host if request.client else "",
        user=user.name, route=f"{request.method} {request.url.path}", reason=reason))
