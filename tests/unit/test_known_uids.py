"""The negotiation UIDs remembered once per process (``negotiation-uids``): the same UIDs
as pynetdicom's own path, built once, and every refusal or warning of that path kept."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pynetdicom.pdu_items
import pynetdicom.presentation
import pynetdicom.utils
import pytest
from pydicom.uid import UID
from pynetdicom import StoragePresentationContexts
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from mimic_server import patches
from mimic_server.net import known_uids
from tests.patch_sites import change_signature
from tests.support import association_request

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"]


@pytest.fixture(autouse=True)
def _empty_memory() -> Iterator[None]:
    known_uids.forget()
    yield
    known_uids.forget()


def _counting(original: Callable[..., Any]) -> tuple[Callable[..., Any], list[Any]]:
    calls: list[Any] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0] if args else None)
        return original(*args, **kwargs)

    return counted, calls


def test_a_conformant_uid_is_built_and_checked_once() -> None:
    counted, calls = _counting(pynetdicom.utils.set_uid)
    set_uid = known_uids.known_uid_setter(counted)
    first = set_uid(CT.encode(), "Abstract Syntax Name")
    assert type(first) is UID and first == CT
    assert set_uid(CT.encode(), "Abstract Syntax Name") is first  # from memory
    assert set_uid(CT, "abstract_syntax", True, False, True) is first  # its text too
    assert set_uid(UID(CT), "SOP Class UID", validate=False) is first
    assert calls == [CT.encode()]


@pytest.mark.parametrize("value", [b"1.2.840.10008.1.2.01", "1.2.840.10008.1.2.01"])
def test_a_non_conformant_uid_is_warned_about_every_time(
    value: str | bytes, caplog: pytest.LogCaptureFixture
) -> None:
    counted, calls = _counting(pynetdicom.utils.set_uid)
    set_uid = known_uids.known_uid_setter(counted)
    with caplog.at_level(logging.WARNING, logger="pynetdicom"):
        for _ in range(2):
            assert set_uid(value, "Transfer Syntax Name") == "1.2.840.10008.1.2.01"
    assert len(calls) == 2
    assert len([r for r in caplog.records if "Non-conformant" in r.getMessage()]) == 2


@pytest.mark.parametrize(
    ("value", "flags"),
    [
        ("1.2." + "3" * 70, {}),  # longer than 64 characters
        ("", {"allow_empty": False}),
        (12, {}),
    ],
)
def test_an_invalid_value_is_refused_every_time(value: Any, flags: dict[str, bool]) -> None:
    counted, calls = _counting(pynetdicom.utils.set_uid)
    set_uid = known_uids.known_uid_setter(counted)
    for _ in range(2):
        with pytest.raises((ValueError, TypeError)):
            set_uid(value, "Abstract Syntax Name", **flags)
    assert len(calls) == 2


def test_none_and_empty_pass_as_pynetdicom_passes_them() -> None:
    set_uid = known_uids.known_uid_setter(pynetdicom.utils.set_uid)
    assert set_uid(None, "Transfer Syntax Name") is None
    assert set_uid(b"", "Transfer Syntax Name") == "" and not known_uids._uids


def test_a_uid_carrying_a_private_encoding_is_not_answered_from_memory() -> None:
    set_uid = known_uids.known_uid_setter(pynetdicom.utils.set_uid)
    private = "1.2.3.4.5"
    set_uid(private, "Transfer Syntax Name")
    carrying = UID(private)
    carrying.set_private_encoding(False, True)
    result = set_uid(carrying, "Transfer Syntax Name")
    assert result.is_little_endian and not result.is_implicit_VR  # carried over


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(known_uids, "LIMIT", 3)
    set_uid = known_uids.known_uid_setter(pynetdicom.utils.set_uid)
    for n in range(1, 20):
        assert set_uid(f"1.2.3.{n}".encode(), "Abstract Syntax Name") == f"1.2.3.{n}"
    assert len(known_uids._uids) == 3


def test_a_known_transfer_syntax_is_appended_once_without_a_new_check() -> None:
    counted, calls = _counting(PresentationContext.add_transfer_syntax)
    add = known_uids.known_syntax_adder(counted)
    first, second = PresentationContext(), PresentationContext()
    add(first, UID(EXPLICIT_LE))
    add(first, EXPLICIT_LE)  # already there
    add(second, EXPLICIT_LE)
    assert first.transfer_syntax == second.transfer_syntax == [EXPLICIT_LE]
    assert type(second.transfer_syntax[0]) is UID
    assert len(calls) == 1


def test_what_pynetdicom_warns_about_or_refuses_is_not_remembered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    add = known_uids.known_syntax_adder(PresentationContext.add_transfer_syntax)
    with caplog.at_level(logging.WARNING, logger="pynetdicom"):
        for _ in range(2):
            add(PresentationContext(), CT)  # a SOP class, not a transfer syntax
    assert len([r for r in caplog.records if "not a transfer syntax" in r.getMessage()]) == 2
    for _ in range(2):
        with pytest.raises(ValueError, match="invalid UID"):
            add(PresentationContext(), "1.2." + "3" * 70)
    assert not known_uids._syntaxes


def _association_request() -> bytes:
    """An A-ASSOCIATE-RQ like storescu's: 128 storage contexts, three syntaxes each."""
    contexts = []
    for number, template in enumerate(StoragePresentationContexts[:128]):
        context = PresentationContext()
        context.context_id = 2 * number + 1
        context.abstract_syntax = template.abstract_syntax
        context.transfer_syntax = SYNTAXES
        contexts.append(context)
    return association_request(contexts, implementation_class_uid="1.2.276.0.7230010.3.0.3.6.7")


def _decoded_and_negotiated(request: bytes) -> tuple[Any, ...]:
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(request)
    primitive = pdu.to_primitive()
    proposed = primitive.presentation_context_definition_list
    supported = []
    for template in StoragePresentationContexts[::2]:
        context = PresentationContext()
        context.abstract_syntax = template.abstract_syntax
        context.transfer_syntax = SYNTAXES[:2]
        supported.append(context)
    accepted, _ = negotiate_as_acceptor(proposed, supported)
    return (
        primitive.application_context_name,
        [(c.context_id, c.abstract_syntax, c.transfer_syntax) for c in proposed],
        [(c.context_id, c.abstract_syntax, c.transfer_syntax, c.result) for c in accepted],
        [type(s) for c in proposed for s in c.transfer_syntax],
    )


def test_an_association_request_decodes_and_negotiates_as_without_the_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request = _association_request()
    # Without the memory of proposals, which would give the same request's contexts
    # without building them again (tests/unit/test_proposals.py).
    monkeypatch.setenv(patches.PATCHES_OFF, f"{patches.NEGOTIATION_UIDS},{patches.PROPOSAL_MEMO}")
    assert patches.NEGOTIATION_UIDS in patches.apply().skipped
    assert pynetdicom.presentation.set_uid is pynetdicom.utils.set_uid
    reference = _decoded_and_negotiated(request)
    monkeypatch.setenv(patches.PATCHES_OFF, patches.PROPOSAL_MEMO)
    fence = patches.apply()
    assert patches.NEGOTIATION_UIDS in fence.applied and patches.PROPOSAL_MEMO in fence.skipped
    learning = _decoded_and_negotiated(request)
    assert known_uids._uids and known_uids._syntaxes
    remembered = _decoded_and_negotiated(request)
    assert reference == learning == remembered
    assert set(reference[3]) == {UID}  # every transfer syntax a pydicom UID


def test_the_fence_installs_it_and_its_fallback_removes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original_setter = pynetdicom.utils.set_uid  # the function itself is never replaced
    original_adder = patches.resolve(
        "pynetdicom.presentation:PresentationContext.add_transfer_syntax")
    assert patches.NEGOTIATION_UIDS in patches.apply().applied
    for module in ("pdu_items", "pdu_primitives", "presentation"):
        installed = getattr(pynetdicom, module).set_uid
        assert getattr(installed, patches.PATCH_NAME) == patches.NEGOTIATION_UIDS
    site = next(p for p in patches.PATCHES if p.name == patches.NEGOTIATION_UIDS).sites[0]
    change_signature(monkeypatch, site)  # a release whose set_uid differs
    assert patches.NEGOTIATION_UIDS in patches.apply().skipped
    assert pynetdicom.pdu_items.set_uid is original_setter
    assert PresentationContext.add_transfer_syntax is original_adder
    monkeypatch.undo()
    assert patches.NEGOTIATION_UIDS in patches.apply().applied
