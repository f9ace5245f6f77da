"""The fence's copy of the server's presentation contexts (``context-copy``) is the copy
``deepcopy`` makes: equal contexts, none shared, no list shared; and the listener's own
contexts, shared by every association, refuse every change, so that an association's list
of them needs no copy of any."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from mimic_server import patches
from mimic_server.dimse import syntaxes
from mimic_server.net import contexts as contexts_module
from mimic_server.net.contexts import (
    SharedContext,
    SharedContexts,
    copy_contexts,
    copying,
    shared_contexts,
)
from tests.support import HOST


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


class _Extended(PresentationContext):
    pass


def _unusual_contexts() -> list[PresentationContext]:
    """A context of a subclass, and one with a mutable value in an attribute of its own."""
    odd = _Extended()
    odd.abstract_syntax = Verification
    with_extra = PresentationContext()
    with_extra.abstract_syntax = Verification
    with_extra.note = ["mutable"]  # type: ignore[attr-defined]
    return [odd, with_extra]


def test_anything_else_goes_to_deepcopy() -> None:
    for contexts in ([context] for context in _unusual_contexts()):
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


def test_the_listeners_contexts_are_shared_and_refuse_every_change() -> None:
    contexts = _server_contexts()
    shared = shared_contexts(contexts)
    assert type(shared) is SharedContexts and len(shared) == len(contexts)
    for mine, source in zip(shared, contexts, strict=True):
        assert type(mine) is SharedContext
        assert mine.transfer_syntax == tuple(source.transfer_syntax)
        assert {**mine.__dict__, "_transfer_syntax": list(mine.transfer_syntax)} == (
            source.__dict__)
        assert (mine.context_id, mine.scp_role, mine.as_tuple) == (
            source.context_id, source.scp_role, source.as_tuple)
    context = shared[1]
    for change in (
        lambda: setattr(context, "scp_role", False),
        lambda: setattr(context, "context_id", 5),
        lambda: setattr(context, "abstract_syntax", Verification),
        lambda: setattr(context, "transfer_syntax", ["1.2.840.10008.1.2"]),
        lambda: setattr(context, "result", 0),
        lambda: setattr(context, "_as_scp", True),
        lambda: delattr(context, "result"),
        lambda: context.add_transfer_syntax("1.2.840.10008.1.2.4.50"),
        lambda: context.transfer_syntax.append("1.2.840.10008.1.2.4.50"),  # type: ignore[attr-defined]
        lambda: shared.append(context),  # type: ignore[attr-defined]
    ):
        with pytest.raises(AttributeError):
            change()
    with pytest.raises(TypeError):
        shared[0] = context  # type: ignore[index]
    assert context.__dict__ == {**contexts[1].__dict__,
                                "_transfer_syntax": tuple(contexts[1].transfer_syntax)}


def test_an_association_gets_a_list_of_the_shared_contexts_not_copies() -> None:
    shared = shared_contexts(_server_contexts())
    assert shared is not None
    given = copying(copy.deepcopy)(shared)
    assert type(given) is list and given == list(shared)
    assert all(mine is theirs for mine, theirs in zip(given, shared, strict=True))
    given.pop()  # the association's list is its own
    assert len(shared) == len(given) + 1


def test_contexts_that_are_not_plain_are_not_shared() -> None:
    with_list = PresentationContext()
    with_list.abstract_syntax = Verification
    with_list._scu_role = ["not", "plain"]  # type: ignore[assignment]
    for unusual in [*_unusual_contexts(), with_list]:
        contexts = [*_server_contexts(), unusual]
        assert shared_contexts(contexts) is None
        assert patches.apply().listener_contexts(contexts) is contexts  # copied as before


def test_the_fence_shares_them_only_where_both_entries_are_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    contexts = _server_contexts()
    assert {"context-copy", "shared-contexts"} <= patches.apply().applied
    assert type(patches.apply().listener_contexts(contexts)) is SharedContexts
    for off in ("context-copy", "shared-contexts"):
        monkeypatch.setenv(patches.PATCHES_OFF, off)
        assert patches.apply().listener_contexts(contexts) is contexts
        monkeypatch.undo()
    entry = next(p for p in patches.PATCHES if p.name == "shared-contexts")
    digest = patches.source_digest
    # (negotiate_unrestricted, the third reader, is also pinned by its source for
    # transfer-syntax-refusal, which is required: a change to it stops the start instead)
    for target in ("ServiceUser.supported_contexts.fset", "ServiceUser.supported_contexts.fget",
                   "ServiceUser.get_contexts", "ACSE._negotiate_as_acceptor",
                   "presentation:negotiate_as_acceptor"):
        # a release whose readers, or whose way to them, might change the contexts: they
        # are copied for each association again (context-copy stays)
        site = next(s for s in entry.sites if s.target.endswith(target))
        changed = patches.resolve(site.target)
        monkeypatch.setattr(patches, "source_digest", lambda obj, changed=changed: (
            "0" * 16 if obj is changed else digest(obj)))
        fence = patches.apply()
        assert "shared-contexts" in fence.skipped and "context-copy" in fence.applied, target
        assert fence.listener_contexts(contexts) is contexts
        monkeypatch.undo()
    assert "shared-contexts" in patches.apply().applied


def test_a_live_association_negotiates_against_the_shared_contexts(tmp_path: Path) -> None:
    """The listener's contexts are shared; each association's are the same objects in a list
    of its own, which negotiation only reads: Verification and a storage SOP Class accepted,
    a query model refused by the access policy (no grant without TLS), a service the archive
    does not offer refused as not supported, as before."""
    from mimic_server.app import Archive
    from mimic_server.config import Settings

    archive = Archive(Settings(data_dir=tmp_path / "data", host=HOST, port=0, tls=False,
                               ops_port=0))
    archive.start()
    try:
        server = archive.server
        assert server is not None and type(server.contexts) is SharedContexts
        seen: list[list[Any]] = []
        server.bind(evt.EVT_ESTABLISHED,
                    lambda event: seen.append(event.assoc.acceptor.supported_contexts))
        ae = AE(ae_title="MODALITY1")
        for syntax in (Verification, CTImageStorage,
                       StudyRootQueryRetrieveInformationModelFind, StorageCommitmentPushModel):
            ae.add_requested_context(syntax)
        for _ in range(2):
            assoc = ae.associate(HOST, archive.address[1], ae_title="MIMIC")
            assert assoc.is_established
            try:
                assert assoc.send_c_echo().Status == 0
                results = {str(cx.abstract_syntax): cx.result
                           for cx in assoc.accepted_contexts + assoc.rejected_contexts}
            finally:
                assoc.release()
            assert results == {Verification: 0, CTImageStorage: 0,
                               StudyRootQueryRetrieveInformationModelFind: 1,
                               StorageCommitmentPushModel: 3}
        assert len(seen) == 2 and seen[0] is not seen[1]
        for given in seen:
            assert type(given) is list
            assert all(mine is theirs for mine, theirs in zip(given, server.contexts,
                                                               strict=True))
        with pytest.raises(AttributeError):
            seen[0][0].scp_role = True
    finally:
        archive.stop(0)
