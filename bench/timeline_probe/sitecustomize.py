"""Times the stages of each C-STORE inside a running ``mimic serve`` (``bench/store_timeline.py``).

Python imports ``sitecustomize`` at start-up from the first directory on ``sys.path`` that has
one: ``store_timeline.py`` puts this directory on the server's ``PYTHONPATH`` and names an
output directory in ``MIMIC_TIMELINE_DIR``. Nothing happens without that variable.

Only MIMIC's own functions are wrapped, never pynetdicom's: the fence (``patches.py``) checks
the library call sites it replaces by their source, and a wrapper there would make it fall
back and time another path. Each wrapper records when a stage began or ended, on the DIMSE
provider of the association (one association's stages follow each other), and adds the
stage's seconds to a per-process table, written as JSON to the output directory every 25
C-STOREs, when an association closes and at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from typing import Any

_OUT = os.environ.get("MIMIC_TIMELINE_DIR")
_LOCK = threading.Lock()
#: stage -> [count, seconds]
_STAGES: dict[str, list[float]] = {}
_handled = 0


def _add(stage: str, seconds: float) -> None:
    with _LOCK:
        entry = _STAGES.setdefault(stage, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds


def _since(holder: Any, mark: str, stage: str, at: float) -> None:
    """Add ``stage``: from the time ``holder`` was marked ``mark`` (if it was) to ``at``."""
    earlier = getattr(holder, mark, None)
    if earlier is not None:
        _add(stage, at - earlier)


def _dump() -> None:
    with _LOCK:
        text = json.dumps({"pid": os.getpid(), "stages": _STAGES})
    path = os.path.join(str(_OUT), f"timeline-{os.getpid()}.json")
    with open(path + ".tmp", "w") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)


def _install() -> None:
    from mimic_server.archive import ingest
    from mimic_server.codec import command_set
    from mimic_server.dimse import association, receiving, store
    from mimic_server.index import repository
    from mimic_server.net import pdata_batches, reactor, server
    from mimic_server.storage import azure_blob, filesystem

    now = time.perf_counter

    def timed(owner: Any, name: str, stage: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = now()
            try:
                return original(*args, **kwargs)
            finally:
                _add(stage, now() - start)

        setattr(owner, name, wrapper)

    # The request's last fragment is in: the DUL thread queues it for the association thread.
    request_received = receiving._store_request_received

    def store_request_received(dimse: Any, message: Any, command: Any) -> None:
        at = now()
        _since(dimse, "_timeline_response_sent",
               "peer: C-STORE-RSP written -> next request's last fragment in", at)
        dimse._timeline_request_in = at
        request_received(dimse, message, command)

    receiving._store_request_received = store_request_received

    handle_store = store.handle_store

    def timed_handle_store(event: Any, *args: Any) -> Any:
        global _handled
        start = now()
        dimse = event.assoc.dimse
        _since(dimse, "_timeline_request_in", "request queued -> C-STORE handler starts", start)
        try:
            return handle_store(event, *args)
        finally:
            end = now()
            _add("C-STORE handler", end - start)
            dimse._timeline_handler_end = end
            with _LOCK:
                _handled += 1
                due = _handled % 25 == 0
            if due:
                _dump()

    store.handle_store = timed_handle_store
    timed(store, "received_from_event", "  data set -> received object (walk, header, SHA-256)")
    timed(ingest, "keep", "  keep (put, index)")
    timed(filesystem.FilesystemStore, "put", "    object put (file store)")
    timed(azure_blob.AzureBlobStore, "put", "    object put (Blob Storage)")
    timed(repository.SqlIndex, "upsert_instance", "    index write (commit included)")

    direct_response_sender = command_set.direct_response_sender

    def timed_sender(send_msg: Any) -> Any:
        send = direct_response_sender(send_msg)

        def send_response(self: Any, primitive: Any, context_id: int) -> None:
            start = now()
            _since(self, "_timeline_handler_end", "handler returns -> response queued", start)
            self._timeline_handler_end = None
            # Before the queueing: the DUL thread may write the response before send returns.
            self._timeline_response_queued = start
            send(self, primitive, context_id)

        return send_response

    command_set.direct_response_sender = timed_sender

    wait_for_work = reactor._EventDrivenDUL._wait_for_work

    def timed_wait(self: Any) -> None:
        wait_for_work(self)
        dimse = self.assoc.dimse
        queued = getattr(dimse, "_timeline_response_queued", None)
        if queued is not None and not getattr(dimse, "_timeline_woken", False):
            dimse._timeline_woken = True
            _add("response queued -> DUL thread wakes", now() - queued)

    reactor._EventDrivenDUL._wait_for_work = timed_wait

    def timed_write(write: Any) -> Any:
        """``write`` (pynetdicom's per-PDU send, or a whole message's batch), timed from
        the response's queueing to its write."""

        def timed(transport: Any, data: Any) -> None:
            dimse = getattr(getattr(transport, "_assoc", None), "dimse", None)
            queued = getattr(dimse, "_timeline_response_queued", None)
            write(transport, data)
            if queued is not None:
                end = now()
                _add("response queued -> written to the socket", end - queued)
                dimse._timeline_response_queued = None
                dimse._timeline_woken = False
                dimse._timeline_response_sent = end

        return timed

    server._GuardedAssociationSocket.send = timed_write(server._GuardedAssociationSocket.send)
    pdata_batches.write = timed_write(pdata_batches.write)  # a batch (pdata-batches)

    handle_conn_close = association.handle_conn_close

    def dumping_conn_close(*args: Any, **kwargs: Any) -> Any:
        try:
            return handle_conn_close(*args, **kwargs)
        finally:
            _dump()

    association.handle_conn_close = dumping_conn_close
    atexit.register(_dump)


if _OUT:
    _install()
