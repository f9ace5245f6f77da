"""QIDO-RS (PS3.18 10.6): search for studies, series and instances.

The query parameters become a C-FIND Identifier (a pydicom ``Dataset``: match keys with
their values, return keys empty) that goes through the same parser and finder as C-FIND
(``query/identifier.parse``, ``Finder.find``): one matching engine for both front doors, with
the same key bounds, result limit, time budget and access policy (``find_requires``,
``max_find_results``). The query is relational (PS3.18 lets a search match on keys of any
level at or above the one searched); a match key below that level is refused (400), where
C-FIND answers it empty. Answers are DICOM JSON (PS3.18 F.2).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Iterable
from itertools import islice
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mimic_server.codec.answer import PLAIN_VRS, Answer
from mimic_server.errors import DicomStatusError, QueryError
from mimic_server.query.finder import ResultLimitReached
from mimic_server.query.identifier import parse
from mimic_server.query.keys import Level, Model
from mimic_server.query.matching import MAX_IDENTIFIER_KEYS
from mimic_server.query.pages import TimeLimitReached
from mimic_server.security import audit
from mimic_server.web.dicomweb.auth import QIDO, WebSession, authorize
from mimic_server.web.dicomweb.context import DicomWebContext
from mimic_server.web.dicomweb.errors import WebError
from mimic_server.web.dicomweb.negotiation import negotiate
from mimic_server.web.dicomweb.retrieve import check_uid
from mimic_server.web.dicomweb.urls import dicomweb_root

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
#: Query parameters that steer the search rather than match (PS3.18 8.3.4).
CONTROL_PARAMETERS = {"includefield", "limit", "offset", "fuzzymatching", "orderby"}
FUZZY_WARNING = (
    '299 MIMIC "The fuzzymatching parameter is not supported. '
    'Only literal matching has been performed."'
)
MORE_WARNING = '299 MIMIC "There are additional results that can be requested."'

#: Attributes answered by default (PS3.18 Tables 10.6.3-3 to -5).
STUDY_DEFAULTS = (
    "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
    "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_DEFAULTS = (
    "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
    "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
)
INSTANCE_DEFAULTS = (
    "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "InstanceNumber", "Rows",
    "Columns", "BitsAllocated", "NumberOfFrames",
)
#: ``includefield=all``: the defaults and every attribute the index keeps per level.
ALL_EXTRA = {
    Level.STUDY: ("StudyDescription", "IssuerOfPatientID", "SOPClassesInStudy"),
    Level.SERIES: ("SeriesDate", "SeriesTime", "BodyPartExamined", "Laterality"),
    Level.IMAGE: ("ImageType", "ContentDate", "ContentTime", "NumberOfFrames"),
}
#: Answer elements that belong to DIMSE, not to a DICOM JSON answer.
_DROPPED = {"00080005", "00080052", "00080054"}
_DROPPED_TAGS = {int(key, 16) for key in _DROPPED}
MAX_PARAMETERS = 64


def _defaults(level: Level, in_study: bool, in_series: bool) -> list[str]:
    """A series search outside a study also answers the study's attributes, and so on."""
    keys: list[str] = []
    if level is Level.STUDY or not in_study:
        keys += STUDY_DEFAULTS
    if level is Level.SERIES or (level is Level.IMAGE and not in_series):
        keys += SERIES_DEFAULTS
    if level is Level.IMAGE:
        keys += INSTANCE_DEFAULTS
    return keys


@functools.lru_cache(maxsize=1024)
def _tag(part: str) -> int:
    """An attribute ID of a query parameter: a keyword or eight hex digits."""
    if len(part) == 8 and all(c in "0123456789abcdefABCDEF" for c in part):
        return int(part, 16)
    tag = tag_for_keyword(part)
    if tag is None:
        raise WebError(400, f"unknown attribute {part[:64]!r}")
    return int(tag)


@functools.lru_cache(maxsize=1024)
def _vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        raise WebError(400, f"attribute ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not in the "
                       "data dictionary: its VR is unknown") from None


def _put(identifier: Dataset, path: str, value: str | None) -> None:
    """Set one attribute (a dotted sequence path: ``00400275.00401001``) in the Identifier.

    ``value`` None is a return key (empty); a value is matched with C-FIND's rules. UID lists
    may be separated by commas (PS3.18 8.3.4.1) as well as by backslashes."""
    parts = path.split(".")
    target = identifier
    for part in parts[:-1]:
        tag = _tag(part)
        if _vr(tag) != "SQ":
            raise WebError(400, f"{part[:64]!r} is not a sequence")
        if tag not in target or not target[tag].value:
            target.add_new(tag, "SQ", Sequence([Dataset()]))
        target = target[tag].value[0]
    tag = _tag(parts[-1])
    vr = _vr(tag)
    if "or" in vr:  # US or SS: a return key only
        vr = vr.split(" ")[0]
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        raise WebError(400, f"{parts[-1][:64]!r} is bulk data: it cannot be searched")
    if tag in target and value is None:
        return  # asked again as a return key: keep the match value
    if tag in target and target[tag].value not in (None, "", []) and value is not None:
        raise WebError(400, f"{parts[-1][:64]!r} is given twice")
    if vr == "SQ":
        if value:
            raise WebError(400, f"{parts[-1][:64]!r} is a sequence: match on its items' "
                           "attributes (NAME.ITEMATTRIBUTE=value)")
        target.add_new(tag, "SQ", Sequence([]))
        return
    if value is not None and vr == "UI":
        value = value.replace(",", "\\")
    try:
        target.add_new(tag, vr, value if value not in (None, "") else None)
    except (ValueError, TypeError, OverflowError):  # pydicom converts IS and DS values
        raise WebError(400, f"{parts[-1][:64]!r} takes a single {vr} value (a number)"
                       ) from None


#: Digits of ``limit`` and ``offset``: 9,999,999,999 is past any index's rows, and an
#: offset past ``sys.maxsize`` made ``islice`` raise (answered 500, audited as a success).
MAX_NUMBER_DIGITS = 10


def _number(params: Any, name: str, default: int | None) -> int | None:
    """``limit`` or ``offset``: ASCII digits only, as the frame list. ``int`` alone also
    took ``+1``, ``1_0`` and other scripts' digits (Arabic-Indic), and any length."""
    raw = params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > MAX_NUMBER_DIGITS:
        raise WebError(400, f"{name} must be a whole number of at most "
                       f"{MAX_NUMBER_DIGITS} digits")
    return int(raw)


def build_identifier(
    items: Iterable[tuple[str, str]], level: Level, path_keys: dict[str, str]
) -> tuple[Dataset, dict[str, Any]]:
    """The C-FIND Identifier of a QIDO-RS request, and its control parameters."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level.value
    control: dict[str, Any] = {"includefield": []}
    match: list[tuple[str, str]] = []
    for count, (name, value) in enumerate(items, 1):
        if count > MAX_PARAMETERS:
            raise WebError(400, f"more than {MAX_PARAMETERS} query parameters")
        if name in CONTROL_PARAMETERS:
            if name == "includefield":
                control["includefield"] += [v.strip() for v in value.split(",") if v.strip()]
                if len(control["includefield"]) > MAX_IDENTIFIER_KEYS:
                    # parse() refuses it too; here before thousands of keys are built.
                    raise WebError(400, f"more than {MAX_IDENTIFIER_KEYS} attributes in "
                                   "includefield")
            elif name in control:
                raise WebError(400, f"{name} is given twice")
            else:
                control[name] = value
        else:
            match.append((name, value))
    for keyword, uid in path_keys.items():
        _put(identifier, keyword, uid)
    for name, value in match:
        if name in path_keys:
            raise WebError(400, f"{name} is already given by the path")
        _put(identifier, name, value)
    fields = control["includefield"]
    returned = _defaults(level, "StudyInstanceUID" in path_keys,
                         "SeriesInstanceUID" in path_keys)
    if "all" in fields:
        for at in (Level.STUDY, Level.SERIES, Level.IMAGE):
            if at.depth <= level.depth:
                returned += ALL_EXTRA[at]
                returned += {Level.STUDY: STUDY_DEFAULTS, Level.SERIES: SERIES_DEFAULTS,
                             Level.IMAGE: INSTANCE_DEFAULTS}[at]
    returned += [f for f in fields if f != "all"]
    for name in returned:
        _put(identifier, name, None)
    return identifier, control


def identifier_bytes(identifier: Dataset) -> bytes:
    """The Identifier as explicit VR little endian bytes, for the Query audit message.

    An Identifier of plain ASCII text (nearly every search) is written by the codec's
    encoder, a quarter of the time pydicom's ``write_dataset`` took on every request; the
    bytes are the same (tests/unit/test_qido_json.py)."""
    plain = _plain_identifier(identifier)
    if plain is not None:
        encoded = Answer.of(plain, fill=False).encode(implicit=False, little=True)
        if encoded is not None:
            return encoded
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    try:
        write_dataset(buffer, identifier)
    except Exception:  # an unusual value: the audit record keeps going without it
        return b""
    return buffer.getvalue()


@functools.lru_cache(maxsize=4096)
def _json_key(tag: int) -> str:
    return f"{tag:08X}"


def _plain_identifier(identifier: Dataset) -> dict[int, tuple[str, Any]] | None:
    """The Identifier's elements as plain ``(VR, text)``, or None when one is not plain
    ASCII text (a sequence, a number, other characters): pydicom writes those."""
    plain: dict[int, tuple[str, Any]] = {}
    for element in identifier.elements():
        vr, value = element.VR, element.value
        if vr not in PLAIN_VRS or vr in _BINARY_NUMBERS:
            return None
        if value is None or value == "":
            plain[int(element.tag)] = (vr, None)
            continue
        values = list(value) if isinstance(value, MultiValue) else [value]
        texts = []
        for one in values:
            if not isinstance(one, str | PersonName):
                return None
            text = str(one)
            if not text.isascii():
                return None
            texts.append(text)
        plain[int(element.tag)] = (vr, texts)
    return plain


def answer_json(answer: Dataset, retrieve_url: str | None) -> dict[str, Any]:
    """One match as DICOM JSON (PS3.18 F.2), as pydicom's ``to_json_dict`` writes it.

    An answer of plain values (:class:`~mimic_server.codec.answer.Answer`) is written
    directly from them: building a pydicom ``Dataset`` and its JSON per match cost about
    1 ms, most of a QIDO-RS search's time when it has a few dozen matches."""
    plain: dict[int, tuple[str, Any]] | None = getattr(answer, "_mimic_plain", None)
    document: dict[str, Any]
    if plain is not None:
        document = {
            _json_key(tag): _plain_json(tag, vr, value)
            for tag, (vr, value) in plain.items()
            if tag not in _DROPPED_TAGS
        }
    else:
        document = {k: v for k, v in answer.to_json_dict().items() if k not in _DROPPED}
    if retrieve_url is not None:
        document["00081190"] = {"vr": "UR", "Value": [retrieve_url]}
    return dict(sorted(document.items()))


_BINARY_NUMBERS = frozenset({"US", "UL", "SS", "SL"})
_DIGITS = re.compile(r"[0-9]{1,12}")
#: A text value pydicom keeps as it is: not empty, no backslash, no padding at either end.
_UNCHANGED = re.compile(r"[^\\ \x00](?:[^\\]*[^\\ \x00])?", re.DOTALL)


def _plain_json(tag: int, vr: str, value: Any) -> dict[str, Any]:
    """The DICOM JSON of one plain ``(VR, value)``; values pydicom would change on the way
    (split at a backslash, strip, read as several PN component groups, an unusual IS) go
    through pydicom itself, so the result is always what ``to_json_dict`` gives
    (tests/unit/test_qido_json.py)."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if type(value) is list else [value]
    if vr in _BINARY_NUMBERS:
        if all(type(v) is int for v in values):
            return {"vr": vr, "Value": list(values)}
    elif all(type(v) is str and _UNCHANGED.fullmatch(v) for v in values):
        if vr == "PN":
            if not any("=" in v for v in values):
                return {"vr": vr, "Value": [{"Alphabetic": v} for v in values]}
        elif vr == "IS":
            if all(_DIGITS.fullmatch(v) for v in values):
                return {"vr": vr, "Value": [int(v) for v in values]}
        else:
            return {"vr": vr, "Value": list(values)}
    return DataElement(tag, vr, value).to_json_dict(None, 1024)


def _retrieve_url(root: str, level: Level, answer: dict[str, Any]) -> str | None:
    def uid(tag: str) -> str | None:
        values = answer.get(tag, {}).get("Value")
        return str(values[0]) if values else None

    study = uid("0020000D")
    if study is None:
        return None
    url = f"{root}/studies/{study}"
    if level is Level.STUDY:
        return url
    series = uid("0020000E")
    if series is None:
        return None
    url += f"/series/{series}"
    if level is Level.SERIES:
        return url
    instance = uid("00080018")
    return f"{url}/instances/{instance}" if instance else None


def search(ctx: DicomWebContext, request: Request, level: Level,
           path_keys: dict[str, str]) -> Response:
    # Answered in the type negotiated: a client that takes application/json only was
    # sent application/dicom+json, a type its Accept did not name.
    answer_type, _ = negotiate(request, [DICOM_JSON, "application/json"])
    session = authorize(ctx, request, QIDO)
    for uid in path_keys.values():
        # Else `*` in the path searched every study, and `1.2,1.3` or `1.2\1.3` a list.
        check_uid(uid)
    identifier, control = build_identifier(request.query_params.multi_items(), level,
                                           path_keys)
    limit = _number(request.query_params, "limit", None)
    offset = _number(request.query_params, "offset", 0) or 0
    warnings = []
    fuzzy = str(control.get("fuzzymatching", "false")).lower()
    if fuzzy not in ("true", "false"):
        raise WebError(400, "fuzzymatching must be true or false")
    if fuzzy == "true":
        warnings.append(FUZZY_WARNING)
    status, outcome = "0x0000", audit.SUCCESS
    started = time.monotonic()
    try:
        answers, more = _find(ctx, session, identifier, level, limit, offset)
    except WebError as exc:
        status, outcome = f"HTTP {exc.status}", audit.MINOR_FAILURE
        raise
    except BaseException:
        # Answered 500 (or not at all): never a success in the audit trail.
        status, outcome = "HTTP 500", audit.SERIOUS_FAILURE
        raise
    finally:
        ctx.audit.record(
            audit.QUERY, outcome,
            service="QIDO-RS", sop_class=STUDY_ROOT_FIND,
            transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN,
            identifier=identifier_bytes(identifier), status=status,
            **session.audit_details(),
        )
    if more:
        warnings.append(MORE_WARNING)
    root = dicomweb_root(ctx, request)
    documents = []
    for answer in answers:
        document = answer_json(answer, None)
        url = _retrieve_url(root, level, document)
        if url is not None:
            document["00081190"] = {"vr": "UR", "Value": [url]}
        documents.append(document)
    log.info("QIDO-RS", extra={"query_level": level.value, "matches": len(documents),
                               "seconds": round(time.monotonic() - started, 4)})
    headers = {"Warning": ", ".join(warnings)} if warnings else {}
    body = json.dumps(documents, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(body, media_type=answer_type, headers=headers)


def _find(ctx: DicomWebContext, session: WebSession, identifier: Dataset, level: Level,
          limit: int | None, offset: int) -> tuple[list[Dataset], bool]:
    """The page of answers ``[offset, offset + limit)`` and whether more follow."""
    narrowing = ctx.policy.missing_narrowing(session, identifier)
    if narrowing is not None:  # the rule's find_requires (audited by the policy)
        raise WebError(403, narrowing)
    try:
        query = parse(identifier, Model.STUDY_ROOT, relational=True, refuse_below=True)
    except QueryError as exc:
        raise WebError(400, str(exc)) from exc
    own_limit = ctx.policy.max_find_results(session)
    server_limit = min(ctx.finder.max_results, own_limit or ctx.finder.max_results)
    page = server_limit if limit is None else min(limit, server_limit)
    answers: list[Dataset] = []
    more = False
    matches = ctx.finder.find(query, max_results=own_limit, plain=True)
    try:
        for answer in islice(matches, offset, None):
            if len(answers) >= page:
                more = True
                break
            answers.append(answer)
    except ResultLimitReached:
        more = True  # past the server's limit: the page so far, and a warning
    except TimeLimitReached as exc:
        raise WebError(503, f"query time limit ({exc.args[0]:g} s) reached: refine the "
                       "search") from exc
    except DicomStatusError as exc:
        raise WebError(503, str(exc)) from exc
    finally:
        close = getattr(matches, "close", None)
        if close is not None:
            close()
    return answers, more


def routes(ctx: DicomWebContext) -> list[Route]:
    def endpoint(level: Level, *keys: str) -> Any:
        def handle(request: Request) -> Response:
            path_keys = {
                keyword: str(request.path_params[name])
                for name, keyword in zip(("study", "series"), keys, strict=False)
            }
            return search(ctx, request, level, path_keys)
        return handle

    study, series = "StudyInstanceUID", "SeriesInstanceUID"
    return [
        Route("/studies", endpoint(Level.STUDY), methods=["GET"]),
        Route("/series", endpoint(Level.SERIES), methods=["GET"]),
        Route("/instances", endpoint(Level.IMAGE), methods=["GET"]),
        Route("/studies/{study}/series", endpoint(Level.SERIES, study), methods=["GET"]),
        Route("/studies/{study}/instances", endpoint(Level.IMAGE, study), methods=["GET"]),
        Route("/studies/{study}/series/{series}/instances",
              endpoint(Level.IMAGE, study, series), methods=["GET"]),
    ]

