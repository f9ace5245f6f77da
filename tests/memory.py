"""The memory a piece of code allocates, measured by tracemalloc."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def peak_allocated() -> Iterator[list[int]]:
    """Trace allocations within the block; the one-element list it gives holds, once the
    block ends (an exception included), the peak of memory allocated meanwhile in bytes."""
    peak = [0]
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
