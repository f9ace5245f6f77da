"""PALETTE COLOR through Segmented Palette Color LUT Data (PS3.3 C.7.9.2), expanded here.

pydicom's ``apply_color_lut`` expands a segmented table whole, recursively, before it looks
at the descriptor's number of entries: indirect segments that name the segments before them
twice per level doubled the table with every level (194 bytes of LUT data: 69 s, 5.3 GiB),
one that names itself recursed until Python's limit, and linear segments of 65,535 entries
each make 8 bytes of data worth 128 KiB of table. Here the table is expanded only up to the
descriptor's number of entries (never more than 65,536), in one pass over the data, and an
indirect segment (C.7.9.2.3, which no encoder we know writes) is refused: following one
costs work that the size of the data does not bound.

The mapping of stored values to entries is pydicom's (values below the first mapped one
take entry 0, values past the table its last entry), so a table pydicom expanded the same
way renders the same.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from mimic_server.render.refusals import NotRenderable

_CHANNELS = ("Red", "Green", "Blue", "Alpha")
_DISCRETE, _LINEAR, _INDIRECT = 0, 1, 2


def is_segmented(image_pixel: Dataset) -> bool:
    """Whether the palette is given only as segmented LUT data."""
    return ("SegmentedRedPaletteColorLookupTableData" in image_pixel
            and "RedPaletteColorLookupTableData" not in image_pixel)


def apply_segmented_palette(pixels: np.ndarray, image_pixel: Dataset) -> np.ndarray:
    """``pixels`` mapped through the segmented palette of ``image_pixel``: (..., 3) or
    (..., 4) with alpha, of the descriptor's nominal depth (8 or 16 bits)."""
    descriptor = image_pixel.RedPaletteColorLookupTableDescriptor
    entries = int(descriptor[0]) or 1 << 16
    first_mapped, depth = int(descriptor[1]), int(descriptor[2])
    if depth not in (8, 16):
        raise NotRenderable(f"a palette of {depth}-bit entries is not rendered")
    little = _little_endian(image_pixel)
    tables = []
    for channel in _CHANNELS:
        data = image_pixel.get(f"Segmented{channel}PaletteColorLookupTableData")
        if not data:
            if channel == "Alpha":
                continue
            raise NotRenderable(f"the palette has no segmented {channel.lower()} table")
        data = bytes(data)
        words = np.frombuffer(data[: len(data) - len(data) % (depth // 8)],
                              np.uint8 if depth == 8 else ("<u2" if little else ">u2"))
        tables.append(expand(words.tolist(), entries).astype(f"uint{depth}"))
    if any(len(table) != len(tables[0]) for table in tables):
        raise NotRenderable("the palette's segmented tables differ in length")
    indices = pixels.astype(np.int64) - first_mapped
    np.clip(indices, 0, entries - 1, out=indices)
    out = np.empty((*pixels.shape, len(tables)), f"uint{depth}")
    for channel, table in enumerate(tables):
        if len(table) < entries and indices.max(initial=0) >= len(table):
            raise NotRenderable("the palette's segmented table is shorter than its entries")
        out[..., channel] = table[indices]
    return out


def expand(words: list[int], limit: int) -> np.ndarray:
    """The table of segments ``words`` (discrete and linear), at most ``limit`` entries."""
    table: list[int] = []
    position = 0
    # A trailing padding word is no segment: every segment is at least 2 words long.
    while position + 1 < len(words) and len(table) < limit:
        opcode, length = words[position], words[position + 1]
        position += 2
        room = limit - len(table)
        if opcode == _DISCRETE:
            table.extend(words[position : position + min(length, room)])
            position += length
        elif opcode == _LINEAR:
            if not table or position >= len(words):
                raise NotRenderable("a segmented palette starts with a linear segment")
            start, end = table[-1], words[position]
            position += 1
            if length:
                step = (end - start) / length
                values = np.around(np.linspace(start + step, end, length)[:room])
                table.extend(int(v) for v in values)
        elif opcode == _INDIRECT:
            raise NotRenderable("segmented palettes with indirect segments are not rendered")
        else:
            raise NotRenderable(f"a segmented palette has a segment of unknown type {opcode}")
    return np.asarray(table[:limit], dtype=np.int64)


def _little_endian(image_pixel: Dataset) -> bool:
    meta = getattr(image_pixel, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None:
        return str(syntax) != "1.2.840.10008.1.2.2"
    return bool(image_pixel.original_encoding[1] if image_pixel.original_encoding[1]
                is not None else True)
