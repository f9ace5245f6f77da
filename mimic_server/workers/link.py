"""What a worker process holds of its supervisor (``mimic serve`` with several workers).

The supervisor passes three things to each worker it starts: the listening socket (an
inherited file descriptor, shared by every worker), a pipe on which the worker says that it is
ready and which server certificate it serves, and its slot in the shared association table.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mimic_server.workers.table import NOT_ACCEPTING, AssociationTable

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """A supervisor that is killed takes its workers with it (``PR_SET_PDEATHSIG``), as a
    container's first process does: orphans would keep the DICOM port open, so that a
    restarted supervisor could not bind it, and serve without supervision."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):
        log.warning("cannot tie the worker to its supervisor; it drains when it sees it gone")


class WorkerLink:
    """Worker ``slot``'s side of the supervisor's arrangement."""

    def __init__(
        self, slot: int, listen_fd: int, status_fd: int, table_path: Path, slots: int,
        supervisor: int,
    ) -> None:
        self.slot = slot
        self.listen_socket = socket.socket(fileno=listen_fd)
        self.table = AssociationTable(table_path, slots)
        self._status_fd = status_fd
        self._status_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._parent = supervisor
        #: The index schema revision the supervisor prepared (set once it says go).
        self.schema_revision: str | None = None
        _die_with_parent()  # then look: it may have died before this worker got here

    def report(self, **fields: Any) -> None:
        """One JSON line to the supervisor, in one write (it reads whole lines)."""
        line = (json.dumps(fields, default=str) + "\n").encode()
        with self._status_lock, contextlib.suppress(OSError):  # the supervisor is gone
            os.write(self._status_fd, line)

    def live_total(self, own: Callable[[], int]) -> Callable[[], int]:
        """The association count the admission check compares with MIMIC_MAX_ASSOCIATIONS:
        this worker's open ones and every other worker's (``table.py``)."""
        def total() -> int:
            with self._count_lock:
                return self.table.admit(self.slot, own())

        return total

    def publish(self, own: Callable[[], int]) -> None:
        """This worker's open associations, for the others' admission checks: called when
        one closes (the admission check publishes on each admission). Counted and written
        under one lock: two threads ending at once must not leave the older count written
        last, since no timer would correct it."""
        with self._count_lock:
            self.table.publish(self.slot, own())

    def hold(self, held: int) -> None:
        """The connections this worker holds, for the balance of accepts (``table.py``)."""
        self.table.hold(self.slot, held)

    def another_holds_fewer(self, held: int) -> bool:
        """Whether another accepting worker holds fewer connections than ``held``."""
        return self.table.least_held_elsewhere(self.slot) < held

    def stop_accepting(self) -> None:
        self.table.hold(self.slot, NOT_ACCEPTING)

    def parent_alive(self) -> bool:
        """False once the supervisor is gone (the worker is re-parented): drain and exit."""
        return os.getppid() == self._parent

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.table.publish(self.slot, 0)
            self.table.hold(self.slot, NOT_ACCEPTING)
        with contextlib.suppress(OSError):
            os.close(self._status_fd)


def trust_token(content: Iterable[str]) -> str:
    """What a worker applied from its certificates, in a few bytes (``content``: the lines of
    ``certs.trust.applied_content``: server chain, trusted clients and CAs, their bindings):
    the supervisor relays a change only when the content reported differs from the one it
    last relayed, so the others' reports of the same content (their reload on the relay's
    SIGHUP) do not echo back, and a second, real change a moment later is still relayed at
    once."""
    return hashlib.sha256("\n".join(sorted(content)).encode()).hexdigest()[:32]
