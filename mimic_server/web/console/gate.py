"""The console's study queries under the DICOMweb policy: one policy for every front door.

A console search is a query like QIDO-RS: the session's user (with its roles) must be
granted C-FIND by the DICOMweb policy entry, the entry's ``find_requires`` must be met and
its ``max_find_results`` caps the answers; each query is an audit record (Query), as QIDO-RS
writes it, with ``service="console"``.
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset
from starlette.requests import Request

from mimic_server.security import audit
from mimic_server.web.dicomweb.auth import QIDO, authorize
from mimic_server.web.dicomweb.context import DicomWebContext
from mimic_server.web.dicomweb.errors import WebError
from mimic_server.web.dicomweb.qido import identifier_bytes

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


class Refused(Exception):
    """The policy refused the query; ``status`` is the HTTP answer (401 / 403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def dicomweb_gate(ctx: DicomWebContext) -> Callable[[Request], Callable[[Dataset], int | None]]:
    def for_request(request: Request) -> Callable[[Dataset], int | None]:
        def gate(identifier: Dataset) -> int | None:
            try:
                session = authorize(ctx, request, QIDO)
                narrowing = ctx.policy.missing_narrowing(session, identifier)
                if narrowing is not None:
                    raise WebError(403, narrowing)
            except WebError as exc:
                raise Refused(exc.status, exc.message) from exc
            ctx.audit.record(
                audit.QUERY, audit.SUCCESS, service="console", sop_class=STUDY_ROOT_FIND,
                transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN,
                identifier=identifier_bytes(identifier), **session.audit_details(),
            )
            return ctx.policy.max_find_results(session)

        return gate

    return for_request
