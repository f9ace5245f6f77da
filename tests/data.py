"""The real DICOM files that ship with pydicom, chosen for what a test needs."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import DATA_ROOT
from pydicom.data.data_manager import external_data_sources
from pydicom.filereader import read_preamble
from pydicom.uid import UID

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class Storable:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int  # where the dataset starts, after the File Meta Information

    def dataset_bytes(self) -> bytes:
        return self.path.read_bytes()[self.dataset_offset :]


def _ok(uid: object) -> bool:
    return isinstance(uid, str) and 0 < len(uid) <= 64 and bool(_UID.match(uid))


@functools.cache
def storable_files() -> tuple[Storable, ...]:
    """Every shipped Part 10 file a modality could legitimately send us."""
    found: dict[str, Storable] = {}
    for name in local_files("*.dcm") + dicomdir_files():
        path = Path(name)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            with open(path, "rb") as fh:
                if read_preamble(fh, False) is None:
                    continue
            meta = ds.file_meta
            ts = UID(str(meta.TransferSyntaxUID))
            sop_class = str(meta.MediaStorageSOPClassUID)
            sop_instance = str(meta.MediaStorageSOPInstanceUID)
            if not (ts.is_transfer_syntax and _ok(sop_class) and _ok(sop_instance)):
                continue
            if str(ds.get("SOPInstanceUID", "")) != sop_instance:
                continue
            if str(ds.get("SOPClassUID", "")) != sop_class:
                continue
            study, series = ds.get("StudyInstanceUID", ""), ds.get("SeriesInstanceUID", "")
            if not (_ok(str(study)) and _ok(str(series))):
                continue
            with open(path, "rb") as fh:
                fh.seek(132)
                pydicom.filereader._read_file_meta_info(fh)
                offset = fh.tell()
        except Exception:
            continue
        found.setdefault(sop_instance, Storable(path, sop_class, sop_instance, str(ts), offset))
    return tuple(found.values())


def local_files(pattern: str) -> list[str]:
    """Files of pydicom and of the pydicom-data package; never downloads anything."""
    names = [str(p) for p in Path(DATA_ROOT).rglob(pattern)]
    source = external_data_sources().get("pydicom-data")
    if source is not None:
        names += [str(p) for p in source.get_paths(pattern, 0)]
    return sorted(set(names))


def dicomdir_files() -> list[str]:
    """The ``dicomdirtests`` set: a File-set's objects, named without extension."""
    root = Path(DATA_ROOT, "test_files", "dicomdirtests")
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and "DICOMDIR" not in p.name)


def ct_small() -> Path:
    return Path(DATA_ROOT, "test_files", "CT_small.dcm")


def ct_copy(directory: Path, sop_instance_uid: str, series_instance_uid: str | None = None) -> Path:
    """CT_small.dcm as a new instance (and, if given, in another series), written to
    ``directory``: for tests that need objects the archive has not seen."""
    ds = pydicom.dcmread(ct_small())
    if series_instance_uid is not None:
        ds.SeriesInstanceUID = series_instance_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    path = directory / f"{sop_instance_uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
