"""PS3.4 C.2.2.2 matching rules, case by case, without a database."""

from __future__ import annotations

import pytest
from pydicom.dataelem import DataElement

from mimic_server.errors import QueryError
from mimic_server.query.matching import element_constraint


def _matches(vr: str, key: str, stored: list[str] | None, tag: int = 0x0008002A) -> bool:
    constraint = element_constraint(DataElement(tag, vr, key))
    assert constraint is not None
    return constraint.matches_values(stored)


@pytest.mark.parametrize(
    ("key", "stored", "expected"),
    [
        ("20200101120000", ["20200101120000"], True),
        ("20200101120000+0100", ["20200101120000+0100"], True),  # offset is not a range
        ("20200101120000-0500", ["20200101120000-0500"], True),
        ("20200101-20200102", ["20200101235959"], True),
        ("20200101-20200102", ["20200103000000"], False),
        ("20200101000000-0500-20200102000000-0500", ["20200101120000"], True),
        ("-20191231", ["20200101"], False),
        ("20200101-", [""], False),  # an empty stored value never matches a range
    ],
)
def test_datetime(key: str, stored: list[str], expected: bool) -> None:
    assert _matches("DT", key, stored) is expected


@pytest.mark.parametrize(
    ("vr", "key", "stored", "expected"),
    [
        ("DA", "20040101-20041231", ["20040826"], True),
        ("DA", "20040101-20041231", ["2004.08.26"], True),  # ACR-NEMA style stored value
        ("DA", "-20031231", ["20040826"], False),
        ("TM", "0700-0800", ["072730"], True),
        ("TM", "0730", ["073059.99"], True),  # a key of lower precision covers its span
        ("TM", "0730", ["073100"], False),
        ("PN", "smith*", ["SMITH^JOHN"], True),
        ("PN", "山田*", ["Yamada^Tarou=山田^太郎=やまだ^たろう"], True),
        ("LO", "abc", ["ABC"], False),  # only PN is case-insensitive
        ("LO", "1_T1", ["1CT1"], False),  # SQL specials are literal
        ("CS", '""', [""], True),  # empty value matching
        ("CS", '""', ["CT"], False),
    ],
)
def test_rules(vr: str, key: str, stored: list[str], expected: bool) -> None:
    tags = {"DA": 0x00080020, "TM": 0x00080030, "PN": 0x00100010, "LO": 0x00100020,
            "CS": 0x00080060}
    assert _matches(vr, key, stored, tags[vr]) is expected


@pytest.mark.parametrize(("vr", "key"), [("DA", "2004-01-01-2005"), ("DT", "2020--"),
                                         ("UI", "1.2.*"), ("DA", "2004*")])
def test_malformed_keys_are_refused(vr: str, key: str) -> None:
    with pytest.raises(QueryError):
        element_constraint(DataElement(0x0008002A, vr, key))


def test_values_in_one_key_are_bounded() -> None:
    """Refused 0xC000 before any value is compiled; 256 UIDs (a C-MOVE list) still pass."""
    uids = [f"1.2.826.0.1.3680043.8.498.{n}" for n in range(257)]
    assert element_constraint(DataElement(0x00080018, "UI", uids[:256])) is not None
    for key in (DataElement(0x00080018, "UI", uids),
                DataElement(0x00100010, "PN", ["A" * 64] * 256 + ["*"])):
        with pytest.raises(QueryError, match="more than 256 values") as refused:
            element_constraint(key)
        assert refused.value.status == 0xC000
    with pytest.raises(QueryError, match="16384 characters"):
        element_constraint(DataElement(0x00100020, "LO", ["X" * 100] * 200))


YAMADA = "Yamada^Tarou=山田^太郎=やまだ^たろう"


@pytest.mark.parametrize(
    ("key", "stored", "expected"),
    [
        ("=山田^太郎", YAMADA, True),  # the ideographic group alone
        ("=山田*", YAMADA, True),
        ("==やまだ^たろう", YAMADA, True),  # the phonetic group alone
        ("==やまだ*", YAMADA, True),
        ("Yamada^Tarou=山田^太郎", YAMADA, True),  # two groups, both must match
        ("yamada^tarou=山田^太郎=", YAMADA, True),  # case-insensitive; empty groups universal
        ("*=山田^太郎*", YAMADA, True),
        ("Yamada^Tarou=山田^花子", YAMADA, False),
        ("=Yamada^Tarou", YAMADA, False),  # by position: not the alphabetic group
        ("=山田^太郎", "Yamada^Tarou", False),  # no ideographic group stored
        ("Yamada^Tarou=", "Yamada^Tarou", True),
        ("山田^太郎", YAMADA, True),  # without '=': the whole value or any group, as before
    ],
)
def test_person_name_component_groups(key: str, stored: str, expected: bool) -> None:
    """A key with '=' names its component groups by position; the '=' stayed in the compared
    text, so '=山田^太郎' and 'Yamada^Tarou=山田^太郎' found nothing."""
    assert _matches("PN", key, [stored], 0x00100010) is expected


def test_person_name_groups_key_without_a_group_is_universal() -> None:
    assert element_constraint(DataElement(0x00100010, "PN", "==")) is None
    assert element_constraint(DataElement(0x00100010, "PN", "*=*")) is None


def test_person_name_key_of_more_than_three_groups_is_refused() -> None:
    with pytest.raises(QueryError, match="more than 3 component groups") as refused:
        element_constraint(DataElement(0x00100010, "PN", "A=B=C=D"))
    assert refused.value.status == 0xC000


@pytest.mark.parametrize(
    ("key", "stored", "expected"),
    [
        ("SMITH*^^^^", "Smith^John", True),
        ("Smith^J*^^^", "Smith^John^^^", True),
        ("Sm?th^John^^^ ", "Smith^John", True),
        ("=山田*^^", "Yamada^Tarou=山田^太郎", True),
        ("Smith^J?^^^", "Smith^Jo^B", False),  # padding, not a component that must be empty
        ("Jones*^^^", "Smith^John", False),
    ],
)
def test_person_name_wildcard_key_ignores_trailing_carets(
    key: str, stored: str, expected: bool
) -> None:
    """Conformance 2.5.3: trailing '^' and spaces of a PN key are ignored, wildcard or not
    (a key padded to five components found nothing)."""
    assert _matches("PN", key, [stored], tag=0x00100010) is expected
