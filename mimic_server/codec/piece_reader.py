"""A data set's bytes read in exact amounts from pieces of any size, and written out again
in pieces of one size: what the streaming re-encoders (``implicit_stream``,
``explicit_stream``) share. Neither holds more than a header and a piece."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from mimic_server.errors import CannotUnderstand

#: What the re-encoders read and write alike: an undefined length, the delimiters' tags
#: (little endian), the four bytes of an undefined length and of a delimitation item's.
UNDEFINED = 0xFFFFFFFF
ITEM = b"\xfe\xff\x00\xe0"
ITEM_END = b"\xfe\xff\x0d\xe0"
SEQUENCE_END = b"\xfe\xff\xdd\xe0"
OPEN = b"\xff\xff\xff\xff"
ZERO = b"\0\0\0\0"


class PieceReader:
    """The data set's bytes, taken in exact amounts from pieces of any size."""

    def __init__(self, pieces: Iterator[bytes | memoryview]) -> None:
        self._pieces = pieces
        self._view = memoryview(b"")
        self.offset = 0  # bytes taken so far

    def _fill(self) -> bool:
        while not self._view.nbytes:
            piece = next(self._pieces, None)
            if piece is None:
                return False
            self._view = memoryview(piece).cast("B")
        return True

    def at_end(self) -> bool:
        return not self._fill()

    def peek(self, n: int) -> bytes:
        """Up to ``n`` next bytes, not taken (fewer only at the end)."""
        if self._view.nbytes >= n:
            return bytes(self._view[:n])
        if not self._fill():
            return b""
        joined = bytearray(self._view)  # a header split between pieces: join them
        while len(joined) < n:
            piece = next(self._pieces, None)
            if piece is None:
                break
            joined += memoryview(piece).cast("B")
        self._view = memoryview(bytes(joined))
        return bytes(self._view[:n])

    def take(self, n: int) -> bytes:
        head = self.peek(n)
        if len(head) < n:
            raise CannotUnderstand("the data set ends within an element")
        self._view = self._view[n:]
        self.offset += n
        return head

    def rest(self) -> Iterator[memoryview]:
        """All that is left, as it comes."""
        while self._fill():
            part, self._view = self._view, memoryview(b"")
            self.offset += part.nbytes
            yield part

    def values(self, n: int) -> Iterator[memoryview]:
        """The next ``n`` bytes, as they come."""
        if n < 0:
            raise CannotUnderstand("an element overruns what contains it")
        while n:
            if not self._fill():
                raise CannotUnderstand("a value overruns the data set")
            part = self._view[:n]
            self._view = self._view[part.nbytes:]
            self.offset += part.nbytes
            n -= part.nbytes
            yield part


def sized(parts: Iterable[bytes | memoryview], size: int,
          source: Iterator[bytes | memoryview]) -> Iterator[bytes]:
    """``parts`` joined and cut into pieces of ``size`` bytes (the last one shorter).
    Closing the result closes ``source`` (a store's handle), also when ``parts`` raised."""
    out = bytearray()
    try:
        for part in parts:
            view = memoryview(part).cast("B")
            while view.nbytes:
                taken = min(size - len(out), view.nbytes)
                out += view[:taken]
                view = view[taken:]
                if len(out) == size:
                    yield bytes(out)
                    out.clear()
        if out:
            yield bytes(out)
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
