"""The association slots of MIMIC_MAX_ASSOCIATIONS as two worker processes claim them through
their shared table (``workers/table.py``): two admissions at the same instant may both be
refused the last slot, never both given it."""

from __future__ import annotations

import socket
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mimic_server.net.server import MimicAssociationServer
from mimic_server.workers.table import AssociationTable


class _Worker:
    """One worker's listener and its view of the table, as ``app.py`` wires them (its own
    count published as it is counted, the others' added: ``WorkerLink.live_total``)."""

    def __init__(self, table: AssociationTable, slot: int) -> None:
        server = object.__new__(MimicAssociationServer)  # the slot bookkeeping only
        server._slot_lock, server._lock = threading.Lock(), threading.Lock()
        server._admitted = weakref.WeakSet()
        self.server, self.table, self.slot = server, table, slot

    def count(self) -> int:
        return self.table.admit(self.slot, self.server.live_associations())

    def take(self, assoc: Any, limit: int, count: Callable[[], int] | None = None) -> bool:
        taken = self.server.take_association_slot(assoc, limit, count or self.count)
        self.table.publish(self.slot, self.server.live_associations())  # app: changed()
        return taken


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for sock in held:
        sock.close()


def _association(sockets: list[socket.socket]) -> Any:
    ours, theirs = socket.socketpair()
    sockets += [ours, theirs]
    return SimpleNamespace(dul=SimpleNamespace(socket=SimpleNamespace(socket=ours)))


def test_two_workers_admitting_at_once_never_both_take_the_last_slot(
    tmp_path: Path, sockets: list[socket.socket],
) -> None:
    AssociationTable(tmp_path / "table", 2, create=True)
    a = _Worker(AssociationTable(tmp_path / "table", 2), 0)
    b = _Worker(AssociationTable(tmp_path / "table", 2), 1)
    taken: dict[str, bool] = {}

    def a_counts_while_b_admits() -> int:
        total = a.count()
        taken["b"] = b.take(_association(sockets), 1)  # another process, in that instant
        return total

    taken["a"] = a.take(_association(sockets), 1, a_counts_while_b_admits)
    # Counted before claimed, both were admitted. Claimed first, A's count says 1 and B's
    # (A's published among it) 2: B gives its claim back.
    assert taken == {"a": True, "b": False}
    assert a.table.total() == 1


def test_one_worker_admits_up_to_the_limit_and_gives_back(
    tmp_path: Path, sockets: list[socket.socket],
) -> None:
    AssociationTable(tmp_path / "table", 1, create=True)
    worker = _Worker(AssociationTable(tmp_path / "table", 1), 0)
    first, second = _association(sockets), _association(sockets)
    assert worker.take(first, 2) and worker.take(second, 2)
    assert not worker.take(_association(sockets), 2)
    assert worker.server.live_associations() == 2  # the refused claim was given back
    worker.server.give_back_association_slot(first)
    assert worker.take(_association(sockets), 2)
