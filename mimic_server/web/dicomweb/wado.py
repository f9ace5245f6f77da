"""WADO-RS (PS3.18 10.4): studies, series and instances as stored, their metadata, bulk data.

Instances leave as ``multipart/related; type="application/dicom"`` parts holding the stored
Part 10 bytes unchanged, each read through ``archive.read.open_verified`` (SHA-256 checked
before a byte leaves, as for C-GET) and streamed (``VerifiedObject.chunks``). MIMIC does not
transcode: an Accept header that names a transfer syntax other than the stored one (or
``*``) is answered 406 for a single instance; without the parameter the stored syntax is
sent and named in each part's Content-Type. Metadata is DICOM JSON with a ``BulkDataURI``
for each bulk element (native Pixel Data and any binary value over 1 KiB), served by the
``bulkdata`` route; encapsulated Pixel Data is retrieved by its frames. Every retrieve is
audited as a C-GET is.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import mmap
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
)
from pydicom.valuerep import BYTES_VR
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mimic_server.archive.inflated import inflated_copy, inflated_pieces
from mimic_server.archive.read import (
    CHUNK,
    ObjectChanged,
    VerifiedObject,
    open_verified,
    reference,
)
from mimic_server.codec.file_meta import encode_file_meta
from mimic_server.codec.header_stream import URI_VRS, NotWalked, without_bulk
from mimic_server.codec.structure import undefined_length_end
from mimic_server.errors import CannotUnderstand, OutOfResources
from mimic_server.query.finder import InstanceRef
from mimic_server.web.dicomweb import parts as multipart
from mimic_server.web.dicomweb.auth import WADO, authorize
from mimic_server.web.dicomweb.closing_stream import Body, ClosingStreamingResponse
from mimic_server.web.dicomweb.context import DicomWebContext
from mimic_server.web.dicomweb.errors import AnswerCut, WebError
from mimic_server.web.dicomweb.negotiation import negotiate
from mimic_server.web.dicomweb.retrieve import TransferAudit, instances
from mimic_server.web.dicomweb.urls import dicomweb_root

log = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
MULTIPART_DICOM = f'multipart/related; type="{DICOM}"'
MULTIPART_OCTETS = f'multipart/related; type="{OCTET_STREAM}"'
BULK_DATA_THRESHOLD = 1024
#: A single instance up to this size is answered in one piece rather than streamed.
WHOLE_ANSWER_BYTES = 1 << 20
_UNDEFINED_LENGTH = 0xFFFFFFFF


def _path(request: Request) -> tuple[str, str | None, str | None]:
    p = request.path_params
    return str(p["study"]), p.get("series"), p.get("instance")


class _SyntaxesAccepted:
    """Which stored transfer syntaxes the request's Accept header takes for
    ``multipart/related; type="application/dicom"`` (PS3.18 8.7.3.5): each syntax is
    negotiated as an offer of its own, so that an Accept listing several syntaxes, or one
    syntax and then a range without one (``transfer-syntax=*``, or none, at a lower q), takes
    every syntax it names or lets in. Deciding on the most specific range alone took only
    its first syntax and refused an instance stored in the second (406)."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._known: dict[str, bool] = {}
        self.any = self._takes("")  # a range without a syntax (or ``*``) lets in any

    def _takes(self, syntax: str) -> bool:
        offer = f"{MULTIPART_DICOM}; transfer-syntax={syntax}" if syntax else MULTIPART_DICOM
        try:
            _, params = negotiate(self._request, [offer])
        except WebError:
            return False
        return bool(syntax) or params.get("transfer-syntax") in (None, "", "*")

    def __call__(self, syntax: str) -> bool:
        if self.any:
            return True
        known = self._known.get(syntax)
        if known is None:
            known = self._known[syntax] = self._takes(syntax)
        return known


def read_now(ctx: DicomWebContext, ref: InstanceRef,
             unavailable_raises: bool = False) -> VerifiedObject | None:
    """The object of ``ref`` with its hash checked, or None (logged by ``open_verified``);
    with ``unavailable_raises``, OutOfResources when the store cannot be read now.

    An instance sent again since the request found it has a new object (the old one is
    deleted once its new row commits): its version stored now is read instead, as for a
    C-GET (``archive/read.py``). ``obj.ref`` is then that version's row, whose transfer syntax
    and SOP Class may differ from those matched.
    """
    return open_verified(ctx.store, ref, current=ctx.finder.current,
                         unavailable_raises=unavailable_raises)


def read_noting(ctx: DicomWebContext, ref: InstanceRef,
                unavailable: list[InstanceRef]) -> VerifiedObject | None:
    """:func:`read_now`, noting in ``unavailable`` an object the store could not be read
    for (Blob Storage throttled or down), so that a study none of whose objects could be
    read for that reason alone is a 503 the viewer may retry, not the 500 of lost data."""
    try:
        return read_now(ctx, ref, unavailable_raises=True)
    except OutOfResources:
        unavailable.append(ref)
        return None


def _store_unavailable() -> WebError:
    """The answer when the store could not be read for any object asked for: it may
    answer again (a Blob Storage throttle or outage), so the client is told to retry."""
    return WebError(503, "the object store is unavailable", {"Retry-After": "10"})


def _read_again_failed(obj: VerifiedObject, exc: BaseException) -> WebError:
    """The answer when a large object's second read (``VerifiedObject.chunks``: its copy,
    its header's walk, the first pieces of its sending) fails before any byte of the answer
    has left. The store answered the hash pass moments before: one that cannot be read now
    (Blob Storage throttled or down since, ``OutOfResources``) is a 503 the viewer retries,
    as when the first read fails (:func:`verified`); bytes that no longer match their
    SHA-256 (``ObjectChanged``) or an object gone stay the 500 of a lost or corrupted
    object. Both were that 500, and a viewer never retried an object that was sound."""
    if isinstance(exc, OutOfResources) and not isinstance(exc, ObjectChanged):
        log.error("stored object unreadable",
                  extra={"object": reference(obj.ref), "error": type(exc).__name__})
        return _store_unavailable()
    return WebError(500, "the stored object cannot be read or fails its SHA-256 check")


def _begun(obj: VerifiedObject) -> _Begun:
    """The object's pieces for its part of a streamed answer, its first piece read now:
    the store's second read of a large object opened and begun before the answer's status
    is sent, so that a store failing between the hash pass and the sending is answered
    (:func:`_read_again_failed`) instead of a 200 whose body breaks at once. Raises
    ``WebError``; a failure later breaks the answer (:class:`AnswerCut`)."""
    pieces = obj.chunks()
    try:
        lead = next(pieces, None)
    except (KeyError, OutOfResources, OSError) as exc:
        pieces.close()  # type: ignore[attr-defined]
        raise _read_again_failed(obj, exc) from exc
    return _Begun(lead, pieces)


class _Begun:
    """An object's pieces whose first was read already (:func:`_begun`). Iterated once;
    :meth:`close` closes the store's handle, as an answer never sent must."""

    def __init__(self, lead: bytes | memoryview | None,
                 pieces: Iterator[bytes | memoryview]) -> None:
        self._lead = lead
        self._pieces = pieces

    def __iter__(self) -> Iterator[bytes | memoryview]:
        try:
            if self._lead is not None:
                yield self._lead
            yield from self._pieces
        finally:
            self.close()

    def close(self) -> None:
        self._pieces.close()  # type: ignore[attr-defined]


def verified(ctx: DicomWebContext, ref: InstanceRef) -> VerifiedObject:
    """The one object a request asks for, checked: 503 while the object store cannot be
    read (Blob Storage throttling or down: the viewer may try again), 500 when the object is
    lost or fails its SHA-256 check. Both were 500, "cannot be read or fails its SHA-256
    check", which no client retries and which sent an operator looking for corruption."""
    try:
        obj = read_now(ctx, ref, unavailable_raises=True)
    except OutOfResources as exc:
        raise _store_unavailable() from exc
    if obj is None:
        raise WebError(500, "the stored object cannot be read or fails its SHA-256 check")
    return obj


def retrieve_instances(ctx: DicomWebContext, request: Request) -> Response:
    negotiate(request, [MULTIPART_DICOM])
    session = authorize(ctx, request, WADO)
    study, series, instance = _path(request)
    refs = instances(ctx, study, series, instance)
    accepts = _SyntaxesAccepted(request)
    wanted = None if accepts.any else accepts
    if wanted is not None:
        refs_in = [r for r in refs if wanted(r.transfer_syntax_uid)]
        if not refs_in:
            raise WebError(406, f"stored in another transfer syntax; MIMIC does not transcode "
                           f"(ask for transfer-syntax=* or {refs[0].transfer_syntax_uid})")
        refs = refs_in
    audit = TransferAudit(ctx, session, "instances")
    first: VerifiedObject | None = None
    first_pieces: _Begun | None = None
    if instance is not None:  # one object: refuse before any byte if it does not verify
        try:
            first = verified(ctx, refs[0])
        except WebError:
            audit.failed_one()
            audit.end(completed=False)
            raise
        if wanted is not None and not wanted(first.ref.transfer_syntax_uid):
            audit.failed_one()  # it was read: a failed transfer, as frames record theirs
            audit.end(completed=False)
            raise WebError(406, "stored again meanwhile in another transfer syntax; MIMIC does "
                           f"not transcode (ask for transfer-syntax=* or "
                           f"{first.ref.transfer_syntax_uid})")
        try:
            first_pieces = _begun(first)
        except WebError:
            audit.failed_one()
            audit.end(completed=False)
            raise
        audit.begin(refs)
    else:
        # A study or series: read up to its first object that can be sent before the answer
        # starts. One whose every object failed its SHA-256 check was a 200 of an empty
        # multipart body (its close delimiter alone), which a viewer shows as an empty
        # study; its metadata was a 500 already.
        unsendable = 0
        unavailable: list[InstanceRef] = []
        for ref in refs:
            obj = read_noting(ctx, ref, unavailable)
            if obj is not None and _in_syntax(obj, wanted):
                try:
                    first_pieces = _begun(obj)
                except WebError as exc:
                    if exc.status == 503:
                        unavailable.append(ref)
                    unsendable += 1
                    continue
                first = obj
                break
            unsendable += 1
        audit.begin(refs)
        for _ in range(unsendable):
            audit.failed_one()
        if first is None:
            audit.end(completed=False)
            if len(unavailable) == len(refs):
                raise _store_unavailable()
            raise WebError(500, "no stored object of this resource can be read")
        refs = refs[unsendable:]
    boundary = multipart.new_boundary()
    media_type = multipart.content_type(boundary, DICOM)
    if instance is not None and first is not None and first.size <= WHOLE_ANSWER_BYTES:
        # A small instance in one piece: each piece of a streamed answer costs a hop to a
        # worker thread and back, which dominates a 40 KB answer on a busy machine.
        ref = first.ref
        whole = b"".join([
            multipart.part_head(boundary, f"{DICOM}; transfer-syntax={ref.transfer_syntax_uid}"),
            *(first_pieces or ()), b"\r\n", multipart.closing(boundary)])
        audit.sent_one(ref)
        audit.end()
        return Response(whole, media_type=media_type)

    def body() -> Body:
        completed = False
        accounted = 0  # refs recorded as sent or failed
        ref = refs[0]
        try:
            for ref in refs:
                # An object the store cannot be read for now (throttled or down since the
                # answer began) breaks the answer, as a store failing under an object does;
                # skipped, it was missing from an answer that ended as if complete.
                obj = first if first is not None and ref is refs[0] else read_now(
                    ctx, ref, unavailable_raises=True)
                if obj is None or not _in_syntax(obj, wanted):
                    audit.failed_one(ref)
                    accounted += 1
                    continue
                yield multipart.part_head(
                    boundary, f"{DICOM}; transfer-syntax={obj.ref.transfer_syntax_uid}")
                yield from (first_pieces if obj is first and first_pieces is not None
                            else obj.chunks())
                yield b"\r\n"
                audit.sent_one(obj.ref)
                accounted += 1
            yield multipart.closing(boundary)
            completed = True
        except (KeyError, OutOfResources, OSError) as exc:
            # Part of the answer has left with its 200: it can only be broken off, never
            # ended as if complete (no close delimiter, the connection ended unfinished).
            log.error("WADO-RS answer cut off: an object could not be read while it was sent",
                      extra={"object": reference(ref), "error": type(exc).__name__})
            raise AnswerCut from exc
        finally:
            # The first object's second read, begun before the status: a client that left
            # before its first piece was taken leaves it unread, open, and the answer's
            # references to it in a cycle: closed here, not by the garbage collector.
            if first_pieces is not None:
                first_pieces.close()
            # Cut off (the client left, the store failed): the object being sent and every
            # one after it were not sent; before, those after it were in neither count.
            for ref in refs[accounted:]:
                audit.failed_one(ref)
            audit.end(completed)

    def never_sent() -> None:  # the client left before the first byte: none was sent
        if first_pieces is not None:
            first_pieces.close()
        for ref in refs:
            audit.failed_one(ref)
        audit.end(completed=False)

    return ClosingStreamingResponse(body(), media_type=media_type, unstarted=never_sent)


def _in_syntax(obj: VerifiedObject, wanted: _SyntaxesAccepted | None) -> bool:
    """Whether the object read is in a transfer syntax asked for: one stored again since it
    matched may not be (not sent, and counted as failed, as a C-GET's would be)."""
    if wanted is None or wanted(obj.ref.transfer_syntax_uid):
        return True
    log.warning("instance stored again in another transfer syntax since it matched; not sent",
                extra={"object": reference(obj.ref)})
    return False


def _instance_url(root: str, ref: InstanceRef, study: str, series: str) -> str:
    return f"{root}/studies/{study}/series/{series}/instances/{ref.sop_instance_uid}"


def copied(ctx: DicomWebContext, obj: VerifiedObject) -> BinaryIO:
    """The object as a seekable file pydicom reads in place (``VerifiedObject.copied``: a
    large one written to an anonymous file in the spool directory, never held whole; a
    Deflated one inflated there, ``archive/inflated.py``, as pydicom would inflate it whole
    in memory); a store that fails, or a large object that changed since its check (hashed
    again as it is copied), is a 500. The caller closes it."""
    ingest = ctx.ingest
    directory = getattr(ingest, "spool_dir", None)
    try:
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        if obj.ref.transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
            return inflated_copy(obj, directory)
        return obj.copied(directory)
    except (KeyError, OutOfResources, OSError) as exc:
        raise _read_again_failed(obj, exc) from exc
    except CannotUnderstand as exc:
        raise WebError(500, "the stored object cannot be parsed") from exc


def seekable(ctx: DicomWebContext, ref: InstanceRef) -> tuple[BinaryIO, InstanceRef]:
    """The object of ``ref`` as :func:`copied` gives it, and the row read (that of its
    version stored now, ``read_now``); a copy written to disk is kept for the requests after
    (``ctx.copies``, ``kept_copies.py``: a viewer's next frame of the same object is read
    from it, not from the store again), and one kept already is read without touching the
    store. Errors as :func:`verified` and :func:`copied` give them. The caller closes it."""
    copies = ctx.copies
    if copies is None:
        obj = verified(ctx, ref)
        return copied(ctx, obj), obj.ref
    kept = copies.reader(ref)
    if kept is not None:
        return kept, ref
    with copies.making(ref) as maker:  # the requests for it meanwhile wait for this one's
        if not maker and (kept := copies.reader(ref)) is not None:
            return kept, ref
        obj = verified(ctx, ref)
        if obj.ref != ref and (kept := copies.reader(obj.ref)) is not None:
            return kept, obj.ref  # stored again since it matched, and its copy kept already
        try:
            return copies.keep(obj.ref, copied(ctx, obj)), obj.ref
        except OSError as exc:  # the copy's size unknown: closed, not kept
            raise WebError(500, "the stored object cannot be read") from exc


def header_of(source: BinaryIO) -> pydicom.Dataset:
    """The stored object's data set with every value over ``BULK_DATA_THRESHOLD`` left
    unread (deferred: read from ``source`` if something asks for it), so that neither its
    Pixel Data nor any other large value is held for metadata or one bulk data value.
    ``source`` is what :func:`copied` gives, never Deflated: pydicom would inflate that
    whole, its values' offsets into what it inflated, not into ``source``."""
    try:
        ds = pydicom.dcmread(source, defer_size=BULK_DATA_THRESHOLD, force=True)
    except Exception as exc:  # any parser failure on stored bytes: the object is the problem
        raise WebError(500, "the stored object cannot be parsed") from exc
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        raise ValueError("a Deflated object is read through copied(), inflated")
    return ds


@contextmanager
def metadata_header(ctx: DicomWebContext, obj: VerifiedObject) -> Iterator[pydicom.Dataset]:
    """The data set the metadata is written from, its large values unread: an object held in
    memory read in place (:func:`header_of`); one above 8 MiB or Deflated walked once from
    the store without its bulk (``codec/header_stream``), hashed again and inflated as it
    streams, with no copy on disk (before, each was written whole to a spool file first: a
    Deflated one inflated, up to 1 GiB, per request); one that walk does not vouch for
    through :func:`copied` as before. Errors as :func:`copied` gives them."""
    deflated = obj.ref.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    if obj.streamed or deflated:
        walked = walked_header(obj, deflated)
        if walked is not None:
            yield walked
            return
    with copied(ctx, obj) as source:
        yield header_of(source)


def walked_header(obj: VerifiedObject, deflated: bool) -> pydicom.Dataset | None:
    """:func:`header_of` of the object's elements but its top-level bulk, those given to it
    as pydicom leaves a value unread; None where ``without_bulk`` does not vouch for it."""
    syntax = UID(obj.ref.transfer_syntax_uid)
    known = syntax.is_transfer_syntax  # else encapsulated: explicit VR little endian
    implicit, little = (syntax.is_implicit_VR, syntax.is_little_endian) if known else (
        False, True)
    pieces: Iterator[bytes | memoryview] = obj.chunks(obj.dataset_offset)
    if deflated:
        pieces = inflated_pieces(pieces)
    try:
        walked = without_bulk(pieces, implicit, little)
    except NotWalked as exc:
        return _not_walked(obj, str(exc))
    except (KeyError, OutOfResources, OSError) as exc:
        raise _read_again_failed(obj, exc) from exc
    except CannotUnderstand as exc:
        raise WebError(500, "the stored object cannot be parsed") from exc
    finally:
        pieces.close()  # type: ignore[attr-defined]
    meta = encode_file_meta(obj.ref.sop_class_uid, obj.ref.sop_instance_uid,
                            ExplicitVRLittleEndian if deflated else str(syntax), "")
    try:
        ds = header_of(io.BytesIO(meta + bytes(walked.kept)))
    except WebError:
        return _not_walked(obj, "what was kept does not parse")
    elements = ds._dict  # type: ignore[attr-defined]
    if [int(tag) for tag in elements] != walked.tags:
        # pydicom read the kept bytes otherwise than the walk: an element that overruns
        # the defined-length item holding it, which the receive walk does not look into
        return _not_walked(obj, "what was kept parses to other elements")
    for raw in walked.skipped:
        if raw.tag in elements:  # a tag twice: pydicom would keep the last
            return _not_walked(obj, "a skipped element's tag is there twice")
        elements[raw.tag] = raw
    return ds


def _not_walked(obj: VerifiedObject, reason: str) -> None:
    log.info("metadata read through a spooled copy: the data set's walk stopped",
             extra={"object": reference(obj.ref), "reason": reason})


def metadata_json(ds: pydicom.Dataset, instance_url: str) -> dict[str, Any]:
    """DICOM JSON of the data set, top-level bulk elements replaced by their ``BulkDataURI``.

    The ``bulkdata`` route serves top-level elements only, so a binary value inside a
    sequence (an icon image, say) stays ``InlineBinary`` up to ``LARGEST_INLINE_VALUE``: a
    URI that no route answers would leave a viewer with nothing. A larger one (an
    encapsulated document in a content item) is given its VR without its value: inline, a
    256 MiB value cost about 900 MiB per request. A top-level value ``header_of`` left
    unread is given its URI without being read when it is binary, or longer than
    ``LARGEST_INLINE_VALUE`` (PS3.18 F.2.7 allows a BulkDataURI for text and numbers too);
    the rest is read for its JSON.
    The elements given a URI that way are taken out of ``ds``.

    Encapsulated Pixel Data is given its VR alone, no URI: PS3.18 8.7.3.3.2 wants compressed
    bulk data as its compressed octet stream in its own media type, which the frames route
    answers (``.../frames/{list}``); the bulkdata route refuses it (406)."""
    encapsulated = _encapsulated_pixels(ds)
    unread = _unread_bulk(ds)
    for tag in unread:
        del ds._dict[tag]  # type: ignore[attr-defined]

    def bulk(element: DataElement) -> str:
        if ds.get(element.tag) is element:  # top level (pydicom hands nested ones here too)
            return f"{instance_url}/bulkdata/{int(element.tag):08X}"
        if len(element.value or b"") > LARGEST_INLINE_VALUE:
            omitted.append(element)
            return _OMITTED  # no route serves it, and inline it took 4/3 its size per request
        inline[id(element)] = element
        return f"{_INLINE}{id(element)}"

    inline: dict[int, DataElement] = {}
    omitted: list[DataElement] = []
    document = _json_of(ds, bulk)
    if inline or omitted:
        _inline_nested(document, inline)
    if 0x7FE00010 in ds and "7FE00010" in document:
        document["7FE00010"] = {"vr": document["7FE00010"].get("vr", "OW"),
                                "BulkDataURI": f"{instance_url}/bulkdata/7FE00010"}
    if unread:
        for tag, vr in unread.items():
            document[f"{tag:08X}"] = {"vr": vr, "BulkDataURI": f"{instance_url}/bulkdata/{tag:08X}"}
        document = dict(sorted(document.items()))
    if encapsulated and "7FE00010" in document:
        document["7FE00010"] = {"vr": "OB"}
    return document


def _encapsulated_pixels(ds: pydicom.Dataset) -> bool:
    """Whether the data set's Pixel Data is encapsulated: of undefined length (PS3.5
    A.4), the only way Pixel Data has one; told without reading the value."""
    element = ds._dict.get(BaseTag(0x7FE00010))  # type: ignore[attr-defined]
    if isinstance(element, RawDataElement):
        return element.length == _UNDEFINED_LENGTH
    return bool(element is not None and element.is_undefined_length)


def _json_of(ds: pydicom.Dataset, bulk: Any) -> dict[str, Any]:
    """pydicom's DICOM JSON of each element, as ``to_json_dict`` writes it; one it cannot
    convert is left out. Not ``to_json_dict(suppress_invalid_tags=True)``: that switches
    pydicom's validation mode for the whole process while it runs (``strict_reading``), and
    the routes run in threads: an overlapping request restored strict mode for good, and
    STOW-RS ingest in the same process then refused or indexed objects otherwise. An
    invalid value pydicom reads with a warning is written as read, as in the index's JSON."""
    document: dict[str, Any] = {}
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset gives its elements
        try:
            document[f"{tag:08X}"] = ds[tag].to_json_dict(bulk, BULK_DATA_THRESHOLD)
        except Exception:  # pydicom raises many kinds for malformed values
            continue
    return document


#: A top-level text or number value longer than this is given as a BulkDataURI, not read.
LARGEST_INLINE_VALUE = 64 * 1024
#: The VRs whose values pydicom's JSON gives a BulkDataURI past the threshold (binary).
_BINARY_VRS = frozenset(str(vr) for vr in BYTES_VR)


def _unread_bulk(ds: pydicom.Dataset) -> dict[int, str]:
    """Top-level elements left unread (deferred) to be given a URI, with their VRs."""
    unread: dict[int, str] = {}
    for tag, raw in ds._dict.items():  # type: ignore[attr-defined]
        if not isinstance(raw, RawDataElement) or raw.value is not None or not raw.length:
            continue
        vr = _vr_of(ds, raw)
        if vr is None:  # pydicom's JSON leaves it out: so it does, unless it is large
            if raw.length > LARGEST_INLINE_VALUE:
                unread[int(tag)] = "UN"
            continue
        if vr in _BINARY_VRS or (vr in URI_VRS and raw.length > LARGEST_INLINE_VALUE):
            unread[int(tag)] = vr
    return unread


def _vr_of(ds: pydicom.Dataset, raw: RawDataElement) -> str | None:
    """The VR pydicom's JSON would give an unread element, found without reading it; None
    where it cannot tell (an ambiguous VR without what settles it: a LUT Data with no LUT
    Descriptor), which its JSON skips. (Never under ``config.strict_reading``: ``_json_of``
    says why.)"""
    if raw.VR == "UN" and raw.length >= 0xFFFF:
        return "UN"  # pydicom looks a UN up in its dictionary only below 64 KiB
    try:
        empty = convert_raw_data_element(raw._replace(value=b"", length=0), ds=ds)
        if " or " in empty.VR:
            correct_ambiguous_vr_element(empty, ds, raw.is_little_endian)
    except Exception:
        return None
    return str(empty.VR)


_INLINE = "mimic-inline:"
#: The placeholder of a nested binary value over ``LARGEST_INLINE_VALUE``: given without
#: its value (its VR alone), as no route serves a value inside a sequence by URI.
_OMITTED = "mimic-omitted:"


def _inline_nested(node: Any, inline: dict[int, DataElement]) -> None:
    """Replace the placeholder URIs ``metadata_json`` gave nested bulk elements by their
    values as ``InlineBinary`` (PS3.18 F.2.7), or by nothing for one too large to inline."""
    if isinstance(node, list):
        for item in node:
            _inline_nested(item, inline)
        return
    if not isinstance(node, dict):
        return
    uri = node.get("BulkDataURI")
    if uri == _OMITTED:
        del node["BulkDataURI"]
        return
    if isinstance(uri, str) and uri.startswith(_INLINE):
        element = inline[int(uri[len(_INLINE):])]
        del node["BulkDataURI"]
        node["InlineBinary"] = base64.b64encode(bytes(element.value or b"")).decode("ascii")
        return
    for value in node.values():
        _inline_nested(value, inline)


def retrieve_metadata(ctx: DicomWebContext, request: Request) -> Response:
    # Answered in the type negotiated: a client that takes application/json only was
    # sent application/dicom+json, a type its Accept did not name.
    answer_type, _ = negotiate(request, [DICOM_JSON, "application/json"])
    session = authorize(ctx, request, WADO)
    study, series, instance = _path(request)
    refs = instances(ctx, study, series, instance)
    audit = TransferAudit(ctx, session, "metadata")
    audit.begin(refs)
    root = dicomweb_root(ctx, request)
    documents = []
    unavailable: list[InstanceRef] = []
    try:
        for ref in refs:
            obj = read_noting(ctx, ref, unavailable)
            if obj is None:
                audit.failed_one(ref)
                continue
            try:
                with metadata_header(ctx, obj) as ds:
                    series_uid = str(ds.get("SeriesInstanceUID", series or ""))
                    document = metadata_json(ds, _instance_url(root, ref, study, series_uid))
            except WebError as exc:  # its second read: 503 if the store failed meanwhile
                if exc.status == 503:
                    unavailable.append(ref)
                audit.failed_one(ref)
                continue
            documents.append(document)
            audit.sent_one(obj.ref)
    finally:
        audit.end(completed=bool(documents))
    if not documents:
        if len(unavailable) == len(refs):
            raise _store_unavailable()
        raise WebError(500, "no stored object of this resource can be read")
    body = json.dumps(documents, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    left_out = len(refs) - len(documents)
    # Built whole before it is sent, so it can say what it lacks: a study answered with the
    # instances that could be read looked complete to a viewer (PS3.18 8.4: a Warning).
    headers = {"Warning": f'299 MIMIC "{left_out} of {len(refs)} instances could not be '
                          f'read and are left out."'} if left_out else {}
    return Response(body, media_type=answer_type, headers=headers)


def retrieve_bulkdata(ctx: DicomWebContext, request: Request) -> Response:
    negotiate(request, [MULTIPART_OCTETS])
    session = authorize(ctx, request, WADO)
    study, series, instance = _path(request)
    raw_tag = str(request.path_params["tag"])
    try:
        tag = int(raw_tag, 16)
    except ValueError:
        raise WebError(400, "a bulk data tag is eight hex digits") from None
    ref = instances(ctx, study, series, instance)[0]
    audit = TransferAudit(ctx, session, "bulkdata")
    source: BinaryIO | None = None
    encapsulated = False
    try:
        source, ref = seekable(ctx, ref)
        header = header_of(source)
        encapsulated = tag == 0x7FE00010 and _encapsulated_pixels(header)
        found = None if encapsulated else _value_of(header, source, tag)
        swap = _word_size(header, tag) if ref.transfer_syntax_uid == ExplicitVRBigEndian else 1
    except BaseException:  # read, but not sent: a failed transfer (as a single instance's)
        if source is not None:
            source.close()
        audit.failed_one()
        audit.end(completed=False)
        raise
    if encapsulated:  # nothing that may be sent as asked: nothing recorded
        source.close()
        # PS3.18 8.7.3.3.2: compressed bulk data is its compressed stream, in its own media
        # type; as application/octet-stream it went with its fragments' item delimiters.
        raise WebError(406, "encapsulated Pixel Data is not sent as application/octet-stream:"
                       " retrieve its frames (.../frames/{list}) in their media type")
    if found is None:  # nothing to transfer: nothing recorded
        source.close()
        raise WebError(404, "no such bulk data element in this instance")
    # Begun once there is a value to send, as a single instance's transfer once it verified.
    audit.begin([ref])
    boundary = multipart.new_boundary()
    media_type = multipart.content_type(boundary, OCTET_STREAM)

    def ended(completed: bool) -> None:
        if completed:
            audit.sent_one(ref)
        else:
            audit.failed_one()
        audit.end(completed)

    if isinstance(found, bytes) or found[1] <= WHOLE_ANSWER_BYTES:
        try:
            with source:
                if isinstance(found, bytes):
                    data = found
                else:
                    source.seek(found[0])
                    data = source.read(found[1])
                    if len(data) != found[1]:
                        raise OSError("the stored value is shorter than its length")
        except BaseException:
            ended(False)
            raise
        ended(True)
        data = _little_endian(data, swap)
        return Response(b"".join(multipart.parts(boundary, [(OCTET_STREAM, data)])),
                        media_type=media_type)
    start, length = found

    def body() -> Body:
        completed = False
        try:
            with source:
                yield multipart.part_head(boundary, OCTET_STREAM)
                source.seek(start)
                left = length
                carry = b""  # a word's first bytes, its rest in the next piece
                while left and (piece := source.read(min(CHUNK, left))):
                    left -= len(piece)
                    if swap > 1:
                        piece = carry + piece
                        whole = len(piece) - len(piece) % swap if left else len(piece)
                        piece, carry = _little_endian(piece[:whole], swap), piece[whole:]
                    yield piece
                if left:  # never a well-formed answer of a value cut short: the answer breaks
                    raise OSError("the stored value is shorter than its length")
                yield b"\r\n" + multipart.closing(boundary)
            completed = True
        finally:  # sent whole, or cut off (the client left, the store failed)
            ended(completed)

    def never_sent() -> None:  # the client left before the first byte
        source.close()
        ended(False)

    return ClosingStreamingResponse(body(), media_type=media_type, unstarted=never_sent)


#: Bytes per word of the binary VRs, whose words a Big Endian object holds swapped.
_WORD_SIZES = {"OW": 2, "US": 2, "SS": 2, "AT": 2, "OL": 4, "OF": 4, "UL": 4, "SL": 4,
               "FL": 4, "OD": 8, "OV": 8, "FD": 8, "SV": 8, "UV": 8}


def _word_size(ds: pydicom.Dataset, tag: int) -> int:
    """The word size by which a value of a Big Endian object is swapped to little endian
    (1: bytes, nothing to swap). PS3.18 8.7.3.3: uncompressed bulk data is sent as
    ``application/octet-stream`` in Explicit VR Little Endian, as the frames route sends
    native frames; native Pixel Data goes by its Bits Allocated as those frames do (8-bit
    samples in OW: 16-bit words)."""
    raw = ds._dict.get(BaseTag(tag))  # type: ignore[attr-defined]
    vr = str(getattr(raw, "VR", "") or "").split(" ")[0]
    size = _WORD_SIZES.get(vr, 1)
    if tag == 0x7FE00010 and vr == "OW":
        bits = ds.get("BitsAllocated")
        if isinstance(bits, int) and bits in (32, 64):
            return bits // 8
    return size


def _little_endian(data: bytes, word: int) -> bytes:
    """``data`` of a Big Endian object with each ``word``-byte word swapped (a trailing
    part of a word, in a damaged value, is left as it is)."""
    if word <= 1 or len(data) < word:
        return data
    whole = len(data) - len(data) % word
    swapped = np.frombuffer(data, f">u{word}", count=whole // word).astype(f"<u{word}")
    return swapped.tobytes() + data[whole:]


def _value_of(
    ds: pydicom.Dataset, source: BinaryIO, tag: int
) -> bytes | tuple[int, int] | None:
    """The value of the top-level element ``tag`` as stored (as pydicom gives a binary
    value: for one of undefined length, encapsulated Pixel Data, up to its Sequence
    Delimitation Item): its bytes where ``header_of`` read them (short), else where they
    lie in ``source``, found without reading them; None when there is no such element, or
    it is a sequence or empty."""
    raw = ds._dict.get(BaseTag(tag))  # type: ignore[attr-defined]
    if isinstance(raw, DataElement):  # converted already (pydicom reads a few on its own)
        return raw.value if isinstance(raw.value, bytes) and raw.value else None
    if not isinstance(raw, RawDataElement) or raw.VR == "SQ" or not raw.length:
        return None
    if raw.value is not None:
        return bytes(raw.value)
    if raw.length != _UNDEFINED_LENGTH:
        return raw.value_tell, raw.length
    if isinstance(source, io.BytesIO):  # a small object, in memory
        with source.getbuffer() as view:
            end = undefined_length_end(view, raw.value_tell, raw.is_implicit_VR,
                                       raw.is_little_endian)
    else:
        with mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ) as mapped, \
                memoryview(mapped) as view:
            end = undefined_length_end(view, raw.value_tell, raw.is_implicit_VR,
                                       raw.is_little_endian)
    if end is None:
        raise WebError(500, "the stored object cannot be parsed")
    return raw.value_tell, end - 8 - raw.value_tell


def get_only(routes: list[Route]) -> list[Route]:
    """The routes without the HEAD that Starlette adds to every GET route: a HEAD of a
    retrieve ran the whole GET, every object of a study read from the store and verified
    for an answer with no content, and recorded in the audit trail as DICOM Instances
    Transferred to the user. PS3.18 defines GET only; HEAD is answered 405 (Allow: GET),
    nothing read, nothing recorded."""
    for route in routes:
        if route.methods is not None:
            route.methods.discard("HEAD")
    return routes


def routes(ctx: DicomWebContext) -> list[Route]:
    def bind(handler: Any) -> Any:
        def endpoint(request: Request) -> Response:
            return handler(ctx, request)
        return endpoint

    instance = "/studies/{study}/series/{series}/instances/{instance}"
    return get_only([
        Route("/studies/{study}", bind(retrieve_instances), methods=["GET"]),
        Route("/studies/{study}/series/{series}", bind(retrieve_instances), methods=["GET"]),
        Route(instance, bind(retrieve_instances), methods=["GET"]),
        Route("/studies/{study}/metadata", bind(retrieve_metadata), methods=["GET"]),
        Route("/studies/{study}/series/{series}/metadata", bind(retrieve_metadata),
              methods=["GET"]),
        Route(instance + "/metadata", bind(retrieve_metadata), methods=["GET"]),
        Route(instance + "/bulkdata/{tag}", bind(retrieve_bulkdata), methods=["GET"]),
    ])
