"""A C-FIND / C-MOVE / C-GET Identifier read into a :class:`Query`, or refused.

Hierarchical queries (PS3.4 C.4.1.3.1) must carry a single-value unique key for every level
above the query level, and may match only on those there; relational queries (accepted when
the peer asks for them in SOP Class Extended Negotiation) may match on any key at or above
the query level. Keys below the query level are not matched and are answered empty.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from mimic_server.errors import QueryError, Status
from mimic_server.query.keys import CONTROL, UNIQUE_KEY, Level, Model, level_of
from mimic_server.query.matching import (
    MAX_IDENTIFIER_KEYS,
    MAX_IDENTIFIER_LENGTH,
    MAX_IDENTIFIER_VALUES,
    Constraint,
    Kind,
    element_constraint,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Query:
    model: Model
    level: Level
    constraints: tuple[Constraint, ...]
    #: The Identifier's keys to answer (control keys excepted), in order.
    requested: tuple[DataElement, ...]


def _level(identifier: Dataset, model: Model) -> Level:
    raw = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if not raw:
        raise QueryError("Query/Retrieve Level is missing")
    try:
        level = Level(raw)
    except ValueError:
        raise QueryError("unknown Query/Retrieve Level") from None  # the value is the peer's
    if level not in model.levels():
        raise QueryError(f"level {level.value} does not exist in the {model.value} model")
    return level


def parse(identifier: Dataset, model: Model, *, relational: bool, retrieve: bool = False,
          refuse_below: bool = False) -> Query:
    """Read an Identifier; raise :class:`QueryError` for anything we would have to guess at.

    ``refuse_below``: a key below the query level that carries a value is refused rather
    than left unmatched (QIDO-RS: ``/studies?Modality=CT`` answered studies without CT, the
    searcher told nothing; C-FIND keeps answering such keys empty, as conformance 2.5.2
    states)."""
    tag = 0x00080052  # Query/Retrieve Level, read first
    try:
        level = _level(identifier, model)
        constraints: list[Constraint] = []
        requested: list[DataElement] = []
        values = characters = keys = 0
        for tag in list(identifier.keys()):
            element = identifier[tag]
            keyword = element.keyword
            if keyword in CONTROL or element.tag.group in (0x0000, 0x0002):
                continue
            requested.append(element)
            keys += _keys(element)
            if keys > MAX_IDENTIFIER_KEYS:
                # Return keys cost nothing to match but are answered for every match.
                raise QueryError(f"the Identifier has more than {MAX_IDENTIFIER_KEYS} keys",
                                 Status.UNABLE_TO_PROCESS)
            count, length = _size(element)
            values, characters = values + count, characters + length
            if values > MAX_IDENTIFIER_VALUES or characters > MAX_IDENTIFIER_LENGTH:
                # Before the keys are compiled, outside the time budget and deaf to C-CANCEL.
                raise QueryError(
                    f"the Identifier's keys hold more than {MAX_IDENTIFIER_VALUES} values or "
                    f"{MAX_IDENTIFIER_LENGTH} characters together", Status.UNABLE_TO_PROCESS)
            key_level = level_of(keyword or "", model, level)
            if key_level.depth > level.depth:
                if refuse_below and element_constraint(element) is not None:
                    raise QueryError(_below_level(keyword or str(element.tag), key_level,
                                                  level))
                continue  # below the query level: answered empty, never matched
            constraint = element_constraint(element)
            if constraint is None:
                continue
            above = key_level.depth < level.depth and not relational
            if above and (keyword != UNIQUE_KEY[key_level] or constraint.kind is not Kind.SINGLE):
                raise QueryError(
                    f"{keyword or element.tag} above the {level.value} level needs a "
                    "relational query (not negotiated)"
                )
            constraints.append(constraint)
    except QueryError:
        raise
    except Exception as exc:  # an element pydicom cannot decode
        raise _undecodable(identifier, tag, exc) from exc
    _require_unique_keys(model, level, constraints, relational, retrieve)
    return Query(model, level, tuple(constraints), tuple(requested))


#: A key below the study level and the study-level key that matches it (PS3.18 Table
#: 10.6.1-5), named in the refusal.
_STUDY_LEVEL_KEY = {"Modality": "ModalitiesInStudy", "SOPClassUID": "SOPClassesInStudy"}


def _below_level(keyword: str, key_level: Level, level: Level) -> str:
    """The refusal of a match key below the query level: which key, and what to use."""
    hint = _STUDY_LEVEL_KEY.get(keyword) if level is Level.STUDY else None
    return (f"{keyword} belongs to the {key_level.value} level: a {level.value} level search "
            "cannot match it" + (f" (match {hint} instead)" if hint else ""))


def _keys(element: DataElement) -> int:
    """The keys of one element: itself, and its sequence's first item's keys."""
    if element.VR == "SQ" and element.value:
        return 1 + sum(_keys(inner) for inner in element.value[0])
    return 1


def _size(element: DataElement) -> tuple[int, int]:
    """(values, characters) of a key, its sequence's first item's keys included (the only
    item matched)."""
    if element.VR == "SQ":
        items = element.value
        if not items:
            return 0, 0
        sizes = [_size(inner) for inner in items[0]]
        return sum(n for n, _ in sizes), sum(c for _, c in sizes)
    raw = element.value
    if raw is None or raw == "" or raw == b"":
        return 0, 0
    if isinstance(raw, MultiValue | list):
        return len(raw), sum(len(str(v)) for v in raw)
    return 1, len(str(raw))


def _undecodable(identifier: Dataset, tag: int, exc: Exception) -> QueryError:
    """A refusal naming the element by tag, keyword and VR only.

    pydicom's message quotes the raw value (``Instead received b'...'``): a peer's value,
    possibly patient data, so it goes to DEBUG and never into the refusal, which is logged
    at WARNING and sent as the Error Comment.
    """
    tag = int(tag)
    raw = identifier.get_item(tag)
    vr = str(getattr(raw, "VR", None) or "??")
    name = keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    log.debug("Identifier element cannot be decoded",
              extra={"tag": f"{tag:08X}", "error": str(exc)})
    return QueryError(f"{name} ({vr}) cannot be decoded")


def _require_unique_keys(
    model: Model,
    level: Level,
    constraints: list[Constraint],
    relational: bool,
    retrieve: bool,
) -> None:
    by_keyword = {c.keyword: c for c in constraints}
    for above in model.levels():
        if above.depth >= level.depth and not (retrieve and above is level):
            continue
        if above.depth > level.depth:
            continue
        key = UNIQUE_KEY[above]
        found = by_keyword.get(key)
        if above is level:
            # Retrieve: the unique key of the retrieve level, one value or a list of them
            # (PS3.4 C.4.2.2.1), never a wildcard, in the list either ('*\\*': everything).
            if found is None or found.kind not in (Kind.SINGLE, Kind.LIST) or (
                found.kind is Kind.LIST
                and any(alt.kind is not Kind.SINGLE for alt in found.alternatives)
            ):
                raise QueryError(f"a retrieve at {level.value} level needs {key}")
            continue
        if relational:
            continue
        if found is None or found.kind is not Kind.SINGLE:
            raise QueryError(f"{key} (one value) is required above the {level.value} level")
