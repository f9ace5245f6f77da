"""The JSON log line keeps its own fields whatever a caller passes in ``extra``."""

from __future__ import annotations

import json
import logging

from mimic_server.logs import OWN_FIELDS, JsonFormatter


def _line(**extra: object) -> dict[str, object]:
    record = logging.getLogger("mimic_server.test").makeRecord(
        "mimic_server.test", logging.INFO, __file__, 1, "C-FIND", None, None, extra=extra
    )
    return dict(json.loads(JsonFormatter().format(record)))


def test_an_extra_key_never_overwrites_the_lines_own_fields() -> None:
    line = _line(level="STUDY", time="later", logger="x", exception="none", matches=3)
    assert line["level"] == "INFO" and line["logger"] == "mimic_server.test"
    assert line["message"] == "C-FIND" and line["time"] != "later"
    assert "exception" not in line  # no exception was logged
    assert line["extra_level"] == "STUDY" and line["extra_time"] == "later"
    assert line["extra_exception"] == "none" and line["matches"] == 3


def test_own_fields_are_the_ones_the_formatter_writes() -> None:
    assert set(_line()) == OWN_FIELDS - {"exception"}
