"""``multipart/related`` answers (RFC 2387, PS3.18 8.6.1.2), written as a stream of parts."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator


def new_boundary() -> str:
    return f"mimic-{secrets.token_hex(16)}"


def content_type(boundary: str, part_type: str) -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def part_head(boundary: str, part_content_type: str, location: str | None = None) -> bytes:
    head = f"--{boundary}\r\nContent-Type: {part_content_type}\r\n"
    if location is not None:
        head += f"Content-Location: {location}\r\n"
    return (head + "\r\n").encode("ascii")


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("ascii")


def parts(boundary: str, bodies: Iterable[tuple[str, bytes]]) -> Iterator[bytes]:
    """Whole parts (content type, body) one after the other, then the closing delimiter."""
    for part_type, body in bodies:
        yield part_head(boundary, part_type) + body + b"\r\n"
    yield closing(boundary)
