"""A C-FIND's candidate rows, read in bounded pages under a time budget.

Reading one streamed cursor for the whole answer stream held a pooled connection (and, on
SQLite, a WAL read snapshot that blocks checkpoints) for as long as the peer took to read
the answers: a few slow C-FIND peers could take the pool and stall every C-STORE. Here each
page is its own short read, keyed on the entity id the statement is ordered by
(``WHERE id > last ORDER BY id LIMIT n``), and the connection goes back to the pool before
the first row of the page is answered.

The :class:`Budget` is the time the archive spends on one query: reading pages and matching
rows, not the time the peer takes to read the answers (that is the network timeout's
business). A page read is interrupted when the budget runs out during it (``statement_timeout``
on PostgreSQL, a progress handler on SQLite), so no single statement outlives the budget.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Connection, Engine, Row, Select
from sqlalchemy.exc import DBAPIError

from mimic_server.index.engine import read_index

#: Rows read per page (and held in memory at once).
PAGE_SIZE = 200
#: SQLite virtual machine instructions between two looks at the clock.
_SQLITE_CHECK_EVERY = 10_000
#: PostgreSQL's largest statement_timeout (milliseconds, a 32-bit int).
_LONGEST_STATEMENT_TIMEOUT_MS = 2**31 - 1
#: PostgreSQL's SQLSTATE for a statement cancelled by statement_timeout.
_QUERY_CANCELED = "57014"


class TimeLimitReached(Exception):
    """The query has spent its time budget; the answers so far were sent."""


class Budget:
    """Seconds of work one query may spend; paused while its consumer holds an answer."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._spent = 0.0
        self._since: float | None = clock()

    def pause(self) -> None:
        if self._since is not None:
            self._spent += self._clock() - self._since
            self._since = None

    def resume(self) -> None:
        if self._since is None:
            self._since = self._clock()

    def remaining(self) -> float:
        running = self._clock() - self._since if self._since is not None else 0.0
        return self.seconds - self._spent - running

    def check(self) -> None:
        """Raise :class:`TimeLimitReached` once the budget is spent."""
        if self.remaining() <= 0:
            raise TimeLimitReached(self.seconds)


def pages(
    engine: Engine, statement: Select[Any], key: Any, budget: Budget, page_size: int = PAGE_SIZE
) -> Iterator[list[Row[Any]]]:
    """``statement`` (ordered by ``key``, which it selects as ``entity_id``) page by page;
    no connection is held while a page is being consumed."""
    last: Any = None
    while True:
        budget.check()
        paged = statement if last is None else statement.where(key > last)
        rows = _read(engine, paged.limit(page_size), budget)
        if rows:
            yield rows
        if len(rows) < page_size:
            return
        last = rows[-1]._mapping["entity_id"]


def _read(engine: Engine, statement: Select[Any], budget: Budget) -> list[Row[Any]]:
    """One page, read again on a fresh connection if the first was lost (``read_index``)."""

    def page(conn: Connection) -> list[Row[Any]]:
        with _interrupted_after(conn, budget) as interrupted:
            try:
                return list(conn.execute(statement).all())
            except DBAPIError as exc:
                if interrupted() or getattr(exc.orig, "sqlstate", None) == _QUERY_CANCELED:
                    raise TimeLimitReached(budget.seconds) from exc
                raise

    return read_index(engine, page)


@contextlib.contextmanager
def _interrupted_after(conn: Connection, budget: Budget) -> Iterator[Callable[[], bool]]:
    """Stop the connection's statements once ``budget`` is spent; yields "was it stopped?"."""
    remaining = max(budget.remaining(), 0.001)
    if conn.dialect.name == "postgresql":
        # Local to the page's transaction, which ends (rolled back) when the page is read.
        # At most PostgreSQL's largest (an int of milliseconds, ~24.8 days): a longer
        # budget (MIMIC_FIND_TIME_LIMIT_SECONDS has no upper bound) was refused as a value
        # out of range, and every C-FIND failed 0xA700 where SQLite answered.
        milliseconds = min(max(int(remaining * 1000), 1), _LONGEST_STATEMENT_TIMEOUT_MS)
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {milliseconds}")
        yield lambda: False
        return
    if conn.dialect.name != "sqlite":
        yield lambda: False
        return
    driver = conn.connection.driver_connection
    stopped = False

    def _progress() -> bool:
        nonlocal stopped
        stopped = budget.remaining() <= 0
        return stopped

    driver.set_progress_handler(_progress, _SQLITE_CHECK_EVERY)
    try:
        yield lambda: stopped
    finally:
        driver.set_progress_handler(None, _SQLITE_CHECK_EVERY)
