"""The HTTP status of a STOW-RS answer, from what its parts became."""

from __future__ import annotations

import pytest

from mimic_server.web.dicomweb.stow_response import Failed, Stored, StowOutcome

_STORED = Stored("1.2.840.10008.5.1.4.1.1.2", "1.2.3.1", "http://archive/studies/1.2")
_TOO_LARGE = Failed("1.2.840.10008.5.1.4.1.1.2", "1.2.3.2", 0xA700, too_large=True)
_STORE_DOWN = Failed("1.2.840.10008.5.1.4.1.1.2", "1.2.3.3", 0xA700)
_NOT_UNDERSTOOD = Failed("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", 0xC000)


@pytest.mark.parametrize(("stored", "failed", "status"), [
    ([_STORED], [], 200),
    ([_STORED], [_TOO_LARGE], 202),
    ([], [_TOO_LARGE], 413),  # was 503: a sender retried what can never fit
    ([], [_TOO_LARGE, _TOO_LARGE], 413),
    ([], [_STORE_DOWN], 503),  # may pass: try again
    ([], [_STORE_DOWN, _STORE_DOWN], 503),
    ([], [_TOO_LARGE, _STORE_DOWN], 409),  # sending it all again cannot store it all
    ([], [_NOT_UNDERSTOOD], 409),
    ([], [_TOO_LARGE, _NOT_UNDERSTOOD], 409),
])
def test_http_status(stored: list[Stored], failed: list[Failed], status: int) -> None:
    assert StowOutcome(stored, failed).http_status() == status


def test_the_failure_reason_of_a_part_too_large_is_c_store_s() -> None:
    answer = StowOutcome([], [_TOO_LARGE]).dicom_json(None)
    [item] = answer["00081198"]["Value"]
    assert item["00081197"] == {"vr": "US", "Value": [0xA700]}
