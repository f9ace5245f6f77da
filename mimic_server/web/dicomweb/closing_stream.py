"""A streamed answer whose body generator is closed as the answer ends, however it ends.

Starlette's ``StreamingResponse`` steps a plain generator in a worker thread
(``iterate_in_threadpool``) and leaves it suspended when the client goes away mid-answer:
the send raises, and nothing closes the generator. Its ``finally`` (the object's stream
closed, a dropped kept copy's descriptor and disk, the transfer's audit record ended as
failed) then waits for the cyclic garbage collector, which may not run for minutes on a
quiet server, and runs in whatever thread triggers the collection, the event loop's
included. Measured with uvicorn (h11 and httptools): not closed 3 s after the client
closed; closed by ``gc.collect()``. Here it is closed in a worker thread as the answer ends,
whether it ended, failed, or the client left, also inside a cancelled scope (a timeout, a
task group around the app) and under uvicorn's own cancellation at shutdown: the clean-up
runs in a helper thread of its own, which no cancellation stops.

A generator that never started (the client left before the first piece, while the object was
being verified) has no ``finally`` to run: ``unstarted`` is run instead, for what the route
opened or began before returning the answer (an open file, a Begin Transferring record).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Generator

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from mimic_server.archive.helper_threads import HelperThreads

Body = Generator["bytes | memoryview", None, None]
log = logging.getLogger(__name__)

#: How long the clean-up waits for a read of the answer still running (seconds): a piece
#: of an object is read in milliseconds; a shutdown must not wait long for one that hangs.
RUNNING_NEXT_WAIT = 5.0


class ClosingStreamingResponse(StreamingResponse):
    """A :class:`StreamingResponse` of a generator, closed when the response ends."""

    def __init__(self, body: Body, media_type: str,
                 unstarted: Callable[[], None] | None = None) -> None:
        super().__init__(body, media_type=media_type)
        self._body: Body | None = body
        self._unstarted = unstarted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            body, self._body = self._body, None
            if body is not None:
                with anyio.CancelScope(shield=True):
                    await self._close(body)

    async def _close(self, body: Body) -> None:
        # The thread-pool wrapper first: it holds the generator, suspended at its last yield
        # (this awaits nothing: a generator suspended at a yield just ends).
        with contextlib.suppress(RuntimeError):  # already closing
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
        if inspect.getgeneratorstate(body) == inspect.GEN_CLOSED:
            return  # the usual end: read to its end, or failed
        # Handed to a helper thread, not awaited in a worker thread of anyio's: uvicorn's
        # shutdown cancels the request's task natively (once at the end of its graceful
        # shutdown, once more as its loop ends), which no shielded scope stops, and a
        # cancelled hand-off to anyio's worker is skipped. Awaited while it may be.
        done = _CLOSERS.submit(_finish, body, self._unstarted)
        while not done.done():
            await anyio.sleep(0.01)


#: The threads that finish answers (a few at once at most; they end when idle).
_CLOSERS = HelperThreads("mimic-answer-close")


def _finish(body: Body, unstarted: Callable[[], None] | None) -> None:
    """Close ``body``, or run ``unstarted`` if nothing of it ran. A ``next()`` still running
    (its worker thread abandoned by a native cancellation) is waited for first, up to
    :data:`RUNNING_NEXT_WAIT`: closing a running generator raises, and leaves it to the
    collector."""
    deadline = time.monotonic() + RUNNING_NEXT_WAIT
    while True:
        state = inspect.getgeneratorstate(body)
        if state == inspect.GEN_CLOSED:
            return
        if state != inspect.GEN_RUNNING:
            try:
                body.close()
            except ValueError:  # a next() began meanwhile: wait for it
                pass
            else:
                if state == inspect.GEN_CREATED and unstarted is not None:
                    unstarted()  # nothing of it ran, its finally included
                return
        if time.monotonic() > deadline:
            log.warning("a streamed answer could not be closed: its read is still running")
            return
        time.sleep(0.01)
