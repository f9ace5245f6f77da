"""A streamed answer's generator is closed as the answer ends, with the cyclic garbage
collector off: the client leaving mid-answer, the answer read to its end, the generator
failing (``web/dicomweb/closing_stream.py``). Real uvicorn on loopback, as ``mimic web``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.routing import Route

from mimic_server.web.dicomweb.closing_stream import Body, ClosingStreamingResponse
from mimic_server.web.server import uvicorn_options
from tests.support import HOST, free_port

PIECE = b"x" * 65536


class Served:
    """One generator per request; where and how each ended."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.closed_in: str | None = None
        self.pieces_sent = 0

    def body(self, pieces: int, fail_at: int | None) -> Body:
        try:
            for n in range(pieces):
                if n == fail_at:
                    raise OSError("the store failed mid-answer")
                self.pieces_sent += 1
                yield PIECE
        finally:
            self.closed_in = threading.current_thread().name
            self.closed.set()


@pytest.fixture
def served() -> Iterator[tuple[Served, int, threading.Thread]]:
    state = Served()

    async def route(request: Request) -> ClosingStreamingResponse:
        pieces = int(request.query_params.get("pieces", "100000"))
        fail_at = request.query_params.get("fail_at")
        return ClosingStreamingResponse(
            state.body(pieces, None if fail_at is None else int(fail_at)),
            media_type="application/octet-stream")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        Starlette(routes=[Route("/", route)]), host=HOST, port=port, log_level="critical"))
    loop_thread = threading.Thread(target=server.run, name="test-event-loop", daemon=True)
    enabled = gc.isenabled()
    gc.disable()
    loop_thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and loop_thread.is_alive()
            time.sleep(0.02)
        yield state, port, loop_thread
    finally:
        server.should_exit = True
        loop_thread.join(10)
        if enabled:
            gc.enable()


def _request(port: int, query: str) -> socket.socket:
    client = socket.create_connection((HOST, port))
    client.sendall(f"GET /?{query} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    return client


def test_a_client_that_leaves_mid_answer_closes_the_generator(
        served: tuple[Served, int, threading.Thread]) -> None:
    state, port, loop_thread = served
    with _request(port, "pieces=100000") as client:
        client.recv(65536)
        time.sleep(0.1)
    assert state.closed.wait(5), "not closed without the garbage collector"
    assert state.pieces_sent < 100000
    assert state.closed_in not in (None, loop_thread.name)  # not in the event loop


def test_an_answer_read_to_its_end_closes_the_generator(
        served: tuple[Served, int, threading.Thread]) -> None:
    state, port, _ = served
    with _request(port, "pieces=4") as client:
        client.settimeout(10)
        received = b""
        while not received.endswith(b"0\r\n\r\n"):  # the chunked answer's last chunk
            received += client.recv(1 << 20)
    assert received.count(b"x") == 4 * len(PIECE)
    assert state.closed.wait(5)
    assert state.pieces_sent == 4


def test_a_generator_that_fails_mid_answer_is_closed(
        served: tuple[Served, int, threading.Thread]) -> None:
    state, port, _ = served
    with _request(port, "pieces=10&fail_at=3") as client:
        client.settimeout(10)
        while client.recv(1 << 20):  # the server ends the connection, the answer cut short
            pass
    assert state.closed.wait(5)
    assert state.pieces_sent == 3


_SCOPE = {"type": "http", "method": "GET", "path": "/", "headers": []}


class _Ended(Served):
    def __init__(self) -> None:
        super().__init__()
        self.unstarted_in: str | None = None

    def unstarted(self) -> None:
        self.unstarted_in = threading.current_thread().name


def test_an_answer_whose_client_left_before_its_start_runs_unstarted() -> None:
    """The generator never started (the send of the answer's start failed: the client left
    while the route verified the object): what the route began is ended by ``unstarted``,
    in a worker thread."""
    state = _Ended()

    async def send(message: dict[str, object]) -> None:
        raise OSError("the client is gone")  # an ASGI 2.4 server's send after a disconnect

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def main() -> str:
        response = ClosingStreamingResponse(state.body(10, None), "application/octet-stream",
                                            unstarted=state.unstarted)
        with pytest.raises(ClientDisconnect):
            await response({**_SCOPE, "asgi": {"spec_version": "2.4"}}, receive, send)
        return threading.current_thread().name

    loop_thread = anyio.run(main)
    assert state.pieces_sent == 0 and not state.closed.is_set()  # its finally never ran
    assert state.unstarted_in not in (None, loop_thread)


def test_an_answer_never_sent_runs_unstarted() -> None:
    """A response the server drops uncalled (a cancellation while the route's thread was
    returning it, at the end of a shutdown): ``unstarted`` runs as it goes, once; a response
    that was sent does not run it again when it goes."""
    import gc

    state = _Ended()
    response = ClosingStreamingResponse(state.body(10, None), "application/octet-stream",
                                        unstarted=state.unstarted)
    del response
    assert state.unstarted_in is not None
    assert state.pieces_sent == 0 and not state.closed.is_set()  # its finally never ran

    sent = _Ended()

    async def send(message: dict[str, object]) -> None:
        pass

    async def receive() -> dict[str, object]:
        await anyio.sleep(10)
        return {"type": "http.disconnect"}

    async def main() -> None:
        response = ClosingStreamingResponse(sent.body(3, None), "application/octet-stream",
                                            unstarted=sent.unstarted)
        await response(_SCOPE, receive, send)

    anyio.run(main)
    gc.collect()
    assert sent.pieces_sent == 3 and sent.closed.is_set()
    assert sent.unstarted_in is None


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
def test_an_answer_cancelled_by_its_scope_closes_the_generator(spec: str) -> None:
    """A timeout or a task group around the app cancels the answer mid-way: the clean-up is
    shielded, and the generator still closed in a worker thread."""
    state = Served()
    started = anyio.Event()

    async def send(message: dict[str, object]) -> None:
        if message.get("body"):
            started.set()
            await anyio.sleep_forever()  # a client that stopped reading

    async def receive() -> dict[str, object]:
        await anyio.sleep_forever()
        return {}

    async def main() -> str:
        response = ClosingStreamingResponse(state.body(10, None), "application/octet-stream")
        with anyio.move_on_after(0.5):
            await response({**_SCOPE, "asgi": {"spec_version": spec}}, receive, send)
        return threading.current_thread().name

    enabled = gc.isenabled()
    gc.disable()
    try:
        loop_thread = anyio.run(main)
        assert state.closed.wait(5) and 0 < state.pieces_sent < 10
        assert state.closed_in not in (None, loop_thread)
    finally:
        if enabled:
            gc.enable()


@pytest.mark.parametrize("cancels", [1, 2])
def test_a_native_cancellation_mid_read_waits_for_the_read_then_closes(cancels: int) -> None:
    """uvicorn cancels the requests left at the end of its graceful shutdown with
    ``task.cancel()``, which abandons the worker thread of a ``next()`` still reading, and
    its loop's end cancels them once more: the clean-up waits for that read, then closes the
    generator (before: "generator already executing", and the generator left to the
    collector)."""
    release = threading.Event()
    closed_in: list[str] = []
    closed = threading.Event()

    def body() -> Body:
        try:
            yield b"first"
            release.wait(10)  # a slow read from the store
            yield b"second"
        finally:
            closed_in.append(threading.current_thread().name)
            closed.set()

    async def main() -> str:
        response = ClosingStreamingResponse(body(), "application/octet-stream")
        first_sent = asyncio.Event()

        async def send(message: dict[str, object]) -> None:
            if message.get("body") == b"first":
                first_sent.set()

        async def receive() -> dict[str, object]:
            await asyncio.sleep(3600)
            return {}

        task = asyncio.ensure_future(
            response({**_SCOPE, "asgi": {"spec_version": "2.4"}}, receive, send))
        await first_sent.wait()
        await asyncio.sleep(0.2)  # the second next() is now waiting in its thread
        task.cancel()
        if cancels == 2:
            await asyncio.sleep(0.05)  # the clean-up has begun
            task.cancel()
        threading.Timer(0.3, release.set).start()
        with pytest.raises(asyncio.CancelledError):
            await task
        return threading.current_thread().name

    loop_thread = asyncio.run(main())
    assert closed.wait(5)
    assert len(closed_in) == 1 and closed_in[0] != loop_thread


def test_a_read_in_flight_at_shutdown_is_closed_once_it_returns() -> None:
    """``mimic web``'s uvicorn (its own options: a 2 s graceful shutdown) asked to stop while
    a piece of an answer is being read for longer than that, the server speaking ASGI 2.4 (a
    failed send raises): uvicorn cancels the request's task, and its loop's end cancels it
    again. The generator is still closed, off the event loop, once the read returns."""
    release_after = 3.0
    closed_in: list[str] = []
    closed = threading.Event()

    def body() -> Body:
        try:
            yield b"first"
            time.sleep(release_after)  # a slow read from the store
            yield b"second"
        finally:
            closed_in.append(threading.current_thread().name)
            closed.set()

    async def route(request: Request) -> ClosingStreamingResponse:
        return ClosingStreamingResponse(body(), "application/octet-stream")

    app = Starlette(routes=[Route("/", route)])

    async def asgi_2_4(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": "2.4"}}
        await app(scope, receive, send)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(asgi_2_4, host=HOST, port=port,
                                           **uvicorn_options()))
    loop_thread = threading.Thread(target=server.run, name="test-event-loop", daemon=True)
    enabled = gc.isenabled()
    gc.disable()
    try:
        loop_thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and loop_thread.is_alive()
            time.sleep(0.02)
        with _request(port, "") as client:
            client.recv(4096)
            time.sleep(0.2)  # the second piece is being read
            server.should_exit = True
            loop_thread.join(15)
            assert not loop_thread.is_alive()
            assert closed.wait(release_after + 5), "left to the collector"
        assert closed_in and closed_in[0] != loop_thread.name
    finally:
        server.should_exit = True
        if enabled:
            gc.enable()


def test_a_step_racing_the_finish_runs_the_finally_or_unstarted_never_both() -> None:
    """Whether a step began is decided under the same lock as the closing: a ``next()``
    that an abandoned worker thread makes just as the answer is finished either runs (and
    the generator's finally follows) or is refused (and ``unstarted`` runs), each time."""
    from mimic_server.web.dicomweb.closing_stream import _Steps

    for _ in range(300):
        ran = _race_once(_Steps)
        assert ran in (["finally"], ["unstarted"]), ran


def _race_once(steps_of: Any) -> list[str]:
    ran: list[str] = []

    def body() -> Body:
        try:
            yield b"head"
        finally:
            ran.append("finally")

    steps = steps_of(body())
    go = threading.Barrier(2)

    def step() -> None:
        go.wait()
        with contextlib.suppress(StopIteration):
            next(steps)

    worker = threading.Thread(target=step)
    worker.start()
    go.wait()
    steps.finish(lambda: ran.append("unstarted"))
    worker.join()
    return ran


def test_a_clean_up_that_fails_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """An ``unstarted`` (or a generator's finally) that raises in the helper thread is said
    at ERROR, its type only, not lost with the thread's future."""
    state = _Ended()

    def failing() -> None:
        raise OSError("the audit trail is down")

    async def send(message: dict[str, object]) -> None:
        raise OSError("the client is gone")

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def main() -> None:
        response = ClosingStreamingResponse(state.body(10, None), "application/octet-stream",
                                            unstarted=failing)
        with pytest.raises(ClientDisconnect):
            await response({**_SCOPE, "asgi": {"spec_version": "2.4"}}, receive, send)

    with caplog.at_level(logging.ERROR, logger="mimic_server.web.dicomweb.closing_stream"):
        anyio.run(main)
    [said] = [r for r in caplog.records if "clean-up failed" in r.getMessage()]
    assert said.levelno == logging.ERROR and said.error == "OSError"  # type: ignore[attr-defined]
    assert "audit trail is down" not in caplog.text


_AT_EXIT = """
import asyncio, sys, time
from mimic_server.web.dicomweb.closing_stream import ClosingStreamingResponse
def body():
    try:
        yield b"a"
        time.sleep(0.5)  # a slow read in flight at shutdown
        yield b"b"
    finally:
        time.sleep(0.1)  # the finally's own work (an audit record)
        print("finally done", flush=True)
async def main():
    async def send(message): pass
    async def receive(): await asyncio.sleep(3600)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [],
             "asgi": {"spec_version": "2.4"}}
    task = asyncio.create_task(ClosingStreamingResponse(body(), "x/y")(scope, receive, send))
    await asyncio.sleep(0.2)
    task.cancel()
    await asyncio.sleep(0.05)
    task.cancel()  # uvicorn's two cancellations; then the process ends
    try:
        await task
    except BaseException:
        pass
asyncio.run(main())
print("exiting", flush=True)
"""


def test_the_process_waits_at_exit_for_an_answer_being_finished() -> None:
    """The helper threads are daemons, which the interpreter stops at exit wherever they
    are: the process waits for the answers they are finishing first."""
    done = subprocess.run([sys.executable, "-c", _AT_EXIT], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["exiting", "finally", "done"], done.stdout
