"""A stored Deflated object as the Explicit VR Little Endian file it inflates to, never whole
in memory.

pydicom reads a Deflated Explicit VR Little Endian data set by inflating all the rest of the
file in one ``zlib.decompress`` and parsing that. For what reads a stored object out of
order (WADO-RS metadata and bulk data, frames, renderings) that is the object's inflated size
in memory on every request, and a deflate stream of one megabyte can inflate to the 1 GiB
the receive walk allows (``codec.structure.MAX_INFLATED``; deflate reaches about 1000:1):
a few viewers asking for the metadata of such a series would exhaust a container. Here the
data set is inflated a piece at a time, as the receive walk inflates it, behind a File Meta
that names Explicit VR Little Endian (what a Deflated data set is once inflated, PS3.5
A.5): pydicom then reads that file as any other, its large values left unread at offsets
into it. What is inflated stays in memory up to :data:`IN_MEMORY`; beyond, it goes to an
anonymous file in the spool directory, as a large object's copy does (``read.py``).
C-GET and C-MOVE send a Deflated object to a destination that took it in Explicit VR Little
Endian through :func:`inflated_pieces` the same way (``dimse/stream_send.py``).
"""

from __future__ import annotations

import io
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pydicom.uid import ExplicitVRLittleEndian

from mimic_server.archive.read import CHUNK, VerifiedObject
from mimic_server.codec.file_meta import encode_file_meta
from mimic_server.codec.structure import MAX_INFLATED
from mimic_server.errors import CannotUnderstand

#: What is inflated is kept in memory up to this many bytes, and written to a file beyond.
IN_MEMORY = 4 << 20
#: The deflate stream is handed to zlib this much at a time (:func:`inflated_pieces`).
INPUT_SLICE = 64 << 10


def inflated_copy(obj: VerifiedObject, directory: Path | None = None) -> BinaryIO:
    """The Deflated object ``obj`` inflated, as a seekable Part 10 file in Explicit VR Little
    Endian (its File Meta MIMIC's own, naming that transfer syntax). The object's bytes are
    hashed again as they are read (``VerifiedObject.chunks``: a change raises
    ``OutOfResources``); a deflate stream that is cut short, damaged or inflates past
    ``MAX_INFLATED`` raises ``CannotUnderstand`` (:func:`inflated_pieces`). The caller
    closes the file."""
    copy: BinaryIO = io.BytesIO()
    try:
        copy.write(encode_file_meta(obj.ref.sop_class_uid, obj.ref.sop_instance_uid,
                                    ExplicitVRLittleEndian, ""))
        for data in inflated_pieces(obj.chunks(obj.dataset_offset), CHUNK):
            copy = _written(copy, data, directory)
        copy.seek(0)
    except BaseException:
        copy.close()
        raise
    return copy


def inflated_pieces(
    pieces: Iterator[bytes | memoryview], size: int = CHUNK
) -> Iterator[bytes]:
    """The deflate stream given in ``pieces`` (a Deflated data set's bytes as stored: the
    stream and at most a pad byte or a gzip trailer after it), inflated in pieces of at most
    ``size`` bytes. Raises ``CannotUnderstand`` when it is cut short, damaged or inflates
    past ``MAX_INFLATED``: the receive walk refused such data sets, so the stored bytes are
    not what was received. Closing this iterator closes ``pieces`` (a store's handle)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = 0
    try:
        for piece in pieces:
            whole = memoryview(piece).cast("B")  # bytes, whatever the item size
            # zlib is handed the input a slice at a time: what one call does not consume it
            # copies aside (``unconsumed_tail``), and an object held whole, handed over in
            # one piece, was copied again for every ``size`` of output (8 MiB inflating to
            # 896 MiB in 16 KiB fragments: 15 s of the GIL, against 0.6 s in slices).
            for start in range(0, whole.nbytes, INPUT_SLICE):
                pending: bytes | memoryview = whole[start:start + INPUT_SLICE]
                # A slice may inflate to far more than itself: out ``size`` at a time.
                while pending and not inflater.eof:
                    data = inflater.decompress(pending, size)
                    pending = inflater.unconsumed_tail
                    inflated += len(data)
                    if inflated > MAX_INFLATED:
                        raise CannotUnderstand(
                            "the deflated data set inflates beyond the bound")
                    if data:
                        yield data
        # Input spent; zlib may still hold output back by the ``size`` cap.
        while not inflater.eof and (data := inflater.decompress(b"", size)):
            inflated += len(data)
            if inflated > MAX_INFLATED:
                raise CannotUnderstand("the deflated data set inflates beyond the bound")
            yield data
        if not inflater.eof:
            raise CannotUnderstand("the deflated data set is truncated")
    except zlib.error as exc:
        raise CannotUnderstand("the deflated data set cannot be inflated") from exc
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


def deflated_pieces(pieces: Iterator[bytes | memoryview], size: int) -> Iterator[bytes]:
    """The Explicit VR Little Endian data set given in ``pieces``, deflated (Deflated Explicit
    VR Little Endian, PS3.5 A.5: a raw deflate stream, padded with a NULL byte to an even
    length, as pydicom and pynetdicom pad it), in pieces of at most ``size`` bytes. For a
    destination that took an object only in Deflated: pynetdicom encoded the object whole
    and then deflated it whole. Closing this iterator closes ``pieces``."""
    deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    written = 0
    out = bytearray()
    try:
        for piece in pieces:
            out += deflater.compress(piece)
            while len(out) >= size:
                yield bytes(out[:size])
                del out[:size]
                written += size
        out += deflater.flush()
        if (written + len(out)) % 2:
            out += b"\0"
        for start in range(0, len(out), size):
            yield bytes(out[start:start + size])
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


def _written(copy: BinaryIO, data: bytes, directory: Path | None) -> BinaryIO:
    """``copy`` with ``data`` written at its end: moved to an anonymous file first when it
    is in memory and would pass :data:`IN_MEMORY`."""
    if isinstance(copy, io.BytesIO) and copy.tell() + len(data) > IN_MEMORY:
        spilled = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - returned
        try:
            with copy.getbuffer() as held:
                spilled.write(held)
            spilled.write(data)
        except BaseException:
            spilled.close()
            raise
        copy.close()
        return spilled
    copy.write(data)
    return copy
