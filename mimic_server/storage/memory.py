"""An in-memory object store for tests: the contract without a disk."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from mimic_server.errors import OutOfResources


class MemoryStore:
    """An :class:`~mimic_server.storage.ObjectStore` in a dict; ``fail`` simulates an outage."""

    records_sha256 = False

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail = False
        self._lock = threading.Lock()

    def put(self, key: str, chunks: Iterable[bytes | memoryview], sha256: str | None) -> int:
        if self.fail:
            raise OutOfResources("object store unavailable")
        data = b"".join(bytes(c) for c in chunks)
        with self._lock:
            self.objects[key] = data
        return len(data)

    def open(self, key: str) -> BinaryIO:
        with self._lock:
            return io.BytesIO(self.objects[key])

    def delete(self, key: str) -> None:
        with self._lock:
            self.objects.pop(key, None)

    def exists(self, key: str) -> bool:
        return key in self.objects

    def iter_keys(self, foreign: list[str] | None = None) -> Iterator[str]:
        return iter(list(self.objects))

    def check(self) -> None:
        if self.fail:
            raise OutOfResources("object store unavailable")
