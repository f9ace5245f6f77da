"""The index: upserts from concurrent senders, re-sends, decoded character sets."""

from __future__ import annotations

import copy
import re
import threading
from datetime import datetime

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import func, select, text

from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.models import Instance, Patient, Series, Study
from mimic_server.index.repository import SqlIndex
from tests.data import ct_small, local_files


def _attrs(ds: Dataset) -> InstanceAttributes:
    return InstanceAttributes.from_header(ds)


def _counts(index: SqlIndex) -> tuple[int, ...]:
    with index.engine.connect() as conn:
        return tuple(
            conn.execute(select(func.count()).select_from(m)).scalar_one()
            for m in (Patient, Study, Series, Instance)
        )


def test_eight_concurrent_senders_into_one_study(index: SqlIndex) -> None:
    base = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    errors: list[BaseException] = []

    def sender(n: int) -> None:
        try:
            for i in range(25):
                ds = copy.deepcopy(base)  # Dataset.copy() shares the elements
                ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.7.{n % 2}"
                ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.9.{n}.{i}"
                index.upsert_instance(
                    _attrs(ds), transfer_syntax_uid="1.2.840.10008.1.2.1",
                    object_key=f"k/{n}/{i}", sha256="0" * 64, size=1, received_from="t",
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert _counts(index) == (1, 1, 2, 200)


def test_resend_replaces_and_returns_the_old_key(index: SqlIndex) -> None:
    ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    common = {"transfer_syntax_uid": "1.2.840.10008.1.2.1", "sha256": "0" * 64, "size": 1}
    assert index.upsert_instance(_attrs(ds), object_key="a", received_from="t", **common) is None
    assert index.upsert_instance(_attrs(ds), object_key="b", received_from="t", **common) == "a"
    stored = index.get_instance(ds.SOPInstanceUID)
    assert stored is not None and stored.object_key == "b"
    assert _counts(index) == (1, 1, 1, 1)


def test_objects_without_patient_id_are_not_merged(index: SqlIndex) -> None:
    for n in range(2):
        ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
        ds.PatientID = ""
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.11.{n}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.12.{n}"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.13.{n}"
        index.upsert_instance(
            _attrs(ds), transfer_syntax_uid="1.2.840.10008.1.2.1", object_key=f"k{n}",
            sha256="0" * 64, size=1, received_from="t",
        )
    assert _counts(index)[0] == 2


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("chrH31.dcm", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("chrGreek.dcm", "Διονυσιος"),
        ("chrFren.dcm", "Buc^Jérôme"),
        ("chrRuss.dcm", "Люкceмбypг"),  # noqa: RUF001 - the file mixes scripts
    ],
)
def test_character_sets_are_decoded_at_ingest(name: str, expected: str) -> None:
    path = next(p for p in local_files(name))
    attrs = _attrs(pydicom.dcmread(path, stop_before_pixels=True))
    assert attrs.patient_name == expected
    assert attrs.header["00100010"]["Value"][0]["Alphabetic"] == expected.split("=")[0]


def test_header_json_leaves_bulk_data_out() -> None:
    ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    ds.add_new(0x00091010, "OB", b"\x00" * 5000)
    header = _attrs(ds).header
    assert "00091010" not in header and "00100010" in header


def test_nan_infinity_and_long_integers_are_indexed(index: SqlIndex) -> None:
    """Valid objects that PostgreSQL once refused with 0xA700 on every retry: NaN / infinity
    in FD (jsonb has no NaN) and IS values beyond 32 bits (the Integer columns)."""
    ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    ds.add_new(0x00189089, "FD", [float("nan"), 0.0, 1.0])
    ds.add_new(0x00189328, "FD", float("inf"))
    ds.add_new(0x00189087, "FD", -float("inf"))
    ds.SeriesNumber = "99999999999"
    ds.InstanceNumber = "-9999999999"
    attrs = _attrs(ds)
    index.upsert_instance(
        attrs, transfer_syntax_uid="1.2.840.10008.1.2.1", object_key="k", sha256="0" * 64,
        size=1, received_from="t",
    )
    with index.engine.connect() as conn:
        series = conn.execute(select(Series.series_number)).scalar_one()
        instance = conn.execute(select(Instance.instance_number, Instance.header)).one()
    assert series is None and instance.instance_number is None
    assert instance.header["00200011"] == {"vr": "IS", "Value": [99999999999]}
    assert "00189089" not in instance.header and "00189328" not in instance.header


@pytest.mark.parametrize("name", ["CT_small.dcm", "chrH31.dcm", "chrFren.dcm", "chrRuss.dcm"])
def test_the_prepared_insert_writes_the_rows_of_the_sqlalchemy_insert(
    index: SqlIndex, name: str
) -> None:
    """The new-instance insert runs on the driver's cursor (psycopg, sqlite3) with the header
    as JSON text (``DriverStatement``): the row equals the one SQLAlchemy's own execute
    writes, dates and text in other character sets included."""
    assert index._driver_insert is not None
    ds = pydicom.dcmread(next(iter(local_files(name))), stop_before_pixels=True)
    ds.add_new(0x00189089, "FD", [0.5, 1e300])
    ds.add_new(0x00720078, "UV", [2**64 - 1])
    rows = []
    for path, driver in (("driver", index._driver_insert), ("sqlalchemy", None)):
        index._driver_insert = driver
        copy_ = copy.deepcopy(ds)
        copy_.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.21.{len(rows)}"
        index.upsert_instance(
            _attrs(copy_), transfer_syntax_uid="1.2.840.10008.1.2.1", object_key=path,
            sha256="1" * 64, size=7, received_from="t",
        )
        with index.engine.connect() as conn:
            row = conn.execute(
                select(Instance.__table__).where(Instance.object_key == path)
            ).one()._asdict()
            stored_at = conn.execute(  # as the database holds it (SQLite: text)
                text("SELECT CAST(received_at AS TEXT) FROM instances WHERE object_key = :k"),
                {"k": path},
            ).scalar_one()
        assert isinstance(row["received_at"], datetime)
        row["received_at_shape"] = re.sub(r"\d+", "9", stored_at)
        for varying in ("id", "object_key", "sop_instance_uid", "received_at"):
            row.pop(varying)
        row["header"].pop("00080018")
        rows.append(row)
    assert rows[0] == rows[1]
    assert rows[0]["header"]["00720078"]["Value"] == [2**64 - 1]


def test_an_integrity_error_of_the_prepared_insert_is_sqlalchemys(index: SqlIndex) -> None:
    """A driver error of the prepared insert reaches the retry logic as SQLAlchemy's error
    type: a stale series id fails the insert's check (NOT NULL), empties the cache, and the
    retry indexes the instance."""
    ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    common = {"transfer_syntax_uid": "1.2.840.10008.1.2.1", "sha256": "0" * 64, "size": 1,
              "received_from": "t"}
    index.upsert_instance(_attrs(ds), object_key="a", **common)
    index._series_ids[ds.SeriesInstanceUID] = 987654  # a series row that does not exist
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.22.1"
    assert index.upsert_instance(_attrs(ds), object_key="b", **common) is None
    assert _counts(index) == (1, 1, 1, 2)
