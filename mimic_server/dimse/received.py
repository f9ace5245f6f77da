"""A C-STORE's data set as an ``archive.ingest.ReceivedObject``: the DIMSE half of receiving.

The data set bytes come straight from pynetdicom's receive buffer (``event.request.DataSet``)
and are never decoded or re-encoded: what is stored is a Part 10 preamble and File Meta
Information that we write (from the command's UIDs and the presentation context's transfer
syntax), followed by the data set exactly as it arrived. The walk, header parse and hash are
the archive's (``archive/ingest.py``), the same for every front door.

A data set too large to hold in memory arrives spooled (``dimse/receiving.py``): it was
hashed and walked while it arrived, its header is parsed from a read-only map of the spool
file (only the header's pages are touched), and the spool file, which holds the object as
kept, is what the store keeps: named by the file store, read back by the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mimic_server.archive.ingest import ReceivedObject
from mimic_server.codec.file_meta import encode_file_meta
from mimic_server.dimse.receiving import ReceivingDataSet
from mimic_server.errors import TooLarge

if TYPE_CHECKING:
    from pynetdicom.events import Event


def received_from_event(event: Event, calling_ae_title: str) -> ReceivedObject:
    """The object of an ``EVT_C_STORE``; ``DicomStatusError`` if it is too large or
    damaged (``0xA700``, ``0xC000``)."""
    request = event.request
    received = request.DataSet
    if isinstance(received, ReceivingDataSet):
        if received.too_large:
            raise TooLarge(
                f"data set exceeds the archive's limit of {received.limit} bytes"
            )
        if received.spooled:
            return _from_spool(received)
    dataset = received.getbuffer()  # type: ignore[union-attr]
    transfer_syntax = str(event.context.transfer_syntax)
    file_meta = encode_file_meta(
        str(request.AffectedSOPClassUID),
        str(request.AffectedSOPInstanceUID),
        transfer_syntax,
        calling_ae_title,
    )
    return ReceivedObject.of(file_meta, dataset, transfer_syntax)


def _from_spool(received: ReceivingDataSet) -> ReceivedObject:
    """Hashed and walked as it arrived; the header is read through a map of the file."""
    sha256, _size = received.finish()  # CannotUnderstand if the walk found a fault
    start = received.spool_start
    assert start is not None and received.spool is not None
    return ReceivedObject.walked(start.file_meta, received.mapped_data_set(),
                                 str(start.transfer_syntax), sha256, received)
