"""The two large objects the WADO-RS benchmarks read (``wado_metadata.py``,
``wado_frames.py``): native pixels in Explicit VR Little Endian and the same Deflated, each
put in a file store in a temporary directory, which is removed afterwards."""

from __future__ import annotations

import hashlib
import shutil
import statistics
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from mimic_server.query.finder import InstanceRef
from mimic_server.storage.filesystem import FilesystemStore
from tests.large_objects import large_image

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SYNTAXES = (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)


def stored_objects(directory: Path, prefix: str, frames: int,
                   text: int = 0) -> Iterator[tuple[FilesystemStore, Path, InstanceRef, int]]:
    """For each of :data:`SYNTAXES`: the store, the run's directory, the object's row and
    its stored size; ``frames`` frames of 1 MiB (512 x 1024, 16-bit), ``text`` characters of
    Image Comments. The object is deleted once the caller asks for the next."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=directory))
    store = FilesystemStore(root / "store")
    try:
        for syntax in SYNTAXES:
            data, _ds = large_image(512, 1024, frames, syntax, text=text)
            key = f"ab/1/2/{syntax}.dcm"
            store.put(key, [data], None)
            yield store, root, InstanceRef(SECONDARY_CAPTURE, "1.2.3", syntax, key,
                                           hashlib.sha256(data).hexdigest()), len(data)
            store.delete(key)
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)


def medians(rounds: Iterable[Sequence[float]], names: Sequence[str]) -> dict[str, float]:
    """The median of each figure over the rounds, by name."""
    columns = list(zip(*rounds, strict=True))
    return {name: statistics.median(column) for name, column in zip(names, columns, strict=True)}
