"""The console's study search and study contents, through the query engine C-FIND uses.

One matching engine: a search is turned into a Study Root identifier and answered by
:class:`~mimic_server.query.finder.Finder`, so the console matches exactly as C-FIND (and
QIDO-RS) do. The browser sends the search in a POST body, never in a URL: patient names and
IDs stay out of anything that is logged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from sqlalchemy import Engine, func, select

from mimic_server.codec.answer import Answer
from mimic_server.index.engine import read_index
from mimic_server.index.models import Instance, Series, Study
from mimic_server.query.finder import Finder, ResultLimitReached
from mimic_server.query.identifier import parse
from mimic_server.query.keys import Model

#: The search form's fields -> the attribute each matches.
SEARCH_KEYS = {
    "patient_name": "PatientName",
    "patient_id": "PatientID",
    "accession": "AccessionNumber",
    "modality": "ModalitiesInStudy",
}
_STUDY_ANSWER = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "StudyTime",
                 "AccessionNumber", "StudyDescription", "ModalitiesInStudy",
                 "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
_IMAGE_ANSWER = ("SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality",
                 "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "NumberOfFrames",
                 "Rows", "Columns", "WindowCenter", "WindowWidth")
MAX_STUDIES = 200
MAX_INSTANCES = 5000


#: The access policy's say on one query: raises to refuse it, else returns the requestor's
#: own result limit (None: none). Built per request by the composition root (``gate.py``).
Gate = Callable[[Dataset], int | None]


class SearchError(ValueError):
    """A search the console refuses (the message names the field, never its value)."""


def _text(value: Any, field: str, limit: int = 64) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise SearchError(f"{field} must be printable text of at most {limit} characters")
    return value.strip()


def _date(value: Any, field: str) -> str:
    text = _text(value, field, 10).replace("-", "")
    if text and (len(text) != 8 or not text.isdigit()):
        raise SearchError(f"{field} must be a date (YYYY-MM-DD)")
    return text


def study_identifier(form: Mapping[str, Any]) -> Dataset:
    """The C-FIND identifier of a console search. A name without wildcards matches as a
    prefix (``Doe`` finds ``Doe^John``), as operators type it; the other fields match
    exactly, as in C-FIND."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    for keyword in _STUDY_ANSWER:
        setattr(identifier, keyword, "")
    for field, keyword in SEARCH_KEYS.items():
        value = _text(form.get(field), field)
        if not value:
            continue
        if field == "patient_name" and not set(value) & set("*?"):
            value += "*"
        setattr(identifier, keyword, value)
    low, high = _date(form.get("date_from"), "date_from"), _date(form.get("date_to"), "date_to")
    if low or high:
        identifier.StudyDate = low if low == high else f"{low}-{high}"
    return identifier


def _plain(dataset: Dataset) -> Dataset:
    return dataset.to_dataset() if isinstance(dataset, Answer) else dataset


def _json_value(dataset: Dataset, keyword: str) -> Any:
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple | MultiValue):
        return [str(v) for v in value]
    if isinstance(value, int):
        return int(value)  # IS
    if isinstance(value, float):
        return float(value)  # DS
    return str(value)


class StudyBrowser:
    """Study search and study contents over one index."""

    def __init__(self, finder: Finder, engine: Engine) -> None:
        self.finder = finder
        self.engine = engine

    def search(self, form: Mapping[str, Any], gate: Gate | None = None) -> dict[str, Any]:
        try:
            limit = int(form.get("limit") or 50)
        except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: 1e999
            raise SearchError("limit must be a whole number") from exc
        limit = max(1, min(limit, MAX_STUDIES))
        identifier = study_identifier(form)
        own = gate(identifier) if gate is not None else None
        if own is not None:
            limit = min(limit, own)
        query = parse(identifier, Model.STUDY_ROOT, relational=True)
        studies, more = [], False
        try:
            for answer in self.finder.find(query, max_results=limit):
                plain = _plain(answer)
                studies.append({"study": str(plain.StudyInstanceUID),
                                 **{k: _json_value(plain, k) for k in _STUDY_ANSWER}})
        except ResultLimitReached:
            more = True
        firsts = self._first_instances(s["study"] for s in studies)
        for study in studies:
            study["thumbnail"] = firsts.get(study["study"])
        return {"studies": studies, "more": more}

    def contents(self, study_uid: Any, gate: Gate | None = None) -> dict[str, Any]:
        uid = _text(study_uid, "study")
        if not uid or len(uid) > 64 or not set(uid) <= set("0123456789."):
            raise SearchError("study must be a Study Instance UID")
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID = uid
        for keyword in _IMAGE_ANSWER:
            setattr(identifier, keyword, "")
        own = gate(identifier) if gate is not None else None
        query = parse(identifier, Model.STUDY_ROOT, relational=True)
        series: dict[str, dict[str, Any]] = {}
        more = False
        try:
            for answer in self.finder.find(query, max_results=min(MAX_INSTANCES,
                                                                   own or MAX_INSTANCES)):
                plain = _plain(answer)
                values = {k: _json_value(plain, k) for k in _IMAGE_ANSWER}
                entry = series.setdefault(str(values["SeriesInstanceUID"]), {
                    "series": values["SeriesInstanceUID"], "number": values["SeriesNumber"],
                    "description": values["SeriesDescription"], "modality": values["Modality"],
                    "instances": [],
                })
                entry["instances"].append({
                    "instance": values["SOPInstanceUID"], "number": _int(values["InstanceNumber"]),
                    "frames": _int(values["NumberOfFrames"]) or 1, "rows": values["Rows"],
                    "columns": values["Columns"], "window_center": _first(values["WindowCenter"]),
                    "window_width": _first(values["WindowWidth"]),
                })
        except ResultLimitReached:
            # Some images only: the page must say so, or the study is read as whole.
            more = True
        ordered = sorted(series.values(), key=lambda s: (_int(s["number"]) or 0, s["series"]))
        for entry in ordered:
            entry["instances"].sort(key=lambda i: (i["number"] or 0, i["instance"]))
        return {"study": uid, "series": ordered, "more": more}

    def _first_instances(self, study_uids: Iterable[str]) -> dict[str, dict[str, str]]:
        """One instance per study for its thumbnail (the lowest series and instance)."""
        uids = list(study_uids)
        if not uids:
            return {}
        first = (
            select(Study.study_instance_uid.label("study"), func.min(Instance.id).label("id"))
            .join(Series, Series.study_fk == Study.id)
            .join(Instance, Instance.series_fk == Series.id)
            .where(Study.study_instance_uid.in_(uids))
            .group_by(Study.study_instance_uid)
            .subquery()
        )
        statement = (
            select(first.c.study, Series.series_instance_uid, Instance.sop_instance_uid)
            .join(Instance, Instance.id == first.c.id)
            .join(Series, Series.id == Instance.series_fk)
        )
        return read_index(self.engine, lambda conn: {
            row[0]: {"series": row[1], "instance": row[2]} for row in conn.execute(statement)
        })


def _int(value: Any) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _first(value: Any) -> float | None:
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None

