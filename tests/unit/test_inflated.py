"""archive/inflated.py: a Deflated data set inflated a piece at a time, as pydicom inflates it
whole, within the receive walk's bound, the input handed to zlib a slice at a time."""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mimic_server.archive import inflated
from mimic_server.archive.inflated import INPUT_SLICE, deflated_pieces, inflated_pieces
from mimic_server.errors import CannotUnderstand

#: 8 MiB of which one byte in 64 is random: deflates to some 200 KB.
PLAIN = b"".join(bytes(63) + os.urandom(1) for _ in range(128 * 1024))


def _deflated(data: bytes) -> bytes:
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(data) + deflater.flush()


def _pieces(data: bytes, size: int) -> Iterator[memoryview]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield view[start:start + size]


@pytest.mark.parametrize("piece", [1 << 30, 1 << 20, 4096, 7])
@pytest.mark.parametrize("size", [16382, 1 << 20])
def test_pieces_inflate_to_what_zlib_inflates_whole(piece: int, size: int) -> None:
    stream = _deflated(PLAIN) + b"\x00"  # a pad byte after the stream, as the walk allows
    out = list(inflated_pieces(_pieces(stream, piece), size))
    assert b"".join(out) == PLAIN
    assert max(len(o) for o in out) <= size


def test_zlib_is_handed_the_input_a_slice_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """What one call does not consume zlib copies aside: an object held whole, handed over
    in one piece, was copied again for every fragment of output (review: 15 s of the GIL
    for 8 MiB inflating to 896 MiB in 16 KiB fragments)."""
    handed: list[int] = []
    real = zlib.decompressobj

    class Recording:
        def __init__(self, *args: Any) -> None:
            self._inflater = real(*args)

        def decompress(self, data: Any, size: int) -> bytes:
            handed.append(len(data))
            return self._inflater.decompress(data, size)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inflater, name)

    monkeypatch.setattr(inflated.zlib, "decompressobj", Recording)
    stream = _deflated(PLAIN)
    assert len(stream) > 2 * INPUT_SLICE
    assert b"".join(inflated_pieces(iter([stream]), 16382)) == PLAIN
    assert max(handed) <= INPUT_SLICE


@pytest.mark.parametrize("damage", ["cut", "garbage", "past the bound"])
def test_what_the_receive_walk_refuses_is_refused(
    damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = _deflated(PLAIN)
    if damage == "cut":
        stream = stream[:len(stream) // 2]
    elif damage == "garbage":
        stream = b"\xff" * 64 + stream
    else:
        monkeypatch.setattr(inflated, "MAX_INFLATED", len(PLAIN) - 1)
    with pytest.raises(CannotUnderstand):
        for _ in inflated_pieces(iter([stream]), 1 << 20):
            pass


def test_closing_the_pieces_closes_their_source() -> None:
    closed: list[bool] = []

    def source() -> Iterator[bytes]:
        try:
            yield _deflated(PLAIN)
        finally:
            closed.append(True)

    pieces = inflated_pieces(source(), 16382)
    next(pieces)
    pieces.close()
    assert closed == [True]


def test_a_spill_that_fails_leaves_no_file_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Any] = []
    real = inflated.tempfile.TemporaryFile

    class Full:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._file = real(*args, **kwargs)
            self.writes = 0
            opened.append(self)

        def write(self, data: Any) -> int:
            self.writes += 1
            if self.writes > 1:
                raise OSError(28, "No space left on device")
            return self._file.write(data)

        def close(self) -> None:
            self._file.close()

        @property
        def closed(self) -> bool:
            return self._file.closed

    monkeypatch.setattr(inflated.tempfile, "TemporaryFile", Full)
    copy = io.BytesIO(bytes(inflated.IN_MEMORY))
    copy.seek(0, io.SEEK_END)
    with pytest.raises(OSError):
        inflated._written(copy, b"more", tmp_path)
    assert [f.closed for f in opened] == [True]


@pytest.mark.parametrize(("piece", "size"), [(1, 1), (7, 5), (4096, 16384), (1 << 20, 64)])
def test_a_data_set_deflated_as_it_streams_inflates_back_padded_even(piece: int, size: int
                                                                      ) -> None:
    """``deflated_pieces`` (a destination that took only Deflated): pieces of ``size``, a
    raw deflate stream that inflates to the input, a NULL byte after it when odd, as
    pydicom and pynetdicom pad it; closing it closes the input."""
    data = bytes(range(256)) * 300 + b"tail"
    pieces = [data[i:i + piece] for i in range(0, len(data), piece)]
    out = list(deflated_pieces(iter(pieces), size))
    assert all(len(p) == size for p in out[:-1]) and 0 < len(out[-1]) <= size
    stream = b"".join(out)
    assert len(stream) % 2 == 0
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    assert inflater.decompress(stream) == data and inflater.eof
    assert inflater.unused_data in (b"", b"\0")
    closed: list[bool] = []

    def source() -> Iterator[bytes]:
        try:
            yield data
            yield data
        finally:
            closed.append(True)

    deflating = deflated_pieces(source(), 1)
    next(deflating)
    deflating.close()
    assert closed == [True]
