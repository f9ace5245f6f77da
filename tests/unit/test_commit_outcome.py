"""What a lost index statement's error says of its outcome (``index/engine.py``)."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from mimic_server.index.engine import answered_by_server


class _Answer(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def _lost(sqlstate: str | None) -> OperationalError:
    return OperationalError("INSERT ...", {}, _Answer(sqlstate))


def test_only_the_servers_own_ending_says_a_statement_did_not_commit() -> None:
    """A shutdown's error comes from PostgreSQL itself (class 57); a connection error a
    pooler makes up (PgBouncer's 08P01) or a loss without an answer tells nothing."""
    assert answered_by_server(_lost("57P01"))
    assert answered_by_server(_lost("57P02"))
    assert not answered_by_server(_lost("08P01"))
    assert not answered_by_server(_lost("08006"))
    assert not answered_by_server(_lost(None))
    assert not answered_by_server(ConnectionResetError())
