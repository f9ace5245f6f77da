"""A received Part 10 file (a STOW-RS part) as the archive keeps it.

The file's own File Meta Information says what the sender declares (SOP Class and Instance
UIDs, transfer syntax) as a C-STORE command does; what is stored is *our* File Meta
(``codec/file_meta.py``, the same as for C-STORE) followed by the file's data set bytes
exactly as received. The sender's preamble and File Meta are not kept (a preamble may hold
anything). The data set is then walked, parsed and hashed as every received object is
(``ingest.ReceivedObject.of``).
"""

from __future__ import annotations

from mimic_server.archive.ingest import ReceivedObject, Spool, check_declared_uids
from mimic_server.archive.syntaxes import accepted
from mimic_server.codec.file_meta import FileMetaRead, encode_file_meta
from mimic_server.errors import CannotUnderstand, Status


def received_part10(data: memoryview, declared: FileMetaRead, source_ae_title: str = "",
                    spool: Spool | None = None) -> ReceivedObject:
    """The object of a whole received Part 10 file (in memory or mapped from its spool).

    Raises ``DicomStatusError``: ``0xC122`` a transfer syntax the archive does not keep,
    ``0xC002`` invalid declared UIDs, ``0xC000`` a data set that does not parse.
    """
    syntax = declared.transfer_syntax_uid
    if not accepted(syntax):
        raise CannotUnderstand("transfer syntax not supported",
                               Status.TRANSFER_SYNTAX_NOT_SUPPORTED)
    check_declared_uids(declared.sop_class_uid, declared.sop_instance_uid)
    dataset = data[declared.dataset_offset:]
    if not dataset.nbytes:
        raise CannotUnderstand("the file has no data set")
    file_meta = encode_file_meta(declared.sop_class_uid, declared.sop_instance_uid, syntax,
                                 source_ae_title)
    return ReceivedObject.of(file_meta, dataset, syntax, spool)
