"""What a C-FIND / C-MOVE / C-GET Identifier may cost and select: a bound on all its keys
together (each value is compiled before the time budget starts, deaf to C-CANCEL), the
budget checked between the keys of one row, no wildcard in a retrieve's list of unique
keys, and a Person Name rule the index's pre-filter selects a superset of."""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset
from sqlalchemy import Engine

from mimic_server.errors import QueryError, Status
from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.engine import create_index_engine
from mimic_server.index.repository import SqlIndex
from mimic_server.query import matching
from mimic_server.query.finder import Finder, RowRecord
from mimic_server.query.identifier import parse
from mimic_server.query.keys import CONTROL, Model
from mimic_server.query.matching import MAX_IDENTIFIER_KEYS, MAX_IDENTIFIER_VALUES
from mimic_server.query.pages import TimeLimitReached
from tests.data import ct_small
from tests.database import emptied

UID_ROOT = "1.2.826.0.1.3680043.8.498.77"
NAMES = ["Yamada^Tarou", "Groß^Hans", "GROẞ^FRITZ", "Y\u0131ld\u0131z^Ayla", "Müller^Jörg",
         "Doe^John"]
#: Keys no index column holds: matched against the stored header.
LO_KEYS = ["AdmissionID", "InstitutionName", "StationName", "ReasonForStudy"]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_index_engine(database_url)
    base = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    index = SqlIndex(engine)
    for n, name in enumerate(NAMES):
        ds = copy.deepcopy(base)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientID, ds.PatientName = f"P{n}", name
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
            f"{UID_ROOT}.1.{n}", f"{UID_ROOT}.2.{n}", f"{UID_ROOT}.3.{n}")
        index.upsert_instance(InstanceAttributes.from_header(ds),
                              transfer_syntax_uid="1.2.840.10008.1.2.1", object_key=f"k/{n}",
                              sha256="0" * 64, size=1, received_from="test")
    yield engine
    emptied(engine, index)


def _study_query(**keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_the_keys_of_an_identifier_are_bounded_together() -> None:
    """Four keys of 256 values each are within every bound of one key; five are past the
    Identifier's: refused (0xC000) before any is compiled."""
    def identifier(keys: int) -> Dataset:
        ds = _study_query()
        for keyword in [*LO_KEYS, "StudyDescription"][:keys]:
            setattr(ds, keyword, [f"*{keyword[:3]}{n}*" for n in range(256)])
        return ds

    assert len(parse(identifier(4), Model.STUDY_ROOT, relational=True).constraints) == 4
    with pytest.raises(QueryError) as refused:
        parse(identifier(5), Model.STUDY_ROOT, relational=True)
    assert refused.value.status == Status.UNABLE_TO_PROCESS
    assert str(MAX_IDENTIFIER_VALUES) in str(refused.value)


def test_a_sequences_keys_count_too() -> None:
    item = Dataset()
    item.CodeValue = [f"V{n}" for n in range(256)]
    item.CodeMeaning = [f"M{n}" for n in range(257)]
    ds = _study_query(InstitutionName=[f"I{n}" for n in range(256)],
                      StationName=[f"S{n}" for n in range(256)])
    ds.ProcedureCodeSequence = [item]
    with pytest.raises(QueryError):
        parse(ds, Model.STUDY_ROOT, relational=True)


def test_the_keys_of_an_identifier_are_bounded_return_keys_included() -> None:
    """Empty return keys counted as nothing: an Identifier (a QIDO-RS includefield) naming
    5,000 attributes was answered for each of them in every match (1.3 GiB per request).
    256 keys in all, a sequence's item's keys included; past them 0xC000, naming the bound."""
    keywords = [keyword for tag, (vr, *_rest, keyword) in sorted(DicomDictionary.items())
                if tag >> 16 >= 0x0008 and vr in ("LO", "SH", "CS", "DA")
                and keyword not in CONTROL][:300]

    def identifier(keys: int) -> Dataset:
        ds = _study_query()  # Query/Retrieve Level (a control key) and Study Instance UID
        for keyword in keywords[:keys - 1]:
            setattr(ds, keyword, "")
        return ds

    assert len(parse(identifier(MAX_IDENTIFIER_KEYS), Model.STUDY_ROOT,
                     relational=False).requested) == MAX_IDENTIFIER_KEYS
    with pytest.raises(QueryError) as refused:
        parse(identifier(MAX_IDENTIFIER_KEYS + 1), Model.STUDY_ROOT, relational=False)
    assert refused.value.status == Status.UNABLE_TO_PROCESS
    assert str(MAX_IDENTIFIER_KEYS) in str(refused.value)
    nested = identifier(MAX_IDENTIFIER_KEYS - 1)
    item = Dataset()
    item.CodeValue = item.CodingSchemeDesignator = ""
    nested.ProcedureCodeSequence = [item]
    with pytest.raises(QueryError):
        parse(nested, Model.STUDY_ROOT, relational=False)


@pytest.mark.parametrize("values", [["*", "*"], ["P0", "P*"], ["P0", "P?"]])
def test_a_retrieves_list_of_unique_keys_holds_no_wildcard(values: list[str]) -> None:
    """``PatientID='*\\*'`` selected every patient of the archive for a C-MOVE / C-GET, where
    ``'P*'`` alone was refused (PS3.4 C.4.2.2.1: single values or a list of them)."""
    ds = Dataset()
    ds.QueryRetrieveLevel, ds.PatientID = "PATIENT", values
    with pytest.raises(QueryError) as refused:
        parse(ds, Model.PATIENT_ROOT, relational=False, retrieve=True)
    assert refused.value.status == Status.DATASET_DOES_NOT_MATCH_SOP_CLASS  # 0xA900
    ds.PatientID = ["P0", "P1"]
    assert parse(ds, Model.PATIENT_ROOT, relational=False, retrieve=True).constraints


def test_the_budget_is_checked_between_the_keys_of_one_row(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One row's keys can outlast the budget (a MiB of long values, hundreds of
    alternatives each): the budget is checked before each key, not only before each row."""
    query = parse(_study_query(PatientID="P1", InstitutionName="*", StationName="*S*"),
                  Model.STUDY_ROOT, relational=True)
    slow = query.constraints[0]
    matches = type(slow).matches

    def slowly(self: Any, record: Any, *meter: Any) -> bool:
        if self is slow:
            time.sleep(0.3)  # the first key spends the whole budget
        return matches(self, record, *meter)

    monkeypatch.setattr(type(slow), "matches", slowly)
    finder = Finder(engine, retrieve_ae_title="MIMIC", max_results=100, time_limit=0.2)
    with pytest.raises(TimeLimitReached):
        list(finder.find(query))


@pytest.mark.parametrize(("key", "stored", "found"), [
    ("GROSS^HANS", "Groß^Hans", False),   # 'ß'.upper() is 'SS': the index does not fold it
    ("YILDIZ*", "Y\u0131ld\u0131z^Ayla", False),  # nor a dotless i to 'I'
    ("groß*", "Groß^Hans", True),
    ("groß^f*", "GROẞ^FRITZ", True),     # the capital sharp s is the upper case of ß
    ("GROß^FRITZ", "GROẞ^FRITZ", True),
    ("y\u0131ld\u0131z*", "Y\u0131ld\u0131z^Ayla", True),
    ("MÜLLER*", "Müller^Jörg", True),    # a case that stays non-ASCII is still folded
    ("müller^jörg", "Müller^Jörg", True),
    ("DOE^*", "Doe^John", True),
    ("yamada^tarou=*", "Yamada^Tarou", True),  # a key naming its groups by position, and
    ("Yama*=*", "Yamada^Tarou", True),  # the pre-filter looks for each group it names
    ("=Yamada^Tarou", "Yamada^Tarou", False),  # the ideographic group, which it lacks
])
def test_a_person_name_matches_as_the_index_preselects(
    engine: Engine, key: str, stored: str, found: bool
) -> None:
    """The matcher's case folding never makes a character ASCII, so the pre-filter of an
    ASCII key (ILIKE) selects a superset of its matches on both databases: what it finds
    does not depend on whether the key is ASCII."""
    query = parse(_study_query(PatientName=key), Model.STUDY_ROOT, relational=True)
    accepted = query.constraints[0].matches(RowRecord({"PatientName": stored}, None, {}))
    answers = Finder(engine, retrieve_ae_title="MIMIC", max_results=100).find(query)
    names = [str(getattr(a, "PatientName", "")) for a in
             (answer.to_dataset() if hasattr(answer, "to_dataset") else answer
              for answer in answers)]
    assert accepted is found
    assert (stored in names) is found, names


def test_the_fold_keeps_non_ascii_case_insensitive() -> None:
    assert matching._pn_text("müller^jörg^^") == "MÜLLER^JÖRG"
    assert matching._pn_text("Groß") == "GROẞ" == matching._pn_text("GROẞ")
    assert matching._pn_text("ﬁsh") == "ﬁSH"


#: A sequence long enough that one key against it is thousands of comparisons.
ITEMS = 3000


def _store_long_sequence(engine: Engine) -> str:
    """One more study whose header holds a ReferencedImageSequence of ITEMS small items, the
    last of them unlike the others."""
    ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    ds.PatientID, ds.PatientName = "SEQ", "Seq^Long"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        f"{UID_ROOT}.1.99", f"{UID_ROOT}.2.99", f"{UID_ROOT}.3.99")
    items = []
    for n in range(ITEMS):
        item = Dataset()
        item.OperatorsName = "AC" if n == ITEMS - 1 else "AB"
        items.append(item)
    ds.ReferencedImageSequence = items
    index = SqlIndex(engine)
    index.upsert_instance(InstanceAttributes.from_header(ds),
                          transfer_syntax_uid="1.2.840.10008.1.2.1", object_key="k/99",
                          sha256="0" * 64, size=1, received_from="test")
    return str(ds.StudyInstanceUID)


def _sequence_query(study: str) -> Any:
    """The study's sequence against a key of eight values, only the last of which matches,
    and only the last item: every item is compared with every value."""
    item = Dataset()
    item.OperatorsName = [f"Q{n}*Z" for n in range(7)] + ["AC"]
    ds = _study_query(StudyInstanceUID=study)
    ds.ReferencedImageSequence = [item]
    return parse(ds, Model.STUDY_ROOT, relational=True)


class _Ticks:
    """A clock that moves one second each time it is read: a budget is spent by work done,
    never by waiting."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_the_budget_is_looked_at_inside_one_sequence_key(engine: Engine) -> None:
    """One key against a long stored sequence is items x values comparisons, made with no
    look at the budget (126 s against a 30 s budget, then Success): the budget is now looked
    at every few comparisons, and the query ends with TimeLimitReached (0xA700)."""
    query = _sequence_query(_store_long_sequence(engine))
    ticks = _Ticks()  # the query reads it about ten times outside the match
    finder = Finder(engine, retrieve_ae_title="MIMIC", max_results=100, time_limit=40,
                    clock=ticks)
    with pytest.raises(TimeLimitReached):
        list(finder.find(query))
    assert ticks.now < 100  # soon after the budget, not after all 24,000 comparisons


def test_a_cancel_is_seen_inside_one_sequence_key(engine: Engine) -> None:
    """A C-CANCEL that arrives while one key is matched against a long sequence ends the
    query there (the handler answers 0xFE00): the matching row is not answered."""
    query = _sequence_query(_store_long_sequence(engine))
    looks = itertools.count()
    finder = Finder(engine, retrieve_ae_title="MIMIC", max_results=100)
    assert len(list(finder.find(query))) == 1
    assert list(finder.find(query, cancelled=lambda: next(looks) >= 1)) == []


def test_the_budget_is_looked_at_after_the_last_row(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last row's match spending the budget ended in Success (the budget was looked at
    before each row and each page only): it ends with TimeLimitReached too."""
    query = _study_query_parsed("P5")
    clock = _Ticks()
    slow = query.constraints[0]
    matches = type(slow).matches

    def spending(self: Any, record: Any, *args: Any) -> bool:
        if self is slow:
            clock.now += 1000  # this row's match spends the whole budget
        return matches(self, record, *args)

    monkeypatch.setattr(type(slow), "matches", spending)
    finder = Finder(engine, retrieve_ae_title="MIMIC", max_results=100, time_limit=500,
                    clock=clock)
    with pytest.raises(TimeLimitReached):
        list(finder.find(query))


def _study_query_parsed(patient_id: str) -> Any:
    return parse(_study_query(PatientID=patient_id), Model.STUDY_ROOT, relational=True)
