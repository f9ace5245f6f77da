"""One received C-STORE object: the bytes as sent, a File Meta header, the parsed header.

The dataset bytes come straight from pynetdicom's receive buffer (``event.request.DataSet``)
and are never decoded or re-encoded: what we store is a Part 10 preamble and File Meta
Information that we write, followed by the dataset exactly as it arrived. The whole dataset's
structure is walked (element headers only, ``codec/structure.py``) so that a damaged one is
refused; only the header is parsed, stopping before Pixel Data, so pixel data is never
decoded nor even copied.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.uid import UID

from mimic_server.codec.file_meta import encode_file_meta
from mimic_server.codec.header import parse_header
from mimic_server.codec.structure import check_structure

if TYPE_CHECKING:
    from pynetdicom.events import Event


@dataclass(frozen=True, slots=True)
class ReceivedObject:
    """A received object ready to be stored: ``chunks`` are its Part 10 bytes."""

    file_meta: bytes
    dataset: memoryview
    transfer_syntax_uid: str
    header: Dataset
    sha256: str

    @property
    def size(self) -> int:
        return len(self.file_meta) + self.dataset.nbytes

    @property
    def chunks(self) -> tuple[bytes | memoryview, ...]:
        return (self.file_meta, self.dataset)

    @classmethod
    def from_event(cls, event: Event, calling_ae_title: str) -> ReceivedObject:
        request = event.request
        dataset = request.DataSet.getbuffer()  # type: ignore[union-attr]
        transfer_syntax = UID(str(event.context.transfer_syntax))
        file_meta = encode_file_meta(
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
            transfer_syntax,
            calling_ae_title,
        )
        check_structure(dataset, transfer_syntax)  # its elements parse to its exact end
        header = parse_header(dataset, transfer_syntax)
        digest = hashlib.sha256(file_meta)
        digest.update(dataset)
        return cls(file_meta, dataset, str(transfer_syntax), header, digest.hexdigest())
