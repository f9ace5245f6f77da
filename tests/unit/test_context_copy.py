"""The fence's copy of the server's presentation contexts (``context-copy``) is the copy
``deepcopy`` makes: equal contexts, none shared, no list shared."""

from __future__ import annotations

import copy

import pytest
from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification

from mimic_server.dimse import syntaxes
from mimic_server.net import contexts as contexts_module
from mimic_server.net.contexts import copy_contexts, copying


def _server_contexts() -> list[PresentationContext]:
    ae = AE()
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, syntaxes.ARCHIVE_TRANSFER_SYNTAXES)
    contexts = ae.supported_contexts
    contexts[1].scp_role = True  # roles and ids set, as negotiation may set them
    contexts[1].context_id = 3
    return contexts


def test_the_copy_equals_deepcopys() -> None:
    contexts = _server_contexts()
    ours = copy_contexts(contexts)
    reference = copy.deepcopy(contexts)
    assert ours is not None and len(ours) == len(reference) == len(contexts)
    for mine, theirs, source in zip(ours, reference, contexts, strict=True):
        assert type(mine) is PresentationContext
        assert mine.__dict__ == theirs.__dict__
        assert mine is not source and mine._transfer_syntax is not source._transfer_syntax
    ours[0].add_transfer_syntax("1.2.840.10008.1.2.4.50")  # changing the copy...
    ours[0].result = 0
    assert "1.2.840.10008.1.2.4.50" not in contexts[0].transfer_syntax  # ...not the source
    assert contexts[0].result is None


def _same_as_deepcopy(contexts: list[PresentationContext]) -> None:
    ours = copy_contexts(contexts)
    reference = copy.deepcopy(contexts)
    assert ours is not None
    assert [c.__dict__ for c in ours] == [c.__dict__ for c in reference]
    for mine, source in zip(ours, contexts, strict=True):
        assert mine is not source and mine._transfer_syntax is not source._transfer_syntax


def test_each_context_is_checked_once_while_it_is_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    contexts_module.forget()
    checks: list[int] = []
    plain = contexts_module.plain
    monkeypatch.setattr(contexts_module, "plain", lambda state: checks.append(1) or plain(state))
    contexts = _server_contexts()
    _same_as_deepcopy(contexts)
    assert len(checks) == len(contexts)
    _same_as_deepcopy(contexts)
    _same_as_deepcopy(contexts)
    assert len(checks) == len(contexts)  # the next associations: no check again


def test_a_context_changed_by_pynetdicoms_setters_is_checked_and_copied_again() -> None:
    contexts_module.forget()
    contexts = _server_contexts()
    copy_contexts(contexts)
    contexts[0].scp_role = True  # a value replaced
    contexts[2].add_transfer_syntax("1.2.840.10008.1.2.4.50")  # a syntax appended in place
    contexts[3].transfer_syntax = ["1.2.840.10008.1.2"]  # the list replaced
    _same_as_deepcopy(contexts)
    copied = copy_contexts(contexts)
    assert copied is not None
    assert copied[0].scp_role is True
    assert "1.2.840.10008.1.2.4.50" in copied[2].transfer_syntax
    assert copied[3].transfer_syntax == ["1.2.840.10008.1.2"]


def test_a_checked_context_given_a_mutable_value_goes_to_deepcopy() -> None:
    contexts_module.forget()
    contexts = _server_contexts()
    assert copy_contexts(contexts) is not None
    contexts[5]._scu_role = ["not", "plain"]  # type: ignore[assignment]
    assert copy_contexts(contexts) is None
    contexts[5]._scu_role = None
    assert copy_contexts(contexts) is not None
    contexts[6]._transfer_syntax = ("1.2.840.10008.1.2",)  # type: ignore[assignment]
    assert copy_contexts(contexts) is None


def test_anything_else_goes_to_deepcopy() -> None:
    class Extended(PresentationContext):
        pass

    odd = Extended()
    odd.abstract_syntax = Verification
    with_extra = PresentationContext()
    with_extra.abstract_syntax = Verification
    with_extra.note = ["mutable"]  # type: ignore[attr-defined]
    for contexts in ([odd], [with_extra]):
        assert copy_contexts(contexts) is None
        copied = copying(copy.deepcopy)(contexts)
        assert copied[0] is not contexts[0] and copied[0].__dict__ == contexts[0].__dict__
    assert copying(copy.deepcopy)({"a": [1]}) == {"a": [1]}


def test_the_fence_installs_it_and_its_fallback_removes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pynetdicom.transport

    from mimic_server import patches
    from tests.patch_sites import change_signature

    assert "context-copy" in patches.apply().applied
    assert getattr(pynetdicom.transport.deepcopy, patches.PATCH_NAME) == "context-copy"
    site = next(p for p in patches.PATCHES if p.name == "context-copy").sites[0]
    change_signature(monkeypatch, site)  # a release whose contexts differ
    assert "context-copy" in patches.apply().skipped
    assert pynetdicom.transport.deepcopy is copy.deepcopy
    monkeypatch.undo()
    assert "context-copy" in patches.apply().applied
