"""The accept loop freezes the start-up heap before serving (pynetdicom's periodic full
collection then scans only what was made since)."""

from __future__ import annotations

import gc
from typing import Any

from mimic_server.app import Archive


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
