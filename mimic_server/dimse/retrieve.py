"""What C-MOVE and C-GET share: the match list, and objects read back with their hash checked.

A sub-operation whose object is missing or whose bytes no longer hash to the SHA-256 in the
index fails; it is never sent. pynetdicom counts a yielded dataset that cannot be sent as a
failed sub-operation and lists its SOP Instance UID, which is how such a failure is reported.
An object above ``archive.read.STREAM_ABOVE`` is hashed by a streaming pass and sent by
streaming it from the store (:mod:`mimic_server.dimse.stream_send`), never held whole; a
smaller one is read whole and sent as stored (:mod:`mimic_server.dimse.raw_send`). A Deflated
object of any size is streamed too: to a destination that did not accept Deflated it goes
inflated as it is sent, in Explicit VR Little Endian (what it is once inflated).

Once the association the sub-operations go over has ended (a C-MOVE destination that aborted
or released its sub-association, a C-GET requestor gone), each remaining sub-operation fails
without its object being read: a stand-in goes to pynetdicom, which counts it failed and lists
its UID as for any failed sub-operation, and the end is logged once.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from mimic_server.archive.read import STREAM_ABOVE, CurrentRow, open_verified, reference
from mimic_server.dimse import stream_send
from mimic_server.dimse.raw_send import StoredDataset, stored_bytes_encoder_in_use
from mimic_server.dimse.stream_send import StreamedDataset
from mimic_server.errors import OutOfResources
from mimic_server.query.finder import InstanceRef
from mimic_server.storage import ObjectStore

log = logging.getLogger(__name__)


def read_verified(
    store: ObjectStore, ref: InstanceRef, current: CurrentRow | None = None
) -> Dataset | None:
    """The stored object as a Dataset, or None (logged) if it is missing or corrupted: a
    :class:`StreamedDataset` for a large or Deflated one while streaming sends are
    installed, else a :class:`StoredDataset`: unparsed while pynetdicom sends it as stored
    (its encoder is :func:`~mimic_server.dimse.raw_send.stored_bytes_encoder`), else the
    whole object, parsed. ``current``: the index's row now, for an object gone since the match
    (``archive.read``)."""
    stored = open_verified(store, ref, current=current)
    if stored is None:
        return None
    if stream_send.enabled and (stored.streamed or _deflated(stored.ref)):
        # A Deflated one however small: a destination without Deflated gets it inflated as
        # it is sent (``stream_send``), where pydicom would inflate and re-encode it whole
        # (a megabyte stored can inflate to 1 GiB).
        return StreamedDataset.of(stored)
    try:
        data = stored.read()  # a large one is read again, and checked again as it is
    except (KeyError, OutOfResources, OSError):
        log.error("stored object unreadable", extra={"object": reference(stored.ref)})
        return None
    if stored_bytes_encoder_in_use():
        return StoredDataset.of(stored.ref, data, stored.dataset_offset)
    dataset = StoredDataset.wrap(pydicom.dcmread(io.BytesIO(data)), data[stored.dataset_offset:])
    dataset._mimic_ref = stored.ref  # the row read: ``ref``'s current one if it was sent again
    return dataset


def _deflated(ref: InstanceRef) -> bool:
    return ref.transfer_syntax_uid == DeflatedExplicitVRLittleEndian


def failed_suboperation(ref: InstanceRef) -> Dataset:
    """A stand-in that pynetdicom cannot send: counted as failed, its UID listed."""
    stand_in = Dataset()
    stand_in.SOPInstanceUID = ref.sop_instance_uid
    return stand_in


def datasets(
    store: ObjectStore, refs: list[InstanceRef], current: CurrentRow | None = None,
    association: Any = None,
) -> Iterator[Dataset]:
    """The objects to send; one pynetdicom could not send (it found no presentation context
    for its SOP Class and transfer syntax, and counts it failed without a word) is logged
    when the next is asked for, i.e. after pynetdicom's sub-operation. An instance sent
    again since the match list was read is sent as it is stored now, if still in the series
    that matched (``current``; ``archive.read``). Each object held whole is read and checked
    while the one before it is sent (:class:`_ReadAhead`).

    ``association``: the one the C-STORE sub-operations go over (a C-MOVE's
    sub-association, a C-GET's own). Looked at before each object is read: once it can no
    longer carry data, the remaining sub-operations fail unread (:func:`_not_sent`), where
    each object was read and hashed in full only for pynetdicom to fail its send (four
    objects of 48 MiB to a destination that aborted at the first: 240 MiB read), each then
    logged as lacking a presentation context."""
    ahead = _ReadAhead(store, current) if len(refs) > 1 else None
    try:
        for index, ref in enumerate(refs):
            if association is not None and not _carries(association):
                if ahead:
                    ahead.close()  # an object read ahead is dropped, unsent
                yield from _not_sent(association, refs[index:])
                return
            dataset = ahead.take(ref) if ahead else read_verified(store, ref, current)
            if ahead and index + 1 < len(refs):
                ahead.start(refs[index + 1])
            yield dataset or failed_suboperation(ref)
            if isinstance(dataset, StreamedDataset | StoredDataset) and not (
                dataset._mimic_encoded
            ) and (
                isinstance(dataset, StreamedDataset) or stored_bytes_encoder_in_use()
            ) and (  # else nothing marks the ones sent
                association is None or _carries(association)
            ):  # an association that ended is the cause, logged by the next turn
                read = _read_ref(dataset)
                log.warning(
                    "C-STORE sub-operation not sent: no presentation context for it",
                    extra={"object": reference(read), "sop_class": read.sop_class_uid,
                           "transfer_syntax": read.transfer_syntax_uid},
                )
    finally:
        if ahead:
            ahead.close()


def _carries(association: Any) -> bool:
    """``association`` is established and its DUL can still carry data."""
    return bool(association.is_established) and stream_send.carries_data(association.dimse)


def _not_sent(association: Any, refs: list[InstanceRef]) -> Iterator[Dataset]:
    """The sub-operations of ``refs`` failed, none read: their association ended. Logged
    once, with how many (no patient data)."""
    log.warning(
        "C-STORE sub-operations not sent: their association ended",
        extra={"association": "C-MOVE sub-association" if association.is_requestor
               else "C-GET association", "not_sent": len(refs)},
    )
    for ref in refs:
        yield failed_suboperation(ref)


#: Objects smaller than this are read in the association thread: the hand-off to another
#: thread costs more than reading and checking a CT slice of 40 KB.
READ_AHEAD_FROM = 128 * 1024


class _ReadAhead:
    """The next object of a C-GET / C-MOVE read from the store and its SHA-256 checked in a
    thread of its own, while pynetdicom sends the one before it and waits for the peer's
    C-STORE-RSP (a sixth of the association thread's time in a C-GET of 0.5 MB objects went
    to the read and the check; both release the GIL). One object ahead, and only one the
    index row says is held whole (up to ``STREAM_ABOVE``): the memory bound stays two such
    objects per retrieve. (An instance stored again since the match, larger now, is hashed
    by its streaming pass in that thread: rare, and still bounded.) An early end drops what
    was read ahead without waiting for a read under way, which finishes on its own.
    """

    def __init__(self, store: ObjectStore, current: CurrentRow | None) -> None:
        self._store, self._current = store, current
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mimic-read-ahead")
        self._pending: tuple[InstanceRef, Future[Dataset | None]] | None = None

    def start(self, ref: InstanceRef) -> None:
        if READ_AHEAD_FROM <= ref.size <= STREAM_ABOVE:
            self._pending = (ref, self._pool.submit(read_verified, self._store, ref,
                                                    self._current))

    def take(self, ref: InstanceRef) -> Dataset | None:
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] is ref:
            return pending[1].result()
        return read_verified(self._store, ref, self._current)

    def close(self) -> None:
        """The retrieve ended (done, cancelled, or its association gone): an object read
        ahead and not sent is dropped; a read under way is not waited for."""
        self._pending = None
        self._pool.shutdown(wait=False, cancel_futures=True)


def _read_ref(dataset: StreamedDataset | StoredDataset) -> InstanceRef:
    """The index row whose object ``dataset`` is (the current one of an instance sent again
    since the match, whose SOP Class or transfer syntax may differ from the matched row's)."""
    if isinstance(dataset, StreamedDataset):
        return dataset._mimic_object.ref
    return dataset._mimic_ref


def index_row_of(dataset: object) -> InstanceRef | None:
    """The index row of a dataset :func:`datasets` yielded for a stored object, else None
    (a failed sub-operation's stand-in): what the audit trail names it by, as neither a
    stand-in nor a streamed object carries its study or patient."""
    if isinstance(dataset, StreamedDataset | StoredDataset):
        return _read_ref(dataset)
    return None
