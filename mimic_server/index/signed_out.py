"""Console sessions signed out, in the index: what every ``mimic web`` replica sees.

Console sessions are signed cookies (``web/console/sessions.py``); the replicas share the
signing key and this database, nothing else. A sign-out kept in the memory (or a directory)
of the replica that took it left the cookie valid on the others until it expired, so each
sign-out is a row here (``signed_out_sessions``, migration 0005) and each session check of
a cookie not already known signed out reads one row by its primary key: a console request
is human-paced, and a check that remembered "not signed out" would hide a later sign-out
for as long as it remembered. Rows whose session has expired serve nothing (the cookie is
refused for its expiry first) and are deleted by the next sign-out, through the index on
``expires``: no timer, no job.

Errors are SQLAlchemy's, passed on: the console's :class:`Signer` refuses the session when
this cannot answer (fail closed).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Connection, Engine, delete, literal, select
from sqlalchemy.dialects import postgresql, sqlite

from mimic_server.index.engine import read_index, write_transaction
from mimic_server.index.models import SignedOutSession

_TABLE = SignedOutSession.__table__


class SignedOutSessions:
    """The signed-out session ids of every replica (``Signer``'s ``signed_out`` store)."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._insert = insert

    def add(self, session_id: str, expires: int) -> bool:
        """Record ``session_id`` signed out until ``expires``; True when this call recorded
        it (False: it was already). Expired rows are deleted in the same transaction."""
        now = int(self._clock())

        def work(conn: Connection) -> bool:
            conn.execute(delete(_TABLE).where(_TABLE.c.expires < now))
            # RETURNING, not the rowcount: SQLAlchemy leaves an INSERT's rowcount at -1 on
            # psycopg unless asked to keep it; a row comes back only when one was inserted.
            added = conn.execute(
                self._insert(_TABLE).values(session_id=session_id, expires=int(expires))
                .on_conflict_do_nothing(index_elements=["session_id"])
                .returning(_TABLE.c.session_id))
            return added.first() is not None

        return write_transaction(self._engine, work)

    def holds(self, session_id: str) -> bool:
        """Whether ``session_id`` was signed out (by any replica)."""
        query = select(literal(1)).where(_TABLE.c.session_id == session_id)
        return read_index(self._engine,
                          lambda conn: conn.execute(query).first() is not None)
