"""Proposed presentation contexts remembered (``proposal-memo``): a request decodes to what
pynetdicom decodes it to, the first time and every time after; what negotiation changes in
one association's contexts stays in that association; an item changed after its decode is
converted from its own values; the memory is bounded; the fence installs and removes it."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom.uid import UID
from pynetdicom import StoragePresentationContexts
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_items import PresentationContextItemRQ
from pynetdicom.presentation import PresentationContext

from mimic_server import patches
from mimic_server.net import proposals
from tests.patch_sites import change_signature
from tests.pdu_state import state as _state
from tests.support import association_request

SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"]
#: The contexts of a proposal like storescu's.
PROPOSED = len(StoragePresentationContexts)
#: Where the patch is installed.
INSTALLED = ((A_ASSOCIATE_RQ, "_wrap_generate_items"), (PresentationContextItemRQ, "to_primitive"))


@pytest.fixture(autouse=True)
def _fence_as_it_was() -> Iterator[None]:
    """An empty memory, and the fence (and ``MIMIC_PATCHES_OFF``) as it was after the test."""
    off = os.environ.get(patches.PATCHES_OFF)
    proposals.forget()
    yield
    proposals.forget()
    if off is None:
        os.environ.pop(patches.PATCHES_OFF, None)
    else:
        os.environ[patches.PATCHES_OFF] = off
    patches.apply()


def _use(memory: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if memory:
        monkeypatch.delenv(patches.PATCHES_OFF, raising=False)
        assert patches.PROPOSAL_MEMO in patches.apply().applied
    else:
        monkeypatch.setenv(patches.PATCHES_OFF, patches.PROPOSAL_MEMO)
        assert patches.PROPOSAL_MEMO in patches.apply().skipped


def _contexts(first_id: int = 1, syntaxes: list[str] = SYNTAXES) -> list[PresentationContext]:
    """A proposal like storescu's: every storage context pynetdicom lists, three syntaxes
    each."""
    contexts = []
    for number, template in enumerate(StoragePresentationContexts):
        context = PresentationContext()
        context.context_id = first_id + 2 * number
        context.abstract_syntax = template.abstract_syntax
        context.transfer_syntax = syntaxes
        contexts.append(context)
    return contexts


def _decoded(request: bytes) -> tuple[A_ASSOCIATE_RQ, Any]:
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(request)
    return pdu, pdu.to_primitive()


def _seen(pdu: A_ASSOCIATE_RQ, primitive: Any) -> tuple[Any, ...]:
    return (_state(pdu.variable_items), pdu.calling_ae_title, pdu.called_ae_title,
            str(primitive.application_context_name),
            _state(primitive.presentation_context_definition_list),
            [type(i).__name__ for i in primitive.user_information])


def test_a_request_decodes_as_without_the_memory_the_first_time_and_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requests = [association_request(_contexts()), association_request(_contexts(first_id=3)),
                association_request(_contexts(syntaxes=SYNTAXES[:1]), calling="OTHER")]
    _use(False, monkeypatch)
    reference = [_seen(*_decoded(r)) for r in requests]
    assert proposals.remembered() == 0
    _use(True, monkeypatch)
    learning = [_seen(*_decoded(r)) for r in requests]
    assert proposals.remembered() == 3 * PROPOSED  # another ID or syntax list: another item
    remembered = [_seen(*_decoded(r)) for r in requests]
    assert reference == learning == remembered
    contexts = _decoded(requests[0])[1].presentation_context_definition_list
    assert {type(s) for c in contexts for s in c.transfer_syntax} == {UID}
    assert all(type(c.abstract_syntax) is UID for c in contexts)


def _counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[Any]:
    calls: list[Any] = []
    original: Callable[..., Any] = getattr(owner, name)

    def counted(self: Any, *args: Any) -> Any:
        calls.append(self)
        return original(self, *args)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_an_item_met_again_is_neither_decoded_nor_built_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _use(True, monkeypatch)
    request = association_request(_contexts())
    decodes = _counting(monkeypatch, PresentationContextItemRQ, "decode")
    builds = _counting(monkeypatch, PresentationContext, "add_transfer_syntax")
    _decoded(request)
    assert (len(decodes), len(builds)) == (PROPOSED, 3 * PROPOSED)  # the first: all of it
    for _ in range(3):
        _decoded(request)
    assert (len(decodes), len(builds)) == (PROPOSED, 3 * PROPOSED)


def test_each_association_gets_contexts_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negotiation changes the proposed contexts of its association (the archive's syntax
    preference sets a new list, admission marks the ones refused): never another's."""
    _use(True, monkeypatch)
    request = association_request(_contexts())
    _, reference = _decoded(request)
    expected = _state(reference.presentation_context_definition_list)
    pdu, first = _decoded(request)
    changed = first.presentation_context_definition_list
    changed[0].transfer_syntax = [SYNTAXES[1], SYNTAXES[0]]
    changed[1].add_transfer_syntax("1.2.840.10008.1.2.4.50")
    changed[2]._transfer_syntax.append("1.2.840.10008.1.2.4.70")
    changed[3]._mimic_refused_by_policy = True  # as access.py marks one
    pdu.variable_items[1].abstract_transfer_syntax_sub_items.pop()
    _, second = _decoded(request)
    assert _state(second.presentation_context_definition_list) == expected
    for mine, theirs in zip(second.presentation_context_definition_list, changed, strict=True):
        assert mine is not theirs and mine._transfer_syntax is not theirs._transfer_syntax


def test_an_item_changed_after_its_decode_is_built_from_what_it_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _use(True, monkeypatch)
    request = association_request(_contexts())
    _decoded(request)
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(request)
    items = [i for i in pdu.variable_items if isinstance(i, PresentationContextItemRQ)]
    items[0].presentation_context_id = 99
    items[1].abstract_transfer_syntax_sub_items.pop()  # its last transfer syntax
    items[2].abstract_transfer_syntax_sub_items.reverse()
    contexts = pdu.to_primitive().presentation_context_definition_list
    assert contexts[0].context_id == 99
    assert contexts[1].transfer_syntax == SYNTAXES[:2]
    assert contexts[2].transfer_syntax == SYNTAXES[::-1]
    assert contexts[3].transfer_syntax == SYNTAXES


def test_a_non_conformant_uid_decodes_to_the_same_value_every_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """pynetdicom warns about it at the item's first decode in the process; the value given
    after it is the one decoded then."""
    odd = PresentationContext()
    odd.context_id = 1
    odd.abstract_syntax = "1.2.840.10008.5.1.4.1.1.2"
    odd.transfer_syntax = ["1.2.840.10008.5.1.4.1.1.2"]  # a SOP class as a transfer syntax
    request = association_request([odd])
    _use(False, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="pynetdicom"):
        reference = _seen(*_decoded(request))
    assert caplog.records  # what pynetdicom says of it
    _use(True, monkeypatch)
    assert _seen(*_decoded(request)) == _seen(*_decoded(request)) == reference


def test_a_malformed_item_raises_as_before_and_is_not_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request = bytearray(association_request(_contexts()[:2]))
    start = 74 + 4 + int.from_bytes(request[76:78], "big")  # after the application context
    assert request[start] == 0x20  # the first Presentation Context item
    request[start + 10:start + 12] = b"\xff\xff"  # its first sub-item: longer than the item
    outcomes = []
    for memory in (False, True, True):
        _use(memory, monkeypatch)
        try:
            _decoded(bytes(request))
            outcomes.append(None)
        except Exception as exc:  # what pynetdicom raises for it
            outcomes.append(type(exc))
    assert outcomes[0] is not None and len(set(outcomes)) == 1
    assert proposals.remembered() <= 1  # the second item only


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    _use(True, monkeypatch)
    monkeypatch.setattr(proposals, "LIMIT", 50)
    for first_id in (1, 3, 5):
        _decoded(association_request(_contexts(first_id=first_id)))
        assert proposals.remembered() <= 50
        assert len(proposals._by_first_item) == proposals.remembered()
    monkeypatch.setattr(proposals, "LIMIT", 4096)
    monkeypatch.setattr(proposals, "BYTES", 2000)  # about 18 of storescu's items
    for first_id in (1, 3, 5):
        _decoded(association_request(_contexts(first_id=first_id)))
        assert sum(map(len, proposals._decoded)) == proposals._held_bytes <= 2000
        assert 0 < proposals.remembered() == len(proposals._by_first_item)


def test_a_long_item_is_decoded_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proposal of many transfer syntaxes (here 40 of 57 characters) is not remembered:
    a peer cannot fill the memory with a few requests of huge items."""
    _use(True, monkeypatch)
    context = PresentationContext()
    context.context_id = 1
    context.abstract_syntax = "1.2.840.10008.5.1.4.1.1.2"
    context.transfer_syntax = [f"1.2.826.0.1.3680043.8.498.{n + 1}{7 * 10**28}" for n in range(40)]
    request = association_request([context])
    assert len(request) > proposals.LARGEST
    _, first = _decoded(request)
    _, again = _decoded(request)
    assert proposals.remembered() == 0
    assert _state(first.presentation_context_definition_list) == _state(
        again.presentation_context_definition_list)


def test_the_fence_installs_it_and_its_fallback_removes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _use(True, monkeypatch)
    for owner, name in INSTALLED:
        assert getattr(getattr(owner, name), patches.PATCH_NAME) == patches.PROPOSAL_MEMO
    site = next(p for p in patches.PATCHES if p.name == patches.PROPOSAL_MEMO).sites[0]
    change_signature(monkeypatch, site)  # a release whose item loop differs
    assert patches.PROPOSAL_MEMO in patches.apply().skipped
    assert "_wrap_generate_items" not in vars(A_ASSOCIATE_RQ)  # the base class's again
    assert getattr(PresentationContextItemRQ.to_primitive, patches.PATCH_NAME, None) is None
    monkeypatch.undo()
    assert patches.PROPOSAL_MEMO in patches.apply().applied
