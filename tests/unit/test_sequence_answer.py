"""A sequence key is answered with the matching items, each with only the attributes the
request's item names (PS3.4 C.2.2.2.6), through the finder as C-FIND and QIDO-RS see it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Engine

from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.engine import create_index_engine
from mimic_server.index.repository import SqlIndex
from mimic_server.query.finder import Finder
from mimic_server.query.identifier import parse
from mimic_server.query.keys import Model
from tests.data import ct_small
from tests.database import emptied

UID_ROOT = "1.2.826.0.1.3680043.8.498.79"


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "99X", meaning
    return item


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """One study whose Procedure Code Sequence holds C1 'Chest CT' and C2 'Abdomen CT', the
    second item with a nested Equivalent Code Sequence."""
    engine = create_index_engine(database_url)
    ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    ds.PatientID, ds.PatientName = "SEQ1", "Seq^One"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        f"{UID_ROOT}.1", f"{UID_ROOT}.2", f"{UID_ROOT}.3")
    second = _code("C2", "Abdomen CT")
    second.EquivalentCodeSequence = [_code("E1", "One"), _code("E2", "Two")]
    ds.ProcedureCodeSequence = [_code("C1", "Chest CT"), second]
    index = SqlIndex(engine)
    index.upsert_instance(InstanceAttributes.from_header(ds),
                          transfer_syntax_uid="1.2.840.10008.1.2.1", object_key="k/1",
                          sha256="0" * 64, size=1, received_from="test")
    yield engine
    emptied(engine, index)


def _answer(engine: Engine, *items: Dataset) -> Any:
    ds = Dataset()
    ds.QueryRetrieveLevel, ds.StudyInstanceUID = "STUDY", ""
    ds.ProcedureCodeSequence = list(items)
    query = parse(ds, Model.STUDY_ROOT, relational=False)
    answers = list(Finder(engine, retrieve_ae_title="MIMIC", max_results=10).find(query))
    return [{e.keyword: e.value for e in item} for item in answers[0].ProcedureCodeSequence]


def test_only_the_matching_items_with_only_the_requested_keys(engine: Engine) -> None:
    """Both items came back, each with every attribute (Coding Scheme Designator, the nested
    sequence), for a key asking for C2's Code Value and Code Meaning."""
    item = Dataset()
    item.CodeValue, item.CodeMeaning = "C2", ""
    assert _answer(engine, item) == [{"CodeValue": "C2", "CodeMeaning": "Abdomen CT"}]


def test_a_requested_key_the_item_lacks_is_answered_empty(engine: Engine) -> None:
    item = Dataset()
    item.CodeValue, item.CodingSchemeVersion = "C1", ""
    assert _answer(engine, item) == [{"CodeValue": "C1", "CodingSchemeVersion": ""}]


def test_an_item_of_zero_length_keys_answers_every_item_cut(engine: Engine) -> None:
    """Zero-length item keys are universal: every item matches, each is answered with the
    requested keys only (PS3.4 C.2.2.2.6)."""
    item = Dataset()
    item.CodeMeaning = ""
    assert _answer(engine, item) == [{"CodeMeaning": "Chest CT"}, {"CodeMeaning": "Abdomen CT"}]


def test_an_empty_item_or_no_item_answers_the_whole_sequence(engine: Engine) -> None:
    for items in ((), (Dataset(),)):
        answered = _answer(engine, *items)
        assert [i["CodeValue"] for i in answered] == ["C1", "C2"]
        assert all("CodingSchemeDesignator" in i for i in answered)
        assert "EquivalentCodeSequence" in answered[1]


def test_a_nested_sequence_key_is_answered_the_same_way(engine: Engine) -> None:
    nested = Dataset()
    nested.CodeValue = "E2"
    item = Dataset()
    item.CodeValue = ""
    item.EquivalentCodeSequence = [nested]
    answered = _answer(engine, item)
    assert len(answered) == 1 and answered[0]["CodeValue"] == "C2"
    assert [{e.keyword: e.value for e in i} for i in answered[0]["EquivalentCodeSequence"]] == [
        {"CodeValue": "E2"}]


def test_qido_rs_answers_the_same_cut(engine: Engine) -> None:
    """QIDO-RS answers come from the same finder (its plain answers included)."""
    ds = Dataset()
    ds.QueryRetrieveLevel, ds.StudyInstanceUID = "STUDY", ""
    item = Dataset()
    item.CodeValue = "C1"
    ds.ProcedureCodeSequence = [item]
    query = parse(ds, Model.STUDY_ROOT, relational=True, refuse_below=True)
    answers = list(Finder(engine, retrieve_ae_title="MIMIC", max_results=10).find(
        query, plain=True))
    items = answers[0].ProcedureCodeSequence
    assert [{e.keyword: e.value for e in i} for i in items] == [{"CodeValue": "C1"}]
