"""One received C-STORE object: the bytes as sent, a File Meta header, the parsed header.

The dataset bytes come straight from pynetdicom's receive buffer (``event.request.DataSet``)
and are never decoded or re-encoded: what we store is a Part 10 preamble and File Meta
Information that we write, followed by the dataset exactly as it arrived. The whole dataset's
structure is walked (element headers only, ``codec/structure.py``) so that a damaged one is
refused; only the header is parsed, stopping before Pixel Data, so pixel data is never
decoded nor even copied.

A data set too large to hold in memory arrives spooled (``dimse/receiving.py``): it was
hashed and walked while it arrived, its header is parsed from a read-only map of the spool
file (only the header's pages are touched) and it is stored by reading the spool back.
"""

from __future__ import annotations

import hashlib
import itertools
import mmap
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.uid import UID

from mimic_server.codec.file_meta import encode_file_meta
from mimic_server.codec.header import parse_header
from mimic_server.codec.structure import check_structure
from mimic_server.dimse.receiving import ReceivingDataSet
from mimic_server.errors import OutOfResources

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
    #: The spool a large data set arrived in (its bytes are read back from there).
    spool: ReceivingDataSet | None = None

    @property
    def size(self) -> int:
        return len(self.file_meta) + self.dataset.nbytes

    @property
    def chunks(self) -> Iterable[bytes | memoryview]:
        if self.spool is not None:
            return itertools.chain((self.file_meta,), self.spool.chunks())
        return (self.file_meta, self.dataset)

    @classmethod
    def from_event(cls, event: Event, calling_ae_title: str) -> ReceivedObject:
        request = event.request
        received = request.DataSet
        if isinstance(received, ReceivingDataSet):
            if received.too_large:
                raise OutOfResources(
                    f"data set exceeds the archive's limit of {received.limit} bytes"
                )
            if received.spooled:
                return cls._from_spool(received)
        dataset = received.getbuffer()  # type: ignore[union-attr]
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

    @classmethod
    def _from_spool(cls, received: ReceivingDataSet) -> ReceivedObject:
        """Hashed and walked as it arrived; the header is read through a map of the file."""
        sha256, _size = received.finish()  # CannotUnderstand if the walk found a fault
        start = received.spool_start
        assert start is not None and received.spool is not None
        mapped = mmap.mmap(received.spool.fileno(), 0, access=mmap.ACCESS_READ)
        dataset = memoryview(mapped)
        header = parse_header(dataset, start.transfer_syntax)
        return cls(start.file_meta, dataset, str(start.transfer_syntax), header, sha256,
                   received)
