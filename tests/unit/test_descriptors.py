"""The pending-handshake cap left by the descriptor limit, with the database pool counted."""

from __future__ import annotations

import logging

import pytest

from mimic_server.net import descriptors


def test_the_cap_is_kept_where_the_limit_leaves_room() -> None:
    assert descriptors.pending_handshake_cap(64, 10, 1 << 16) == 64


@pytest.mark.parametrize("pool", [2, descriptors.DATABASE_POOL, 1000])
def test_the_cap_leaves_the_database_pool_its_descriptors(
    pool: int, caplog: pytest.LogCaptureFixture,
) -> None:
    """A PostgreSQL pool of up to 1000 connections holds as many descriptors: the cap is
    what is left after them, and the log says how much was reserved."""
    caplog.set_level(logging.INFO, logger=descriptors.__name__)
    cap = descriptors.pending_handshake_cap(4096, 10, 2048, pool)
    assert cap == 2048 - (10 * descriptors.PER_ASSOCIATION + pool + descriptors.PROCESS)
    (record,) = caplog.records
    assert record.levelname == "INFO"
    assert record.__dict__["reserved"] == descriptors.reserve(10, pool)


def test_too_little_room_leaves_the_minimum_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=descriptors.__name__)
    assert descriptors.pending_handshake_cap(1024, 10, 1024, 1000) == descriptors.MINIMUM_PENDING
    assert [r.levelname for r in caplog.records] == ["WARNING"]
