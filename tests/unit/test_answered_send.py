"""dimse/raw_send.answered_send and the audit's count of C-GET / C-MOVE sub-operations: an
object is listed as transferred only when the destination's C-STORE response took it, as
pynetdicom counts it (Success, or a Warning the Storage Service Class defines)."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset

from mimic_server.dimse.audited import _taken
from mimic_server.dimse.raw_send import StoredDataset, answered_send
from mimic_server.dimse.stream_send import StreamedDataset


def _status(value: int | None) -> Dataset:
    status = Dataset()
    if value is not None:
        status.Status = value
    return status


@pytest.mark.parametrize("cls", [StoredDataset, StreamedDataset])
def test_the_response_is_noted_on_the_object_sent(cls: type[Dataset]) -> None:
    sent: list[tuple[Any, ...]] = []

    def send_c_store(self: Any, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
        sent.append((dataset, args, kwargs))
        return _status(kwargs.pop("answer"))

    wrapped = answered_send(send_c_store)
    ours = cls()
    assert wrapped(object(), ours, msg_id=3, answer=0xA700).Status == 0xA700
    assert ours._mimic_answer == 0xA700
    assert wrapped(object(), dataset=ours, answer=None) == Dataset()  # no response
    assert ours._mimic_answer is None
    assert [s[2].get("msg_id") for s in sent] == [3, None]  # passed through as given


def test_a_send_that_raises_is_noted_as_unanswered_and_raises() -> None:
    def send_c_store(self: Any, dataset: Any, **kwargs: Any) -> Dataset:
        raise ValueError("no presentation context")

    ours = StoredDataset()
    ours._mimic_answer = 0x0000  # as if sent before
    with pytest.raises(ValueError, match="no presentation context"):
        answered_send(send_c_store)(object(), ours)
    assert ours._mimic_answer is None


def test_a_callers_own_dataset_is_left_alone() -> None:
    theirs = Dataset()
    answered_send(lambda self, ds, **kw: _status(0))(object(), theirs)
    assert "_mimic_answer" not in theirs.__dict__


@pytest.mark.parametrize(("answer", "taken"), [
    (0x0000, True), (0xB000, True), (0xB006, True), (0xB007, True),
    (0xA700, False), (0xA900, False), (0xC000, False), (0xFE00, False), (None, False),
    # codes the Storage Service Class does not define: pynetdicom counts them failed
    (0xB001, False), (0x0001, False), (0x1234, False),
])
def test_taken_as_pynetdicom_counts(answer: int | None, taken: bool) -> None:
    assert _taken(answer) is taken
