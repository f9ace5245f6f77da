"""Group commit: the index writes of concurrent C-STOREs share one transaction and one commit.

A commit is the expensive part of indexing an instance (SQLite: an fsync of the WAL; PostgreSQL:
a round trip and a WAL flush), so writers that arrive while a commit is in flight wait for it,
and then the first of them commits all of them at once (leader/follower group commit). A batch
is only ever made of callers that were already waiting: a lone caller commits at once, without
added latency.

What makes it safe:

- every caller blocks until the transaction that holds its writes has committed, and only then
  gets its own result: the C-STORE's Success is sent after its row is durable, as before;
- one failing instance (a constraint, a lost insert race, bad data) fails alone: its caller
  gets its own exception, the transaction is rolled back and the others are written again
  without it, before any of them is answered; an instance that failed after others had
  written in its transaction (a series conflict with a batch-mate's new series) is written
  again in a transaction of its own once the batch is settled, and answered from that one:
  its failure may have come from rows that never committed;
- a failure of the transaction itself (cannot begin, the commit fails or loses its
  connection) is every waiter's error: none of them is told its writes are kept;
- a connection lost before the commit (a stale pooled connection: the database restarted,
  the backend was ended) is no waiter's failure: nothing committed, so the whole batch runs
  once more on a fresh connection before anyone is answered (``engine.lost_before_commit``);
- the caller's ``work`` does all its writes on the connection it is given (the instance row
  and, in the PostgreSQL configuration, its audit row), so they commit together or not at all.

A caller may also give its writes as one statement (``alone``: PostgreSQL's new instance with
its audit row, ``repository.py``). A batch of one such caller, the usual batch where
transactions run side by side, sends that statement on a connection in autocommit: the
statement is its own transaction, and BEGIN and COMMIT are no longer round trips of their
own (4 round trips per C-STORE became 1: docs/benchmarks.md). Its connection lost, the
statement runs once more on a fresh connection, as a transaction lost before its commit does;
it may have committed the first time, so ``alone`` must be safe to run again (the instance's
insert does nothing on a known SOP Instance UID, and its caller reads whose row it found),
and it is told so (its second argument) unless the database itself answered the first with
an error (``engine.answered_by_server``: it did not commit). From such a rerun on, the first
statement's outcome stays unknown whatever happens: a failure to reconnect, or of the
statement sent again, is marked so (``engine.outcome_unknown``), and the caller keeps the
object its row may point at.
A batch of several callers runs their ``work`` in one transaction, as before.

The connection of a batch that committed is kept for the next batch (up to ``in_flight`` of
them): a checkout from the pool and a new SQLAlchemy ``Connection`` cost more CPU than the
transaction's own BEGIN and COMMIT (0.36 against 0.19 ms on SQLite, 0.55-0.73 against
0.39-0.55 ms on PostgreSQL: docs/benchmarks.md). A connection that failed in any way is
closed, never kept, and the others kept go back to the pool with it: a lost connection
invalidates the pool's others, which only a checkout from the pool renews, and the batch's
rerun needs a fresh one. The pool's own care still applies: one unused for as long as the pool
would hand it out without a ping (``engine.IDLE_PING_SECONDS``) goes back to it as idle since
its last commit, so the pool pings it before anyone uses it again; and none is kept beyond
``KEEP_SECONDS`` from its checkout, so that the pool's checkout sees it at least that often
(its ``pool_recycle`` age, a pool invalidated after a lost connection elsewhere).

Retries stay with the caller (``SqlIndex.upsert_instance``): a transient error sends its
instance back to the queue, into a later batch. Batching is per process; between the worker
processes of one SQLite file, writers queue on a lock in the kernel (``engine.py``), and a
leader that waits there takes its batch only once it holds the lock, so the callers that
queued meanwhile share its commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, RootTransaction

from mimic_server.errors import OutOfResources
from mimic_server.index import engine as index_engine
from mimic_server.index.engine import (
    WRITE,
    answered_by_server,
    commit_lost,
    give_back,
    lost_before_commit,
    outcome_unknown,
    timed_out,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A connection, its write transaction, begun, and when it was checked out of the pool.
_Opened = tuple[Connection, RootTransaction, float]

#: The longest a connection is kept from one batch to the next after its checkout (above).
KEEP_SECONDS = 60.0

#: The longest a caller waits in the queue for a batch to take it, while every batch in
#: flight is stuck (a locked table, a busy SQLite writer in another process): then it is
#: refused (0xA700 "index unavailable") before the sender's DIMSE timeout, having written
#: nothing. A caller taken into a batch waits for its answer, which the server's deadlines
#: bound (``engine.LOCK_TIMEOUT_MS``).
QUEUE_SECONDS = 20.0

#: The most instances one transaction takes: a bound on how long a batch holds the write lock
#: and on what one failure of the transaction itself costs.
MAX_BATCH = 64


class _Waiter(Generic[T]):
    """One caller's writes, its place in the queue and, once committed, its outcome."""

    __slots__ = ("alone", "done", "error", "queued", "value", "work")

    def __init__(self, work: Callable[[Connection], T],
                 alone: Callable[[Connection, bool], T] | None = None) -> None:
        self.work = work
        self.alone = alone
        self.queued = True
        self.done = False
        self.value: T | None = None
        self.error: BaseException | None = None


class GroupCommitter:
    """Runs each caller's writes in a transaction shared with the callers waiting beside it.

    ``in_flight`` is how many batches may be committing at once: 1 where the database has one
    writer anyway (SQLite), more where transactions run side by side (PostgreSQL: the next batch
    need not wait for the previous one's round trips)."""

    def __init__(self, engine: Engine, *, max_batch: int = MAX_BATCH, in_flight: int = 1) -> None:
        if max_batch < 1 or in_flight < 1:
            raise ValueError("max_batch and in_flight must be at least 1")
        self.engine = engine
        self.max_batch = max_batch
        self.in_flight = in_flight
        #: SQLite's one writer: the leader of the one batch in flight opens its transaction
        #: (takes the write lock) before it takes its batch (``_lead``). Not PostgreSQL's, even
        #: with one batch in flight (a small pool, ``repository.pg_in_flight``): a lone
        #: C-STORE's one statement that commits itself (``alone``) would become BEGIN, the
        #: statement and COMMIT, two more round trips (measured, 2.4 ms each: one
        #: association's 49 objects/s fell to 36).
        self._begins_first = engine.dialect.name == "sqlite"
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Waiter[Any]] = deque()
        self._leaders = 0
        #: Connections of committed batches: unused since when, checked out when; the newest
        #: last (see above).
        self._kept: list[tuple[Connection, float, float]] = []
        self._kept_lock = threading.Lock()
        self._closed = False
        #: Transactions committed (or failed) and the instances they carried.
        self.batches = 0
        self.instances = 0
        self.largest_batch = 0

    @property
    def waiting(self) -> int:
        """Callers queued for the next batch (not yet in a transaction)."""
        with self._cond:
            return len(self._queue)

    def run(self, work: Callable[[Connection], T],
            alone: Callable[[Connection, bool], T] | None = None) -> T:
        """Run ``work(connection)`` in a shared write transaction; return its value once that
        transaction has committed, or raise its own error, or the transaction's.

        ``alone(connection, uncertain)``: the same writes as one statement that commits
        itself, sent instead of ``work`` when no other caller shares the batch (see above);
        ``uncertain``: it was sent before, lost, and may have committed then."""
        me: _Waiter[T] = _Waiter(work, alone)
        give_up = time.monotonic() + QUEUE_SECONDS
        with self._cond:
            self._queue.append(me)
            while not me.done:
                if me.queued and self._leaders < self.in_flight:
                    self._lead()
                elif not me.queued:  # in a batch: its leader answers, within the deadlines
                    self._cond.wait()
                else:
                    left = give_up - time.monotonic()
                    if left <= 0:  # in no transaction yet: nothing of it written
                        self._queue.remove(me)
                        raise OutOfResources("index unavailable")
                    self._cond.wait(left)
        # The batch's frames may outlive this call (a failure's traceback holds them), and
        # with them this waiter: it lets go of the failure.
        error, me.error = me.error, None
        if error is not None:
            try:
                raise error
            finally:
                del error  # this frame is in its traceback
        return me.value  # type: ignore[return-value]

    def _lead(self) -> None:
        """Take the callers waiting (up to ``max_batch``, oldest first: this caller among them
        unless the batch is full) and commit them; called and returns with the lock held.

        With one transaction at a time on SQLite, the leader opens its transaction first and
        takes its batch once it holds the database's write lock: while another worker
        process commits, the callers that arrive here queue and ride in this transaction,
        instead of each costing a commit of its own after it."""
        self._leaders += 1
        batch: list[_Waiter[Any]] = []
        try:
            opened: _Opened | None = None
            failure: BaseException | None = None
            if self.in_flight == 1 and self._begins_first:
                self._cond.release()
                try:
                    opened = self._begin()
                except BaseException as exc:
                    failure = exc
                finally:
                    self._cond.acquire()
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
            for waiter in batch:
                waiter.queued = False
            self._cond.release()
            try:
                if failure is not None:  # cannot begin: every waiter's error
                    for waiter in batch:
                        waiter.value, waiter.error = None, failure
                else:
                    self._commit(batch, opened)
            finally:
                self._cond.acquire()
        finally:
            self._leaders -= 1
            self.batches += 1
            self.instances += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            for waiter in batch:
                waiter.done = True
            self._cond.notify_all()  # the waiters of this batch, and the next leader

    def close(self) -> None:
        """Give the kept connections back to the pool (before the engine is disposed); the
        batches after this one check theirs out and close them as without keeping."""
        with self._kept_lock:
            self._closed = True
        self._give_back_kept()

    def _give_back_kept(self) -> None:
        """Every kept connection back to the pool, whose next checkout of each applies what
        happened meanwhile (a pool invalidated after a lost connection: a fresh one)."""
        with self._kept_lock:
            kept, self._kept = self._kept, []
        for conn, since, _ in kept:
            give_back(conn, since)

    def _begin(self) -> _Opened:
        """A connection with its write transaction begun (SQLite: the write lock held)."""
        kept = self._take_kept()
        if kept is not None:
            conn, checked_out = kept
        else:
            conn = self.engine.connect().execution_options(**WRITE)
            checked_out = time.monotonic()
        try:
            return conn, conn.begin(), checked_out
        except BaseException:
            conn.close()
            raise

    def _take_kept(self) -> tuple[Connection, float] | None:
        """The connection kept last and when it was checked out, or None; every kept
        connection unused or kept too long (above) goes back to the pool first, so that none
        sits unused below the one that is reused."""
        now = time.monotonic()
        stale: list[tuple[Connection, float, float]] = []
        fresh: list[tuple[Connection, float, float]] = []
        with self._kept_lock:
            for kept in self._kept:
                too_long = (now - kept[1] >= index_engine.IDLE_PING_SECONDS
                            or now - kept[2] >= KEEP_SECONDS)
                (stale if too_long else fresh).append(kept)
            taken = fresh.pop() if fresh else None
            self._kept = fresh
        for old, old_since, _ in stale:
            give_back(old, old_since)
        return (taken[0], taken[2]) if taken is not None else None

    def _keep(self, conn: Connection, checked_out: float) -> None:
        """Keep the connection of a batch that committed for a later batch, or close it."""
        now = time.monotonic()
        if (not (conn.closed or conn.invalidated or conn.in_transaction())
                and now - checked_out < KEEP_SECONDS):
            with self._kept_lock:
                if not self._closed and len(self._kept) < self.in_flight:
                    self._kept.append((conn, now, checked_out))
                    return
        conn.close()

    def _commit(self, batch: list[_Waiter[Any]], opened: _Opened | None = None) -> None:
        """One transaction for the batch (``opened``, if the leader began it already); each
        waiter's outcome is set, nothing is raised.

        A waiter whose writes failed after batch-mates had written in the same transaction
        may have failed because of their rows (a series filed under another study by one of
        them: ``HierarchyConflict``, which a C-STORE answers as permanent). Those rows commit
        only if the rest of the batch does, which is not known yet, so such a waiter is
        answered only after the batch is settled, from a transaction of its own run then
        (with the others of its kind, in their order): against rows that did commit, or
        that never did. Each such round starts with a waiter whose failure, if any, is
        final, so this ends; it costs a transaction only where a waiter failed."""
        if len(batch) == 1 and batch[0].alone is not None and opened is None:
            self._commit_alone(batch[0])
            return
        again = self._commit_batch(batch, opened)
        while again:
            log.debug("group commit: failures beside uncommitted rows, in a transaction again",
                      extra={"instances": len(again)})
            again = self._commit_batch(again)

    def _commit_batch(self, batch: list[_Waiter[Any]],
                      opened: _Opened | None = None) -> list[_Waiter[Any]]:
        """``_commit``'s transaction: each waiter's outcome is set, but for the waiters it
        returns, whose writes failed after others' in the transaction (``_commit``).

        Writes that fail roll the whole transaction back (PostgreSQL cannot go on after an
        error anyway), the failing waiter keeps its error (or is returned), and the others
        are written again in a new transaction at once: each failure takes one waiter out,
        so this ends. A savepoint per waiter would avoid the rewrite, but costs two more
        round trips to the database for every instance, failing or not."""
        pending = list(batch)
        again: list[_Waiter[Any]] = []
        reconnected = False
        try:
            while pending:
                failed: _Waiter[Any] | None = None
                committing = False
                try:
                    conn, transaction, checked_out = (
                        opened if opened is not None else self._begin())
                    opened = None
                    try:
                        with transaction:
                            for waiter in pending:
                                failed = waiter
                                waiter.value = waiter.work(conn)
                            failed = None
                            committing = True
                    except BaseException:
                        # Whatever failed, this connection is not kept, nor are the others:
                        # a lost connection invalidated the pool, and only a checkout from it
                        # renews a connection lost with it (the rerun below needs a fresh one).
                        conn.close()
                        self._give_back_kept()
                        raise
                    self._keep(conn, checked_out)
                except BaseException as exc:
                    # Begin or commit, or a statement cancelled at the server's deadline (a
                    # locked table: the next waiter's would wait as long again): the
                    # transaction's failure is everyone's.
                    if failed is None or timed_out(exc):
                        if committing:
                            commit_lost(exc)  # its rows may have committed: keep the objects
                        for waiter in pending:
                            waiter.value, waiter.error = None, exc
                        return again
                    if not reconnected and lost_before_commit(exc, committing=False):
                        # A stale pooled connection, lost before the commit: nothing of the
                        # batch committed, and no waiter is to blame. Once more, all of it,
                        # on a fresh connection (SQLAlchemy invalidated the pool's old ones).
                        reconnected = True
                        log.warning("index connection lost before commit; the batch runs again",
                                    extra={"instances": len(pending)})
                        continue
                    if failed is pending[0]:  # nobody wrote before it: its own failure
                        failed.value, failed.error = None, exc
                    else:  # perhaps for rows that never commit: judged again (``_commit``)
                        failed.value = None
                        again.append(failed)
                    pending.remove(failed)
                    if pending:
                        log.debug("group commit: one instance failed, the others again",
                                  extra={"instances": len(pending)})
                    continue
                return again
            return again
        finally:
            if opened is not None:  # an empty batch: give the transaction back unused
                opened[0].close()

    def _commit_alone(self, waiter: _Waiter[Any]) -> None:
        """The one statement of a batch of one, committed by itself (autocommit); the
        waiter's outcome is set, nothing is raised."""
        assert waiter.alone is not None
        reconnected = False
        uncertain = False  # sent before, lost without an answer: it may have committed
        while True:
            kept = self._take_kept()
            try:
                if kept is not None:
                    conn, checked_out = kept
                else:
                    conn = self.engine.connect().execution_options(**WRITE)
                    checked_out = time.monotonic()
            except BaseException as exc:  # cannot connect
                # After a lost statement, the first one may have committed all the same.
                waiter.value, waiter.error = None, outcome_unknown(exc) if uncertain else exc
                return
            dbapi_connection = conn.connection.dbapi_connection
            try:
                dbapi_connection.autocommit = True  # type: ignore[union-attr]
                waiter.value = waiter.alone(conn, uncertain)
            except BaseException as exc:
                _autocommit_off(conn)
                conn.close()  # never kept after a failure, nor are the others (``_commit``)
                self._give_back_kept()
                if not reconnected and lost_before_commit(exc, committing=False):
                    # A stale pooled connection: once more on a fresh one (``alone`` is safe
                    # to run again even if the statement did commit before the loss).
                    reconnected = True
                    uncertain = not answered_by_server(exc)
                    log.warning("index connection lost; the statement runs again",
                                extra={"instances": 1})
                    continue
                # Sent again and failed in any way: the first one may have committed (its
                # loss told nothing). Else, lost (``commit_lost``): this one may have.
                waiter.value, waiter.error = None, (
                    outcome_unknown(exc) if uncertain else commit_lost(exc))
                return
            if _autocommit_off(conn):
                self._keep(conn, checked_out)
            else:
                conn.close()
            return


def _autocommit_off(conn: Connection) -> bool:
    """Back to transactions before the connection is kept or pooled: a pooled connection in
    autocommit would make the next caller's writes commit one statement at a time. One that
    cannot be switched back (lost) is invalidated: the pool discards it."""
    if conn.invalidated or conn.closed:
        return False
    try:
        conn.connection.dbapi_connection.autocommit = False  # type: ignore[union-attr]
    except Exception:
        conn.invalidate()
        return False
    return True
