"""Data sets as bytes for the re-encoders' tests (``codec/implicit_stream``,
``codec/explicit_stream``): cut into pieces, read and written by pydicom in either VR
encoding, and compared as pydicom reads them."""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence


def cut(data: bytes, size: int) -> Iterator[bytes]:
    return iter([data[i:i + size] for i in range(0, len(data), size)])


def read(data: bytes, implicit: bool) -> Dataset:
    """The little endian data set ``data`` as pydicom reads it."""
    fp = DicomBytesIO(data)
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    return read_dataset(fp, implicit, True)


def encoded(ds: Dataset, implicit: bool) -> bytes:
    """``ds`` as pydicom writes it, little endian."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def differences(a: Dataset, b: Dataset, vr: bool = False, where: str = "") -> list[str]:
    """Where two data sets differ (``vr``: their VRs too, for explicit ones): a value
    compared as its bytes, else (pydicom writes a value again from what it parsed: padding
    trimmed) as what pydicom reads; sequences item by item, whatever their lengths'
    encoding."""
    found = []
    # Raw, before any value is converted: iterating a Dataset would convert them.
    raw_a = {t: a.get_item(t) for t in a.keys()}  # noqa: SIM118
    raw_b = {t: b.get_item(t) for t in b.keys()}  # noqa: SIM118
    found += [f"{where}{t} in one only" for t in set(raw_a) ^ set(raw_b)]
    for tag in sorted(set(raw_a) & set(raw_b)):
        ra, rb = raw_a[tag], raw_b[tag]
        if vr and ra.VR != rb.VR:
            found.append(f"{where}{tag} VR {ra.VR} against {rb.VR}")
            continue
        if (isinstance(ra.value, bytes) and isinstance(rb.value, bytes)
                and ra.value == rb.value and ra.VR != "SQ"):
            continue
        va, vb = a[tag].value, b[tag].value
        if isinstance(va, Sequence) and isinstance(vb, Sequence) and len(va) == len(vb):
            for i, (x, y) in enumerate(zip(va, vb, strict=True)):
                found += differences(x, y, vr, f"{where}{tag}[{i}].")
        elif va != vb:
            found.append(f"{where}{tag}")
    return found
