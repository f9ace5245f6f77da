"""One SQLAlchemy engine per process, tuned per dialect.

SQLite: WAL (readers never wait for the writer), ``synchronous=FULL`` (a committed row survives
power loss: we acknowledge C-STORE only after the commit), and write transactions opened with
``BEGIN IMMEDIATE`` so that two writers queue instead of failing to upgrade a read lock.

Writers of one SQLite file in several processes (``mimic serve``'s workers) queue in the
kernel, not in SQLite: SQLite's busy handler does not wait for the lock, it sleeps and tries
again (1, 2, 5, 10, 15, 20, 25 ... ms), so a writer that finds the lock taken stays idle for
milliseconds after it was freed (measured: up to 115 ms, a tenth of the run's time with two
workers and four associations; docs/benchmarks.md). Before ``BEGIN IMMEDIATE`` a write
transaction therefore takes a blocking ``flock`` on ``<database>-writer.lock`` beside the
database, and gives it back after its COMMIT or ROLLBACK has returned: the next writer wakes
the moment the lock is free. The flock only orders writers that hold it; SQLite's own
locking still decides (a writer without it, the ``sqlite3`` shell, meets the busy timeout as
before), so correctness and durability never depend on it. The kernel releases the lock of a
process that dies. Readers never take it.

PostgreSQL: no ping on every checkout from the pool (``pool_pre_ping``: a round trip before
every transaction, about 2 ms in Azure, on every C-STORE). A pooled connection that may have
gone stale is handled in two ways instead. One that sat in the pool longer than
``IDLE_PING_SECONDS`` (a quiet spell: a firewall or the server may have dropped it, the
server may have restarted) is pinged when it is checked out, and a dead one is replaced, with
the pool's others, before anyone uses it. One that died while in use (the server restarted
under load, the backend was terminated) fails the statement that finds it: SQLAlchemy then
invalidates it and every connection the pool held before (also where psycopg found the
socket gone before libpq marked the connection: ``_lost_without_sqlstate``), and a write
transaction that lost its connection before its COMMIT was sent, so that nothing of it can
have committed, is run once more on a fresh connection (``write_transaction``, and the group
commit's batches); a read is run once more too (``read_index``: it changes nothing). A
database that is down still fails at once: connecting is not retried.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError, InvalidatePoolError, OperationalError
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import queue as sqla_queue

log = logging.getLogger(__name__)

T = TypeVar("T")

WRITE = {"mimic_write": True}

#: A pooled PostgreSQL connection unused for longer than this is pinged when checked out (see
#: above): a steady sender reuses its connection within milliseconds and never pays the ping.
IDLE_PING_SECONDS = 10.0

#: libpq's TCP settings for every PostgreSQL connection, where the URL does not set its own.
#: A database that vanished without a reset (a failover, a flow an Azure load balancer
#: dropped while idle) is otherwise found out only after the kernel's ~15 minutes of
#: retransmissions, every C-STORE on that connection waiting as long: here a statement whose
#: bytes go unacknowledged for 30 s fails (``tcp_user_timeout``), and a connection that waits
#: on an answer, or sits in the pool, is probed after 30 s of silence and given up after
#: three unanswered probes 10 s apart. The probes also keep an idle flow from being dropped.
#: A live server's kernel acknowledges both at once, however long its query runs.
TCP_SETTINGS: dict[str, int] = {
    "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}

#: The server's deadlines on PostgreSQL (``create_index_engine(deadlines=True)``: the engine
#: of ``mimic serve``'s workers and of the DICOMweb server, not of ``mimic db upgrade``,
#: ``mimic reconcile`` or other maintenance), set on each connection as it is made: a statement
#: waits at most ``LOCK_TIMEOUT_MS`` for a lock (another session's LOCK TABLE, VACUUM FULL, a
#: migration) and runs at most ``STATEMENT_TIMEOUT_MS``. Without them a C-STORE, C-GET or
#: C-MOVE waited on a locked ``instances`` table as long as the lock was held, unanswered and
#: holding its thread, well past the peer's DIMSE timeout (60 s); now it is answered 0xA700
#: "index unavailable" first. Cancelled statements are not retried (``timed_out``). A C-FIND
#: page sets its own budget in its transaction (``query/pages.py``). Read at connect, so that
#: tests can lower them.
LOCK_TIMEOUT_MS = 15_000
STATEMENT_TIMEOUT_MS = 20_000

#: SQLite's busy timeout: how long a statement waits for another connection's lock (another
#: process's writer, an operator's ``sqlite3`` shell). A writer's wait for the writers' flock
#: counts against it (``_on_begin``): flock and busy wait together stay within it, so a
#: C-STORE behind a write lock held for minutes is answered 0xA700 within it, not after one
#: full busy wait per writer queued ahead on the flock. Read at connect, so tests can lower it.
BUSY_TIMEOUT_MS = 30_000

#: A flock wait shorter than this leaves the busy timeout as it is: writers of several worker
#: processes wait milliseconds for each other, and shortening costs two PRAGMAs.
_SHORTEN_AFTER_SECONDS = 0.1

#: PostgreSQL's SQLSTATEs of a statement cancelled by the deadlines above: lock_not_available
#: (lock_timeout) and query_canceled (statement_timeout).
_TIMED_OUT = frozenset({"55P03", "57014"})

#: Where a pooled connection's record keeps when it was last used (``_ping_when_idle``).
_IDLE_SINCE = "mimic_idle_since"

#: Headers as compact JSON: 11 % smaller and a quarter faster to write than json.dumps'
#: defaults, on every C-STORE. (ASCII escapes kept: text stays valid whatever it holds.)
_json_encoder = json.JSONEncoder(separators=(",", ":"), check_circular=False)
JSON_SERIALIZER = _json_encoder.encode

#: The token scope of Azure Database for PostgreSQL (Microsoft Entra authentication).
ENTRA_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"


#: PostgreSQL connections a process keeps open when idle (at most): the rest of
#: ``pool_size`` are opened when needed and closed when given back.
KEPT_CONNECTIONS = 8
#: Seconds a transaction waits for one of the process's ``pool_size`` PostgreSQL connections
#: before its C-STORE is refused 0xA700. Not the only wait of a C-STORE: a batch's leader
#: may have waited up to ``group_commit.QUEUE_SECONDS`` (20 s) in the queue before, so this
#: one is shorter, to answer within the minute most senders give a response.
POOL_WAIT_SECONDS = 10.0


def create_index_engine(url: str, credential: Any = None, *, writer_lock: bool = True,
                        deadlines: bool = False, pool_size: int = 32) -> Engine:
    """The index engine; with ``credential`` (a TokenCredential) PostgreSQL logs in with a
    fresh Microsoft Entra token for every new pooled connection, over TLS. ``writer_lock``
    False leaves SQLite writers to the busy timeout alone (``bench/sqlite_writers.py``
    compares the two). ``deadlines``: the server's lock and statement timeouts on PostgreSQL
    (``LOCK_TIMEOUT_MS``). ``pool_size``: the PostgreSQL connections the process may hold at
    once (``MIMIC_DATABASE_POOL_SIZE``); a server's processes together must stay below the
    database's connection limit, where every connection beyond it was refused ("too many
    connections"), and with it the C-STORE that needed it."""
    if url.startswith("sqlite"):
        connect_args: dict[str, Any] = {"check_same_thread": False, "timeout": 30}
        lock_path = writer_lock_path(url) if writer_lock else None
        if lock_path is not None:
            connect_args["factory"] = _connection_class(lock_path)
        engine = create_engine(
            url,
            connect_args=connect_args,
            pool_size=8,
            max_overflow=24,
            json_serializer=JSON_SERIALIZER,
        )
        _tune_sqlite(engine)
        return engine
    query = make_url(url).query
    connect_args: dict[str, Any] = {"connect_timeout": 10}
    connect_args.update({k: v for k, v in TCP_SETTINGS.items() if k not in query})
    if credential is not None and "sslmode" not in query:
        connect_args["sslmode"] = "require"
    kept = min(KEPT_CONNECTIONS, pool_size)
    engine = create_engine(
        url, poolclass=SlotWaitingPool, pool_size=kept, max_overflow=pool_size - kept,
        pool_timeout=POOL_WAIT_SECONDS, connect_args=connect_args, pool_recycle=1800,
        json_serializer=JSON_SERIALIZER,
    )
    _ping_when_idle(engine, IDLE_PING_SECONDS)
    _lost_without_sqlstate(engine)
    if deadlines:
        _set_deadlines(engine)
    if credential is not None:
        _use_entra_tokens(engine, credential)
    return engine


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Ping a connection that sat in the pool longer than ``idle_seconds`` as it is checked
    out; a lost one raises ``InvalidatePoolError``: the pool replaces it and every connection
    it held before (they went with the same server), then hands out a fresh one."""

    @event.listens_for(engine.pool, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        # Idle from now, unless its holder says since when (``give_back``).
        record.info.setdefault(_IDLE_SINCE, time.monotonic())

    @event.listens_for(engine.pool, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop(_IDLE_SINCE, None)
        if since is None or time.monotonic() - since < idle_seconds:
            return
        dbapi = engine.dialect.loaded_dbapi
        try:
            engine.dialect.do_ping(dbapi_connection)
        except dbapi.Error as exc:
            # psycopg may see the socket gone before libpq does ("connection socket
            # closed", an OperationalError, the connection not yet marked broken), and the
            # ping's own clean-up then raises a ProgrammingError over it: either, anywhere
            # in the chain, is a lost connection.
            chain = [exc, exc.__context__, exc.__cause__]
            if any(isinstance(e, dbapi.OperationalError) for e in chain) or (
                    engine.dialect.is_disconnect(exc, dbapi_connection, None)):
                raise InvalidatePoolError("an idle pooled connection was lost") from exc
            raise


def _set_deadlines(engine: Engine) -> None:
    """``LOCK_TIMEOUT_MS`` and ``STATEMENT_TIMEOUT_MS`` on every new connection: one round
    trip per connection, none per transaction (a ``SET LOCAL`` would double the one round
    trip of a C-STORE's own statement, ``group_commit._commit_alone``)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = {int(LOCK_TIMEOUT_MS)}")
            cursor.execute(f"SET statement_timeout = {int(STATEMENT_TIMEOUT_MS)}")
        dbapi_connection.commit()  # a session setting that a rollback would undo


def timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` is a statement PostgreSQL cancelled at a deadline (``LOCK_TIMEOUT_MS``,
    ``STATEMENT_TIMEOUT_MS``): it waited its full time already, so it is not tried again, and
    it says nothing of the writes of the statement's caller, only of the database."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) in _TIMED_OUT


#: psycopg's words for a socket found gone while it waited on it (an ``OSError``, or the
#: descriptor closed), before libpq has marked the connection broken. Where libpq itself
#: found the loss (it failed to read or to send), psycopg marks the connection broken, and
#: SQLAlchemy's dialect sees that already; a refusal of psycopg's on a sound connection
#: ("sending query and params failed: number of parameters must be between 0 and 65535")
#: is neither.
LOSS_WORDING = ("connection socket closed",)


def _lost_without_sqlstate(engine: Engine) -> None:
    """Count as a lost connection a psycopg ``OperationalError`` that the server did not send
    (no SQLSTATE) and that says the socket is gone (:data:`LOSS_WORDING`).

    SQLAlchemy's psycopg dialect sees a disconnect only where psycopg has already marked the
    connection broken. psycopg can find the socket gone before libpq does ("connection socket
    closed": a backend ended while the connection sat in the pool, the client's write met
    the server's reset), and the connection is not marked yet: SQLAlchemy would then neither
    invalidate it nor the pool's others, the statement's rollback on it would fail in turn
    ("another command is already in progress"), and a write transaction lost before its
    COMMIT would not run again (``lost_before_commit``). Errors the server sent (a lock
    timeout, a cancelled statement, a deadlock) carry their SQLSTATE, and psycopg's own
    refusals of a statement on a sound connection (too many parameters) are worded
    otherwise: both stay as they are (review: counting every error without a SQLSTATE as
    a loss replaced the whole pool, and ran the work again, for too many parameters)."""
    dbapi = engine.dialect.loaded_dbapi

    @event.listens_for(engine, "handle_error")
    def _handle_error(context: Any) -> None:
        error = context.original_exception
        if (context.connection is not None  # not a failure to connect: that is not retried
                and not context.is_disconnect and isinstance(error, dbapi.OperationalError)
                and getattr(error, "sqlstate", None) is None
                and str(error).startswith(LOSS_WORDING)):
            context.is_disconnect = True


def give_back(conn: Connection, idle_since: float) -> None:
    """Close ``conn`` (a connection checked out and kept unused since ``idle_since``, a
    ``time.monotonic()`` reading) back into the pool as idle since then, not since now: the
    ping at its next checkout (``_ping_when_idle``) counts the time it was kept."""
    if not (conn.closed or conn.invalidated):  # (``info`` would reconnect an invalidated one)
        conn.info[_IDLE_SINCE] = idle_since
    conn.close()


def lost_before_commit(exc: BaseException, committing: bool) -> bool:
    """Whether a write transaction may run again: its connection was lost (SQLAlchemy
    invalidated it) while its statements ran, before its COMMIT was sent, so nothing of it
    committed. A connection lost during the COMMIT leaves the outcome unknown: never."""
    return (not committing and isinstance(exc, DBAPIError)
            and bool(exc.connection_invalidated))


#: Set on a database error raised by a COMMIT whose connection was lost (``commit_lost``).
_OUTCOME_UNKNOWN = "mimic_commit_outcome_unknown"


def commit_lost(exc: BaseException) -> BaseException:
    """Mark ``exc``, raised by a COMMIT, when its connection was lost: the server may or may
    not have committed before the connection went, so the caller must not undo what the
    transaction refers to (``commit_outcome_unknown``)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        outcome_unknown(exc)
    return exc


def answered_by_server(exc: BaseException) -> bool:
    """Whether the database server itself ended the statement's session with an error of
    operator intervention (SQLSTATE class 57: ``57P01`` a shutdown or a backend ended,
    ``57P02`` a crash of another backend, ``57P03`` not accepting connections): PostgreSQL
    sends no such error for a statement that committed, so one that commits itself did
    not. (Read in its source, 14-17: interrupts are held from the commit through its
    cleanup, and a pending termination is acted on when the backend next reads a command,
    after it has sent ReadyForQuery; what it sends after a local commit, a synchronous
    replication wait cut short or an immediate shutdown, are warnings, then the connection
    closes: a loss with no SQLSTATE.) Any other loss tells nothing: a connection closed
    without an answer (cut, reset, the server gone before its reply), and a connection error
    a pooler in between makes up (PgBouncer's ``08P01`` "server conn crashed?"), after which
    the server may well have committed."""
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith("57P")


def outcome_unknown(exc: BaseException) -> BaseException:
    """Mark ``exc``, whatever it is, as leaving the outcome of earlier writes unknown
    (``commit_outcome_unknown``): raised once a write that may already have committed is
    being sent again (a statement that commits itself, its connection lost without an
    answer). A failure of that second try says nothing of the first."""
    setattr(exc, _OUTCOME_UNKNOWN, True)
    return exc


def commit_outcome_unknown(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised from, is a COMMIT that lost its connection:
    the index row may be there. A C-STORE is then still refused (the modality sends the
    object again, and the newest copy replaces any row that did commit), but its object is
    kept rather than deleted: an object without a row is an orphan that ``mimic reconcile``
    removes, a row without its object would be a lost image."""
    seen: BaseException | None = exc
    for _ in range(16):  # a chain of causes is short; never follow a cycle
        if seen is None:
            return False
        if getattr(seen, _OUTCOME_UNKNOWN, False):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def write_transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    """``work(connection)`` in a write transaction of its own, committed; run once more on a
    fresh connection when the first lost its connection before the commit
    (``lost_before_commit``: a stale pooled connection). ``work`` must make only writes that
    roll back with the transaction."""
    for last in (False, True):
        committing = False
        try:
            with engine.connect().execution_options(**WRITE) as conn, conn.begin():
                value = work(conn)
                committing = True
            return value
        except DBAPIError as exc:
            if committing:
                commit_lost(exc)
                raise
            if last or not lost_before_commit(exc, committing):
                raise
            log.warning("index connection lost before commit; the transaction runs again")
    raise AssertionError("unreachable")


def read_index(engine: Engine, work: Callable[[Connection], T]) -> T:
    """``work(connection)``, a read that fetches all it needs before it returns; run once
    more on a fresh connection when the first was found lost.

    Without a ping at every checkout, a pooled connection used less than
    ``IDLE_PING_SECONDS`` before the database restarted (an Azure maintenance restart) is
    stale, and the first statement on it fails. SQLAlchemy then invalidates it and the
    pool's older connections, so a second try gets a fresh one. A read changes nothing, so
    trying again is safe; the C-FIND, C-MOVE or WADO-RS request it serves need not fail for
    a restart that is over. A database that is down still fails at once (connecting is not
    retried). Not for a read that streams rows to its caller (``yield_per``, a generator):
    rows already handed on would be handed on again."""
    for last in (False, True):
        try:
            with engine.connect() as conn:
                return work(conn)
        except DBAPIError as exc:
            if last or not exc.connection_invalidated:
                raise
            log.warning("index connection lost during a read; the read runs again")
    raise AssertionError("unreachable")


def answers(engine: Engine) -> None:
    """The index answers a statement (a readiness check, ``ping``): raises SQLAlchemy's
    error otherwise. Through :func:`read_index`, so a connection lost to a restart that is
    over does not fail the check."""
    read_index(engine, lambda conn: conn.execute(text("SELECT 1")).scalar())


def refuses_writes(engine: Engine) -> bool:
    """Whether the index answers but would refuse every write (a readiness check, in place
    of :func:`answers`: one statement either way). PostgreSQL: ``transaction_read_only`` of a
    new transaction, on for a hot standby (a failover that went the wrong way) and under
    ``default_transaction_read_only``, which Azure Database for PostgreSQL turns on by itself
    when its storage is nearly full: ``SELECT 1`` still answers, and every C-STORE and
    STOW-RS is refused 0xA700. SQLite: ``SELECT 1`` alone; its file's writability is checked
    at start (:func:`check_writable`), and a write of nothing now would queue behind the
    writers' lock. Raises SQLAlchemy's error when the index does not answer."""
    if engine.dialect.name != "postgresql":
        answers(engine)
        return False
    value = read_index(
        engine, lambda conn: conn.execute(text("SHOW transaction_read_only")).scalar()
    )
    return str(value).lower() == "on"


def driver_error(exc: BaseException, *, message: bool = True) -> str:
    """One line for a database error: the driver's exception class, its code (SQLite's
    error name, PostgreSQL's SQLSTATE) and, with ``message``, the first line of the
    driver's own message.

    SQLAlchemy's ``str()`` of the error holds the statement's SQL text, its parameters
    (patient data, on a C-STORE) and a link, over five to ten lines; the driver's message
    alone holds none of them. PostgreSQL's first line can still quote a value ('invalid
    input syntax for type date: "..."'): where the error may concern a stored object's
    values, leave ``message`` out. SQLite's messages quote no values."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlite_errorname", None) or getattr(orig, "sqlstate", None)
    line = f"{type(orig).__name__}"
    if code:
        line += f" ({code})"
    first = str(orig).strip().splitlines()[0] if message and str(orig).strip() else ""
    return f"{line}: {first}" if first else line


def check_writable(engine: Engine) -> None:
    """Raise SQLAlchemy's ``OperationalError`` where SQLite may not write the database.

    A file of another owner or on a read-only mount opens read-only without a word, reads
    and even takes ``BEGIN IMMEDIATE`` (in WAL mode the write lock is in the ``-shm``
    file): only a write to the file fails, "attempt to write a readonly database". So a
    write of nothing, rolled back: the user version set to what it is."""
    with engine.connect().execution_options(**WRITE) as conn, conn.begin() as transaction:
        version = int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)
        conn.exec_driver_sql(f"PRAGMA user_version = {version}")
        transaction.rollback()


def _use_entra_tokens(engine: Engine, credential: Any) -> None:
    @event.listens_for(engine, "do_connect")
    def _token_as_password(_dialect: Any, _record: Any, _cargs: Any, cparams: Any) -> None:
        # Tokens live about an hour: each new connection asks (the credential caches).
        cparams["password"] = credential.get_token(ENTRA_SCOPE).token


#: What PostgreSQL answers a new connection it has no slot for (SQLSTATE 53300, which psycopg
#: does not give for a failure to connect): its ``max_connections`` ("sorry, too many clients
#: already"), the slots it reserves ("remaining connection slots are reserved for ..."), a
#: role's or a database's ``CONNECTION LIMIT`` ("too many connections for role ...").
NO_SLOT_WORDING = ("too many clients", "too many connections", "connection slots are reserved")
#: Seconds a new PostgreSQL connection is tried again while the server has no slot for it:
#: a slot held a moment by another replica, a revision's old replicas still draining or an
#: operator's ``psql`` is waited for; a server whose limit is too small for its processes'
#: pools (``MIMIC_DATABASE_POOL_SIZE``) is not, and its C-STORE is refused 0xA700.
SLOT_WAIT_SECONDS = 5.0
#: At most one WARNING per process in this many seconds while connections wait for a slot.
_SLOT_WARNING_SECONDS = 60.0


def no_slot(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL refusing a new connection for want of a slot."""
    text_ = str(exc)
    return any(wording in text_ for wording in NO_SLOT_WORDING)


class SlotWaitingPool(QueuePool):
    """The pool of a PostgreSQL engine: a new connection PostgreSQL refuses for want of a
    slot is tried again for up to :data:`SLOT_WAIT_SECONDS`, and a connection this process
    gives back meanwhile is taken at once.

    Refused at once before, each such connection failed the C-STORE (0xA700), the audit
    record or the C-FIND that needed it, though a slot was often free a moment later
    (measured: 16 associations of new series against a limit of 6 connections stored 62 of
    320 objects). Trying again is safe: nothing was sent. In the pool, not in a
    ``do_connect`` listener: a listener's caller holds one of the pool's places while it
    waits, and never sees the connections other threads give back (review: it waited out
    its 5 s with the process's own idle connection in the pool)."""

    def _do_get(self) -> Any:
        give_up = time.monotonic() + SLOT_WAIT_SECONDS
        pause = 0.05
        while True:
            try:
                return super()._do_get()
            except Exception as exc:  # the driver's own error: the engine wraps it later
                now = time.monotonic()
                if not no_slot(exc) or now + pause > give_up:
                    raise
                _say_no_slot(now)
            try:  # the pool's place was given back with the failure: wait for a connection
                return self._pool.get(True, pause * (0.5 + random.random()))
            except sqla_queue.Empty:
                pass
            pause = min(pause * 2, 1.0)


# SQLAlchemy names a pool's logger after its class, and keeps its own ("sqlalchemy") at
# WARNING: this class's lines ("Pool disposed", "Pool recreating") would be INFO lines of
# ours, at every stop and every lost connection.
logging.getLogger(f"{SlotWaitingPool.__module__}.{SlotWaitingPool.__name__}").setLevel(
    logging.WARNING)

#: When this process last said that the database had no slot (``_say_no_slot``).
_said_no_slot = [-_SLOT_WARNING_SECONDS]


def _say_no_slot(now: float) -> None:
    if now - _said_no_slot[0] >= _SLOT_WARNING_SECONDS:
        _said_no_slot[0] = now
        log.warning("the database has no connection slot free; connecting again",
                    extra={"wait_seconds": SLOT_WAIT_SECONDS})


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if not conn.get_execution_options().get("mimic_write", False):
            conn.exec_driver_sql("BEGIN")
            return
        dbapi_connection = conn.connection.dbapi_connection
        locked = isinstance(dbapi_connection, WriterLockedConnection)
        busy_ms = 0  # the busy timeout, when shortened by the flock's wait
        if locked:
            waited = dbapi_connection.lock_for_write()
            if waited >= _SHORTEN_AFTER_SECONDS:
                # The flock's holder waited its own busy timeout, or part of it, on a lock
                # another process holds: this writer waits only what is left of its deadline.
                busy_ms = int(BUSY_TIMEOUT_MS - waited * 1000)
                if busy_ms <= 0:
                    dbapi_connection.unlock_after_write()
                    raise OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError(
                        "database is locked (the writers' lock, for the busy timeout)"))
                dbapi_connection.execute(f"PRAGMA busy_timeout={busy_ms}")
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            if locked:
                dbapi_connection.unlock_after_write()
            raise
        finally:
            if busy_ms:
                dbapi_connection.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")


def writer_lock_path(url: str) -> str | None:
    """The writers' lock file of a SQLite database file; None for an in-memory database or a
    ``file:`` URI (those keep SQLite's busy timeout alone)."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database + "-writer.lock"


class WriterLockedConnection(sqlite3.Connection):
    """A SQLite connection whose write transactions hold an exclusive ``flock`` from before
    BEGIN IMMEDIATE until their COMMIT or ROLLBACK has returned (see the module's docstring).

    Each connection opens the lock file itself: ``flock`` locks belong to an open file, so
    two connections of one process exclude each other like two processes do."""

    lock_path: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock_fd: int | None = None
        self._locked = False

    def lock_for_write(self) -> float:
        """Wait (in the kernel, without the GIL) until no other writer holds the lock; the
        seconds waited. The wait ends: each holder gives the lock back within its own busy
        timeout, which its wait here shortened (``_on_begin``)."""
        if self._locked:
            return 0.0
        if self._lock_fd is None:
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        started = time.monotonic()
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._locked = True
        return time.monotonic() - started

    def unlock_after_write(self) -> None:
        if self._locked and self._lock_fd is not None:
            self._locked = False
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            if not self.in_transaction:  # a failed COMMIT leaves it open: rollback ends it
                self.unlock_after_write()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            if not self.in_transaction:
                self.unlock_after_write()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._locked = False
            if self._lock_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._lock_fd)  # closing the file releases its flock
                self._lock_fd = None


def _connection_class(lock_path: str) -> type[WriterLockedConnection]:
    """A connection class bound to one lock file (``sqlite3.connect`` takes a class)."""
    return type("WriterLockedConnection", (WriterLockedConnection,), {"lock_path": lock_path})
