"""STOW-RS (PS3.18 10.5): ``POST /studies`` and ``POST /studies/{study}``, the HTTP front
door of the archive's one ingest path (``archive/ingest.py``, the same as C-STORE's).

The body (``multipart/related; type="application/dicom"``, one Part 10 file per part) is
read as it arrives (``request.stream()``) and split without being held whole
(``multipart.py``); each part is kept in bounded memory or an anonymous spool file
(``stow_part.py``) and, as soon as it has ended, goes through the ingest path in a worker
thread (the event loop never hashes, walks or waits on the store): the same invariants as
C-STORE (durable before it is named stored, bytes as received, the newest bytes of a SOP
Instance win, a damaged data set refused). The policy's STORE service is required (401
without credentials, 403 without the grant). Audit: in the table configuration each stored
instance's Instances Transferred is written in its index transaction, as for C-STORE, and
the request's failures once at its end; in the file configuration one record per study
received (and one for the failures) when the request ends, as an association's end does.

Bounds: at most ``multipart.MAX_PARTS`` parts (more: the body is malformed, 400, or 202 for
what was stored before); a body silent for ``MIMIC_NETWORK_TIMEOUT`` seconds is given up
(408, or 202 for what was stored; the connection closed), its parts closed; the parts of all
requests hold at most ``MIMIC_WEB_STOW_MEMORY_BYTES`` in memory (``stow_part.py``). Refused
parts are logged once per request, with their count, at its end.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mimic_server.archive.ingest import Ingest
from mimic_server.archive.ingest_audit import per_instance, prepare_received
from mimic_server.errors import DicomStatusError, Status, TooLarge
from mimic_server.index.attributes import InstanceAttributes, valid_uid
from mimic_server.security import audit
from mimic_server.security.audit_journal import record_received
from mimic_server.web.dicomweb.auth import STOW, WebSession, authorize
from mimic_server.web.dicomweb.context import DicomWebContext
from mimic_server.web.dicomweb.errors import WebError
from mimic_server.web.dicomweb.multipart import (
    MalformedMultipart,
    MultipartSplitter,
    boundary_of,
)
from mimic_server.web.dicomweb.negotiation import negotiate
from mimic_server.web.dicomweb.stow_part import PART_TYPE, ReceivedPart
from mimic_server.web.dicomweb.stow_response import Failed, Stored, StowOutcome
from mimic_server.web.dicomweb.urls import dicomweb_root

log = logging.getLogger(__name__)

ANSWER_TYPE = "application/dicom+json"


def routes(ctx: DicomWebContext) -> list[Route]:
    async def store_instances(request: Request) -> Response:
        return await _store_instances(ctx, request)

    return [
        Route("/studies", store_instances, methods=["POST"]),
        Route("/studies/{study}", store_instances, methods=["POST"]),
    ]


async def _store_instances(ctx: DicomWebContext, request: Request) -> Response:
    # In a thread, as the synchronous routes' is: a console session cookie is checked
    # against the signed-out sessions in the index (a SELECT, up to the index's deadlines
    # when it is slow or down), a bearer token may need the issuer's keys fetched, and a
    # refusal is audited (the table on PostgreSQL). On the event loop each stalled every
    # other request of this worker, its probes included.
    session = await anyio.to_thread.run_sync(authorize, ctx, request, STOW)
    ingest: Ingest | None = ctx.ingest
    if ingest is None:
        raise WebError(503, "STOW-RS is not configured")
    boundary = _boundary(request)
    answer_type, _params = negotiate(request, [ANSWER_TYPE, "application/json"])
    study: str | None = request.path_params.get("study")
    if study is not None and not valid_uid(study):
        raise WebError(400, "the Study Instance UID in the path is not a valid UID")
    requestor = {**session.audit_details(), "service": "STOW-RS"}
    stow = _StowRequest(ctx, ingest, session, study, dicomweb_root(ctx, request),
                            requestor)
    malformed = ""  # why the body is not one the splitter takes (messages quote no value)
    parts: list[ReceivedPart] = []

    def new_part(headers: dict[str, str]) -> ReceivedPart:
        part = ReceivedPart(headers, ingest.max_object_bytes, ingest.spool_dir,
                            memory=ctx.part_memory)
        parts.append(part)
        return part

    async def keep_first() -> None:
        # Taken off the list first: under a native cancellation (uvicorn's shutdown) the
        # thread that runs keep is abandoned, not waited for, and the finally below must not
        # close a part keep is still reading. Cancelled before keep ran, the part is closed
        # as its last reference goes.
        await anyio.to_thread.run_sync(stow.keep, parts.pop(0))

    splitter: MultipartSplitter | None = None
    stalled = False
    try:
        try:
            splitter = MultipartSplitter(boundary, new_part)
            body = request.stream()
            progress = _Progress(ctx.body_timeout)
            while True:
                # Each read has its deadline, and each network timeout must bring
                # MIN_PROGRESS_BYTES: a stalled sender, or one trickling a byte just within
                # each deadline, would hold its parts (up to 8 MiB each in memory) and a
                # spool descriptor for as long as it liked.
                with anyio.fail_after(ctx.body_timeout):
                    chunk = await anext(body, None)
                if chunk is None:
                    break
                progress.received(len(chunk))
                splitter.feed(chunk)
                while parts and parts[0].ended:
                    await keep_first()
            splitter.close()
        except MalformedMultipart as exc:
            log.warning("STOW-RS body refused", extra={"reason": str(exc)})
            malformed = str(exc)
        except TimeoutError:
            log.warning("STOW-RS body stalled: request given up",
                        extra={"seconds": ctx.body_timeout,
                               "stored": len(stow.outcome.stored)})
            stalled = True
        while parts and parts[0].ended:
            await keep_first()
        if splitter is None or splitter.parts == 0:
            malformed = malformed or "no part"  # RFC 2046: at least one body part
        if (malformed or stalled) and stow.outcome.stored:
            # Answered 202: the part the body broke or stalled in is named failed too, so
            # that a sender reading the Failed SOP Sequence knows to send it again.
            for part in parts:
                stow.cut_off(part, stalled)
    except ClientDisconnect:
        log.warning("STOW-RS client went away before the body ended",
                    extra={"stored": len(stow.outcome.stored)})
        stow.record_end()
        # Nobody reads it; returned rather than raised, which uvicorn logged as an
        # "Exception in ASGI application" at ERROR with a traceback.
        return Response(status_code=400)
    finally:
        for part in parts:
            part.close()
    stow.record_end()
    outcome = stow.outcome
    if stalled:
        # The sender may be gone or stuck: the connection ends with the answer (uvicorn
        # would otherwise keep reading and dropping the rest of the body).
        if not outcome.stored:
            raise WebError(408, "the body stalled", {"Connection": "close"})
        return JSONResponse(outcome.dicom_json(stow.study_url()), status_code=202,
                            media_type=answer_type, headers={"Connection": "close"})
    if malformed and not outcome.stored:
        raise WebError(400, "the body is not a multipart/related body of DICOM parts: "
                            + malformed)
    status = outcome.http_status()
    if malformed:
        status = 202  # stored what came before the fault: say so, and that not all was
    return JSONResponse(outcome.dicom_json(stow.study_url()), status_code=status,
                        media_type=answer_type)


def _boundary(request: Request) -> str:
    """415 unless the body is ``multipart/related; type="application/dicom"``."""
    media, params = boundary_of(request.headers.get("content-type", ""))
    if media != "multipart/related" or params.get("type", "").lower() != PART_TYPE:
        raise WebError(415, 'STOW-RS takes multipart/related; type="application/dicom"')
    boundary = params.get("boundary", "")
    if not boundary:
        raise WebError(400, "the multipart/related body has no boundary")
    return boundary


class _StowRequest:
    """One request's parts through the ingest path, and what became of them."""

    def __init__(self, ctx: DicomWebContext, ingest: Ingest, session: WebSession,
                 study: str | None, root: str, requestor: dict[str, Any]) -> None:
        self.ctx = ctx
        self.ingest = ingest
        self.session = session
        self.study = study
        self.root = root
        self.requestor = requestor
        self.outcome = StowOutcome()
        self.received_from = f"DICOMweb {_user_name(session)}"
        #: study -> SOP Class -> count, and study -> (patient id, name): the file trail's.
        self.study_classes: dict[str, dict[str, int]] = {}
        self.study_patients: dict[str, tuple[str, str]] = {}
        #: Refused parts by status, and the first one's reason: logged once, at the end.
        self.refusals: Counter[int] = Counter()
        self.first_refusal = ""
        self._recorded = False
        #: The file trail's records of this request are written at its end: each stored
        #: instance (and each refusal) is journaled as it comes, for a process killed
        #: before then (``security/audit_journal.py``).
        self.journal = ctx.journals.open(requestor) if ctx.journals is not None else None

    def keep(self, part: ReceivedPart) -> None:
        """Run in a worker thread: one ended part through the ingest path."""
        declared = part.declared
        sop_class = declared.sop_class_uid if declared is not None else ""
        sop_instance = declared.sop_instance_uid if declared is not None else ""
        try:
            received = part.received()
            attrs = self.ingest(
                received, sop_class_uid=sop_class, sop_instance_uid=sop_instance,
                received_from=self.received_from,
                audit_record=lambda attrs: prepare_received(self.ctx.audit, attrs,
                                                            self.requestor),
                expected=self._in_target_study,
            )
        except DicomStatusError as exc:
            self._refused(sop_class, sop_instance, int(exc.status), str(exc),
                          too_large=isinstance(exc, TooLarge))
        except Exception:
            # A bug, not the sender's fault: logged (type only at ERROR), the part refused.
            log.error("STOW-RS part failed unexpectedly",
                      exc_info=log.isEnabledFor(logging.DEBUG))
            self._refused(sop_class, sop_instance, Status.PROCESSING_FAILURE, "unexpected")
        else:
            self._stored(attrs)
        finally:
            part.close()

    def cut_off(self, part: ReceivedPart, stalled: bool) -> None:
        """A part begun and never ended (the body broke or stalled in it): refused with the
        reason it had already, else ``0xA700`` for a stalled body (the sender may send it
        again) or ``0xC000`` for a broken one; named by its File Meta's UIDs when read."""
        declared = part.declared
        if part.failure is not None:
            status = int(part.failure.status)
        else:
            status = Status.OUT_OF_RESOURCES if stalled else Status.CANNOT_UNDERSTAND
        self._refused(declared.sop_class_uid if declared is not None else "",
                      declared.sop_instance_uid if declared is not None else "",
                      status, "the body stalled" if stalled else "the body broke in the part",
                      too_large=isinstance(part.failure, TooLarge))

    def _in_target_study(self, attrs: InstanceAttributes) -> None:
        if self.study is not None and attrs.study_instance_uid != self.study:
            raise DicomStatusError("the instance belongs to another study",
                                   Status.STUDY_MISMATCH)

    def _stored(self, attrs: InstanceAttributes) -> None:
        study, series = attrs.study_instance_uid, attrs.series_instance_uid
        url = f"{self.root}/studies/{study}/series/{series}/instances/{attrs.sop_instance_uid}"
        self.outcome.stored.append(Stored(attrs.sop_class_uid, attrs.sop_instance_uid, url))
        classes = self.study_classes.setdefault(study, {})
        classes[attrs.sop_class_uid] = classes.get(attrs.sop_class_uid, 0) + 1
        self.study_patients.setdefault(study, (attrs.patient_id, attrs.patient_name))
        if self.journal is not None:
            self.journal.stored(study, attrs.sop_class_uid, attrs.sop_instance_uid,
                                attrs.patient_id, attrs.patient_name)

    def _refused(self, sop_class: str, sop_instance: str, status: int, reason: str, *,
                 too_large: bool = False) -> None:
        self.outcome.failed.append(Failed(sop_class, sop_instance, status, too_large))
        if self.journal is not None:
            self.journal.failed()
        if not self.refusals:
            self.first_refusal = reason
        self.refusals[status] += 1
        log.debug("STOW-RS part refused",
                  extra={"status": f"0x{status:04X}", "reason": reason,
                         "sop_class": sop_class})

    def study_url(self) -> str | None:
        """The top-level Retrieve URL: the target study, or the one study stored into."""
        study = self.study
        if study is None and len(self.study_classes) == 1:
            study = next(iter(self.study_classes))
        return f"{self.root}/studies/{study}" if study is not None else None

    def record_end(self) -> None:
        """The request's audit records that are not written per instance (module doc)."""
        if self._recorded:
            return
        self._recorded = True
        trail = self.ctx.audit
        stored, failed = len(self.outcome.stored), len(self.outcome.failed)
        if failed:
            # One line per request, not per part: a body of thousands of empty parts was
            # as many WARNING lines.
            log.warning("STOW-RS parts refused", extra={
                "refused": failed, "stored": stored, "reason": self.first_refusal,
                "statuses": {f"0x{s:04X}": n for s, n in sorted(self.refusals.items())}})
        if not per_instance(trail):
            journal = self.journal
            failures = trail.failures
            record_received(trail, self.requestor, self.study_classes, self.study_patients,
                            stored, failed,
                            association=journal.association if journal is not None else None)
            if journal is not None:  # kept when a record could not be written
                journal.end(keep=trail.failures != failures)
        elif failed:
            trail.record(audit.INSTANCES_TRANSFERRED, audit.MINOR_FAILURE, received=True,
                         instances=stored, failed=failed, **self.requestor)


def _user_name(session: WebSession) -> str:
    user = session.user
    return user.name if user is not None else session.identity.label


#: What a STOW-RS body must bring in each network timeout (64 KiB a minute at the default:
#: a slow clinic link brings that in seconds).
MIN_PROGRESS_BYTES = 64 * 1024


class _Progress:
    """Counts a body's bytes in windows of ``seconds``; raises TimeoutError (the request is
    given up, as a stalled one) when a window ends short of :data:`MIN_PROGRESS_BYTES`."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._start = time.monotonic()
        self._bytes = 0

    def received(self, count: int) -> None:
        self._bytes += count
        now = time.monotonic()
        if now - self._start < self._seconds:
            return
        if self._bytes < MIN_PROGRESS_BYTES:
            raise TimeoutError("the body came slower than its minimum rate")
        self._start, self._bytes = now, 0
