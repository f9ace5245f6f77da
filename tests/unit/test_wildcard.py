"""Wildcard matching: the same answers as a regular expression, without its backtracking.

The adversarial keys below took a backtracking regular expression seconds to hours per value;
they must finish at once (the module's pytest timeout is the guard, not a time threshold).
"""

from __future__ import annotations

import itertools
import random
import re

import pytest
from pydicom.dataelem import DataElement

from mimic_server.errors import QueryError, Status
from mimic_server.query.matching import element_constraint
from mimic_server.query.wildcard import MAX_KEY_LENGTH, MAX_STARS, WildcardPattern

pytestmark = pytest.mark.timeout(60)

PATIENT_NAME = 0x00100010
INSTITUTION_NAME = 0x00080080  # LO


def _reference(key: str, value: str, *, ignore_case: bool = False) -> bool:
    """The rule as a (backtracking) regular expression: fine for short values."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in key)
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.fullmatch(body, value, flags) is not None


def test_same_answers_as_the_regular_expression_on_every_small_case() -> None:
    keys = ["".join(p) for n in range(6) for p in itertools.product("ab*?", repeat=n)]
    values = ["".join(p) for n in range(6) for p in itertools.product("ab", repeat=n)]
    for key in keys:
        pattern = WildcardPattern.compile(key)
        for value in values:
            assert pattern.fullmatch(value) is _reference(key, value), (key, value)


def test_same_answers_on_random_longer_cases() -> None:
    rng = random.Random(10)
    for _ in range(3000):
        key = "".join(rng.choice("ab*?.\\") for _ in range(rng.randint(0, 12)))
        value = "".join(rng.choice("abAB.\\\n") for _ in range(rng.randint(0, 20)))
        for ignore_case in (False, True):
            expected = _reference(key, value, ignore_case=ignore_case)
            got = WildcardPattern.compile(key, ignore_case=ignore_case).fullmatch(value)
            assert got is expected, (key, value, ignore_case)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("*A" * 15 + "*B", "A" * 4000 + "B^X"),  # the attack: fails only after the last star
        ("*A" * 15 + "*", "A" * 14),  # one A short
        ("*" + "?" * 200 + "*B", "A" * 10000),
        ("?" * 255, "A" * 100000),
        ("*AB*AB*AB*AC", "AB" * 50000),
        ("*" + "A?" * 100 + "C*", "AB" * 50000),
    ],
)
def test_adversarial_keys_complete(key: str, value: str) -> None:
    constraint = element_constraint(DataElement(PATIENT_NAME, "PN", key))
    assert constraint is not None
    assert constraint.matches_values([value]) is False


def test_adversarial_key_still_matches_what_it_should() -> None:
    constraint = element_constraint(DataElement(PATIENT_NAME, "PN", "*a" * 15 + "*b"))
    assert constraint is not None
    assert constraint.matches_values(["A" * 4000 + "B"])
    assert constraint.matches_values(["x=" + "a" * 30 + "b"])  # any component group


def test_runs_of_stars_are_one_star() -> None:
    constraint = element_constraint(DataElement(INSTITUTION_NAME, "LO", "***a" * 10 + "**"))
    assert constraint is not None
    assert constraint.values == ("*a" * 10 + "*",)
    assert constraint.matches_values(["a" * 10]) and not constraint.matches_values(["a" * 9])


@pytest.mark.parametrize(
    "key",
    [
        "*a" * (MAX_STARS + 1),  # too many '*'
        "a" * MAX_KEY_LENGTH + "*",  # too long
        "?" * (MAX_KEY_LENGTH + 1),
    ],
)
def test_keys_past_the_bounds_are_refused(key: str) -> None:
    with pytest.raises(QueryError) as refused:
        element_constraint(DataElement(PATIENT_NAME, "PN", key))
    assert refused.value.status == Status.UNABLE_TO_PROCESS


def test_keys_at_the_bounds_are_accepted() -> None:
    for key in ("*a" * MAX_STARS, "?" * MAX_KEY_LENGTH, "*" * 1000 + "a"):
        assert element_constraint(DataElement(PATIENT_NAME, "PN", key)) is not None
