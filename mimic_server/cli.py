"""The ``mimic`` command: ``serve``, ``web``, ``certs init|issue-client|revoke``, ``db upgrade``,
``reconcile``, ``audit``.

``mimic serve`` has one ``--flag`` per setting, generated from :class:`Settings`, so a flag
and its ``MIMIC_*`` variable can never drift apart. Exit codes: 0 clean stop, 2 bad
configuration (with a one-line reason on stderr), 3 the listener stopped on its own (the
process must be restarted); ``reconcile`` exits 1 while drift remains; ``audit`` exits 0
when it listed (none matching included) and 2 on a bad option (an unknown ``--event``) or
when the trail cannot be read.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
from pydantic import ValidationError

from mimic_server import __version__, startup_checks
from mimic_server.archive_imports import leave_numpy_out
from mimic_server.certs import devpki
from mimic_server.config import Settings
from mimic_server.errors import ConfigurationError

EXIT_DRIFT = 1
EXIT_CONFIG = 2
EXIT_LISTENER_DIED = 3
#: ``mimic serve`` with workers: the drain ended, but a worker died during it (its open
#: associations were lost) or had to be killed; logged ``worker died during the drain``.
EXIT_WORKER_FAILED_IN_DRAIN = 4
#: Seconds between checks that the listener still runs.
WATCH_PERIOD = 1.0
_JSON_FIELDS = {"move_destinations", "web_roles"}


def _fail(message: str) -> NoReturn:
    click.echo(f"mimic: {message}", err=True)
    sys.exit(EXIT_CONFIG)


def _settings(**overrides: Any) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    for name in _JSON_FIELDS & values.keys():
        try:
            values[name] = json.loads(values[name])
        except ValueError:
            _fail(f"--{name.replace('_', '-')} takes JSON")
    try:
        return Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        _fail(f"invalid setting {where}: {first['msg']}")
    except (ValueError, OSError) as exc:  # the settings file: missing or not TOML
        _fail(str(exc))


def _check_local(settings: Settings, check: Callable[[Settings], None]) -> None:
    """What the settings name on this machine, before anything is imported for serving or
    listens (``startup_checks``): a wrong one is exit 2 and one line, in every mode."""
    try:
        check(settings)
    except ConfigurationError as exc:
        _fail(str(exc))


def settings_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """One option per Settings field; unset options fall back to MIMIC_* and the default."""
    for name, field in reversed(list(Settings.model_fields.items())):
        flag = "--" + name.replace("_", "-")
        env = f"MIMIC_{name.upper()}"
        factory = field.default_factory
        default = field.default if factory is None else factory()  # type: ignore[call-arg]
        help_text = f"{field.description} [env {env}; default {default}]"
        if field.annotation is bool:
            func = click.option(
                f"{flag}/--no-{name.replace('_', '-')}", name, default=None, help=help_text
            )(func)
        else:
            func = click.option(flag, name, default=None, help=help_text)(func)
    return func


@click.group()
@click.version_option(__version__, prog_name="mimic")
def main() -> None:
    """MIMIC, a DICOM archive reached over mutual TLS."""


@main.command()
@settings_options
def serve(**options: Any) -> None:
    """Run the archive until SIGTERM or SIGINT (open associations drain first).

    With MIMIC_WORKERS above 1 (the default on a machine with several CPUs) this process
    supervises that many worker processes on the one DICOM port (docs/architecture.md)."""
    from mimic_server.workers import worker_count

    settings = _settings(**options)
    _check_local(settings, startup_checks.check_serve)
    count = worker_count(settings)
    # A supervisor serves no DICOM itself: it starts its workers before it imports what it
    # prepares for them (the index, the stores), and never imports the DICOM stack.
    if count <= 1:
        leave_numpy_out()  # this process serves DICOM: no pixels decoded (archive_imports.py)
    _configure_logs(settings, None if count > 1 else "mimic_server.app")
    if count > 1:
        _supervise(settings, options, count)
    else:
        _serve_archive(settings)


def _supervise(settings: Settings, options: dict[str, Any], count: int) -> None:
    from mimic_server.certs.first_start import describe_first_start
    from mimic_server.workers.supervisor import Supervisor

    supervisor = Supervisor(
        settings, {k: v for k, v in options.items() if v is not None}, count
    )
    # Before the start: a SIGTERM while the workers start drains them once they are up.
    signal.signal(signal.SIGTERM, lambda *_: supervisor.request_stop())
    signal.signal(signal.SIGINT, lambda *_: supervisor.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: supervisor.request_hup())
    try:
        supervisor.start()
    except ConfigurationError as exc:
        _fail(str(exc))
    if supervisor.first_start is not None:
        click.echo(
            describe_first_start(supervisor.first_start, supervisor.address[1],
                                 settings.ae_title),
            err=True,
        )
    if supervisor.run():
        # A service manager sees an unclean stop: associations were lost, not drained.
        sys.exit(EXIT_WORKER_FAILED_IN_DRAIN)


@main.command("serve-worker", hidden=True)
@click.option("--slot", type=int, required=True)
@click.option("--slots", type=int, required=True)
@click.option("--listen-fd", type=int, required=True)
@click.option("--status-fd", type=int, required=True)
@click.option("--go-fd", type=int, required=True)
@click.option("--table", type=click.Path(path_type=Path), required=True)
@click.option("--supervisor-pid", type=int, required=True)
def serve_worker(
    slot: int, slots: int, listen_fd: int, status_fd: int, go_fd: int, table: Path,
    supervisor_pid: int,
) -> None:
    """One worker process of 'mimic serve' (started by it, never by hand)."""
    import logging

    leave_numpy_out()  # before pydicom is imported (archive_imports.py)

    from mimic_server.workers.link import WorkerLink
    from mimic_server.workers.supervisor import OPTIONS_VARIABLE

    options = json.loads(os.environ.get(OPTIONS_VARIABLE, "{}"))
    options["ops_port"] = 0  # the supervisor serves the ops endpoints for all
    settings = _settings(**options)
    _configure_logs(settings)

    def tag(record: logging.LogRecord) -> bool:
        record.worker = slot
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)
    link = WorkerLink(slot, listen_fd, status_fd, table, slots, supervisor_pid)
    if not link.parent_alive():
        sys.exit(0)  # the supervisor is gone already: nobody to serve for
    # Imported by now; the supervisor says go once the index, the store and the PKI are
    # prepared, with the schema revision it found (an end of the pipe without it: its start
    # failed, nothing to serve).
    with os.fdopen(go_fd, "rb") as go:
        prepared = go.read()
    if not prepared:
        sys.exit(0)
    link.schema_revision = json.loads(prepared)["schema_revision"]
    _serve_archive(settings, link)


def _configure_logs(settings: Settings, libraries: str | None = "mimic_server.app") -> None:
    """MIMIC's logging, after the libraries are imported (``libraries``: the module that
    imports what this process uses): pydicom sets its logger's level when it is imported,
    which would undo the silencing ``logs.configure`` applies (a later import silences
    them again: ``logs.silence_libraries``)."""
    import importlib

    from mimic_server import logs

    if libraries is not None:
        importlib.import_module(libraries)  # pydicom, pynetdicom, sqlalchemy, ...

    logs.configure(settings.log_level, settings.log_format)


def _serve_archive(settings: Settings, worker: Any = None) -> None:
    from mimic_server.app import Archive
    from mimic_server.certs.first_start import describe_first_start
    from mimic_server.signals import STOP_NOW, SignalInbox, StopRequests

    archive = Archive(settings, worker=worker)
    # The handlers only note the signal; this loop acts on it (signals.py: a handler that
    # takes a lock can deadlock the main thread, and with it the certificate watcher).
    # What ends a drain at once: the operator's second SIGTERM or SIGINT, a second or more
    # after the first (signals.REPEAT_AFTER: one stop may be passed on twice); for a
    # worker, its supervisor's STOP_NOW alone (a service manager that signals every process
    # of the service, systemd's KillMode=control-group, sends a worker a SIGTERM beside the
    # one its supervisor relays: two of them are no operator's second).
    stops = StopRequests()
    inbox = SignalInbox((signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
                        + ((STOP_NOW,) if worker is not None else ()))
    if worker is not None:  # before it says it is ready: the supervisor may signal from then
        inbox.install()
    try:
        archive.start()
    except ConfigurationError as exc:
        archive.stop(0)
        _fail(str(exc))
    if archive.first_start is not None:
        click.echo(
            describe_first_start(archive.first_start.pki, archive.address[1], settings.ae_title),
            err=True,
        )
    if worker is None:
        inbox.install()
    now = False  # the stop skips the drain: a worker told STOP_NOW before it began one
    while True:
        arrived = inbox.wait(WATCH_PERIOD)
        if {signal.SIGTERM, signal.SIGINT, STOP_NOW} & set(arrived):
            stops.note()
            archive.begin_drain()  # /readyz answers 503 from this moment
            now = worker is not None and STOP_NOW in arrived
            break
        if signal.SIGHUP in arrived:
            archive.refresh_certificates()  # and the policy file
        if worker is not None and not worker.parent_alive():
            click.echo("mimic: the supervisor is gone; draining", err=True)
            break
        if not archive.listener_alive():
            # A process that no longer accepts connections must not look healthy: exit so
            # that the orchestrator restarts it.
            click.echo("mimic: the listener stopped; exiting", err=True)
            archive.stop(0)
            sys.exit(EXIT_LISTENER_DIED)

    def drain_wait(seconds: float) -> bool:
        # A SIGHUP during the drain (a certificate revoked meanwhile) is acted on as at any
        # other time: the revoked peer's associations are aborted now, not at the drain's end.
        arrived = inbox.wait(seconds)
        if signal.SIGHUP in arrived:
            archive.refresh_certificates()
        if worker is not None:
            return STOP_NOW in arrived  # True: the drain ends now
        if {signal.SIGTERM, signal.SIGINT} & set(arrived):
            stops.note()
        return stops.repeated

    archive.stop(0 if now else None, wait=drain_wait)
    if worker is not None:
        # Stopped: a STOP_NOW its supervisor sent meanwhile (the operator's second stop, as
        # this worker ended its drain) must not kill it as it exits, which it would once
        # the interpreter's finalization gives the signal its default action back; an
        # ignored one keeps its disposition.
        signal.signal(STOP_NOW, signal.SIG_IGN)


@main.command()
@settings_options
def web(**options: Any) -> None:
    """Run DICOMweb (/dicomweb) and the operator console (/) until SIGTERM or SIGINT."""
    from mimic_server.signals import SignalInbox
    from mimic_server.web.parent import run_workers, web_worker_count

    settings = _settings(**options)
    _check_local(settings, startup_checks.check_web)
    count = web_worker_count(settings)
    # as `serve`: a single process imports the app (pydicom with it) before its logging is
    # set up; the parent of workers never imports it
    _configure_logs(settings, None if count > 1 else "mimic_server.webapp")
    if count > 1:  # web/workers.py: one socket, uvicorn's supervisor, the app per worker
        try:
            given = {k: v for k, v in options.items() if v is not None}
            run_workers(settings, {k: json.loads(v) if k in _JSON_FIELDS else v
                                   for k, v in given.items()}, count)
        except ConfigurationError as exc:
            _fail(str(exc))
        return
    from mimic_server.webapp import WebArchive  # imported already, by _configure_logs

    archive = WebArchive(settings)
    try:
        archive.start()
    except ConfigurationError as exc:
        archive.stop()
        _fail(str(exc))
    inbox = SignalInbox((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    inbox.install()  # noted by the handlers, acted on here (signals.py)
    while True:
        arrived = inbox.wait(WATCH_PERIOD)
        if signal.SIGTERM in arrived or signal.SIGINT in arrived:
            break
        if signal.SIGHUP in arrived:
            archive.refresh_policy()
        if not archive.alive():
            click.echo("mimic: the web listener stopped; exiting", err=True)
            archive.stop()
            sys.exit(EXIT_LISTENER_DIED)
    archive.stop()


def _certs_failure(exc: ConfigurationError | OSError | ValueError) -> NoReturn:
    """A certs command that could not do its work: exit 2 with one line naming the file, as
    for any other configuration (a cert dir that is a file, a folder not writable)."""
    if isinstance(exc, OSError) and exc.filename is not None:
        _fail(f"{exc.filename}: {exc.strerror or type(exc).__name__}")
    _fail(str(exc))


def _cert_dir(data_dir: str | None, cert_dir: str | None) -> Path:
    return _settings(data_dir=data_dir, cert_dir=cert_dir).certificate_dir


_dir_options = [
    click.option("--data-dir", default=None, help="MIMIC_DATA_DIR (default ./mimic-data)."),
    click.option("--cert-dir", default=None, help="MIMIC_CERT_DIR (default DATA_DIR/certs)."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON object, for scripts."),
]


def _with_dir_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_dir_options):
        func = option(func)
    return func


@main.group()
def certs() -> None:
    """The development PKI and the trusted client certificates (directory source)."""


@certs.command("init")
@_with_dir_options
def certs_init(data_dir: str | None, cert_dir: str | None, as_json: bool) -> None:
    """Create the development CA, server certificate and a first client, if missing."""
    settings = _settings(data_dir=data_dir, cert_dir=cert_dir)
    directory = settings.certificate_dir
    try:
        # Resolved as certificate_dir is: the default data directory (mimic-data) and any
        # other relative one never matched, and devpki's mkdir made it 0755.
        if directory.is_relative_to(settings.data_dir.resolve()):
            startup_checks.make_data_dir(settings.data_dir)  # the owner's alone, as serve's
        pki = devpki.init(directory)
    except (ConfigurationError, OSError, ValueError) as exc:
        _certs_failure(exc)
    client = pki.first_client
    result = {
        "cert_dir": str(directory),
        "ca_cert": str(pki.ca_cert.resolve()),
        "server_cert": str(pki.server_cert.resolve()),
        "client_name": client.name if client else None,
        "client_cert": str(client.cert.resolve()) if client else None,
        "client_key": str(client.key.resolve()) if client else None,
        "created": pki.created,
    }
    _report(result, as_json, "created" if pki.created else "already present")


@certs.command("issue-client")
@click.argument("name")
@click.option("--ae-title", "ae_titles", multiple=True, help="Bind to this calling AE title.")
@click.option(
    "--days", type=click.IntRange(1, devpki.MAX_DAYS), default=730, show_default=True,
    help="Validity in days; never past the development CA's own end.",
)
@click.option(
    "--services", default=None,
    help="Services it may use, comma-separated (echo,store,find,move,get or all); "
    "default: none of its own (echo and store, or the policy file's rule).",
)
@click.option(
    "--move-destinations", default=None,
    help="Move Destination AE titles it may name, comma-separated ('*': every registered one).",
)
@_with_dir_options
def certs_issue_client(
    name: str,
    ae_titles: tuple[str, ...],
    days: int,
    services: str | None,
    move_destinations: str | None,
    data_dir: str | None,
    cert_dir: str | None,
    as_json: bool,
) -> None:
    """Issue a client certificate from the development CA and trust it.

    A running server trusts it within MIMIC_CERT_REFRESH_SECONDS (or at once on SIGHUP).
    """
    directory = _cert_dir(data_dir, cert_dir)
    rule: dict[str, object] = {}
    if services is not None:
        rule["services"] = [s.strip() for s in services.split(",") if s.strip()]
    if move_destinations is not None:
        rule["move_destinations"] = [d.strip() for d in move_destinations.split(",") if d.strip()]
    try:
        issued = devpki.issue_client(directory, name, list(ae_titles), days, rule or None)
    except (ConfigurationError, OSError, ValueError) as exc:
        _certs_failure(exc)
    result = {
        "name": issued.name,
        "ca_cert": str((directory / "ca" / "ca.pem").resolve()),
        "client_cert": str(issued.cert.resolve()),
        "client_key": str(issued.key.resolve()),
        "ae_titles": list(issued.ae_titles),
        **rule,
    }
    _report(result, as_json, f"issued and trusted {name}")


@certs.command("revoke")
@click.argument("name")
@_with_dir_options
def certs_revoke(name: str, data_dir: str | None, cert_dir: str | None, as_json: bool) -> None:
    """Take a client (or CA) out of the trusted set; a running server follows."""
    directory = _cert_dir(data_dir, cert_dir)
    try:
        moved = devpki.revoke(directory, name)
    except (ConfigurationError, OSError, ValueError) as exc:
        _certs_failure(exc)
    _report({"name": name, "moved_to": [str(p) for p in moved]}, as_json, f"revoked {name}")


@main.group()
def db() -> None:
    """The index database."""


@db.command("upgrade")
@click.option("--database-url", default=None, help="MIMIC_DATABASE_URL.")
@click.option("--database-auth", default=None, help="MIMIC_DATABASE_AUTH (password, entra).")
@click.option("--data-dir", default=None, help="MIMIC_DATA_DIR.")
def db_upgrade(database_url: str | None, database_auth: str | None, data_dir: str | None) -> None:
    """Apply the index schema migrations (Alembic) up to this version's head."""
    from mimic_server.backends import index_engine
    from mimic_server.index import schema
    from mimic_server.index.engine import driver_error

    settings = _settings(database_url=database_url, database_auth=database_auth, data_dir=data_dir)
    _check_local(settings, startup_checks.check_data_dir)
    try:
        engine = index_engine(settings)
    except ConfigurationError as exc:
        _fail(str(exc))
    try:
        schema.upgrade(engine)
        click.echo(f"index schema at {schema.current_revision(engine)}")
    except ConfigurationError as exc:
        _fail(str(exc))
    except Exception as exc:
        _fail(f"migration failed: {driver_error(exc)}")
    finally:
        engine.dispose()


#: The longest ``--settle-seconds``: a day is far past any C-STORE between its put and its
#: commit; beyond it a value is a slip of the keyboard.
MAX_SETTLE_SECONDS = 86400.0


def _settle_seconds(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
    """``--settle-seconds`` from 0 to a day. A negative value or ``nan`` skipped the wait
    before orphans were deleted without a word (the safety against deleting the object of a
    C-STORE in flight), and ``inf`` raised OverflowError from the sleep: a traceback and
    exit 1, which reconcile's scripts read as drift."""
    if not 0 <= value <= MAX_SETTLE_SECONDS:  # nan fails both comparisons
        raise click.BadParameter(f"{value} is not from 0 to {MAX_SETTLE_SECONDS:g} seconds")
    return value


@main.command()
@click.option("--fix", is_flag=True, help="Delete orphan objects; remove broken index rows.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object with the keys found.")
@click.option(
    "--settle-seconds", type=float, default=60.0, show_default=True,
    callback=_settle_seconds,
    help="With --fix: wait this long (0 to 86400), then re-check orphans before deleting "
    "them (a C-STORE in flight commits meanwhile).",
)
@click.option(
    "--store-may-be-empty", is_flag=True,
    help="With --fix: remove the rows of missing objects even when the store lists no "
    "object at all (by default that reads as a store not mounted, and they are kept).",
)
@click.option(
    "--index-may-be-empty", is_flag=True,
    help="With --fix: delete the orphan objects even when the index names no instance at "
    "all (by default that reads as another index than the archive's, and they are kept).",
)
@settings_options
def reconcile(fix: bool, as_json: bool, settle_seconds: float, store_may_be_empty: bool,
              index_may_be_empty: bool, **options: Any) -> None:
    """Compare the object store with the index; exit 1 while drift remains.

    Uses the same store and index as 'mimic serve' with the same settings. Reads (and hashes)
    every indexed object.
    """
    from mimic_server import logs
    from mimic_server.backends import close_object_store, open_object_store
    from mimic_server.errors import OutOfResources
    from mimic_server.reconcile import reconcile as run
    from mimic_server.resources import open_audit_trail, open_index
    from mimic_server.security.audit import AuditLog
    from mimic_server.storage import ObjectStore

    settings = _settings(**options)
    if fix and not (settings.uses_blob_storage and settings.database_url):
        # --fix writes the object directory, the SQLite index or the audit file: a data
        # directory it makes is its owner's alone, as serve's (made by the store's mkdir
        # under the umask, it was 0755 and its index and audit trail 0644).
        _check_local(settings, startup_checks.check_data_dir)
    logs.configure(settings.log_level, settings.log_format)
    engine, audit_log = None, AuditLog(None)
    store: ObjectStore | None = None
    try:
        # A report only reads, and may check a read-only copy; --fix deletes but never puts,
        # so its file store makes no spare files in .incoming, and is closed at the end (its
        # directory and lock file there go with it).
        store = open_object_store(settings, writable=fix, puts=False)
        engine, _ = open_index(settings, writable=fix)
        if fix:  # the same trail as 'mimic serve' (the table on PostgreSQL)
            audit_log = open_audit_trail(settings, engine)
        report = run(
            store, engine, fix=fix, settle_seconds=settle_seconds, audit_log=audit_log,
            store_may_be_empty=store_may_be_empty, index_may_be_empty=index_may_be_empty,
        )
    except (ConfigurationError, OutOfResources) as exc:
        _fail(str(exc))
    finally:
        audit_log.close()
        if engine is not None:
            engine.dispose()
        if store is not None:
            close_object_store(store)
    result = report.as_dict(with_keys=as_json)
    _report(result, as_json, "no drift" if report.drift == 0 else f"drift: {report.drift}")
    if report.remaining:
        sys.exit(EXIT_DRIFT)


def _since(value: str | None) -> datetime | None:
    """``--since``: an ISO 8601 time (UTC if no offset) or an age: ``90s``, ``15m``, ``2h``,
    ``7d``."""
    if value is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].isdigit():
        try:
            return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
        except OverflowError:  # an age before year 1 was a traceback, exit 1
            _fail(f"--since {value!r} reaches back past the first date a time can have")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"--since takes an ISO 8601 time or an age such as 15m, 2h, 7d: {value!r}")
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@main.command("audit")
@click.option("--since", default=None, help="Records from this time (ISO 8601) or age (2h).")
@click.option("--event", default=None,
              help="Event ID code (110112), its meaning (Query) or an event type (login); "
              "any case. Another value is refused, with the accepted ones.")
@click.option("--identity", default=None,
              help="Part of the certificate identity, trust name, calling AE title or user.")
@click.option("--study", default=None, help="A Study Instance UID the record names.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
@click.option("--xml", "as_xml", is_flag=True,
              help="The DICOM audit messages (PS3.15 A.5) themselves, one per line.")
@settings_options
def audit_command(since: str | None, event: str | None, identity: str | None,
                  study: str | None, as_json: bool, as_xml: bool, **options: Any) -> None:
    """List audit records, oldest first, from the audit trail 'mimic serve' writes with the
    same settings: the audit_events table when the index is PostgreSQL, else
    DATA_DIR/audit.jsonl. Exit 0 when listed (also when none match), 2 on bad settings or
    options, or when the trail cannot be read or is not there."""
    from mimic_server.security.audit import AuditFilter, event_selector, read_file

    # Two flags, not one shared destination: given both, click kept the last one silently,
    # and a script got another format than the one it parses.
    if as_json and as_xml:
        _fail("--json and --xml exclude each other: give one")
    if event is not None:
        try:
            event = event_selector(event)
        except ValueError as exc:
            _fail(f"--event {exc}")
    output = "json" if as_json else "xml" if as_xml else None
    settings = _settings(**options)
    selection = AuditFilter(since=_since(since), event=event, identity=identity, study=study)
    if settings.audit_in_index:
        records = _audit_table(settings, selection)
    else:
        try:
            # Every archive's start is a record: no file is no archive at all here (a data
            # directory mistyped), which an empty listing, exit 0, hid.
            settings.audit_path.stat()
            records = read_file(settings.audit_path, selection)
        except FileNotFoundError:
            _fail(f"audit trail {settings.audit_path} does not exist: no archive has run "
                  f"with this MIMIC_DATA_DIR ({settings.data_dir}) yet, or it names the "
                  "wrong directory")
        except OSError as exc:  # not readable by this account, not a file: not a traceback
            _fail(f"audit trail {settings.audit_path} unreadable: {exc.strerror or exc}")
        if settings.audit_path.exists():
            _audit_log_used(settings, None, selection)
    for record in records:
        if output == "xml":
            click.echo(record["xml"])
        elif output == "json":
            click.echo(json.dumps({k: record.get(k) for k in _AUDIT_FIELDS}, default=str))
        else:
            click.echo(" ".join([
                record["time"], record.get("event_name") or record["event"],
                str(record.get("event_type") or "-"), f"outcome={record['outcome']}",
                f"identity={record.get('identity') or '-'}",
                f"calling_ae={record.get('calling_ae') or '-'}",
                f"user={record.get('user') or '-'}",
                f"studies={','.join(record.get('studies') or []) or '-'}",
            ]))


_AUDIT_FIELDS = ("time", "event", "event_name", "event_type", "outcome", "identity",
                 "trust_name", "calling_ae", "user", "studies", "xml")


def _audit_log_used(settings: Settings, engine: Any, selection: Any) -> None:
    """Reading the trail is itself an audit record (Audit Log Used, PS3.15 A.5.3.2), in the
    trail ``mimic serve`` writes, naming the account that ran ``mimic audit``."""
    import getpass

    from mimic_server.resources import open_audit_trail
    from mimic_server.security import audit

    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # a container's uid without a passwd entry
        user = f"uid {os.getuid()}"
    try:
        audit_log = open_audit_trail(settings, engine)
    except (OSError, ConfigurationError) as exc:
        # An auditor's account may read the trail and not write it (a read-only mount, a
        # copy), nor read the archive's key the audit repository is shown: the records are
        # listed all the same, and the miss said.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        click.echo(f"mimic: this reading of the audit trail could not be recorded "
                   f"({type(exc).__name__}: {reason})", err=True)
        return
    try:
        uri = ("urn:mimic:audit_events" if engine is not None
               else settings.audit_path.resolve().as_uri())
        audit_log.record(audit.AUDIT_LOG_USED, audit.SUCCESS, identity="mimic audit",
                         user=user, audit_log=uri, filter=selection.describe())
    finally:
        audit_log.close()


def _audit_table(settings: Settings, selection: Any) -> list[dict[str, Any]]:
    from mimic_server.backends import index_engine
    from mimic_server.index import schema
    from mimic_server.index.audit_table import read_table
    from mimic_server.index.engine import driver_error

    try:
        engine = index_engine(settings)
    except ConfigurationError as exc:
        _fail(str(exc))
    try:
        schema.require_current(engine)
        rows = read_table(engine, selection.since, selection.study)  # narrowed in SQL
        _audit_log_used(settings, engine, selection)
        return [row for row in rows if selection.matches(row)]
    except ConfigurationError as exc:
        _fail(str(exc))
    except Exception as exc:
        _fail(f"audit table unreadable: {driver_error(exc)}")
    finally:
        engine.dispose()


def _report(result: dict[str, Any], as_json: bool, headline: str) -> None:
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(headline)
    for key, value in result.items():
        click.echo(f"  {key}: {value}")


@main.group()
def users() -> None:
    """Users for User Identity Negotiation type 2 (MIMIC_USERS_FILE)."""


@users.command("add")
@click.argument("name")
@click.option("--file", "path", required=True, type=click.Path(dir_okay=False),
              help="The user file (the server's MIMIC_USERS_FILE).")
@click.option("--role", "roles", multiple=True, help="A role of the user (repeatable).")
@click.password_option("--passcode", help="The passcode (prompted when not given).")
def users_add(name: str, path: str, roles: tuple[str, ...], passcode: str) -> None:
    """Add or replace a user; the passcode is kept as an Argon2id hash only."""
    from mimic_server.security.users import UsersFileError, add_user

    try:
        add_user(Path(path), name, passcode, list(roles))
    except (ValueError, UsersFileError) as exc:
        _fail(str(exc))
    except OSError as exc:  # a full disk, a read-only directory: the file is as it was
        _fail(f"{path}: {exc.strerror or type(exc).__name__}; the file is unchanged")
    click.echo(f"user {name} written to {path}")
