"""The answer to a sequence key (PS3.4 C.2.2.2.6): the matching items, each with only the
attributes the request's item names.

Every stored item with every attribute went back whatever the key's item asked for: a key
``{CodeValue=C2, CodeMeaning=}`` was answered with the C1 item too, and with each item's
Coding Scheme Designator. A request item with keys (with values or only zero-length ones,
which match every item) selects the items and cuts each to its keys, zero length for a key
the item lacks; a request without an item, or with an empty item, is answered with the whole
stored sequence (universal matching of the sequence). Nested sequence keys are answered the
same way, one level down.
"""

from __future__ import annotations

from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement

from mimic_server.query.matching import UNMETERED, Constraint, Kind, Meter
from mimic_server.query.stored_values import JsonItem


def answered_sequence(
    requested: DataElement,
    stored: dict[str, Any],
    constraint: Constraint | None,
    meter: Meter = UNMETERED,
) -> dict[str, Any]:
    """``stored`` (a DICOM JSON ``SQ`` element) as the answer to ``requested``; ``constraint``
    is the key's own (None when its item's keys are all universal)."""
    keys = list(requested.value[0]) if requested.value else []
    if not keys or stored.get("vr") != "SQ":
        return stored
    items = [item for item in stored.get("Value") or [] if isinstance(item, dict)]
    if constraint is not None:
        items = [item for item in items
                 if all(c.matches(JsonItem(item), meter) for c in constraint.items)]
    cut = [_cut(item, keys, constraint, meter) for item in items]
    return {"vr": "SQ", "Value": cut} if cut else {"vr": "SQ"}


def _cut(
    item: dict[str, Any], keys: list[DataElement], constraint: Constraint | None, meter: Meter
) -> dict[str, Any]:
    answer: dict[str, Any] = {}
    for key in keys:
        tag = f"{int(key.tag):08X}"
        value = item.get(tag)
        if value is None:
            answer[tag] = {"vr": _vr(key)}
        elif key.VR == "SQ":
            answer[tag] = answered_sequence(key, value, _inner(constraint, int(key.tag)), meter)
        else:
            answer[tag] = value
    return answer


def _inner(constraint: Constraint | None, tag: int) -> Constraint | None:
    """The sequence constraint, among ``constraint``'s item keys, of the nested key ``tag``."""
    if constraint is None:
        return None
    return next((c for c in constraint.items if c.tag == tag and c.kind is Kind.SEQUENCE),
                None)


def _vr(key: DataElement) -> str:
    vr = str(key.VR)
    if vr not in ("UN", "None", ""):
        return vr.split(" ")[0]
    try:
        return str(dictionary_VR(int(key.tag))).split(" ")[0]
    except KeyError:
        return "UN"
