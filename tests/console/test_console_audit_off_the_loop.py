"""The console's audit records (sign-in, refused sign-in, sign-out, a refused route) are
written in a worker thread, never on the event loop: on PostgreSQL each is an INSERT, and a
slow index held every request of the worker while one was written, ``/healthz`` included
(whose failures make the platform restart a worker that was only waiting)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mimic_server.security.audit import AuditLog
from tests.console.harness import VIEWER, client, console_context, sign_in, start_login
from tests.oidc_double import OidcIssuerDouble


class WatchedTrail(AuditLog):
    """The file trail, noting for each record whether it was written on an event loop."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.written: list[tuple[str, bool]] = []

    def record(self, event: Any, *args: Any, **details: Any) -> None:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        self.written.append((str(details.get("event_type")), on_loop))
        super().record(event, *args, **details)


def test_every_console_audit_record_is_written_off_the_event_loop(
    operator_issuer: OidcIssuerDouble, tmp_path: Path,
) -> None:
    trail = WatchedTrail(tmp_path / "audit.jsonl")
    ctx = console_context(operator_issuer, tmp_path, audit_log=trail)
    stranger = client(ctx, peer="192.0.2.7")
    start_login(stranger)
    assert stranger.get("/auth/callback", params={"state": "x", "code": "y"}).status_code == 400
    operator_issuer.sign_in_as("viewer-1", roles=[VIEWER])
    web = client(ctx)
    assert sign_in(web, operator_issuer).status_code == 303
    assert web.get("/console/api/now").status_code == 403  # an operator's route
    assert web.post("/auth/logout").status_code in (200, 303)  # on to the issuer, or not
    assert [kind for kind, _ in trail.written] == [
        "login", "login", "use-of-restricted-function", "logout"]
    assert not any(on_loop for _, on_loop in trail.written), trail.written
