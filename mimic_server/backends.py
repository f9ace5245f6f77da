"""The index's engine and the object store, opened from the settings, and their readiness
checks: what ``mimic serve``'s supervisor needs of them, apart from what an archive needs.

The supervisor migrates (SQLite) or checks (PostgreSQL) the index once, creates the blob
container once, and answers the readiness probe for the whole server; it never serves a
C-STORE. Opening them here, on SQLAlchemy and the storage classes alone, keeps the DICOM
stack (pydicom, numpy, the pixel plugins) and the archive's own modules out of that
long-lived process: they were 34 MB of its resident memory (122 MB against 88), held for
its lifetime, in a container whose memory limit counts every process.
:mod:`mimic_server.resources` builds the archive's index on the engine opened here.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError

from mimic_server.config import Settings
from mimic_server.errors import ConfigurationError, OutOfResources
from mimic_server.index import schema
from mimic_server.index.engine import (
    check_writable,
    create_index_engine,
    driver_error,
    refuses_writes,
)
from mimic_server.storage import ObjectStore
from mimic_server.storage.filesystem import FilesystemStore
from mimic_server.storage.fs_journal import without_journal

log = logging.getLogger(__name__)


def store_answers(store: ObjectStore) -> str:
    """The readiness check of the object store (the archive's and the supervisor's)."""
    store.check()
    return "answers"


def index_answers(engine: Engine) -> str:
    """The readiness check of the index (the archive's and the supervisor's): it answers,
    and takes writes (a read-only PostgreSQL answers ``SELECT 1`` while every C-STORE is
    refused 0xA700: ``/readyz`` said ready)."""
    try:
        read_only = refuses_writes(engine)
    except SQLAlchemyError as exc:
        cause = type(getattr(exc, "orig", None) or exc).__name__
        raise OutOfResources(f"index does not answer ({cause})") from exc
    if read_only:
        raise OutOfResources("index is read-only (transaction_read_only is on)")
    return f"{engine.dialect.name} answers"


#: What the one line of a URL MIMIC cannot use says instead.
_EXPECTED = "PostgreSQL is postgresql+psycopg://"


def index_engine(settings: Settings, credential: Any = None, *,
                 deadlines: bool = False) -> Engine:
    """The engine of the index the settings name, neither migrated nor checked (``mimic db
    upgrade`` migrates it, ``mimic audit`` reads it): a URL whose dialect SQLAlchemy does not
    know (``postgres://``) or whose driver is not installed (``mysql://``,
    ``mssql+pyodbc://``) is a :class:`ConfigurationError`, one line, the URL not quoted
    (its password). ``credential``: see :func:`open_index_engine`.

    ``postgres://`` is not read as PostgreSQL: SQLAlchemy refuses it, and a URL that means
    one thing here and another in every other SQLAlchemy program is worse than one line
    that says what to write."""
    if credential is None and settings.database_auth == "entra":
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    try:
        return create_index_engine(settings.index_url, credential, deadlines=deadlines,
                                   pool_size=settings.database_pool_size)
    except ImportError as exc:  # a dialect whose driver is not installed (mysql://)
        raise ConfigurationError("index database URL names a database MIMIC has no driver "
                                 f"for (PostgreSQL or SQLite): {_EXPECTED}") from exc
    except NoSuchModuleError as exc:  # a dialect SQLAlchemy does not know (postgres://)
        raise ConfigurationError(
            f"index database URL names a database SQLAlchemy does not know"
            f"{_scheme(settings.index_url)}: {_EXPECTED}") from exc
    except (ArgumentError, ValueError) as exc:  # its message may quote the URL: not kept
        raise ConfigurationError(
            f"index database URL unusable ({type(exc).__name__})") from exc


def _scheme(url: str) -> str:
    """`` ('postgres')``: the URL's scheme, which holds no secret, where it is one."""
    scheme, found, _ = url.partition("://")
    return f" ({scheme!r})" if found and re.fullmatch(r"[A-Za-z0-9+_.-]{1,40}", scheme) else ""


def open_index_engine(
    settings: Settings, credential: Any = None, schema_revision: str | None = None,
    *, deadlines: bool = False, writable: bool = True,
) -> Engine:
    """The engine of the index the settings name: SQLite is migrated in place, PostgreSQL
    must be current; with ``schema_revision`` (a worker of ``mimic serve``, whose supervisor
    did either) the schema must be at that revision.

    ``credential`` logs in to PostgreSQL with Microsoft Entra tokens
    (``MIMIC_DATABASE_AUTH=entra``); when it is needed and not given, a
    DefaultAzureCredential is made here. ``deadlines``: a server's engine, whose statements
    give up on a locked or slow PostgreSQL (``engine.LOCK_TIMEOUT_MS``); maintenance
    commands wait as long as it takes. ``writable=False``: a command that only reads (a
    ``mimic reconcile`` report) is not refused an index it may read and not write, and
    never creates one (:func:`_require_index_file`).
    """
    if not writable:
        _require_index_file(settings)
    engine = index_engine(settings, credential, deadlines=deadlines)
    try:
        if schema_revision is not None:
            schema.require_revision(engine, schema_revision)
        elif engine.dialect.name == "sqlite" and writable:
            _require_writable(engine)
            schema.upgrade(engine)  # embedded mode: zero configuration
        elif engine.dialect.name == "sqlite":
            # A command that only reads migrates nothing: a report on an index of an older
            # MIMIC wrote its migration into the archive it was only to read.
            schema.require_current(engine)
        else:
            schema.require_current(engine)
    except ConfigurationError:
        engine.dispose()
        raise
    except Exception as exc:
        engine.dispose()
        # One line: SQLAlchemy's text of the error adds the SQL, "[SQL: ...]", a link.
        raise ConfigurationError(f"index database unusable: {driver_error(exc)}") from exc
    return engine


def _require_index_file(settings: Settings) -> None:
    """A command that only reads, with a SQLite index file that is not there (a data
    directory no archive has run in yet, or a MIMIC_DATA_DIR that names the wrong place):
    one line naming the file. SQLite answered "unable to open database file" when its
    directory was missing, and otherwise created the file, migrated it and reported an
    empty archive, writing into a directory the command was only to read."""
    if not settings.index_url.startswith("sqlite"):
        return
    database = make_url(settings.index_url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return  # in memory, or a URI SQLite resolves itself: nothing to look for
    if not Path(database).exists():
        where = ("this MIMIC_DATABASE_URL yet, or it names the wrong file"
                 if settings.database_url
                 else f"this MIMIC_DATA_DIR ({settings.data_dir}) yet, or it names the "
                 "wrong directory")
        raise ConfigurationError(f"index file {database} does not exist: no archive has run "
                                 f"with {where}; nothing was created")


def _require_writable(engine: Engine) -> None:
    """A SQLite file the server may not write (another owner, a read-only mount) stops the
    start: it read, answered ready, and refused every C-STORE 0xA700 with no word why."""
    try:
        check_writable(engine)
    except OperationalError as exc:
        if not str(getattr(exc.orig, "sqlite_errorname", "")).startswith("SQLITE_READONLY"):
            raise  # locked, not there...: "index database unusable"
        raise ConfigurationError(f"index file {_file_of(engine)} is not writable "
                                 f"({driver_error(exc)})") from exc


def _file_of(engine: Engine) -> str:
    return str(engine.url.database or "").removeprefix("file:")


def open_object_store(settings: Settings, credential: Any = None,
                      warn: bool = True, *, writable: bool = True,
                      concurrency: int | None = None, puts: bool = True) -> ObjectStore:
    """Blob Storage when an account URL or connection string is set, else files.

    ``credential`` signs Blob requests when there is no connection string; when it is needed
    and not given, a DefaultAzureCredential is made here (maintenance commands). ``warn``:
    say so when the object directory's file system needs a check after a crash (once per
    server: the supervisor says it, not each worker). ``writable=False``: an object
    directory that is only read (a reconcile report, of a read-only copy too).
    ``concurrency``: how many requests of this process may read or write at once, when not
    one per association (``mimic web``'s request threads): the Blob connection pool's size
    unless ``MIMIC_BLOB_CONNECTIONS`` says otherwise. ``puts=False``: this process never
    puts (``mimic serve``'s supervisor, which only answers ``/readyz`` from it), so the
    file store makes it no spare temporary files ahead. Close it with
    :func:`close_object_store`."""
    if settings.uses_blob_storage:
        return _blob_store(settings, credential, writable=writable, concurrency=concurrency)
    try:
        store = (FilesystemStore(settings.objects_dir, writable=writable) if puts
                 else FilesystemStore(settings.objects_dir, spare_files=0, writable=writable))
    except OSError as exc:
        raise ConfigurationError(
            f"object directory {settings.objects_dir} unusable: {exc}"
        ) from exc
    if warn and without_journal(settings.objects_dir):
        log.warning("the object directory is on ext4 without a journal: after a crash or a "
                    "power loss, run e2fsck on it before the server starts, or objects "
                    "acknowledged just before the crash can be lost",
                    extra={"objects": str(settings.objects_dir)})
    return store


def close_object_store(store: ObjectStore) -> None:
    """At a clean stop: the file store removes its temporary directory in ``.incoming`` (its
    spare files, made ahead, which nothing else removes while the directory's lock file is
    there) and releases that lock. A crash leaves them to the next store's sweep. A store
    without ``close`` (Blob Storage: nothing of its own left behind) is left as it is."""
    close = getattr(store, "close", None)
    if close is not None:
        close()


def _blob_store(settings: Settings, credential: Any = None, *,
                writable: bool = True, concurrency: int | None = None) -> ObjectStore:
    # Imported here: the Azure SDK costs start-up time that the embedded mode need not pay.
    from mimic_server.storage.azure_blob import (
        AzureBlobStore,
        blob_service_client,
        largest_data_set,
    )

    if writable and settings.max_object_bytes > largest_data_set():
        # Refused at start: past 50,000 blocks the service refuses the next one, and such a
        # C-STORE failed (0xA700) only after some 195 GiB had been received and uploaded.
        raise ConfigurationError(
            f"MIMIC_MAX_OBJECT_BYTES ({settings.max_object_bytes}) is larger than one blob "
            f"holds (50,000 blocks of 4 MiB: at most {largest_data_set()} bytes of data set)"
        )
    if settings.blob_connection_string:
        credential = None
    elif credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    service = blob_service_client(
        account_url=settings.blob_account_url,
        credential=credential,
        connection_string=settings.blob_connection_string,
        retries=settings.blob_retries,
        timeout=settings.blob_timeout,
        connections=settings.blob_connections or concurrency or settings.max_associations,
    )
    # Only a store that writes creates its container: an identity that may only read and
    # list (Storage Blob Data Reader) was refused the create, and so its reconcile report.
    return AzureBlobStore(
        service, settings.blob_container,
        create_container=settings.blob_create_container and writable,
    )
