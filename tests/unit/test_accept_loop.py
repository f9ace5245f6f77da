"""The accept loop freezes the start-up heap before serving (pynetdicom's periodic full
collection then scans only what was made since); it blocks while idle, collects after
associations end, and a worker closing it leaves the shared listening socket listening."""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE

from mimic_server.app import Archive
from mimic_server.net.server import COLLECT_AFTER, MimicAssociationServer
from tests.support import HOST, wait_for


class _Listener:
    def __init__(self) -> None:
        self.frozen_at_start: int | None = None

    def serve_forever(self, poll_interval: float) -> None:
        self.frozen_at_start = gc.get_freeze_count()


def test_the_heap_is_frozen_before_the_first_accept() -> None:
    gc.unfreeze()
    listener = _Listener()
    try:
        Archive._serve(listener)  # type: ignore[arg-type]
    finally:
        gc.unfreeze()
    assert listener.frozen_at_start is not None and listener.frozen_at_start > 0


def test_an_accept_loop_that_dies_is_logged_critical(caplog: Any) -> None:
    class Broken:
        def serve_forever(self, poll_interval: float) -> None:
            raise RuntimeError("boom")

    try:
        Archive._serve(Broken())  # type: ignore[arg-type]
    finally:
        gc.unfreeze()
    assert any(r.levelname == "CRITICAL" and "listener stopped" in r.getMessage()
               for r in caplog.records)


def _archive(tmp_path: Path) -> Archive:
    from mimic_server.config import Settings

    archive = Archive(Settings(data_dir=tmp_path / "data", host=HOST, port=0, tls=False,
                               ops_port=0))
    archive.start()
    return archive


def test_an_idle_accept_loop_does_not_turn_and_a_connection_turns_it(tmp_path: Path) -> None:
    """The accept loop blocks until a connection arrives (``accept-waits``); pynetdicom's
    turned every 0.2 s. Stopping wakes it."""
    archive = _archive(tmp_path)
    try:
        server = archive.server
        assert server is not None and server._event_driven_accept
        turns: list[float] = []
        original = server.service_actions

        def counted() -> None:
            turns.append(time.monotonic())
            original()

        server.service_actions = counted  # type: ignore[method-assign]
        time.sleep(0.6)  # three of pynetdicom's turns
        assert turns == []
        socket.create_connection(archive.address, timeout=10).close()
        assert wait_for(lambda: len(turns) >= 1)
        assert archive.listener_alive()
    finally:
        archive.stop(0)
    assert archive._thread is not None and not archive._thread.is_alive()


def test_an_ended_association_schedules_a_collection(tmp_path: Path) -> None:
    archive = _archive(tmp_path)
    try:
        server = archive.server
        assert server is not None
        assert server._until_collection() is None  # nothing happened: no timeout at all
        told: list[int] = []
        server.on_associations_changed = lambda: told.append(1)
        ours = socket.socket()
        server._live.add(ours)
        server._admitted.add(ours)  # as the admission check claims its slot
        assert server.live_associations() == 1
        server.association_ended(ours)
        assert told and server.live_associations() == 0
        due = server._until_collection()
        assert due is not None and due <= COLLECT_AFTER
        ours.close()
    finally:
        archive.stop(0)


def test_a_worker_closing_its_listener_leaves_the_shared_socket_listening() -> None:
    """pynetdicom's server_close() shuts the listening socket down, which would stop the
    socket every worker shares: a worker closes its own descriptor only."""
    shared, server = _shared_server(None)
    server.server_close()
    try:
        with socket.create_connection(shared.getsockname(), timeout=5):
            shared.settimeout(5)
            accepted, _ = shared.accept()
            accepted.close()
    finally:
        shared.close()


def test_a_stop_does_not_wait_for_ever_for_an_accept_loop_that_does_not_end(
    tmp_path: Path, monkeypatch: Any, caplog: Any
) -> None:
    """``Archive.stop`` waited un-timed for the accept loop: a loop that never came back
    would hold the drain, the last counts and the process's exit until the supervisor killed
    it. The wait is bounded: the socket closes anyway, and the log says why."""
    from mimic_server.net import server as server_module

    monkeypatch.setattr(server_module, "ACCEPT_STOP_WAIT", 0.3)
    archive = _archive(tmp_path)
    server = archive.server
    assert server is not None
    inside, release = threading.Event(), threading.Event()

    def stuck() -> None:  # the loop's turn, held until the test lets it go
        inside.set()
        release.wait(30)

    server.service_actions = stuck  # type: ignore[method-assign]
    socket.create_connection(archive.address, timeout=10).close()
    assert inside.wait(10)
    try:
        archive.stop(0)
        assert archive.server is None  # stopped, whatever the loop does
        assert any(r.levelname == "ERROR" and "accept loop did not stop" in r.getMessage()
                   for r in caplog.records)
    finally:
        release.set()
    assert archive._thread is not None
    archive._thread.join(10)
    assert not archive._thread.is_alive()


class _Share:
    """Another worker as the accept loop sees it: whether it holds fewer connections."""

    def __init__(self, fewer: bool) -> None:
        self.fewer = fewer
        self.held: list[int] = []
        self.asked: list[int] = []
        self.stopped = False

    def hold(self, held: int) -> None:
        self.held.append(held)

    def another_holds_fewer(self, held: int) -> bool:
        self.asked.append(held)
        return self.fewer

    def stop_accepting(self) -> None:
        self.stopped = True


def _shared_server(share: _Share | None) -> tuple[socket.socket, MimicAssociationServer]:
    """A worker's server on a listening socket shared with the test (the other worker)."""
    shared = socket.socket()
    shared.bind((HOST, 0))
    shared.listen(8)
    copy = socket.socket(fileno=os.dup(shared.fileno()))  # what a worker inherits
    server = MimicAssociationServer(
        AE(), (HOST, 0), "MIMIC", [], ssl_context=None, trust=None, handshake_timeout=5,
        network_timeout=5, max_pdu_read=1 << 20, max_pending_handshakes=8,
        listening_socket=copy, event_driven_accept=True, accept_share=share,
    )
    return shared, server


def _serving(server: MimicAssociationServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("another_holds_fewer", [False, True], ids=["even", "busier"])
def test_a_connection_is_accepted_at_once_or_after_another_worker_left_it(
    another_holds_fewer: bool,
) -> None:
    """Holding no more than the others, a worker accepts at once; holding more, it waits
    (ACCEPT_DEFERRAL) for another to take the connection, and when nobody did it accepts
    it after all: no connection is left waiting."""
    share = _Share(fewer=another_holds_fewer)
    shared, server = _shared_server(share)
    thread = _serving(server)
    try:
        with socket.create_connection(shared.getsockname(), timeout=5):
            assert wait_for(lambda: server.connections_held() == 1)
            assert wait_for(lambda: max(share.held) >= 1)  # published once it held it
        assert share.asked == [0]
    finally:
        server.shutdown()
        thread.join(10)
        shared.close()
    assert share.stopped  # a stopped loop is waited for by no one


def test_a_connection_another_worker_took_meanwhile_is_not_waited_for(
    monkeypatch: Any,
) -> None:
    from mimic_server.net import server as server_module

    monkeypatch.setattr(server_module, "ACCEPT_DEFERRAL", 2.0)
    share = _Share(fewer=True)
    shared, server = _shared_server(share)
    handled: list[Any] = []
    server._handle_request_noblock = lambda: handled.append(1)  # type: ignore[method-assign]
    thread = _serving(server)
    try:
        client = socket.create_connection(shared.getsockname(), timeout=5)
        assert wait_for(lambda: share.asked == [0])
        shared.settimeout(5)
        taken, _ = shared.accept()  # the other worker, while this one waits
        time.sleep(2.5)
        assert handled == []  # nothing left to accept: the turn is dropped
        taken.close()
        client.close()
        assert server.connections_held() == 0
    finally:
        server.shutdown()
        thread.join(10)
        shared.close()


def test_a_stop_ends_the_wait_for_another_worker(monkeypatch: Any) -> None:
    from mimic_server.net import server as server_module

    monkeypatch.setattr(server_module, "ACCEPT_DEFERRAL", 60.0)
    share = _Share(fewer=True)
    shared, server = _shared_server(share)
    thread = _serving(server)
    try:
        client = socket.create_connection(shared.getsockname(), timeout=5)
        assert wait_for(lambda: share.asked == [0])
        started = time.monotonic()
        server.shutdown()
        thread.join(10)
        assert not thread.is_alive() and time.monotonic() - started < 30
        client.close()
    finally:
        shared.close()
