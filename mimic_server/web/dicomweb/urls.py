"""Where the DICOMweb root is, as clients reach it (Retrieve URLs, bulk data URIs)."""

from __future__ import annotations

from starlette.requests import Request

from mimic_server.web.dicomweb.context import DicomWebContext

MOUNT = "/dicomweb"


def dicomweb_root(ctx: DicomWebContext, request: Request) -> str:
    """``https://host/dicomweb``: the configured public URL, else the request's own."""
    if ctx.base_url:
        return ctx.base_url.rstrip("/") + MOUNT
    scheme = request.url.scheme
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{scheme}://{host}{MOUNT}"
