"""One C-FIND answers alike on SQLite and PostgreSQL, whatever characters its keys hold."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from mimic_server.errors import QueryError, Status
from mimic_server.index.repository import SqlIndex
from mimic_server.query.finder import Finder
from mimic_server.query.identifier import parse
from mimic_server.query.keys import Model
from tests.unit.test_finder_pages import store_header

UID_ROOT = "1.2.826.0.1.3680043.8.498.78"


def _store(index: SqlIndex, n: int, **values: str) -> None:
    store_header(index, n, UID_ROOT, **values)


def _found(index: SqlIndex, **keys: str) -> list[str]:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    finder = Finder(index.engine, retrieve_ae_title="MIMIC", max_results=100)
    query = parse(ds, Model.STUDY_ROOT, relational=False)
    # An answer of plain values is an Answer whose Dataset waits to be made (to_dataset)
    # once the fence's answer encoder is on, as another test of the process may have left it.
    answers = (a.to_dataset() if hasattr(a, "_mimic_plain") else a for a in finder.find(query))
    return sorted(str(answer.PatientID) for answer in answers)


@pytest.mark.parametrize("keys", [
    {"PatientID": "A\x00B"},  # typed column, single value
    {"PatientID": "A\x00?"},  # typed column, wildcard
    {"StudyDescription": "Head\x00 scan"},  # typed column
    {"PatientName": "Doe\x00^Jane"},  # typed column, PN
    {"PatientID": "Z\x00Z\\A\x00B"},  # list of values
])
def test_a_nul_in_a_key_is_removed_as_ingest_removes_it(index: SqlIndex,
                                                          keys: dict[str, str]) -> None:
    """Ingest removes NUL from indexed text; a key holding one made PostgreSQL refuse the
    statement (0xA700 "index unavailable") where SQLite answered."""
    _store(index, 0, PatientID="A\x00B", PatientName="Doe^Jane", StudyDescription="Head scan")
    _store(index, 1, PatientID="ACC", PatientName="Roe^Jim", StudyDescription="Knee")
    assert _found(index, **keys) == ["AB"]


def test_a_uid_key_with_a_nul_inside_is_still_refused() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "1.2\x003"
    with pytest.raises(QueryError) as raised:
        parse(ds, Model.STUDY_ROOT, relational=False)
    assert raised.value.status == Status.UNABLE_TO_PROCESS


def test_a_person_name_wildcard_key_padded_with_carets_finds_the_name(index: SqlIndex) -> None:
    """Trailing '^' of a PN key are ignored, wildcard or not, through the index's pre-filter
    on either database."""
    _store(index, 0, PatientID="A1", PatientName="Smith^John")
    _store(index, 1, PatientID="A2", PatientName="Jones^Ann")
    assert _found(index, PatientName="SMITH*^^^^") == ["A1"]
