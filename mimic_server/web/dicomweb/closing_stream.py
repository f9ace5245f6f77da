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
task group around the app): the clean-up is shielded.

A generator that never started (the client left before the first piece, while the object was
being verified) has no ``finally`` to run: ``unstarted`` is run instead, for what the route
opened or began before returning the answer (an open file, a Begin Transferring record).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Generator

import anyio
import anyio.to_thread
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

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
        # The thread-pool wrapper first: it holds the generator, suspended at its last yield.
        with contextlib.suppress(RuntimeError):  # already closing
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
        # A native cancellation (uvicorn's at the end of its graceful shutdown) abandons the
        # worker thread of a next() still running: it is waited for, then closed.
        deadline = anyio.current_time() + RUNNING_NEXT_WAIT
        while (inspect.getgeneratorstate(body) == inspect.GEN_RUNNING
               and anyio.current_time() < deadline):
            await anyio.sleep(0.01)
        state = inspect.getgeneratorstate(body)
        if state == inspect.GEN_CLOSED:
            return
        # What runs may block (an audit record, a file closed): in a worker thread, not the
        # event loop's.
        if state == inspect.GEN_CREATED:
            body.close()  # nothing of it ran
            if self._unstarted is not None:
                await anyio.to_thread.run_sync(self._unstarted)
            return
        await anyio.to_thread.run_sync(_close_quietly, body)


def _close_quietly(body: Body) -> None:
    try:
        body.close()
    except ValueError:  # still running past RUNNING_NEXT_WAIT: left to the collector
        log.warning("a streamed answer could not be closed: its read is still running")
