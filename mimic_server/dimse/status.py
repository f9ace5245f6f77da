"""The DIMSE status codes MIMIC sends (PS3.4 Annex B, PS3.7 Annex C)."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """Every status value MIMIC answers with; the conformance statement lists the same."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    CANCEL = 0xFE00
    SUB_OPERATIONS_WARNING = 0xB000
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
