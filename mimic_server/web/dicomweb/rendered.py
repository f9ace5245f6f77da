"""WADO-RS frames, rendered images and thumbnails (PS3.18 10.4.1.1.3, 10.4.1.1.4, 9.5):
routes over ``mimic_server.render``'s pure functions, on verified stored bytes.

Frames leave as stored (no transcoding): the Accept header must allow the stored frames'
media type (``application/octet-stream`` for native pixel data, ``image/jpeg``,
``image/jp2``... for compressed ones), else 406. Rendered images are ``image/jpeg``
(default) or ``image/png``; ``window=center,width[,LINEAR]``, ``viewport=vw,vh`` and
``quality`` are honoured. A refusal of ``render`` carries its own HTTP status.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import mimic_server.render as rendering
from mimic_server.query.finder import InstanceRef
from mimic_server.render import RenderError
from mimic_server.web.dicomweb import parts as multipart
from mimic_server.web.dicomweb.auth import WADO, WebSession, authorize
from mimic_server.web.dicomweb.closing_stream import Body, ClosingStreamingResponse
from mimic_server.web.dicomweb.context import DicomWebContext
from mimic_server.web.dicomweb.errors import WebError
from mimic_server.web.dicomweb.negotiation import negotiate
from mimic_server.web.dicomweb.retrieve import TransferAudit, instances
from mimic_server.web.dicomweb.wado import get_only, seekable

MAX_FRAMES_PER_REQUEST = 1024
OCTET_STREAM = "application/octet-stream"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
ENCAPSULATED = "1.2.840.10008.1.2.1.98"


def _frame_numbers(text: str) -> list[int]:
    """The PS3.18 frame list: ASCII digits separated by commas. ``int`` alone also took
    ``1_0`` (frame 10), ``+1`` and other scripts' digits (Arabic-Indic ``٣``)."""
    numbers = []
    for item in text.split(","):
        item = item.strip()
        if not (item.isascii() and item.isdigit()) or len(item) > 10:
            raise WebError(400, "a frame list is whole numbers separated by commas")
        numbers.append(int(item))
    if len(numbers) > MAX_FRAMES_PER_REQUEST:
        raise WebError(400, f"more than {MAX_FRAMES_PER_REQUEST} frames in one request")
    return numbers


def _read(ctx: DicomWebContext, session: WebSession, ref: InstanceRef,
          resource: str) -> tuple[BinaryIO, TransferAudit, InstanceRef]:
    """The object as a seekable file (``wado.seekable``: a large one is not held whole, and
    its copy is kept for the next requests; the renderer reads its header and the frames
    asked for), its audit, and the row read: that of its version stored now, if it was sent
    again since it matched (``wado.read_now``). The caller closes the file."""
    audit = TransferAudit(ctx, session, resource)
    audit.begin([ref])
    try:
        source, now = seekable(ctx, ref)
        return source, audit, now
    except WebError:
        audit.failed_one()
        audit.end(completed=False)
        raise


def _refused(exc: RenderError, audit: TransferAudit) -> WebError:
    audit.end(completed=False)
    return WebError(exc.http_status, str(exc))


@contextmanager
def _failed_unless_sent(audit: TransferAudit) -> Iterator[None]:
    """A refusal of ``render`` as its HTTP status; anything else raised (a bug: answered 500
    and logged by ``UnexpectedErrors``) still ends the transfer begun as failed, so that no
    Begin Transferring stays without its DICOM Instances Transferred."""
    try:
        yield
    except RenderError as exc:
        raise _refused(exc, audit) from exc
    except BaseException:
        audit.end(completed=False)
        raise


def retrieve_frames(ctx: DicomWebContext, request: Request) -> Response:
    p = request.path_params
    numbers = _frame_numbers(str(p["frames"]))
    session = authorize(ctx, request, WADO)  # first: nothing of the index answers a stranger
    ref = instances(ctx, str(p["study"]), str(p["series"]), str(p["instance"]))[0]
    media_type = _negotiated_frames(request, ref)
    source, audit, now = _read(ctx, session, ref, "frames")
    response: Response | None = None
    try:
        with _failed_unless_sent(audit):
            response = _frames(request, source, audit, ref, now, numbers, media_type)
        return response
    finally:
        if not isinstance(response, ClosingStreamingResponse):  # else its body closes it
            source.close()


def _negotiated_frames(request: Request, ref: InstanceRef) -> str:
    """The media type of the frames of ``ref`` as stored, if the Accept header allows it
    and the transfer syntax it names (PS3.18 8.7.3.5), else 406: MIMIC does not transcode,
    and a JPEG Baseline frame is no answer to ``transfer-syntax=`` JPEG Lossless."""
    stored = ref.transfer_syntax_uid
    media_type = rendering.frame_media_type(stored) or OCTET_STREAM
    # Native frames are sent little endian, as Explicit VR Little Endian (render.Frame).
    sent = EXPLICIT_LITTLE if media_type == OCTET_STREAM and stored != ENCAPSULATED else stored
    negotiate(request, [f'multipart/related; type="{media_type}"; transfer-syntax={sent}'])
    return media_type


def _frames(request: Request, source: BinaryIO, audit: TransferAudit, ref: InstanceRef,
            now: InstanceRef, numbers: list[int], media_type: str) -> Response:
    """One frame as one body; more streamed, each frame read as its part is sent.

    A frame list may name 1,024 frames, repeats allowed: built whole, one 512 KiB frame
    asked for 1,024 times was a 537 MB body and 1.5 GiB of memory. Every frame is located
    before the answer starts (``each_frame``), so only the storage can cut it off."""
    if now.transfer_syntax_uid != ref.transfer_syntax_uid:  # stored again meanwhile
        try:
            media_type = _negotiated_frames(request, now)
        except WebError:
            audit.failed_one()
            audit.end(completed=False)
            raise
    try:
        found = rendering.each_frame(source, numbers)
        if len(numbers) == 1:
            (frame,) = found
    except RenderError as exc:
        raise _refused(exc, audit) from exc
    boundary = multipart.new_boundary()
    answer_type = multipart.content_type(boundary, media_type)
    if len(numbers) == 1:
        audit.sent_one(now)
        audit.end()
        body = b"".join(multipart.parts(boundary, [(frame.content_type, frame.data)]))
        return Response(body, media_type=answer_type)

    def body() -> Body:
        completed = False
        try:
            with source:
                for frame in found:
                    yield multipart.part_head(boundary, frame.content_type)
                    yield frame.data
                    yield b"\r\n"
                yield multipart.closing(boundary)
            completed = True
        finally:  # sent whole, or cut off (the client left, the storage failed)
            if completed:
                audit.sent_one(now)
            else:
                audit.failed_one()
            audit.end(completed)

    def never_sent() -> None:  # the client left before the first byte
        source.close()
        audit.failed_one()
        audit.end(completed=False)

    return ClosingStreamingResponse(body(), media_type=answer_type, unstarted=never_sent)


def _window(request: Request) -> tuple[float, float] | None:
    raw = request.query_params.get("window")
    if raw is None:
        return None
    parts = raw.split(",")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip().upper() != "LINEAR"):
        raise WebError(400, "window is center,width[,LINEAR]")
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise WebError(400, "window center and width are numbers") from None


def _pair(request: Request, name: str) -> tuple[int, int] | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    parts = raw.split(",")
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise WebError(400, f"{name} is width,height in whole pixels")


def _quality(request: Request) -> int | None:
    raw = request.query_params.get("quality")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise WebError(400, "quality is a whole number from 1 to 100") from None


def _rendered_type(request: Request) -> str:
    chosen, _ = negotiate(request, [rendering.JPEG, rendering.PNG])
    return chosen


def retrieve_rendered(ctx: DicomWebContext, request: Request) -> Response:
    p = request.path_params
    media_type = _rendered_type(request)
    session = authorize(ctx, request, WADO)
    frame = 1
    if "frames" in p:
        numbers = _frame_numbers(str(p["frames"]))
        if len(numbers) != 1:
            raise WebError(400, "a rendered frame is one frame number")
        frame = numbers[0]
    ref = instances(ctx, str(p["study"]), str(p["series"]), str(p["instance"]))[0]
    window, viewport, quality = _window(request), _pair(request, "viewport"), _quality(request)
    source, audit, ref = _read(ctx, session, ref, "rendered")
    with _failed_unless_sent(audit), source:
        image = rendering.render(source, frame, media_type=media_type, window=window,
                                 viewport=viewport, quality=quality)
    audit.sent_one(ref)
    audit.end()
    return Response(image, media_type=media_type)


def retrieve_thumbnail(ctx: DicomWebContext, request: Request) -> Response:
    p = request.path_params
    media_type = _rendered_type(request)
    session = authorize(ctx, request, WADO)
    refs = instances(ctx, str(p["study"]), p.get("series"), p.get("instance"))
    ref = refs[len(refs) // 2]  # a study's or series' thumbnail: its middle instance
    size = _pair(request, "viewport")
    source, audit, ref = _read(ctx, session, ref, "thumbnail")
    with _failed_unless_sent(audit), source:
        image = rendering.thumbnail(source, size, media_type) if size \
            else rendering.thumbnail(source, media_type=media_type)
    audit.sent_one(ref)
    audit.end()
    return Response(image, media_type=media_type)


def routes(ctx: DicomWebContext) -> list[Route]:
    def bind(handler: Any) -> Any:
        def endpoint(request: Request) -> Response:
            return handler(ctx, request)
        return endpoint

    instance = "/studies/{study}/series/{series}/instances/{instance}"
    return get_only([  # a HEAD would read and record a transfer (wado.get_only)
        Route(instance + "/frames/{frames}", bind(retrieve_frames), methods=["GET"]),
        Route(instance + "/rendered", bind(retrieve_rendered), methods=["GET"]),
        Route(instance + "/frames/{frames}/rendered", bind(retrieve_rendered),
              methods=["GET"]),
        Route(instance + "/thumbnail", bind(retrieve_thumbnail), methods=["GET"]),
        Route("/studies/{study}/series/{series}/thumbnail", bind(retrieve_thumbnail),
              methods=["GET"]),
        Route("/studies/{study}/thumbnail", bind(retrieve_thumbnail), methods=["GET"]),
    ])
