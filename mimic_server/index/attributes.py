"""What the index keeps of one received object, taken from its header.

The header is parsed with ``stop_before_pixels``; text values arrive decoded with the
object's own Specific Character Set.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

from pydicom.charset import decode_bytes
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from mimic_server.codec.dicom_json import header_to_json
from mimic_server.codec.header import Header
from mimic_server.codec.header_scan import ScannedHeader
from mimic_server.codec.nesting import NestedTooDeep
from mimic_server.errors import CannotUnderstand, Status

#: Matched whole (``fullmatch``): ``$`` would also match before a final line feed.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
#: The range of the Integer index columns (32-bit on PostgreSQL). An IS value may hold
#: twelve characters ("-99999999999"): one outside this range is not indexed (NULL), and the
#: header JSON keeps it.
_INTEGER_MIN, _INTEGER_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True, slots=True)
class InstanceAttributes:
    """The typed index columns of one instance and its header as DICOM JSON."""

    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_instance_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    study_description: str
    referring_physician_name: str
    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    series_date: str
    series_time: str
    body_part_examined: str
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    specific_character_set: str
    header: dict[str, Any]

    @property
    def patient_key(self) -> str:
        if self.patient_id:
            return f"{self.issuer_of_patient_id}\\{self.patient_id}"
        return f"study:{self.study_instance_uid}"

    @classmethod
    def from_header(cls, ds: Header) -> InstanceAttributes:
        """Read the index keys; raise ``CannotUnderstand`` when a required UID is unusable.

        Values come from the header's DICOM JSON, made first, where it holds them as text
        (person names of one component group too); anything it could not hold is read
        through pydicom.
        """
        # The UIDs' bytes as received, taken before the JSON conversion replaces pydicom's
        # raw elements: four dictionary lookups, not a walk.
        received = {tag: _received_bytes(ds, tag) for tag in _UID_TAGS}
        header, converted = _header_json(ds)
        keys = _Keys(ds, header, converted, received)
        return cls(
            patient_id=keys.patient_key_part("PatientID"),
            issuer_of_patient_id=keys.patient_key_part("IssuerOfPatientID"),
            patient_name=keys.text("PatientName", 324),
            patient_birth_date=_date(keys.text("PatientBirthDate", 64)),
            patient_sex=keys.text("PatientSex", 16),
            study_instance_uid=keys.uid("StudyInstanceUID"),
            study_date=_date(keys.text("StudyDate", 64)),
            study_time=_time(keys.text("StudyTime", 64)),
            accession_number=keys.text("AccessionNumber", 64),
            study_id=keys.text("StudyID", 16),
            study_description=keys.text("StudyDescription", 64),
            referring_physician_name=keys.text("ReferringPhysicianName", 324),
            series_instance_uid=keys.uid("SeriesInstanceUID"),
            modality=keys.text("Modality", 16),
            series_number=keys.integer("SeriesNumber"),
            series_description=keys.text("SeriesDescription", 64),
            series_date=_date(keys.text("SeriesDate", 64)),
            series_time=_time(keys.text("SeriesTime", 64)),
            body_part_examined=keys.text("BodyPartExamined", 16),
            sop_instance_uid=keys.uid("SOPInstanceUID"),
            sop_class_uid=keys.uid("SOPClassUID"),
            instance_number=keys.integer("InstanceNumber"),
            specific_character_set=keys.text("SpecificCharacterSet", 200),
            header=header,
        )


#: VRs whose JSON values are the element's text values, one string each.
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "LO", "SH", "LT", "ST",
                       "UC", "UT", "UR"})


class _Keys:
    """The index keys of one header: from its DICOM JSON, else from pydicom."""

    def __init__(self, ds: Header, header: dict[str, Any], converted: set[str],
                 received: dict[int, bytes | None]) -> None:
        self.ds = ds
        self.header = header
        #: The keys of entries pydicom wrote: their person names are its business.
        self.converted = converted
        #: The UIDs' value bytes as received, where the header still had them.
        self.received = received

    def _json(self, keyword: str) -> dict[str, Any] | None:
        tag, key = _KEYWORDS[keyword]
        entry = self.header.get(key)
        if entry is None and tag not in self.ds:
            return {}  # absent
        return entry

    def _read_here(self, keyword: str) -> bool:
        return _KEYWORDS[keyword][1] not in self.converted

    def _dataset(self) -> Dataset:
        ds = self.ds
        return ds.dataset if isinstance(ds, ScannedHeader) else ds

    def text(self, keyword: str, limit: int) -> str:
        entry = self._json(keyword)
        if entry is not None:
            if not entry or entry["vr"] in _TEXT_VRS:
                values = entry.get("Value", ())
                text = "\\".join(v if isinstance(v, str) else "" for v in values)
                return text.replace("\x00", "").strip()[:limit]
            if entry["vr"] == "PN" and self._read_here(keyword):
                names = _alphabetic_only(entry.get("Value", ()))
                if names is not None:
                    return "\\".join(names).replace("\x00", "").strip()[:limit]
        return _text(self._dataset(), keyword, limit)

    def patient_key_part(self, keyword: str) -> str:
        """Patient ID or Issuer of Patient ID: the patient's key, so never truncated to its
        64-character column as other text is. Cut there, two patients whose IDs differ past
        the 64th character were filed as one (one name, one birth date, each other's
        studies), and a C-FIND for the ID as sent matched neither. Longer than the 64
        characters of its VR (LO), it is refused (0xC000)."""
        text = self.text(keyword, _LONGEST_PATIENT_KEY_PART + 1)
        if len(text) > _LONGEST_PATIENT_KEY_PART:
            raise CannotUnderstand(f"{keyword} is longer than {_LONGEST_PATIENT_KEY_PART}"
                                   " characters")
        return text

    def uid(self, keyword: str) -> str:
        """The UID as received, less its padding (trailing NUL and space, leading space),
        checked. Only that padding: pydicom's ``UID`` also strips a tab, a line feed and
        other white space, which then stayed in the stored object while the index and the
        C-STORE's check saw a clean UID ('1.2.3\\t' was stored as 1.2.3, a UID a dcmtk
        receiver of the object reads otherwise). A NUL inside is no padding either:
        '1.2.3\\x004.5' was indexed as 1.2.34.5 while the stored object says otherwise."""
        data = self.received.get(_KEYWORDS[keyword][0])
        if data is not None:
            text = data.decode("latin_1").rstrip("\x00 ").lstrip(" ")
            return _checked_uid(keyword, text)
        # Not at hand as bytes (a value pydicom already converted): its reading, as before.
        entry = self._json(keyword)
        if entry is not None and self._read_here(keyword) and (
                not entry or entry["vr"] in _TEXT_VRS):
            values = entry.get("Value", ())
            text = "\\".join(v if isinstance(v, str) else "" for v in values)
        else:  # pydicom's value: its JSON entry, if any, has had NUL deleted
            value = _raw(self._dataset(), keyword)
            multiple = isinstance(value, MultiValue | list)
            text = "" if value is None else (
                "\\".join(str(v) for v in value) if multiple else str(value))
        return _checked_uid(keyword, text.rstrip(_UID_PADDING).lstrip())

    def integer(self, keyword: str) -> int | None:
        entry = self._json(keyword)
        if entry is not None and (not entry or entry["vr"] == "IS"):
            values = entry.get("Value", ())
            return _column_int(values[0]) if len(values) == 1 else None
        return _int(self._dataset(), keyword)


def _alphabetic_only(values: Any) -> list[str] | None:
    """The names of PN values that are one alphabetic component group each (as pydicom's
    ``str`` of such a ``PersonName`` is), else None: pydicom's business."""
    names = []
    for value in values:
        if type(value) is not dict or value.keys() != {"Alphabetic"}:
            return None
        names.append(value["Alphabetic"])
    return names


#: The index keys by keyword: the tag, and its DICOM JSON key.
_KEYWORDS: dict[str, tuple[int, str]] = {
    keyword: (tag, f"{tag:08X}")
    for keyword in (
        "PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex",
        "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
        "StudyDescription", "ReferringPhysicianName", "SeriesInstanceUID", "Modality",
        "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime", "BodyPartExamined",
        "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "SpecificCharacterSet",
    )
    if (tag := tag_for_keyword(keyword)) is not None
}


#: The longest Patient ID and Issuer of Patient ID: an LO value, and their index columns.
_LONGEST_PATIENT_KEY_PART = 64

#: The UIDs the index keys on (their tags).
_UID_TAGS = tuple(_KEYWORDS[keyword][0] for keyword in (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"))


def _received_bytes(ds: Header, tag: int) -> bytes | None:
    """The value bytes of ``tag`` as received: from the scan, or pydicom's raw element
    while it is not yet converted; None where neither has them."""
    if isinstance(ds, ScannedHeader):
        scanned = ds.elements.get(tag)
        if scanned is None or tag in ds.bulk:
            return None
        return scanned[1]
    raw = ds._dict.get(BaseTag(tag))
    if type(raw) is RawDataElement and type(raw.value) is bytes:
        return raw.value
    return None


def valid_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


def header_json(ds: Header) -> dict[str, Any]:
    """The header as DICOM JSON, without bulk data (binary values over 1 KiB)."""
    return _header_json(ds)[0]


def _header_json(ds: Header) -> tuple[dict[str, Any], set[str]]:
    """``header_json`` and the keys of the entries pydicom converted."""
    try:
        document, converted = header_to_json(ds, _element_json)
    except NestedTooDeep:
        raise  # its own reason (codec/nesting.py)
    except Exception as exc:  # pydicom raises many kinds for malformed values
        raise CannotUnderstand("header cannot be represented as DICOM JSON") from exc
    if converted:
        kept = _without_bulk_data({key: document[key] for key in converted})
        for key in converted:  # in place: each kept entry stays where it was
            if key in kept:
                document[key] = kept[key]
            else:
                del document[key]
    return document, converted


def _element_json(element: DataElement) -> dict[str, Any] | None:
    """pydicom's DICOM JSON of one element; an element it cannot convert is left out."""
    try:
        return element.to_json_dict(
            bulk_data_element_handler=lambda _elem: "", bulk_data_threshold=1024
        )
    except Exception:
        return None


def _without_bulk_data(document: dict[str, Any]) -> dict[str, Any]:
    """Drop bulk data references; remove NUL from text (PostgreSQL's jsonb refuses \\u0000)."""
    kept: dict[str, Any] = {}
    for tag, element in document.items():
        if "BulkDataURI" in element:
            continue
        values = element.get("Value")
        if values:
            if element.get("vr") == "SQ":
                element = {**element, "Value": [_without_bulk_data(i) for i in values]}
            elif any(isinstance(v, str) and "\x00" in v for v in values):
                element = {**element, "Value": [_no_nul(v) for v in values]}
            elif element.get("vr") == "PN":
                element = {**element, "Value": [
                    {k: _no_nul(g) for k, g in v.items()} if isinstance(v, dict) else v
                    for v in values
                ]}
        kept[tag] = element
    return kept


def _no_nul(value: Any) -> Any:
    return value.replace("\x00", "") if isinstance(value, str) else value


def _raw(ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception as exc:
        raise CannotUnderstand(f"{keyword} cannot be decoded") from exc


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    value = _raw(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, bytes):
        # A text attribute sent with a binary VR (OB, OW...): pydicom keeps its bytes, whose
        # str() is Python's "b'PID1'", which was indexed (and matched no C-FIND) as the
        # Patient ID. Its bytes are text in the data set's character set.
        value = _decoded(ds, value)
    multiple = isinstance(value, MultiValue | list)
    text = "\\".join(str(v) for v in value) if multiple else str(value)
    # NUL is padding to DICOM and forbidden in PostgreSQL text: never keep it.
    return text.replace("\x00", "").strip()[:limit]


def _decoded(ds: Dataset, value: bytes) -> str:
    """``value`` decoded with the data set's Specific Character Set, as pydicom decodes
    text (an undecodable byte replaced, not refused: the index keeps what it can)."""
    try:
        encodings = ds._character_set
    except Exception:  # a Specific Character Set pydicom cannot read: its default
        encodings = ["iso8859"]
    try:
        return decode_bytes(value, encodings, set())
    except Exception:
        return value.decode("latin_1")


def _checked_uid(keyword: str, value: str) -> str:
    if not value:
        raise CannotUnderstand(f"{keyword} is missing", Status.MISSING_ATTRIBUTE)
    if not valid_uid(value):
        raise CannotUnderstand(f"{keyword} is not a valid UID", Status.MISSING_ATTRIBUTE)
    return value


#: What pydicom strips from the end of a UI value: NUL padding and white space.
_UID_PADDING = "\x00" + string.whitespace

_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2,6}(\.\d{1,6})?")


def _date(text: str) -> str:
    value = text.replace(".", "")
    return value if _DATE.fullmatch(value) else ""


def _time(text: str) -> str:
    value = text.replace(":", "")
    return value[:16] if _TIME.fullmatch(value) else ""


def _column_int(value: Any) -> int | None:
    """``value`` if an Integer index column can hold it, else None (not indexed)."""
    if isinstance(value, int) and _INTEGER_MIN <= value <= _INTEGER_MAX:
        return value
    return None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = _raw(ds, keyword)
        return _column_int(int(value)) if value not in (None, "") else None
    except (TypeError, ValueError, CannotUnderstand):
        return None
