"""DICOM statuses, and the errors that carry them: the bottom layer every room may use.

::

    MimicError
    ├── ConfigurationError            bad settings; the server refuses to start
    └── DicomStatusError (.status)    answered to the peer as a DIMSE status
        ├── NotAuthorized             0x0124 Refused: Not Authorized
        ├── OutOfResources            0xA700 Refused: Out of Resources (store, index)
        ├── DataSetMismatch           0xA900 Error: Data Set does not match SOP Class
        ├── CannotUnderstand          0xC000 family: a dataset we cannot parse or trust
        │   └── HierarchyConflict     0xC003 its study / series is filed under another parent
        └── QueryError                0xA900 / 0xC000: an Identifier we refuse to guess at

Backends translate their own failures (``OSError``, ``SQLAlchemyError`` ...) with
``raise OutOfResources(...) from exc`` so that the DIMSE layer needs to know only this tree.
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """Every status value MIMIC answers with; the conformance statement lists the same."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    CANCEL = 0xFE00
    SUB_OPERATIONS_WARNING = 0xB000
    #: Refused: Out of Resources, unable to perform sub-operations (C-MOVE / C-GET).
    SUB_OPERATIONS_FAILED = 0xA702
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORIZED = 0x0124
    PROCESSING_FAILURE = 0x0110
    OUT_OF_RESOURCES = 0xA700
    #: Refused: Move Destination unknown (C-MOVE).
    MOVE_DESTINATION_UNKNOWN = 0xA801
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: The same code for C-FIND / C-MOVE / C-GET: Identifier does not match SOP Class.
    IDENTIFIER_DOES_NOT_MATCH = 0xA900
    #: The dataset could not be parsed (truncated, malformed, unknown encoding).
    CANNOT_UNDERSTAND = 0xC000
    #: Query/Retrieve: Unable to process (a key value we cannot match on).
    UNABLE_TO_PROCESS = 0xC000
    #: SOP Instance UID or SOP Class UID in the dataset differs from the command.
    UID_MISMATCH = 0xC001
    #: A required attribute (Study / Series / SOP Instance UID) is missing or invalid.
    MISSING_ATTRIBUTE = 0xC002
    #: The instance names a study the archive files under another Patient ID, or a series
    #: it files under another study: kept, it would be found under neither (``index``).
    HIERARCHY_CONFLICT = 0xC003
    #: An unexpected exception in the handler (a bug; logged), per service: the codes
    #: pynetdicom used, in the 0xCxxx "Cannot understand / Unable to process" range.
    STORE_UNEXPECTED = 0xC211
    FIND_UNEXPECTED = 0xC311
    GET_UNEXPECTED = 0xC411
    MOVE_UNEXPECTED = 0xC511
    #: STOW-RS Failure Reason (PS3.18): the part's transfer syntax is not one the archive
    #: keeps (``archive/syntaxes.py``).
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
    #: STOW-RS Failure Reason: an instance of another study than the request's target
    #: (``/studies/{study}``); PS3.18 names no code, this is dcm4chee's, in the 0xCxxx range.
    STUDY_MISMATCH = 0xC409


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


class TooLarge(OutOfResources):
    """A data set larger than ``MIMIC_MAX_OBJECT_BYTES``: 0xA700 as any shortage (C-STORE
    has no other status for it), but one that sending again cannot mend, which STOW-RS says
    with 413 rather than 503's "try again"."""


class DataSetMismatch(DicomStatusError):
    status = Status.DATASET_DOES_NOT_MATCH_SOP_CLASS


class CannotUnderstand(DicomStatusError):
    status = Status.CANNOT_UNDERSTAND


class HierarchyConflict(CannotUnderstand):
    """The instance contradicts the index: its Study Instance UID is filed under another
    Patient ID, or its Series Instance UID under another Study Instance UID. Filed under
    the existing row, it would carry UIDs its parents do not have; filed under its own, one
    UID would name two entities. Refused: the sender corrects what it sends."""

    status = Status.HIERARCHY_CONFLICT


class QueryError(DicomStatusError):
    """An Identifier we refuse to guess at; answered with ``status`` and the message."""

    status = Status.IDENTIFIER_DOES_NOT_MATCH
