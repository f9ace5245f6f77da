"""The attribute matching rules of PS3.4 C.2.2.2, as neutral constraints.

An Identifier becomes a list of :class:`Constraint` (single value, list of values, universal,
wildcard, range, empty value, sequence). :meth:`Constraint.matches` is the definitive rule;
:mod:`mimic_server.query.finder` only narrows the candidates with indexable predicates that never
exclude a true match.

Declared behaviour (see docs/conformance.md): PN matching is case-insensitive; a PN key
without ``=`` matches the whole value or any component group, a key with ``=`` names its
groups by position (alphabetic, ideographic, phonetic), an empty one universal; all other
text is case-sensitive; ``*`` alone is universal matching; an empty stored value never
matches a range; a key whose value is ``""`` matches empty or absent values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue

from mimic_server.errors import QueryError, Status
from mimic_server.query.wildcard import WildcardPattern, check_bounds

WILDCARD_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
RANGE_VRS = {"DA", "TM", "DT"}
NUMERIC_VRS = {"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "UV", "SV"}
#: Values in one key (a list of UIDs to retrieve included): each becomes an SQL term.
MAX_KEY_VALUES = 256
#: Characters in all values of one key (256 UIDs of 64 characters fit).
MAX_KEY_VALUES_LENGTH = 16384
#: Values and characters in all keys of one Identifier together: each value is parsed and
#: compiled before the query's time budget starts, and matched against every candidate row.
MAX_IDENTIFIER_VALUES = 1024
#: Keys in one Identifier, return keys (empty) and a sequence's first item's keys included:
#: each is looked up and answered for every match (QIDO-RS's includefield naming 5,000
#: attributes took 1.3 GiB and half a minute per request).
MAX_IDENTIFIER_KEYS = 256
MAX_IDENTIFIER_LENGTH = 65536
#: Component groups of a Person Name: alphabetic, ideographic, phonetic (PS3.5 6.2.1.1).
PN_GROUPS = 3


class Kind(Enum):
    SINGLE = "single value"
    LIST = "list of values"
    WILDCARD = "wildcard"
    RANGE = "range"
    EMPTY = "empty value"
    SEQUENCE = "sequence"


#: Comparisons between two looks at the query's budget and at C-CANCEL (:class:`Meter`).
CHECK_EVERY = 64


class Meter:
    """Counts the comparisons a query makes and calls ``check`` once every ``every`` of them.

    One key against one stored sequence is items x alternatives x item keys comparisons (a
    MiB of small items against a key of hundreds of values ran 126 s past a 30 s budget, deaf
    to C-CANCEL): the budget has to be looked at inside the match, not only between keys.
    ``check`` raises to stop the match."""

    __slots__ = ("_check", "_every", "_left")

    def __init__(self, check: Callable[[], None], every: int = CHECK_EVERY) -> None:
        self._check = check
        self._every = every
        self._left = every

    def spend(self, comparisons: int) -> None:
        self._left -= comparisons
        if self._left <= 0:
            self._left = self._every
            self._check()


#: The meter of a match nobody bounds (a retrieve's typed columns, a unit's own rule).
UNMETERED = Meter(lambda: None, every=1 << 62)


class Record(Protocol):
    """What a constraint is matched against: the stored values of one entity."""

    def values(self, keyword: str, tag: int) -> list[Any] | None: ...


@dataclass(frozen=True)
class Constraint:
    keyword: str
    tag: int
    vr: str
    kind: Kind
    values: tuple[str, ...] = ()
    low: str = ""
    high: str = ""
    alternatives: tuple[Constraint, ...] = ()
    items: tuple[Constraint, ...] = ()
    #: A PN key naming its component groups (``=山田^太郎``): each group's own constraint, by
    #: position, None where the key leaves the group empty (universal).
    groups: tuple[Constraint | None, ...] = ()
    _pattern: WildcardPattern | None = field(default=None, compare=False, repr=False)

    def matches(self, record: Record, meter: Meter = UNMETERED) -> bool:
        return self.matches_values(record.values(self.keyword, self.tag), meter)

    def matches_values(self, stored: list[Any] | None, meter: Meter = UNMETERED) -> bool:
        present = [v for v in (stored or []) if v not in (None, "")]
        if self.kind is Kind.LIST:
            return any(alt.matches_values(stored, meter) for alt in self.alternatives)
        if self.kind is Kind.SEQUENCE:
            return any(all(c.matches(item, meter) for c in self.items) for item in present)
        meter.spend(len(present) or 1)
        if self.kind is Kind.EMPTY:
            return not present
        if self.groups:
            return any(self._groups_match(v) for v in present)
        if self.kind is Kind.RANGE:
            return any(self._in_range(str(v)) for v in present)
        if self.kind is Kind.WILDCARD:
            assert self._pattern is not None
            return any(self._pattern.fullmatch(s) for v in present for s in _forms(self.vr, v))
        return any(self._equal(v) for v in present)

    def _groups_match(self, stored: Any) -> bool:
        """Each group the key names against the stored value's group in the same position."""
        stored_groups = str(stored).strip().split("=")
        for position, group in enumerate(self.groups):
            if group is None:
                continue
            text = _pn_text(stored_groups[position]) if position < len(stored_groups) else ""
            if group._pattern is not None:
                if not group._pattern.fullmatch(text):
                    return False
            elif text != _pn_key(group.values[0]):
                return False
        return True

    def _equal(self, stored: Any) -> bool:
        wanted = self.values[0]
        if self.vr == "PN":
            return any(_pn_key(s) == _pn_key(wanted) for s in _forms("PN", stored))
        if self.vr in NUMERIC_VRS:
            try:
                return float(stored) == float(wanted)
            except (TypeError, ValueError):
                return False
        if self.vr == "DA":
            return _da(str(stored)) == wanted
        return str(stored).strip() == wanted

    def _in_range(self, stored: str) -> bool:
        if self.vr == "TM":
            value = _tm(stored, high=False)
            return bool(value) and self.low <= value <= self.high
        if self.vr == "DA":
            value = _da(stored)
            return bool(value) and self.low <= value <= self.high
        value = re.sub(r"[^0-9]", "", stored.split("+")[0].split("-")[0])
        return bool(value) and self.low <= value.ljust(len(self.low), "0") <= self.high


def _forms(vr: str, stored: Any) -> list[str]:
    """The strings a stored value may match as: PN matches whole or by component group."""
    text = str(stored).strip()
    if vr != "PN":
        return [text]
    groups = [g for g in text.split("=") if g]
    return [_pn_text(text), *(_pn_text(g) for g in groups)]


def _pn_text(text: str) -> str:
    """Upper case, for a case-insensitive comparison, but never a character made ASCII
    (``'ß'.upper()`` is ``'SS'``, a dotless i's ``'I'``, a ligature's its letters): the
    index's pre-filter (``finder._prefilter``, ILIKE) does not fold those, and must select a
    superset of what this matches."""
    return _pn_fold(text.rstrip("^ ="))


def _pn_fold(text: str) -> str:
    if text.isascii():
        return text.upper()
    return "".join(_upper_unless_made_ascii(c) for c in text)


def _upper_unless_made_ascii(c: str) -> str:
    if c.isascii():
        return c.upper()
    upper = c.upper()
    if any(u.isascii() for u in upper):
        return _CAPITALS.get(c, c)
    return upper


#: Capitals of the characters whose ``upper()`` is ASCII, where Unicode has one: a name
#: stored in capitals (``GROẞ``) is found by ``groß*`` as it was by IGNORECASE.
_CAPITALS = {"ß": "ẞ"}


def _pn_key(text: str) -> str:
    return _pn_text(text)


def _da(text: str) -> str:
    value = text.strip().replace(".", "")
    return value if re.fullmatch(r"\d{8}", value) else ""


def _tm(text: str, *, high: bool) -> str:
    """A TM value as ``HHMMSS.FFFFFF``; a bound of lower precision covers its whole span."""
    value = text.strip().replace(":", "")
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", value)
    if not match:
        return ""
    hh, mm, ss, frac = match.groups()
    fill = "59" if high else "00"
    mm = mm or fill
    ss = ss or fill
    pad = "9" if high else "0"
    frac = (frac or "").ljust(6, pad)
    return f"{hh}{mm}{ss}.{frac}"


def element_constraint(element: DataElement) -> Constraint | None:
    """The constraint of one Identifier element, or None for universal matching."""
    keyword = element.keyword or keyword_for_tag(element.tag) or f"{element.tag:08X}"
    tag, vr = int(element.tag), str(element.VR)
    if vr == "SQ":
        items = list(element.value or [])
        if not items:
            return None
        inner = [c for c in (element_constraint(e) for e in items[0]) if c is not None]
        return Constraint(keyword, tag, vr, Kind.SEQUENCE, items=tuple(inner)) if inner else None
    raw = element.value
    if raw is None or raw == "" or raw == b"":
        return None
    texts = [str(v) for v in raw] if isinstance(raw, MultiValue | list) else [str(raw)]
    if vr != "UI":
        # NUL removed as ingest removes it from every indexed and stored text value
        # (index/attributes.py): a key keeping it could not match there, and PostgreSQL
        # refuses it as a parameter, so such a key failed 0xA700 "index unavailable" on
        # PostgreSQL while SQLite answered it. A UID with NUL inside stays refused 0xC000
        # (_single), as ingest refuses one.
        texts = [t.replace("\x00", "") for t in texts]
    values = [t.strip() for t in texts]
    if values == ['""']:
        return Constraint(keyword, tag, vr, Kind.EMPTY)
    if values == ["*"]:
        return None
    if vr == "PN" and all("=" in v and not any(_pn_group_keys(v)) for v in values):
        return None  # '=', '*=*': every component group universal
    if len(values) > MAX_KEY_VALUES or sum(map(len, values)) > MAX_KEY_VALUES_LENGTH:
        # Before any compilation: every alternative costs parsing, a matcher and an SQL term
        # (SQLite refuses a tree of about 1000), all before the query's time budget starts.
        raise QueryError(
            f"{keyword}: more than {MAX_KEY_VALUES} values or {MAX_KEY_VALUES_LENGTH} "
            "characters", Status.UNABLE_TO_PROCESS,
        )
    if len(values) > 1:
        alternatives = tuple(_single(keyword, tag, vr, v) for v in values)
        return Constraint(keyword, tag, vr, Kind.LIST, values=tuple(values),
                          alternatives=alternatives)
    return _single(keyword, tag, vr, values[0])


def _single(keyword: str, tag: int, vr: str, value: str) -> Constraint:
    wild = "*" in value or "?" in value
    if vr == "UI":
        if wild or not re.fullmatch(r"[0-9]+(\.[0-9]+)*", value):
            raise QueryError(f"{keyword}: UID matching takes whole UIDs",
                             Status.UNABLE_TO_PROCESS)
        return Constraint(keyword, tag, vr, Kind.SINGLE, values=(value,))
    if vr in RANGE_VRS:
        return _date_time(keyword, tag, vr, value)
    if vr == "PN" and "=" in value:
        return _person_name_groups(keyword, tag, value)
    if wild:
        if vr not in WILDCARD_VRS:
            raise QueryError(f"{keyword}: no wildcard matching on {vr}", Status.UNABLE_TO_PROCESS)
        if vr == "PN":
            # Trailing '^' and spaces ignored, as for a single value (_pn_key) and as stored
            # forms are compared (_pn_text): 'SMITH*^^^^', as SCUs pad all five components,
            # found nothing where 'Smith^John^^^' found Smith^John.
            value = value.rstrip("^ ")
        value = check_bounds(keyword, value)
        # A Person Name is matched folded as its stored forms are (_pn_text), not by the
        # regex's IGNORECASE, which also takes a dotless i for an I, as the index does not.
        pattern = WildcardPattern.compile(_pn_fold(value) if vr == "PN" else value)
        return Constraint(keyword, tag, vr, Kind.WILDCARD, values=(value,), _pattern=pattern)
    return Constraint(keyword, tag, vr, Kind.SINGLE, values=(value,))


def _pn_group_keys(value: str) -> list[str]:
    """The component groups a PN key names, by position; '' where it leaves one universal
    (empty, or ``*`` alone)."""
    return ["" if g.strip().rstrip("^ ") in ("", "*") else g.strip()
            for g in value.split("=")]


def _person_name_groups(keyword: str, tag: int, value: str) -> Constraint:
    """A PN key with ``=``: each group it names matches the stored value's group in the same
    position (PS3.4 C.2.2.2.1 and docs/conformance.md: every group separately). Kept in the
    compared text, the ``=`` made ``=山田^太郎`` find nothing."""
    keys = _pn_group_keys(value)
    if len(keys) > PN_GROUPS:
        raise QueryError(f"{keyword}: more than {PN_GROUPS} component groups",
                         Status.UNABLE_TO_PROCESS)
    groups = tuple(_single(keyword, tag, "PN", key) if key else None for key in keys)
    wild = any(g is not None and g.kind is Kind.WILDCARD for g in groups)
    return Constraint(keyword, tag, "PN", Kind.WILDCARD if wild else Kind.SINGLE,
                      values=(value,), groups=groups)


def _date_time(keyword: str, tag: int, vr: str, value: str) -> Constraint:
    bad = QueryError(f"{keyword}: malformed {vr} value or range", Status.UNABLE_TO_PROCESS)
    if "*" in value or "?" in value:
        raise bad
    if vr == "DT":
        low, high, is_range = _split_dt(value, bad)
        low_d, high_d = _dt_digits(low), _dt_digits(high)
        if not is_range:
            return Constraint(keyword, tag, vr, Kind.RANGE, low=low_d.ljust(14, "0"),
                              high=low_d.ljust(20, "9"))
        return Constraint(keyword, tag, vr, Kind.RANGE, low=low_d.ljust(14, "0"),
                          high=(high_d or "9" * 20).ljust(20, "9"))
    if "-" in value:
        low, _, high = value.partition("-")
        if "-" in high or not (low or high):
            raise bad
    else:
        low, high = value, value
        if vr == "DA":
            if not _da(value):
                raise bad
            return Constraint(keyword, tag, vr, Kind.SINGLE, values=(_da(value),))
    if vr == "DA":
        lo, hi = (_da(low) if low else "00000000"), (_da(high) if high else "99999999")
        if (low and not lo) or (high and not hi) or lo > hi:
            raise bad
        return Constraint(keyword, tag, vr, Kind.RANGE, low=lo, high=hi)
    lo = _tm(low, high=False) if low else "000000.000000"
    hi = _tm(high, high=True) if high else "235959.999999"
    if (low and not lo) or (high and not hi) or lo > hi:
        raise bad
    return Constraint(keyword, tag, vr, Kind.RANGE, low=lo, high=hi)


_DT = re.compile(r"(\d{4,14}(?:\.\d{1,6})?)([+-]\d{4})?")


def _split_dt(value: str, bad: QueryError) -> tuple[str, str, bool]:
    """A DT key as (low, high, is_range); a UTC offset ('+0100', '-0500') is not a range."""
    if _DT.fullmatch(value):
        return value, value, False
    for position, char in enumerate(value):
        if char != "-":
            continue
        low, high = value[:position], value[position + 1 :]
        if (low or high) and all(not part or _DT.fullmatch(part) for part in (low, high)):
            return low, high, True
    raise bad


def _dt_digits(value: str) -> str:
    """The date and time digits of a DT value; its UTC offset is not compared."""
    match = _DT.fullmatch(value)
    return match.group(1).replace(".", "") if match else ""


def stored_tm(text: str) -> str:
    return _tm(text, high=False)


def pn_forms(stored: str) -> Sequence[str]:
    return _forms("PN", stored)
