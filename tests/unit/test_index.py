"""The index: upserts from concurrent senders, re-sends, decoded character sets."""

from __future__ import annotations

import contextlib
import copy
import re
import sqlite3
import threading
from datetime import datetime

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import event, func, select, text

from mimic_server.errors import HierarchyConflict, Status
from mimic_server.index.attributes import InstanceAttributes
from mimic_server.index.maintenance import object_refs, remove_empty_row, remove_instance
from mimic_server.index.models import Instance, Patient, Series, Study
from mimic_server.index.repository import SqlIndex, _Filed, _filed_as
from tests.data import ct_small, local_files
from tests.support import wait_for


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
    index._series_ids[_filed_as(_attrs(ds))] = _Filed(987654, _attrs(ds).patient_key)  # no row
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.22.1"
    assert index.upsert_instance(_attrs(ds), object_key="b", **common) is None
    assert _counts(index) == (1, 1, 1, 2)


# -- an instance that contradicts what the index has filed --------------------------------

_COMMON = {"transfer_syntax_uid": "1.2.840.10008.1.2.1", "sha256": "0" * 64, "size": 1,
           "received_from": "t"}


def _instance(n: int, *, study: int = 1, series: int = 1, patient: str = "P1",
              issuer: str | None = None) -> Dataset:
    ds = pydicom.dcmread(ct_small(), stop_before_pixels=True)
    ds.PatientID = patient
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.31.{study}"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.32.{series}"
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.33.{n}"
    return ds


def _refused(index: SqlIndex, ds: Dataset, key: str) -> HierarchyConflict:
    before = _counts(index)
    with pytest.raises(HierarchyConflict) as refused:
        index.upsert_instance(_attrs(ds), object_key=key, **_COMMON)
    assert refused.value.status == Status.HIERARCHY_CONFLICT == 0xC003
    assert _counts(index) == before, "a refused instance left rows behind"
    assert index.get_instance(ds.SOPInstanceUID) is None
    return refused.value


@pytest.mark.parametrize("cached", [True, False], ids=["first-cached", "cache-emptied"])
def test_a_series_filed_under_another_study_is_refused(index: SqlIndex, cached: bool) -> None:
    """The series row keeps its study: an instance of it in another study would be found
    under neither study (and its header would contradict its series'), so it is refused,
    whether the series is in the cache of known series (under its own study's key) or
    looked up (another process filed it)."""
    index.upsert_instance(_attrs(_instance(1)), object_key="a", **_COMMON)
    if not cached:
        with index._cache_lock:
            index._series_ids.clear()
    refused = _refused(index, _instance(2, study=2), "b")
    assert "another study" in str(refused)
    # The same series in its own study, and another series in the other study, are kept.
    index.upsert_instance(_attrs(_instance(3)), object_key="c", **_COMMON)
    index.upsert_instance(_attrs(_instance(4, study=2, series=2)), object_key="d", **_COMMON)
    assert _counts(index) == (1, 2, 2, 3)


def test_a_resent_instance_into_a_series_of_another_study_is_refused(index: SqlIndex) -> None:
    """A known SOP Instance UID sent again may move to another series (its row is switched),
    but not into a series that the index files under another study than the one it names."""
    index.upsert_instance(_attrs(_instance(1)), object_key="a", **_COMMON)
    index.upsert_instance(_attrs(_instance(2, study=2, series=2)), object_key="b", **_COMMON)
    moved = _instance(2, study=2, series=1)  # instance 2 again, in study 2, series 1's UID
    with pytest.raises(HierarchyConflict):
        index.upsert_instance(_attrs(moved), object_key="c", **_COMMON)
    stored = index.get_instance(moved.SOPInstanceUID)
    assert stored is not None and stored.object_key == "b"


@pytest.mark.parametrize("cached", [True, False], ids=["first-cached", "cache-emptied"])
def test_a_study_filed_under_another_patient_id_is_refused(index: SqlIndex, cached: bool) -> None:
    """A study is one patient's: an instance naming it under another Patient ID (a
    correction at the modality, a merge not yet made) is refused rather than filed under
    the first patient, where a search for its own patient would never find it. No patient
    row is made for the refused one."""
    index.upsert_instance(_attrs(_instance(1)), object_key="a", **_COMMON)
    if not cached:
        with index._cache_lock:
            index._series_ids.clear()
    assert "another Patient ID" in str(_refused(index, _instance(2, patient="P2"), "b"))
    assert "another Patient ID" in str(
        _refused(index, _instance(3, series=2, patient="P2"), "c"))  # a new series too


def test_no_patient_id_or_issuer_on_one_side_is_the_study_patient(index: SqlIndex) -> None:
    """An instance that names no Patient ID, or no Issuer of Patient ID, where the study's
    patient has one (a workstation adding a derived object to a modality's study) is kept
    under the study's patient; two different issuers are two patients, and a study filed
    without a Patient ID is its own patient: refused."""
    index.upsert_instance(_attrs(_instance(1)), object_key="a", **_COMMON)
    index.upsert_instance(_attrs(_instance(2, patient="")), object_key="b", **_COMMON)
    index.upsert_instance(_attrs(_instance(3, issuer="HOSP")), object_key="c", **_COMMON)
    index.upsert_instance(_attrs(_instance(4, patient="")), object_key="d", **_COMMON)
    assert _counts(index) == (1, 1, 1, 4)
    index.upsert_instance(_attrs(_instance(5, study=2, series=2, issuer="HOSP")),
                          object_key="e", **_COMMON)
    index.upsert_instance(_attrs(_instance(6, study=2, series=2)), object_key="f", **_COMMON)
    assert _counts(index) == (2, 2, 2, 6)
    _refused(index, _instance(7, study=2, series=3, issuer="OTHER"), "g")
    index.upsert_instance(_attrs(_instance(8, study=3, series=4, patient="")), object_key="h",
                          **_COMMON)
    _refused(index, _instance(9, study=3, series=4), "i")


def test_a_cached_series_whose_rows_were_removed_and_made_again_is_checked(
    index: SqlIndex,
) -> None:
    """``mimic reconcile --fix`` (another process) removes a series, its study and its
    patient once their last instance goes; SQLite gives their ids to the next new rows, of
    another study and patient. An instance of the series as cached before is checked by the
    UIDs of its study and patient, not by row ids: refused, not filed under the new rows."""
    index.upsert_instance(_attrs(_instance(1)), object_key="a", **_COMMON)
    assert remove_instance(index.engine, _instance(1).SOPInstanceUID, "a")
    index.upsert_instance(_attrs(_instance(2, study=2, patient="P2")), object_key="b",
                          **_COMMON)
    _refused(index, _instance(3), "c")


def test_object_refs_hold_no_snapshot_between_batches(index: SqlIndex) -> None:
    """``mimic reconcile`` hashes an object between two rows of its pass, for hours on a
    large archive: meanwhile the index holds no snapshot for it (SQLite's WAL can be
    checkpointed; on PostgreSQL no transaction stays open holding back VACUUM), and rows
    committed meanwhile after the last seen are still listed. (One cursor for the whole pass
    held one snapshot as long.)"""
    for n in range(5):
        index.upsert_instance(_attrs(_instance(n)), object_key=f"k{n}", **_COMMON)
    refs = object_refs(index.engine, batch=2)
    seen = [next(refs)]  # reconcile is hashing this row's object now
    index.upsert_instance(_attrs(_instance(5)), object_key="k5", **_COMMON)  # a C-STORE
    engine = index.engine
    if engine.dialect.name == "sqlite":
        with contextlib.closing(sqlite3.connect(str(engine.url.database))) as other:
            busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
    else:
        with engine.connect() as conn:
            held = conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND backend_type = 'client backend'"
                " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL")).scalar_one()
        assert held == 0
    seen.extend(refs)
    assert [r.object_key for r in seen] == [f"k{n}" for n in range(6)]


def _race(writers: tuple[SqlIndex, SqlIndex], instances: tuple[Dataset, Dataset]) -> list[str]:
    """Each writer upserts its instance, both released at once; what became of each."""
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def write(writer: SqlIndex, ds: Dataset) -> None:
        start.wait()
        try:
            writer.upsert_instance(_attrs(ds), object_key=ds.SOPInstanceUID, **_COMMON)
            outcomes.append("kept")
        except HierarchyConflict:
            outcomes.append("refused")

    threads = [threading.Thread(target=write, args=pair)
               for pair in zip(writers, instances, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(outcomes)


def test_two_writers_filing_one_series_under_two_studies(index: SqlIndex) -> None:
    """Two transactions of their own (group commit off, or two processes) make the same
    new series under two studies, and the same new study under two patients, at once: one
    is kept, the other refused, every time."""
    writers = (SqlIndex(index.engine, group_commit=False),
               SqlIndex(index.engine, group_commit=False))
    for n in range(10):
        one_series = (_instance(1000 + 2 * n, study=100 + 2 * n, series=100 + n),
                      _instance(1001 + 2 * n, study=101 + 2 * n, series=100 + n))
        assert _race(writers, one_series) == ["kept", "refused"], n
        one_study = (_instance(2000 + 2 * n, study=300 + n, series=300 + 2 * n, patient="P1"),
                     _instance(2001 + 2 * n, study=300 + n, series=301 + 2 * n, patient="P2"))
        assert _race(writers, one_study) == ["kept", "refused"], n
    for writer in writers:
        writer.close()


# -- an instance sent again under another series or study ---------------------------------


def _uids(index: SqlIndex) -> tuple[set[str], set[str], set[str]]:
    """The patients' IDs, the studies' and the series' UIDs (last parts) the index files."""
    with index.engine.connect() as conn:
        return (set(conn.execute(select(Patient.patient_id)).scalars()),
                {u.rsplit(".", 1)[1] for u in conn.execute(
                    select(Study.study_instance_uid)).scalars()},
                {u.rsplit(".", 1)[1] for u in conn.execute(
                    select(Series.series_instance_uid)).scalars()})


@pytest.mark.parametrize("cached", [True, False], ids=["new-series-cached", "new-series-new"])
def test_a_resend_under_another_study_removes_the_rows_it_left_empty(
    index: SqlIndex, cached: bool
) -> None:
    """The modality corrected a mis-filed study and sent the instance again: the series and
    the study it was the last instance of go with it (C-FIND answered them with no
    instance), and so does its patient when it was that patient's last; rows that keep
    another child stay."""
    if cached:  # the new series is known (and cached) before the re-send
        index.upsert_instance(_attrs(_instance(9, study=2, series=2)), object_key="i",
                              **_COMMON)
    index.upsert_instance(_attrs(_instance(1)), object_key="a", **_COMMON)
    assert index.upsert_instance(_attrs(_instance(1, study=2, series=2)), object_key="b",
                                 **_COMMON) == "a"
    assert _uids(index) == ({"P1"}, {"2"}, {"2"})
    assert _counts(index) == (1, 1, 1, 2 if cached else 1)
    # A series left empty in a study that keeps another series: the series only.
    index.upsert_instance(_attrs(_instance(2, study=2, series=3)), object_key="c", **_COMMON)
    index.upsert_instance(_attrs(_instance(2, study=2, series=4)), object_key="d", **_COMMON)
    assert _uids(index) == ({"P1"}, {"2"}, {"2", "4"})
    # A series that keeps another instance stays; a study under the wrong patient goes with
    # that patient.
    index.upsert_instance(_attrs(_instance(3, study=5, series=5, patient="WRONG")),
                          object_key="e", **_COMMON)
    index.upsert_instance(_attrs(_instance(4, study=5, series=5, patient="WRONG")),
                          object_key="f", **_COMMON)
    index.upsert_instance(_attrs(_instance(3, study=6, series=6, patient="P2")),
                          object_key="g", **_COMMON)
    assert _uids(index) == ({"P1", "WRONG", "P2"}, {"2", "5", "6"}, {"2", "4", "5", "6"})
    index.upsert_instance(_attrs(_instance(4, study=6, series=6, patient="P2")),
                          object_key="h", **_COMMON)
    assert _uids(index) == ({"P1", "P2"}, {"2", "6"}, {"2", "4", "6"})
    # The same series again (only the object differs) removes nothing.
    index.upsert_instance(_attrs(_instance(4, study=6, series=6, patient="P2")),
                          object_key="h2", **_COMMON)
    assert _uids(index) == ({"P1", "P2"}, {"2", "6"}, {"2", "4", "6"})
    # The series removed is no longer cached, and an instance of it later makes it again.
    with index._cache_lock:
        assert _filed_as(_attrs(_instance(1))) not in index._series_ids
    index.upsert_instance(_attrs(_instance(7)), object_key="j", **_COMMON)
    assert _uids(index) == ({"P1", "P2"}, {"1", "2", "6"}, {"1", "2", "4", "6"})
    assert _counts(index) == (2, 3, 4, 5 + cached)


def _waiting_on_a_lock(index: SqlIndex) -> bool:
    """Whether some other session of this database waits for a row lock (PostgreSQL)."""
    with index.engine.connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'")).scalar_one())


def _held_open(writer: SqlIndex, ds: Dataset, key: str) -> tuple[threading.Thread,
                                                                 threading.Event,
                                                                 list[BaseException]]:
    """``writer`` upserts ``ds`` in a thread, its transaction held open before its commit
    until the event returned is set."""
    reached, release, errors = threading.Event(), threading.Event(), []

    def hold(conn: object) -> None:
        reached.set()
        release.wait(60)

    def run() -> None:
        try:
            writer.upsert_instance(_attrs(ds), object_key=key, in_transaction=hold, **_COMMON)
        except BaseException as exc:  # pragma: no cover - reported by the test
            errors.append(exc)
            reached.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert reached.wait(60) and not errors, errors
    return thread, release, errors


def _in_thread(writer: SqlIndex, ds: Dataset, key: str) -> tuple[threading.Thread,
                                                                list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            writer.upsert_instance(_attrs(ds), object_key=key, **_COMMON)
        except BaseException as exc:  # pragma: no cover - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


@pytest.mark.parametrize("first", ["store-into-old-series", "resend-elsewhere"])
def test_a_resend_and_a_store_into_the_series_it_leaves_meet(
    postgresql_index: SqlIndex, first: str
) -> None:
    """PostgreSQL at READ COMMITTED: an instance moves out of series 1 (its last) while
    another C-STORE files a new instance in series 1, each transaction uncommitted while the
    other runs. Whichever comes first, series 1, its study and its patient end filed with
    the new instance in them, and the moved instance in its new series: never a series
    removed under an instance, nor an instance refused."""
    index = postgresql_index  # PostgreSQL only: SQLite has one writer at a time
    writers = (SqlIndex(index.engine, group_commit=False),
               SqlIndex(index.engine, group_commit=False))
    try:
        for writer in writers:  # series 1 cached by both, as by two associations' processes
            writer.upsert_instance(_attrs(_instance(1)), object_key="a", **_COMMON)
        store, resend = _instance(2), _instance(1, study=2, series=2)
        if first == "store-into-old-series":
            held, release, held_errors = _held_open(writers[0], store, "b")
            other, other_errors = _in_thread(writers[1], resend, "c")
        else:
            held, release, held_errors = _held_open(writers[1], resend, "c")
            other, other_errors = _in_thread(writers[0], store, "b")
        try:
            assert wait_for(lambda: _waiting_on_a_lock(index), timeout=30)
        finally:
            release.set()
            held.join(60)
            other.join(60)
        assert not held_errors and not other_errors, held_errors + other_errors
    finally:
        for writer in writers:
            writer.close()
    assert _uids(index) == ({"P1"}, {"1", "2"}, {"1", "2"})
    with index.engine.connect() as conn:
        filed = dict(conn.execute(
            select(Instance.object_key, Series.series_instance_uid)
            .join(Series, Instance.series_fk == Series.id)).all())
    assert {k: v.rsplit(".", 1)[1] for k, v in filed.items()} == {"b": "1", "c": "2"}


def test_only_a_resend_under_another_series_looks_for_empty_rows(index: SqlIndex) -> None:
    """The removal of emptied rows costs the first store of an instance (a new series or a
    known one) and the re-send into its own series no statement: only the move."""
    sent: list[str] = []

    def statement(conn: object, cursor: object, sql: str, *args: object) -> None:
        sent.append(sql.split(None, 1)[0].upper())

    event.listen(index.engine, "before_cursor_execute", statement)
    try:
        kinds = {}
        for name, ds, key in (("new series", _instance(1), "a"),
                              ("known series", _instance(2), "b"),
                              ("same series", _instance(2), "c"),
                              ("moved", _instance(2, study=2, series=2), "d")):
            sent.clear()
            index.upsert_instance(_attrs(ds), object_key=key, **_COMMON)
            kinds[name] = "DELETE" in sent
    finally:
        event.remove(index.engine, "before_cursor_execute", statement)
    assert kinds == {"new series": False, "known series": False, "same series": False,
                     "moved": True}


@pytest.mark.parametrize("removal", ["instance", "empty-series"])
def test_a_removal_meeting_a_store_into_its_series_keeps_the_series(
    postgresql_index: SqlIndex, removal: str
) -> None:
    """PostgreSQL at READ COMMITTED: ``mimic reconcile --fix`` removes the last instance of
    series 1 (its object is missing), or series 1 left empty, while a C-STORE files a new
    instance in series 1, uncommitted: the removal's conditional delete waits for it, then
    its foreign key check sees the new instance. The series stays, with the new instance;
    the removal is not the end of the run ('index unavailable', exit 2)."""
    index = postgresql_index  # PostgreSQL only: SQLite has one writer at a time
    index.upsert_instance(_attrs(_instance(1)), object_key="a", **_COMMON)
    with index.engine.begin() as conn:
        series_id = conn.execute(select(Series.id)).scalar_one()
        if removal == "empty-series":  # left by an earlier version's re-send
            conn.execute(Instance.__table__.delete())
    writer = SqlIndex(index.engine, group_commit=False)
    outcome: list[object] = []

    def remove() -> None:
        try:
            if removal == "instance":
                outcome.append(remove_instance(index.engine, _instance(1).SOPInstanceUID, "a"))
            else:
                outcome.append(remove_empty_row(index.engine, ("series", series_id)))
        except BaseException as exc:  # pragma: no cover - reported by the test
            outcome.append(exc)

    try:
        held, release, held_errors = _held_open(writer, _instance(2), "b")
        remover = threading.Thread(target=remove)
        remover.start()
        try:
            assert wait_for(lambda: _waiting_on_a_lock(index), timeout=30)
        finally:
            release.set()
            held.join(60)
            remover.join(60)
        assert not held_errors, held_errors
    finally:
        writer.close()
    assert outcome == [removal == "instance"]
    assert _uids(index) == ({"P1"}, {"1"}, {"1"})
    with index.engine.connect() as conn:
        assert set(conn.execute(select(Instance.object_key)).scalars()) == {"b"}
