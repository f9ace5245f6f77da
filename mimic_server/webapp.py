"""The composition root of ``mimic web``: DICOMweb at ``/dicomweb`` and the operator
console at ``/``, over the same index, object store, policy and audit trail as
``mimic serve`` (opened the same way: ``resources.py``).

Like ``app.py`` this module knows the concrete classes; the routes under ``web/`` see only
:class:`~mimic_server.web.dicomweb.context.DicomWebContext`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from uvicorn.config import STARTUP_FAILURE  # the supervisor then stops instead of restarting

from mimic_server.archive.ingest import Ingest
from mimic_server.archive.ingest_audit import per_instance
from mimic_server.backends import (
    close_object_store,
    index_answers,
    open_object_store,
    store_answers,
)
from mimic_server.config import Settings
from mimic_server.errors import ConfigurationError, MimicError
from mimic_server.index.audit_table import read_table_newest
from mimic_server.index.repository import SqlIndex
from mimic_server.index.signed_out import SignedOutSessions
from mimic_server.query.finder import Finder
from mimic_server.resources import (
    certificate_source,
    load_policy_file,
    oidc_ssl_context,
    oidc_validator,
    open_audit_trail,
    open_index,
    open_token_validator,
)
from mimic_server.security import audit
from mimic_server.security.audit import AuditFilter, AuditLog, GroupCommitSink, read_file_newest
from mimic_server.security.audit_journal import Journals
from mimic_server.security.policy import Policy
from mimic_server.security.policy_watcher import PolicyWatcher
from mimic_server.security.refusals import RefusalAudit
from mimic_server.startup_checks import make_data_dir
from mimic_server.storage import ObjectStore
from mimic_server.web.console.access import RoleMap
from mimic_server.web.console.app import build_console
from mimic_server.web.console.auth import console_user_source
from mimic_server.web.console.context import ConsoleContext
from mimic_server.web.console.gate import dicomweb_gate
from mimic_server.web.console.headers import NoStore
from mimic_server.web.console.modalities import (
    LastLoginsInFile,
    TrustView,
    last_logins_in_table,
)
from mimic_server.web.console.oidc import OidcClient
from mimic_server.web.console.sessions import Signer
from mimic_server.web.console.studies import StudyBrowser
from mimic_server.web.dicomweb.app import build_dicomweb
from mimic_server.web.dicomweb.context import DicomWebContext
from mimic_server.web.dicomweb.errors import UnexpectedErrors
from mimic_server.web.dicomweb.kept_copies import KeptCopies
from mimic_server.web.dicomweb.stow_part import PartMemory
from mimic_server.web.forwarded import ForwardedClient
from mimic_server.web.parent import (
    OPTIONS_VARIABLE,
    REVOKED_DIR_VARIABLE,
    SCHEMA_REVISION_VARIABLE,
    check_auth_settings,
    web_rule,
)
from mimic_server.web.server import HttpServer

log = logging.getLogger(__name__)



#: The requests one ``mimic web`` process serves in threads at once (anyio's default limiter,
#: which Starlette runs its synchronous endpoints and stream reads under).
REQUEST_THREADS = 40


class WebArchive:
    """A running ``mimic web``: one HTTP listener over the archive's index and objects."""

    def __init__(
        self,
        settings: Settings,
        *,
        object_store: ObjectStore | None = None,
        policy: Policy | None = None,
        console: Any = None,
        schema_revision: str | None = None,
    ) -> None:
        """``object_store`` and ``policy`` replace the configured ones (tests); ``console``
        is an ASGI app mounted at ``/`` (default: the operator console, when present);
        ``schema_revision``: the one a parent process prepared (``web/parent.py``)."""
        self.settings = settings
        self._schema_revision = schema_revision
        self._object_store = object_store
        #: The object store opened (``open``), for the readiness check.
        self._store: ObjectStore | None = None
        #: The object store this process opened itself (not a test's), closed at its stop:
        #: the file store's spare files and lock in ``.incoming`` are removed only so.
        self._opened_store: ObjectStore | None = None
        self._policy = policy
        self._console = console
        self.engine: Engine | None = None
        self._opened_index: SqlIndex | None = None
        self.audit = AuditLog(None)
        self.policy_watcher: PolicyWatcher | None = None
        self.http: HttpServer | None = None
        self.context: DicomWebContext | None = None
        self._sign_in_refusals: RefusalAudit | None = None

    def start(self) -> None:
        """Open everything and start listening; ConfigurationError on bad settings."""
        s = self.settings
        app = self.open()
        self.http = HttpServer(app, s.web_host, s.web_port, name="web")
        self.http.start()
        self.audit.record(audit.APPLICATION_ACTIVITY, audit.SUCCESS, action="started")
        host, port = self.http.address
        log.info("DICOMweb listening", extra={
            "address": f"{host}:{port}", "auth": s.web_auth,
            "index": self.engine.dialect.name if self.engine is not None else None,
            "cors_origins": len(s.web_cors_origin_list),
        })

    def open(self) -> Starlette:
        """Open the index, store, audit trail, policy and token validator, and build the
        app over them (``start`` serves it here; a worker process's uvicorn serves it)."""
        s = self.settings
        check_auth_settings(s)
        tokens = open_token_validator(s) if s.web_auth == "oidc" else None
        make_data_dir(s.data_dir)
        self.engine, index = open_index(s, schema_revision=self._schema_revision, deadlines=True)
        self._opened_index = index
        # A pool as large as the requests that may read at once: sized by the associations,
        # each request past 32 opened a new TLS connection to Blob Storage and dropped it
        # ("Connection pool is full, discarding connection" at WARNING, per request).
        store = self._object_store
        if store is None:
            store = self._opened_store = open_object_store(
                s, concurrency=max(s.max_associations, REQUEST_THREADS))
        self._store = store
        self.audit = open_audit_trail(s, self.engine)
        _group_commits(self.audit)
        journals = _audit_journals(s, self.audit)
        policy = self._policy or Policy(s.ae_title, s.require_called_ae_title)
        if policy.audit_log is None:
            policy.audit_log = self.audit
        policy_file = load_policy_file(s, policy)
        if policy_file is not None:
            source, version = policy_file
            self.policy_watcher = PolicyWatcher(
                source, s.cert_refresh_seconds, lambda rules: setattr(policy, "rules", rules),
                self.audit, version,
            )
            self.policy_watcher.start()
        finder = Finder(
            self.engine, retrieve_ae_title=s.ae_title, max_results=s.max_find_results,
            time_limit=s.find_time_limit_seconds,
        )
        self.context = DicomWebContext(
            finder=finder, store=store, policy=policy, audit=self.audit, tokens=tokens,
            auth=s.web_auth, ae_title=s.ae_title, policy_entry=s.web_policy_entry,
            rule=web_rule(s),
            base_url=s.web_base_url, ingest=_ingest(s, store, index),
            part_memory=PartMemory(s.web_stow_memory_bytes), body_timeout=s.network_timeout,
            copies=KeptCopies(s.web_kept_copies_bytes) if s.web_kept_copies_bytes else None,
            journals=journals,
        )
        console = self._console
        if console is None:
            console_context = open_console(s, self.engine, finder, policy, self.audit)
            self._sign_in_refusals = console_context.sign_in_refusals
            # The console's pages load images from DICOMweb with their session cookie.
            self.context.user_sources.append(console_user_source(console_context))
            # Its study queries answer to the same policy entry as QIDO-RS.
            console_context.query_gate = dicomweb_gate(self.context)
            console = build_console(console_context)
        return build_web_app(self.context, s.web_cors_origin_list, console,
                             ready=self._ready, proxy_hops=s.web_proxy_hops)

    @property
    def address(self) -> tuple[str, int]:
        assert self.http is not None
        return self.http.address

    def alive_in_worker(self) -> bool:
        """A worker process's liveness: its app is open (uvicorn runs it)."""
        return self.context is not None

    def alive(self) -> bool:
        return self.http is not None and self.http.alive()

    def _ready(self) -> str:
        """The index answers and takes writes, and the object store answers: as ``mimic
        serve``'s checks (``backends``). The index alone was checked: with Blob Storage down
        (or the file store's disk full, or PostgreSQL read-only) every WADO-RS retrieve and
        STOW-RS failed while the replica stayed in the ingress's rotation as ready."""
        if self.engine is None:
            raise ConfigurationError("not started")
        index_answers(self.engine)  # OutOfResources, a MimicError: its reason shown
        if self._store is not None:
            store_answers(self._store)
        return "ready"

    def refresh_policy(self) -> None:
        """SIGHUP: read the policy file again at once."""
        if self.policy_watcher is not None:
            self.policy_watcher.refresh_now()

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.policy_watcher is not None:
            self.policy_watcher.stop()
            self.policy_watcher = None
        if self.context is not None and self.context.copies is not None:
            self.context.copies.close()
        if self._sign_in_refusals is not None:
            self._sign_in_refusals.close()  # its counts, before the trail closes
            self._sign_in_refusals = None
        self.audit.record(audit.APPLICATION_ACTIVITY, audit.SUCCESS, action="stopped")
        self.audit.close()
        if self._opened_index is not None:
            self._opened_index.close()
            self._opened_index = None
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None
        if self._opened_store is not None:  # last: the requests that put have ended
            close_object_store(self._opened_store)
            self._opened_store = None
            self._store = None


def _audit_journals(s: Settings, audit_log: AuditLog) -> Journals | None:
    """Where the trail records per request (the file): the journals of STOW-RS requests'
    stored instances, for the records of a request whose end never comes (a killed
    process). Each process writes, as it opens, those no live process holds: a web worker
    killed is replaced by a new one, whose start writes them (``security/audit_journal``)."""
    if audit_log.path is None or per_instance(audit_log):
        return None
    journals = Journals(s.audit_journal_path, audit_log.path)
    journals.recover(audit_log)
    return journals


def _group_commits(audit_log: AuditLog) -> None:
    """The audit table (PostgreSQL) written through one group-commit writer: concurrent
    requests' records share commits, each request still waits for its own (``audit.py``)."""
    table = audit_log.transactional
    if table is None or not hasattr(table, "write_batch"):
        return
    grouped = GroupCommitSink(table)
    audit_log.sinks = [grouped if sink is table else sink for sink in audit_log.sinks]
    # STOW-RS writes its record in its own index transaction through this one (unbatched),
    # and the other sinks then skip it.
    audit_log.transactional = grouped


def open_console(settings: Settings, engine: Engine, finder: Finder, policy: Policy,
                 audit_log: AuditLog) -> ConsoleContext:
    """The operator console over the same index, policy, audit trail and certificate source
    as ``mimic serve``; sign-in needs ``MIMIC_WEB_OIDC_CLIENT_ID`` and ``MIMIC_OIDC_ISSUER``."""
    s = settings
    oidc = None
    if s.web_oidc_client_id:
        if not s.oidc_issuer:
            raise ConfigurationError("MIMIC_WEB_OIDC_CLIENT_ID needs MIMIC_OIDC_ISSUER")
        # ID tokens name the console's client id as audience (not MIMIC_OIDC_AUDIENCE).
        validator = oidc_validator(s, s.web_oidc_client_id)
        oidc = OidcClient(s.oidc_issuer, s.web_oidc_client_id, validator,
                          client_secret=s.web_oidc_client_secret, scopes=s.web_oidc_scopes,
                          ssl_context=oidc_ssl_context(s))
    else:
        log.warning("operator console sign-in is not configured (MIMIC_WEB_OIDC_CLIENT_ID): "
                    "its pages answer 503")
    try:
        # Signed-out sessions in the index too: replicas share it and the key, no directory.
        signer = Signer(s.web_session_key, revoked_dir=_revoked_dir(),
                        signed_out=SignedOutSessions(engine))
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    if signer.ephemeral and oidc is not None:
        log.warning("MIMIC_WEB_SESSION_KEY is not set: console sessions are signed with a key "
                    "of this process (they end when it restarts and do not span replicas)")
    return ConsoleContext(
        oidc=oidc, signer=signer,
        roles=RoleMap.parse(s.web_operator_roles, s.web_viewer_roles),
        session_seconds=s.web_session_seconds, redirect_uri=s.web_oidc_redirect_uri,
        base_url=s.web_base_url,
        studies=StudyBrowser(finder, engine), engine=engine, policy=policy,
        trust=_trust_view(s), audit_records=_audit_reader(s, engine),
        audit_uri=_audit_uri(s, engine),
        last_logins=_last_logins(s, engine),
        serve_status=_serve_status(s.web_serve_status_url), audit_log=audit_log,
        sign_in_refusals=_sign_in_refusals(s, audit_log) if oidc is not None else None,
    )


def _sign_in_refusals(settings: Settings, audit_log: AuditLog) -> RefusalAudit:
    """Refused console sign-ins counted per peer and reason over MIMIC_AUDIT_REFUSAL_INTERVAL,
    as ``mimic serve`` counts refused connections (started here; ``WebArchive.stop`` writes
    what it holds)."""
    counter = RefusalAudit(audit_log, settings.audit_refusal_interval,
                           event=audit.USER_AUTHENTICATION, message="console sign-in refused",
                           details={"identity": "web console", "event_type": "login"},
                           first_recorded=True)
    counter.start()
    return counter


def _revoked_dir() -> Path | None:
    """The directory where the workers of one ``mimic web`` share signed-out sessions."""
    value = os.environ.get(REVOKED_DIR_VARIABLE)
    return Path(value) if value else None


def _trust_view(settings: Settings) -> Callable[[], TrustView] | None:
    """The trusted set as ``mimic serve`` reads it (re-read when its version changes)."""
    s = settings
    if not s.tls:
        return None
    source = certificate_source(s)
    cache: dict[str, TrustView] = {}
    lock = threading.Lock()

    def view() -> TrustView:
        with lock:
            version = source.version()
            if version not in cache:
                trusted = source.load().trusted  # first: it remembers what revoked() shows
                cache.clear()
                cache[version] = TrustView(trusted, source.revoked())
            return cache[version]

    return view


def _audit_reader(settings: Settings, engine: Engine
                  ) -> Callable[[AuditFilter, int | None], list[dict[str, Any]]]:
    """The newest records of the audit trail ``mimic audit`` reads (the table on PostgreSQL,
    else the file), newest first, without their messages."""
    if engine.dialect.name != "sqlite":
        def from_table(selection: AuditFilter, limit: int | None) -> list[dict[str, Any]]:
            return read_table_newest(engine, selection.matches, limit, selection.since,
                                     selection.study)  # since and study narrowed in SQL

        return from_table
    path = settings.audit_path
    return lambda selection, limit: read_file_newest(path, selection, limit)


def _last_logins(settings: Settings, engine: Engine) -> Callable[[], dict[str, str]]:
    """Trust name -> its latest successful association, for the modalities page: one grouped
    query of the audit table, else the audit file read on from where the last view stopped
    into that one mapping. (The page read the file through ``read_file_newest`` without a
    limit: every login record of the trail, one per association ever, held in memory at
    once, and the whole trail parsed again, on each view.)"""
    if engine.dialect.name != "sqlite":
        return lambda: last_logins_in_table(engine)
    return LastLoginsInFile(settings.audit_path)


def _audit_uri(settings: Settings, engine: Engine) -> str:
    """The trail's URI for Audit Log Used records: the table's name, else the file's URI."""
    if engine.dialect.name != "sqlite":
        return "urn:mimic:audit_events"
    return settings.audit_path.resolve().as_uri()


def _serve_status(base_url: str) -> Callable[[], dict[str, Any]]:
    url = base_url.rstrip("/") + "/status/associations"

    def fetch() -> dict[str, Any]:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=3) as response:
            document = json.load(response)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        return document

    return fetch


def _ingest(settings: Settings, store: ObjectStore, index: SqlIndex) -> Ingest:
    """The STOW-RS ingest path (``archive/ingest.py``): C-STORE's, into the same store and
    index, under the same size limit; the audit log is handed to it per request."""
    return Ingest(store, index, settings.max_object_bytes, settings.spool_path)


def build_web_app(ctx: DicomWebContext, cors_origins: list[str], console: Any = None,
                  ready: Any = None, proxy_hops: int = 0) -> Starlette:
    """``/dicomweb`` (DICOMweb), ``/healthz`` and ``/readyz`` (probes), ``/`` (console)."""

    def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    def readyz(_request: Request) -> JSONResponse:
        try:
            detail = ready() if ready is not None else "ready"
        except MimicError as exc:  # not started; the index or the object store: its reason
            return JSONResponse({"status": "not ready", "reason": str(exc)}, status_code=503)
        return JSONResponse({"status": detail})

    routes: list[Any] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        # No answer with patient data is kept by a browser (the console shows these too).
        Mount("/dicomweb", app=NoStore(build_dicomweb(ctx, cors_origins))),
    ]
    if console is not None:
        routes.append(Mount("/", app=console))
    return Starlette(routes=routes, middleware=[
        Middleware(ForwardedClient, hops=proxy_hops), Middleware(UnexpectedErrors)])


def worker_app() -> Any:
    """The ASGI app of one worker process (uvicorn calls this factory in the worker): the
    whole ``WebArchive`` app, closed at the worker's shutdown (lifespan)."""
    from mimic_server import logs
    from mimic_server.workers.link import _die_with_parent

    _die_with_parent()  # a killed parent takes its workers with it (they hold its port)
    options = json.loads(os.environ.get(OPTIONS_VARIABLE, "{}"))
    settings = Settings(**options)
    logs.configure(settings.log_level, settings.log_format)
    archive = WebArchive(settings, schema_revision=os.environ.get(SCHEMA_REVISION_VARIABLE))
    try:
        app = archive.open()
    except Exception as exc:
        # Any failure to start (not only a configuration error: an index that does not
        # answer) stops the server, as it stops a single ``mimic web``; uvicorn's supervisor
        # would otherwise restart the worker every half second, without end.
        reason = str(exc) if isinstance(exc, ConfigurationError) else type(exc).__name__
        log.error("mimic web worker cannot start", extra={"reason": reason})
        with contextlib.suppress(Exception):
            archive.stop()
        sys.exit(STARTUP_FAILURE)
    signal.signal(signal.SIGHUP, lambda *_: archive.refresh_policy())
    archive.audit.record(audit.APPLICATION_ACTIVITY, audit.SUCCESS, action="started")
    return _Lifespan(app, archive.stop)


class _Lifespan:
    """An ASGI app that runs ``on_shutdown`` at the server's lifespan shutdown."""

    def __init__(self, app: Any, on_shutdown: Callable[[], None]) -> None:
        self.app = app
        self.on_shutdown = on_shutdown

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.on_shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
