"""``Finder.instance`` (WADO-RS's lookup of one instance, a statement built once) finds
exactly what ``Finder.instances`` finds for the retrieve Identifier naming the same three
UIDs, on SQLite and PostgreSQL: the instance, or nothing when any UID is another entity's."""

from __future__ import annotations

import itertools

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Engine

from mimic_server.query.finder import Finder
from mimic_server.query.identifier import parse
from mimic_server.query.keys import Model
from tests.unit.test_finder_pages import PATIENTS, UID_ROOT, engine  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def _by_identifier(finder: Finder, study: str, series: str, sop: str) -> list:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    return finder.instances(parse(ds, Model.STUDY_ROOT, relational=False, retrieve=True))


def test_one_instance_lookup_equals_the_retrieve_identifiers(engine: Engine) -> None:  # noqa: F811
    finder = Finder(engine, retrieve_ae_title="MIMIC", max_results=1000)
    found = finder.instance(f"{UID_ROOT}.1.3", f"{UID_ROOT}.2.3", f"{UID_ROOT}.3.3")
    assert [r.sop_instance_uid for r in found] == [f"{UID_ROOT}.3.3"]
    assert found[0].object_key == "k/3" and found[0].sha256 == "0" * 64
    # Every combination of the UIDs of patients 1, 2 and one that does not exist.
    for s, se, i in itertools.product((1, 2, PATIENTS + 1), repeat=3):
        uids = f"{UID_ROOT}.1.{s}", f"{UID_ROOT}.2.{se}", f"{UID_ROOT}.3.{i}"
        assert finder.instance(*uids) == _by_identifier(finder, *uids), uids


def test_the_current_row_of_a_matched_instance(engine: Engine) -> None:  # noqa: F811
    finder = Finder(engine, retrieve_ae_title="MIMIC", max_results=1000)
    [matched] = finder.instance(f"{UID_ROOT}.1.3", f"{UID_ROOT}.2.3", f"{UID_ROOT}.3.3")
    assert finder.current(matched) == matched
    gone = matched.__class__(matched.sop_class_uid, f"{UID_ROOT}.3.{PATIENTS + 1}",
                             matched.transfer_syntax_uid, "k/gone", matched.sha256)
    assert finder.current(gone) is None
