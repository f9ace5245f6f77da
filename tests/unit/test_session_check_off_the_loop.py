"""A DICOMweb request carrying a console session cookie has its session checked against the
signed-out sessions in the index (``Signer.revoked``: one SELECT) in a worker thread, never
on the event loop: a slow or hung index (up to its deadlines) must hold that request alone,
not every request of the worker. QIDO-RS and WADO-RS are synchronous routes (Starlette runs
them in a thread); STOW-RS is asynchronous, and authorized the cookie on the loop itself."""

from __future__ import annotations

import asyncio
import secrets
import threading

import httpx
import pytest

from mimic_server.security.audit import AuditLog
from mimic_server.security.policy import Policy
from mimic_server.security.policy_file import parse_policy
from mimic_server.web.console.access import RoleMap
from mimic_server.web.console.auth import SESSION, console_user_source
from mimic_server.web.console.context import ConsoleContext
from mimic_server.web.console.sessions import SESSION_COOKIE, Signer
from mimic_server.web.dicomweb.context import DicomWebContext
from mimic_server.webapp import build_web_app

#: STOW-RS only: QIDO-RS and WADO-RS are refused (403) once the session is known, so the
#: test needs no index or store behind them.
POLICY = """
[certificates.dicomweb]
services = ["store"]
roles = { MimicOperator = ["store"] }
"""
#: How long a lookup waits for the probe before it gives up and lets the test fail (a
#: guard against a hang, not a measure: with the fix the probe answers at once).
GIVE_UP_SECONDS = 20.0


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class HungIndex:
    """The signed-out sessions of an index that does not answer until released."""

    def __init__(self) -> None:
        self.released = threading.Event()
        #: Per lookup: whether it ran on an event loop's thread.
        self.on_loop: list[bool] = []
        self.events: list[str] = []

    def add(self, session_id: str, expires: int) -> bool:
        raise AssertionError("no sign-out here")

    def holds(self, session_id: str) -> bool:
        self.on_loop.append(_on_event_loop())
        self.released.wait(GIVE_UP_SECONDS)
        self.events.append("lookup ended")
        return False


def _app(index: HungIndex) -> tuple[object, str]:
    signer = Signer("k" * 40, signed_out=index)
    console = ConsoleContext(oidc=None, signer=signer,
                             roles=RoleMap.parse("MimicOperator", "MimicViewer"))
    policy = Policy("MIMIC", rules=parse_policy(POLICY))
    ctx = DicomWebContext(finder=None, store=None, policy=policy,  # type: ignore[arg-type]
                          audit=AuditLog(None), tokens=None)
    ctx.user_sources.append(console_user_source(console))
    cookie = signer.seal(SESSION, {"sub": "operator-1", "name": "operator-1",
                                   "roles": ["MimicOperator"],
                                   "sid": secrets.token_urlsafe(16)}, 600)
    return build_web_app(ctx, []), cookie


@pytest.mark.parametrize("method,path,answer", [
    # No ingest behind it: 503 once authorized (the session is an operator's).
    ("POST", "/dicomweb/studies", 503),
    ("GET", "/dicomweb/studies", 403),
    ("GET", "/dicomweb/studies/1.2.3/metadata", 403),
])
def test_a_hung_session_lookup_holds_its_request_not_the_workers_others(
        method: str, path: str, answer: int) -> None:
    index = HungIndex()
    app, cookie = _app(index)

    async def run() -> tuple[int, int]:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://web") as web:
            headers = {"Content-Type": 'multipart/related; type="application/dicom"; '
                                       "boundary=B"} if method == "POST" else {}
            web.cookies.set(SESSION_COOKIE, cookie)
            held = asyncio.ensure_future(web.request(method, path, headers=headers,
                                                     content=b"--B--\r\n" if headers else None))
            while not index.on_loop and not held.done():
                await asyncio.sleep(0)  # until its lookup has begun (or it ran whole)
            probe = await web.get("/healthz")
            index.events.append("probe answered")
            index.released.set()
            return probe.status_code, (await held).status_code

    probe, status = asyncio.run(run())
    assert probe == 200 and status == answer
    assert index.on_loop == [False]
    assert index.events == ["probe answered", "lookup ended"]
