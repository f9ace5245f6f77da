"""The DICOMweb app mounted at ``/dicomweb``: QIDO-RS, WADO-RS, STOW-RS routes over one
:class:`DicomWebContext`, refusals as JSON, CORS for the configured origins only."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute

from mimic_server.web.dicomweb import qido, wado
from mimic_server.web.dicomweb.context import DicomWebContext
from mimic_server.web.dicomweb.errors import WebError, handle_web_error

log = logging.getLogger(__name__)

#: Modules of other rooms' routes, each with ``routes(ctx) -> list[Route]``; wired when present.
OPTIONAL_ROUTES = ("mimic_server.web.dicomweb.rendered",
                   "mimic_server.web.dicomweb.stow")
#: Headers a browser script on another origin may read from an answer.
EXPOSED_HEADERS = ["Warning", "Content-Location", "Content-Type", "Content-Length"]


def dicomweb_routes(ctx: DicomWebContext) -> list[BaseRoute]:
    found: list[BaseRoute] = [*qido.routes(ctx), *wado.routes(ctx)]
    for name in OPTIONAL_ROUTES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A room another branch builds (render/, the STOW routes) and not merged yet.
            if not (exc.name or "").startswith("mimic_server."):
                raise
            log.warning("DICOMweb routes not available", extra={"routes": name,
                                                                "missing": exc.name})
            continue
        found += module.routes(ctx)
    return found


def build_dicomweb(ctx: DicomWebContext, cors_origins: Sequence[str] = ()) -> Starlette:
    middleware = []
    if cors_origins:
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type"],
            expose_headers=EXPOSED_HEADERS, allow_credentials=False, max_age=600,
        ))
    return Starlette(
        routes=dicomweb_routes(ctx), middleware=middleware,
        exception_handlers={WebError: handle_web_error},
    )
