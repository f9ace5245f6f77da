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

import io
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pydicom
import pynetdicom.association
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from mimic_server.archive.read import reference
from mimic_server.codec.implicit_stream import MAX_NESTING
from mimic_server.codec.nesting import nests_deeper_than
from mimic_server.dimse.recoders import recoder
from mimic_server.errors import CannotUnderstand

if TYPE_CHECKING:
    from mimic_server.query.finder import InstanceRef

log = logging.getLogger(__name__)


class StoredDataset(Dataset):
    """A dataset read from the store, with its encoded bytes as they were received.

    Made by :meth:`of`, it holds only what pynetdicom's ``send_c_store`` reads to choose
    the presentation context and write the request (the SOP Class and Instance UIDs and the
    transfer syntax, from the index row): parsing each object with pydicom was a sixth of
    the thread's time in a C-GET of CT slices, for elements nobody reads. Only a conversion
    to another transfer syntax parses the object (:attr:`_mimic_part10`), in the encoder.
    """

    _mimic_raw: bytes | memoryview
    _mimic_encoding: tuple[bool, bool, bool]
    #: Set when pynetdicom handed it to the encoder, i.e. found a presentation context.
    _mimic_encoded: bool = False
    #: Set when the encoder then failed it, nothing sent (a conversion refused, the store):
    #: with ``_mimic_encoded`` alone, the audit's fallback would count it transferred.
    _mimic_refused: bool = False
    #: The Status of the peer's C-STORE response (:func:`answered_send`); None: no response.
    _mimic_answer: int | None = None
    #: The index row it was read for (``dimse.retrieve.read_verified``).
    _mimic_ref: InstanceRef
    #: The whole Part 10 file of a stand-in made by :meth:`of` (None: a parsed dataset).
    _mimic_part10: bytes | None = None

    @classmethod
    def wrap(cls, dataset: Dataset, raw: bytes) -> StoredDataset:
        """The parsed ``dataset`` with its stored data set bytes ``raw``."""
        stored = cls(dataset)
        stored.file_meta = dataset.file_meta
        stored._mimic_raw = raw
        stored._mimic_encoding = _encoding(dataset.file_meta.TransferSyntaxUID)
        return stored

    @classmethod
    def of(cls, ref: InstanceRef, part10: bytes, dataset_offset: int) -> StoredDataset:
        """A stand-in for the stored Part 10 file ``part10`` of the index row ``ref``,
        unparsed: its UIDs and transfer syntax are the row's (taken from the same object
        when it was stored)."""
        stored = cls()
        # Elements made without pydicom's validation (a third of the stand-in's cost): the
        # UIDs were checked when the object was received (``archive.ingest``).
        stored[_SOP_CLASS] = DataElement(_SOP_CLASS, "UI", UID(ref.sop_class_uid),
                                         validation_mode=config.IGNORE)
        stored[_SOP_INSTANCE] = DataElement(_SOP_INSTANCE, "UI", UID(ref.sop_instance_uid),
                                            validation_mode=config.IGNORE)
        stored.file_meta = _file_meta(ref.transfer_syntax_uid)
        stored._mimic_raw = memoryview(part10)[dataset_offset:]
        stored._mimic_part10 = part10
        stored._mimic_encoding = _encoding(UID(ref.transfer_syntax_uid))
        stored._mimic_ref = ref
        return stored

    def parsed(self) -> Dataset:
        """The whole dataset, for pynetdicom's encoder to convert (a stand-in is parsed).
        Raises ``CannotUnderstand`` for one nested too deep for pydicom (``codec/nesting``)."""
        if self._mimic_part10 is None:
            return self
        refuse_if_too_deep(self._mimic_raw, self._mimic_encoding)
        return pydicom.dcmread(io.BytesIO(self._mimic_part10))


def refuse_if_too_deep(data: bytes | memoryview, encoding: tuple[bool, bool, bool]) -> None:
    """Raise ``CannotUnderstand`` when the data set ``data``, stored in ``encoding``
    (implicit VR, little endian, deflated), nests its sequences deeper than pydicom's
    recursive encoder can take (``codec/nesting.py``).

    One stored Deflated or in Big Endian is refused unlooked at: every conversion of a
    Deflated one pynetdicom asks for is made without pydicom (``dimse/recoders``), and it
    never asks for one of a Big Endian one (it finds no context across byte orders, so such
    an object goes only to a destination that took Big Endian, as stored); a conversion
    nothing looked at is what this guards against."""
    _implicit, little, deflated = encoding
    if deflated or not little:
        raise CannotUnderstand("a Deflated or Big Endian data set is not converted by pydicom")
    if nests_deeper_than(data, MAX_NESTING):
        raise CannotUnderstand("sequences nested too deep")


def conversion_refused(ref: InstanceRef | None, exc: CannotUnderstand) -> None:
    log.error(
        "C-STORE sub-operation failed: the stored data set could not be converted to the "
        "destination's transfer syntax",
        extra={"object": reference(ref) if ref is not None else None, "reason": str(exc)},
    )


_SOP_CLASS, _SOP_INSTANCE = 0x00080016, 0x00080018
#: The File Meta of stand-ins, one per transfer syntax: pynetdicom reads only its Transfer
#: Syntax UID (to pick the presentation context), and nothing writes to it.
_FILE_METAS: dict[str, FileMetaDataset] = {}


def _file_meta(transfer_syntax_uid: str) -> FileMetaDataset:
    meta = _FILE_METAS.get(transfer_syntax_uid)
    if meta is None:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = transfer_syntax_uid
        _FILE_METAS[transfer_syntax_uid] = meta
    return meta


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
            wanted = (is_implicit_vr, is_little_endian, deflated)
            if ds._mimic_encoding == wanted:
                return ds._mimic_raw
            try:
                convert = recoder(ds.file_meta.TransferSyntaxUID, wanted)
                if convert is not None:
                    # Re-encoded from its stored bytes, as a large one is as it is sent:
                    # values as stored, and no pydicom parse (a data set nested a few hundred
                    # levels deep, some kilobytes, takes pydicom's encoder past Python's
                    # recursion limit and the process down with it).
                    return b"".join(convert(iter((ds._mimic_raw,)), 1 << 20))
                ds = ds.parsed()
            except CannotUnderstand as exc:  # the sub-operation fails; nothing was sent
                ds._mimic_refused = True
                conversion_refused(getattr(ds, "_mimic_ref", None), exc)
                raise
        return original(ds, is_implicit_vr, is_little_endian, deflated)

    encode._mimic_stored_bytes = True  # type: ignore[attr-defined]
    return encode


def stored_bytes_encoder_in_use() -> bool:
    """Whether pynetdicom encodes through :func:`stored_bytes_encoder` now (possibly
    wrapped again by the fence, which links each wrapper to what it wraps by
    ``_mimic_original``): only then does an unset ``_mimic_encoded`` mean that pynetdicom
    did not send the object."""
    return _wrapped_by(pynetdicom.association.encode, "_mimic_stored_bytes")


def answered_send_in_use() -> bool:
    """Whether ``Association.send_c_store`` notes the peer's response on what it sends
    (:func:`answered_send`, applied by the fence): only then is ``_mimic_answer`` known."""
    return _wrapped_by(pynetdicom.association.Association.send_c_store, "_mimic_answered")


def _wrapped_by(function: Any, marker: str) -> bool:
    """Whether ``function`` is, or wraps, one that carries ``marker``: the fence links each
    wrapper to what it wraps by ``_mimic_original``."""
    while function is not None:
        if getattr(function, marker, False):
            return True
        function = getattr(function, "_mimic_original", None)
    return False


def answered_send(original: Callable[..., Any]) -> Callable[..., Any]:
    """A wrapper of ``Association.send_c_store`` (applied by the fence): the Status of the
    peer's response (None where there was none, or the send raised) is noted on the stored
    object sent (``_mimic_answer``), so that the audit trail lists as transferred only what
    the destination took (``dimse/audited.py``). pynetdicom counts each sub-operation's
    outcome, but only into its responses' totals, which name no object."""

    def send_c_store(self: Any, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        answer: int | None = None
        try:
            status = original(self, dataset, *args, **kwargs)
            value = getattr(status, "Status", None)
            answer = int(value) if value is not None else None
            return status
        finally:
            if hasattr(dataset, "_mimic_encoded"):  # a stored object (StoredDataset or
                dataset._mimic_answer = answer  # StreamedDataset), not a caller's own

    send_c_store._mimic_answered = True  # type: ignore[attr-defined]
    return send_c_store
