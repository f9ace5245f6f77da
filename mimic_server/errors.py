"""Errors that carry the DICOM status they are answered with.

::

    MimicError
    ├── ConfigurationError            bad settings; the server refuses to start
    └── DicomStatusError (.status)    answered to the peer as a DIMSE status
        ├── NotAuthorized             0x0124 Refused: Not Authorized
        ├── OutOfResources            0xA700 Refused: Out of Resources (store, index)
        ├── DataSetMismatch           0xA900 Error: Data Set does not match SOP Class
        └── CannotUnderstand          0xC000 family: a dataset we cannot parse or trust

Backends translate their own failures (``OSError``, ``SQLAlchemyError`` ...) with
``raise OutOfResources(...) from exc`` so that the DIMSE layer needs to know only this tree.
"""

from __future__ import annotations

from mimic_server.dimse.status import Status


class MimicError(Exception):
    """Root of every error MIMIC raises on purpose."""


class ConfigurationError(MimicError):
    """The settings cannot produce a working server; the message says which and why."""


class DicomStatusError(MimicError):
    """A failure that the peer learns about as ``status`` with ``str(self)`` as Error Comment."""

    status: int = Status.PROCESSING_FAILURE

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class NotAuthorized(DicomStatusError):
    status = Status.NOT_AUTHORIZED


class OutOfResources(DicomStatusError):
    status = Status.OUT_OF_RESOURCES


class DataSetMismatch(DicomStatusError):
    status = Status.DATASET_DOES_NOT_MATCH_SOP_CLASS


class CannotUnderstand(DicomStatusError):
    status = Status.CANNOT_UNDERSTAND
