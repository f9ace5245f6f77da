"""``mimic web``'s parent process with several workers (``MIMIC_WEB_WORKERS``): what it does
before uvicorn's supervisor takes over, and what it checks of the settings for every start.

The parent checks the settings, migrates (SQLite) or checks (PostgreSQL) the index once,
binds the port once and then supervises the workers for the server's lifetime
(``web/workers.py``); each worker builds the whole DICOMweb and console app
(``webapp.worker_app``). The parent never builds it, so it imports neither the app nor the
archive (pydicom, numpy, the rendering stack): ``webapp.py`` imports this module, never the
other way round. The app's imports had held the parent at 123 MB of resident memory, 85 MB
without them, for the server's lifetime, in a container whose memory limit counts every
process.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mimic_server.backends import open_index_engine
from mimic_server.config import Settings
from mimic_server.errors import ConfigurationError
from mimic_server.index import schema
from mimic_server.security.grants import Grants, RuleError, parse_rule
from mimic_server.startup_checks import make_data_dir
from mimic_server.web.server import listen

log = logging.getLogger(__name__)

#: What the parent of several ``mimic web`` workers hands each of them in its environment:
#: the command line's settings (JSON), and the directory of signed-out console sessions.
OPTIONS_VARIABLE = "MIMIC_WEB_WORKER_OPTIONS"
REVOKED_DIR_VARIABLE = "MIMIC_WEB_REVOKED_DIR"
#: The index schema revision the parent prepared: each worker checks it with one query
#: (``schema.require_revision``) instead of importing Alembic and running it again.
SCHEMA_REVISION_VARIABLE = "MIMIC_WEB_SCHEMA_REVISION"
#: The ASGI factory each worker process runs.
WORKER_FACTORY = "mimic_server.webapp:worker_app"


def is_loopback(host: str) -> bool:
    """Whether a listener on ``host`` is reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def check_auth_settings(settings: Settings) -> None:
    """``MIMIC_WEB_AUTH=none`` only on loopback, said loudly; bearer tokens need an issuer."""
    if settings.web_auth == "none":
        if not is_loopback(settings.web_host):
            raise ConfigurationError(
                f"MIMIC_WEB_AUTH=none serves the archive to anyone: refused on "
                f"{settings.web_host} (allowed only on a loopback address such as 127.0.0.1)"
            )
        log.warning(
            "DICOMweb AUTHENTICATION IS OFF (MIMIC_WEB_AUTH=none): every request on this "
            "loopback listener is served without a token (development only)",
            extra={"address": settings.web_host},
        )
    elif not settings.oidc_issuer:
        raise ConfigurationError(
            "mimic web needs MIMIC_OIDC_ISSUER (and MIMIC_OIDC_AUDIENCE) to validate bearer "
            "tokens; MIMIC_WEB_AUTH=none is for loopback development only"
        )


def web_rule(settings: Settings) -> Grants | None:
    """``MIMIC_WEB_ROLES`` read by the policy file's parser: the roles' services together
    are the front door's services, each role narrows to its own."""
    if not settings.web_roles:
        return None
    services = sorted({name for names in settings.web_roles.values() for name in names})
    try:
        return parse_rule({"services": services, "roles": settings.web_roles},
                          "MIMIC_WEB_ROLES")
    except RuleError as exc:
        raise ConfigurationError(str(exc)) from exc


def web_worker_count(settings: Settings) -> int:
    """``MIMIC_WEB_WORKERS``, else the CPUs this process may use (its CPU affinity, lowered
    to the container's CPU quota rounded up), as ``MIMIC_WORKERS`` counts them."""
    from mimic_server.workers import cpus_available

    if settings.web_workers is not None:
        return settings.web_workers
    return cpus_available()


def run_workers(settings: Settings, options: dict[str, Any], count: int) -> None:
    """``mimic web`` as the parent of ``count`` workers (``web/workers.py``): the settings
    checked, the index migrated and the port bound once, here; ConfigurationError when the
    start fails (here or in a worker); returns after SIGTERM/SIGINT."""
    from mimic_server.web.workers import WebWorkers

    s = settings
    check_auth_settings(s)
    web_rule(s)
    make_data_dir(s.data_dir)
    engine = open_index_engine(s)  # migrated (SQLite) or checked (PostgreSQL), once
    revision = schema.current_revision(engine)
    engine.dispose()
    sock = listen(s.web_host, s.web_port, "web")
    shared = Path(tempfile.mkdtemp(prefix="mimic-web-"))
    os.environ[OPTIONS_VARIABLE] = json.dumps(options)
    os.environ[REVOKED_DIR_VARIABLE] = str(shared / "revoked")
    if revision is not None:
        os.environ[SCHEMA_REVISION_VARIABLE] = revision
    (shared / "revoked").mkdir()
    if not s.web_session_key:
        # One key for all the workers (a session opened by one is valid in the others),
        # random per start as for a single process: sessions end when mimic web restarts.
        os.environ["MIMIC_WEB_SESSION_KEY"] = secrets.token_urlsafe(48)
    host, port = sock.getsockname()[:2]

    def ready() -> None:
        log.info("DICOMweb listening", extra={
            "address": f"{host}:{port}", "auth": s.web_auth, "index": engine.dialect.name,
            "cors_origins": len(s.web_cors_origin_list), "workers": count,
        })

    try:
        supervisor = WebWorkers(WORKER_FACTORY, [sock], count, on_ready=ready)
        supervisor.run()
    finally:
        sock.close()
        shutil.rmtree(shared, ignore_errors=True)
    if supervisor.failed:
        raise ConfigurationError("a mimic web worker could not start (its log says why)")
    log.info("stopped", extra={"workers": count})
