"""Sending stored objects byte for byte through pynetdicom's C-MOVE / C-GET sub-operations.

pynetdicom's retrieve service takes a ``Dataset`` and re-encodes it for every C-STORE
sub-operation, which drops group lengths and alters other details of the bytes we promised
to keep as received. A :class:`StoredDataset` carries the stored dataset bytes; the encoder
made here (applied by the fence, ``mimic_server/patches.py``) sends them unchanged when the
sub-association's transfer syntax encodes the same way as the stored one, and falls back to
pynetdicom's own encoder otherwise (a conversion between uncompressed transfer syntaxes that
the destination asked for).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pynetdicom.association
from pydicom.dataset import Dataset
from pydicom.uid import UID

if TYPE_CHECKING:
    from mimic_server.query.finder import InstanceRef


class StoredDataset(Dataset):
    """A dataset read from the store, with its encoded bytes as they were received.

    Parsed whole: the audit trail reads each sent object's study and patient, and an object
    whose data set encoding differs from its File Meta is sent as pydicom finds it.
    """

    _mimic_raw: bytes
    _mimic_encoding: tuple[bool, bool, bool]
    #: Set when pynetdicom handed it to the encoder, i.e. found a presentation context.
    _mimic_encoded: bool = False
    #: The index row it was read for (``dimse.retrieve.read_verified``).
    _mimic_ref: InstanceRef

    @classmethod
    def wrap(cls, dataset: Dataset, raw: bytes) -> StoredDataset:
        """The parsed ``dataset`` with its stored data set bytes ``raw``."""
        stored = cls(dataset)
        stored.file_meta = dataset.file_meta
        stored._mimic_raw = raw
        stored._mimic_encoding = _encoding(dataset.file_meta.TransferSyntaxUID)
        return stored


def _encoding(syntax: UID) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated) of ``syntax``; one pydicom does not know is
    encapsulated: explicit VR little endian."""
    known = syntax.is_transfer_syntax
    return (
        syntax.is_implicit_VR if known else False,
        syntax.is_little_endian if known else True,
        syntax.is_deflated if known else False,
    )


def stored_bytes_encoder(original: Callable[..., Any]) -> Callable[..., Any]:
    """A replacement for ``pynetdicom.association.encode`` (applied by the fence,
    ``mimic_server/patches.py``): a :class:`StoredDataset` in its own encoding is sent as
    stored, anything else is encoded by ``original``."""

    def encode(
        ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
    ) -> Any:
        if isinstance(ds, StoredDataset):
            ds._mimic_encoded = True
            if ds._mimic_encoding == (is_implicit_vr, is_little_endian, deflated):
                return ds._mimic_raw
        return original(ds, is_implicit_vr, is_little_endian, deflated)

    encode._mimic_stored_bytes = True  # type: ignore[attr-defined]
    return encode


def stored_bytes_encoder_in_use() -> bool:
    """Whether pynetdicom encodes through :func:`stored_bytes_encoder` now (possibly
    wrapped again by the fence, which links each wrapper to what it wraps by
    ``_mimic_original``): only then does an unset ``_mimic_encoded`` mean that pynetdicom
    did not send the object."""
    encode: Any = pynetdicom.association.encode
    while encode is not None:
        if getattr(encode, "_mimic_stored_bytes", False):
            return True
        encode = getattr(encode, "_mimic_original", None)
    return False
