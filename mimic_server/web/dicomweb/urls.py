"""Where the DICOMweb root is, as clients reach it (Retrieve URLs, bulk data URIs).

Behind a proxy (Azure Container Apps' ingress) only ``MIMIC_WEB_BASE_URL`` is right: the
listener cannot know the public scheme and port. Without it the request's Host header is
used; a Host without a port (dicomweb-client sends the bare host name) gets the listener's
own port, so that a URI of ours leads back to us.
"""

from __future__ import annotations

import re

from starlette.requests import Request

from mimic_server.web.dicomweb.context import DicomWebContext

MOUNT = "/dicomweb"
_HAS_PORT = re.compile(r":\d+$")


def dicomweb_root(ctx: DicomWebContext, request: Request) -> str:
    """``https://host/dicomweb``: the configured public URL, else the request's own."""
    if ctx.base_url:
        return ctx.base_url.rstrip("/") + MOUNT
    scheme = request.url.scheme
    server = request.scope.get("server") or ("localhost", None)
    host = request.headers.get("host") or str(server[0])
    if not _HAS_PORT.search(host):
        port = server[1]
        if port and (scheme, port) not in (("http", 80), ("https", 443)):
            host = f"{host}:{port}"
    return f"{scheme}://{host}{MOUNT}"
