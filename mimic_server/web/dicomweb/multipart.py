"""A streaming splitter of ``multipart/related`` bodies (RFC 2046 5.1, RFC 2387).

STOW-RS bodies may be gigabytes: they are never held whole. The splitter is fed the body as
it arrives and hands each part's bytes to a sink as soon as it knows they are not the start
of a delimiter, so it holds at most one chunk plus a delimiter's length; part headers are
bounded (``MAX_HEADERS``), and so is their number (``MAX_PARTS``). python-multipart's
parser is built around ``multipart/form-data`` (names, files, form fields); a STOW body
needs only the boundaries and each part's ``Content-Type``, which this does in a few dozen
lines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

#: Part headers larger than this are not part headers.
MAX_HEADERS = 16 << 10
#: The parts a body may have: each costs its request a trip through the ingest path and an
#: item of the answer, even an empty one of 9 bytes (300,000 of them in 2.7 MB held a
#: server 40 s and made a 12 MB answer).
MAX_PARTS = 10_000
_CRLF = b"\r\n"


class MalformedMultipart(ValueError):
    """The body is not ``multipart/related`` as its Content-Type announced (HTTP 400)."""


class PartSink(Protocol):
    """Receives one part's bytes, in order, then ``end()``."""

    def write(self, data: memoryview) -> None: ...

    def end(self) -> None: ...


def boundary_of(content_type: str) -> tuple[str, dict[str, str]]:
    """The media type and its parameters (lower-case names, unquoted values)."""
    media, _, rest = content_type.partition(";")
    params: dict[str, str] = {}
    while rest:
        item, rest = _next_parameter(rest)
        name, sep, value = item.partition("=")
        if sep:
            params[name.strip().lower()] = value.strip().strip('"')
    return media.strip().lower(), params


def _next_parameter(rest: str) -> tuple[str, str]:
    """One ``name=value`` (a quoted value may hold ``;``) and what follows it."""
    in_quotes = False
    for i, char in enumerate(rest):
        if char == '"':
            in_quotes = not in_quotes
        elif char == ";" and not in_quotes:
            return rest[:i], rest[i + 1:]
    return rest, ""


class MultipartSplitter:
    """Feed it the body (``feed``), then ``close()``; each part goes to a new sink."""

    _PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _EPILOGUE = range(5)

    def __init__(self, boundary: str, new_part: Callable[[dict[str, str]], PartSink],
                 max_parts: int = MAX_PARTS) -> None:
        if not boundary or len(boundary) > 70:  # RFC 2046 5.1.1
            raise MalformedMultipart("the boundary parameter is missing or too long")
        self._max_parts = max_parts
        self._delimiter = _CRLF + b"--" + boundary.encode("latin-1")
        self._new_part = new_part
        # The body may start with the first delimiter: as if a CRLF came before it.
        self._buffer = bytearray(_CRLF)
        self._state = self._PREAMBLE
        self._sink: PartSink | None = None
        self.parts = 0

    def feed(self, data: bytes) -> None:
        if self._state == self._EPILOGUE:
            return
        self._buffer += data
        while self._step():
            pass

    def close(self) -> None:
        """The body ended: it must have ended with the close delimiter."""
        if self._state != self._EPILOGUE:
            raise MalformedMultipart("the body ends before its close delimiter")

    def _step(self) -> bool:
        """Advance through the buffer as far as it goes; whether to call again."""
        buffer = self._buffer
        if self._state in (self._PREAMBLE, self._BODY):
            found = buffer.find(self._delimiter)
            if found < 0:
                keep = len(self._delimiter) - 1  # the start of a delimiter may be at the end
                if len(buffer) > keep:
                    self._emit(len(buffer) - keep)
                return False
            self._emit(found)
            del self._buffer[:len(self._delimiter)]
            if self._sink is not None:
                self._sink.end()
                self._sink = None
            self._state = self._AFTER_DELIMITER
            return True
        if self._state == self._AFTER_DELIMITER:
            if len(buffer) < 2:
                return False
            if buffer[:2] == b"--":
                self._state = self._EPILOGUE
                self._buffer.clear()
                return False
            end = buffer.find(_CRLF)
            if end < 0:
                if len(buffer) > 1024:
                    raise MalformedMultipart("a delimiter line does not end")
                return False
            if buffer[:end].strip(b" \t"):
                raise MalformedMultipart("a delimiter line has more than the boundary")
            del self._buffer[:end + 2]
            self._state = self._HEADERS
            return True
        if self._state == self._HEADERS:
            if buffer[:2] == _CRLF:
                headers: dict[str, str] = {}
                del self._buffer[:2]
            else:
                end = buffer.find(_CRLF + _CRLF, 0, MAX_HEADERS + 4)
                if end < 0:
                    if len(buffer) > MAX_HEADERS:
                        raise MalformedMultipart("part headers are too large")
                    return False
                headers = _parse_headers(bytes(buffer[:end]))
                del self._buffer[:end + 4]
            if self.parts >= self._max_parts:
                raise MalformedMultipart(f"the body has more than {self._max_parts} parts")
            self._sink = self._new_part(headers)
            self.parts += 1
            self._state = self._BODY
            return True
        return False

    def _emit(self, count: int) -> None:
        """Hand the first ``count`` buffered bytes to the current part (the preamble's
        are dropped)."""
        if count <= 0:
            return
        if self._sink is not None:
            view = memoryview(self._buffer)
            part = view[:count]
            try:
                self._sink.write(part)
            finally:  # released before the buffer shrinks (a bytearray with views cannot)
                part.release()
                view.release()
        del self._buffer[:count]


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    name = ""
    for line in block.decode("latin-1").split("\r\n"):
        if line[:1] in (" ", "\t") and name:  # a folded line continues the previous one
            headers[name] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise MalformedMultipart("a part header line has no colon")
        name = name.strip().lower()
        headers[name] = value.strip()
    return headers
