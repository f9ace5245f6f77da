"""A streamed answer whose body generator is closed as the answer ends, however it ends.

Starlette's ``StreamingResponse`` steps a plain generator in a worker thread
(``iterate_in_threadpool``) and leaves it suspended when the client goes away mid-answer:
the send raises, and nothing closes the generator. Its ``finally`` (the object's stream
closed, a dropped kept copy's descriptor and disk, the transfer's audit record ended as
failed) then waits for the cyclic garbage collector, which may not run for minutes on a
quiet server, and runs in whatever thread triggers the collection, the event loop's
included. Measured with uvicorn (h11 and httptools): not closed 3 s after the client
closed; closed by ``gc.collect()``.

Here an answer that did not run its generator to the end is finished in a helper thread of
its own, which no cancellation stops (a cancelled scope around the app; uvicorn's own
``task.cancel()`` at the end of its graceful shutdown, and again as its loop ends, which
abandons the worker thread of a ``next()`` still reading): a step still running is waited
for (:data:`RUNNING_NEXT_WAIT` at most), then the generator is closed. The process waits for
those at exit. A generator none of whose steps began (the client left before the first
piece, while the object was verified) has no ``finally`` to run: ``unstarted`` is run
instead, for what the route began before returning the answer (an open file, a Begin
Transferring record). Whether a step began is decided under one lock with the closing
(:class:`_Steps`), so exactly one of the two runs. A response never called at all (dropped
by a cancellation while the route's thread was returning it) runs ``unstarted`` as it goes.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Generator
from concurrent import futures
from concurrent.futures import Future

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from mimic_server.archive.helper_threads import HelperThreads

Body = Generator["bytes | memoryview", None, None]
log = logging.getLogger(__name__)

#: How long the clean-up waits for a read of the answer still running (seconds): a piece
#: of an object is read in milliseconds; a shutdown must not wait long for one that hangs.
RUNNING_NEXT_WAIT = 5.0


class _Steps:
    """The body as Starlette steps it (``next`` in a worker thread): whether a step began
    and whether one runs, told under one lock, which the generator's own state (three
    attributes read one after another) cannot be from another thread."""

    def __init__(self, body: Body) -> None:
        self.body = body
        self._lock = threading.Condition()
        self._began = self._running = self._closing = False

    def __iter__(self) -> _Steps:
        return self

    def __next__(self) -> bytes | memoryview:
        with self._lock:
            if self._closing:
                raise StopIteration
            self._began = self._running = True
        try:
            return next(self.body)
        finally:
            with self._lock:
                self._running = False
                self._lock.notify_all()

    def finish(self, unstarted: Callable[[], None] | None) -> None:
        """No step after this one; close the generator once no step runs, or run
        ``unstarted`` if none began."""
        with self._lock:
            self._closing = True
            if not self._lock.wait_for(lambda: not self._running, RUNNING_NEXT_WAIT):
                log.warning("a streamed answer could not be closed: its read is still running")
                return
            began = self._began
        self.body.close()  # nothing of it ran if no step began: then no finally either
        if not began and unstarted is not None:
            unstarted()


class ClosingStreamingResponse(StreamingResponse):
    """A :class:`StreamingResponse` of a generator, closed when the response ends."""

    def __init__(self, body: Body, media_type: str,
                 unstarted: Callable[[], None] | None = None) -> None:
        self._steps: _Steps | None = _Steps(body)
        super().__init__(self._steps, media_type=media_type)
        self._unstarted = unstarted
        # A response made and never sent: a cancellation (uvicorn's, at the end of its
        # shutdown) while the route's thread was returning it drops it uncalled. What the
        # route began (a Begin Transferring record, an open file) is ended as it goes.
        self._called = [False]
        weakref.finalize(self, _never_called, self._called, self._steps, unstarted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._called[0] = True
        try:
            await super().__call__(scope, receive, send)
        finally:
            steps, self._steps = self._steps, None
            if steps is not None:
                with anyio.CancelScope(shield=True):
                    await self._close(steps)

    async def _close(self, steps: _Steps) -> None:
        # The thread-pool wrapper first: it holds the generator, suspended at its last yield
        # (this awaits nothing: a generator suspended at a yield just ends).
        with contextlib.suppress(RuntimeError):  # already closing
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
        if inspect.getgeneratorstate(steps.body) == inspect.GEN_CLOSED:
            return  # the usual end: read to its end, or failed (no step can run now)
        try:
            done = _CLOSERS.submit(_finish, steps, self._unstarted)
        except RuntimeError:  # no thread could be started: left to the collector
            log.error("a streamed answer could not be finished: no thread")
            return
        _PENDING.add(done)
        done.add_done_callback(_PENDING.discard)
        while not done.done():  # awaited while it may be: a cancellation ends only this wait
            await anyio.sleep(0.01)


#: The threads that finish answers (a few at once at most; they end when idle).
_CLOSERS = HelperThreads("mimic-answer-close")
#: Finishes not yet done: the process waits for them at exit (its threads are daemons).
_PENDING: set[Future[None]] = set()


def _never_called(called: list[bool], steps: _Steps,
                  unstarted: Callable[[], None] | None) -> None:
    """The response went without being called: its generator never started."""
    if not called[0]:
        _finish(steps, unstarted)


def _finish(steps: _Steps, unstarted: Callable[[], None] | None) -> None:
    try:
        steps.finish(unstarted)
    except Exception as exc:  # a finally or unstarted that failed: said, as the route's own
        log.error("a streamed answer's clean-up failed",
                  extra={"error": type(exc).__name__},
                  exc_info=log.isEnabledFor(logging.DEBUG))


@atexit.register
def _wait_for_finishes() -> None:
    pending = list(_PENDING)
    if pending:
        futures.wait(pending, timeout=RUNNING_NEXT_WAIT + 5)
