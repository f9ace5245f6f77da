"""The fence around MIMIC's patches of library internals (mimic_server/patches.py).

The first test is the tripwire: it checks every patched call site against the libraries
installed for the test suite, so upgrading pynetdicom, pydicom or azure-core past a change
in one of them fails here (and the fence would fall back at start).
"""

from __future__ import annotations

import ast
import functools
import logging
from pathlib import Path

import pytest

from mimic_server import patches
from mimic_server.errors import ConfigurationError
from tests.patch_sites import change_signature, change_source, keep_switches

PACKAGE = Path(__file__).resolve().parents[2] / "mimic_server"
SPEED_UPS = [p for p in patches.PATCHES if not p.required]
REQUIRED = [p for p in patches.PATCHES if p.required]


@pytest.mark.parametrize("patch", patches.PATCHES, ids=lambda p: p.name)
def test_every_patched_call_site_is_as_verified(patch: patches.Patch) -> None:
    problem = patches.check(patch)
    assert problem is None, (
        f"{patch.name} ({patch.body}), verified on {patches.versions(patch.verified)}, "
        f"installed {patches.installed(patch.verified)}: {problem}. Re-verify the patch "
        "against the new code, then update its Site (or keep the pins in constraints.txt)."
    )


def test_every_patch_names_its_verified_versions_and_sites() -> None:
    names = [p.name for p in patches.PATCHES]
    assert len(names) == len(set(names))
    for patch in patches.PATCHES:
        assert patch.verified and patch.sites and patch.without
        for distribution, version in patch.verified:
            assert distribution in {"pynetdicom", "pydicom", "azure-core"} and version


@pytest.mark.parametrize("patch", SPEED_UPS, ids=lambda p: p.name)
def test_a_moved_call_site_falls_back_with_a_warning(
    patch: patches.Patch, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    keep_switches(monkeypatch)
    moved = patch.sites[0]
    change_signature(monkeypatch, moved)
    with caplog.at_level(logging.WARNING, logger="mimic_server.patches"):
        fence = patches.apply()

    # Every patch that relies on the moved site falls back, and only those.
    sharing = {p.name for p in patches.PATCHES if moved.target in {s.target for s in p.sites}}
    assert patch.name in sharing
    assert fence.applied == {p.name for p in patches.PATCHES} - sharing
    for name in sharing:
        assert moved.target in fence.skipped[name]
    warnings = {r.patch: r for r in caplog.records  # type: ignore[attr-defined]
                if r.levelno == logging.WARNING}
    assert set(warnings) == sharing
    warning = warnings[patch.name]
    distribution = patch.verified[0][0]
    assert warning.found.startswith(distribution + " ")  # type: ignore[attr-defined]
    assert patch.sites[0].target in warning.site  # type: ignore[attr-defined]


def test_a_changed_body_under_the_same_signature_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    site = patches.PATCHES[0].sites[0]
    change_source(monkeypatch, site)
    assert "source changed" in (patches.site_problem(site) or "")


def test_a_removed_call_site_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from pynetdicom.dimse import DIMSEServiceProvider

    monkeypatch.delattr(DIMSEServiceProvider, "send_msg")
    problem = patches.check(next(p for p in SPEED_UPS if p.name == patches.DIRECT_RESPONSES))
    assert problem is not None and "not found" in problem


def test_without_its_fence_the_retry_policy_is_azure_cores_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from azure.core.pipeline.policies import RetryPolicy

    from mimic_server.certs import vaulthttp

    keep_switches(monkeypatch)
    cap = next(p for p in patches.PATCHES if p.name == patches.RETRY_AFTER_CAP)
    change_signature(monkeypatch, cap.sites[0])
    patches.apply()
    assert type(vaulthttp.client_options()["retry_policy"]) is RetryPolicy
    monkeypatch.undo()
    patches.apply()
    assert type(vaulthttp.client_options()["retry_policy"]) is vaulthttp.BoundedRetryPolicy


@pytest.mark.parametrize("patch", REQUIRED, ids=lambda p: p.name)
def test_a_changed_required_call_site_stops_the_start(
    patch: patches.Patch, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = patch.sites[0]
    if site.signature is not None:
        change_signature(monkeypatch, site)
    elif site.mentions is not None:
        change_source(monkeypatch, site)  # its source no longer mentions what we rely on
    else:
        from tests.patch_sites import owner_and_name

        monkeypatch.delattr(*owner_and_name(site.target))
    with pytest.raises(ConfigurationError, match=rf"{patch.name}.*constraints\.txt"):
        patches.apply()


def test_the_installs_are_done_once_per_process() -> None:
    import pynetdicom.dimse_messages

    patches.apply()
    first = pynetdicom.dimse_messages.encode
    patches.apply()
    assert pynetdicom.dimse_messages.encode is first
    assert patches.resolve("pynetdicom.dimse_messages:encode") is not first  # seen through


def test_only_the_composition_root_imports_the_fence() -> None:
    importers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "mimic_server":
                if any(alias.name == "patches" for alias in node.names):
                    importers.append(path.relative_to(PACKAGE).as_posix())
            elif isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [
                    a.name for a in node.names
                ]
                if "mimic_server.patches" in names:
                    importers.append(path.relative_to(PACKAGE).as_posix())
    assert importers == ["app.py"]


def test_without_its_fence_a_large_object_is_sent_whole(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """streamed-send relies on DT-1 taking each P-DATA off the DUL's queue with get(False)
    (the wake-up of its back-pressure): a release where it no longer does turns streaming
    off, with a WARNING, and retrieval reads large objects whole (pynetdicom's own path)."""
    import hashlib

    from pydicom.uid import ExplicitVRLittleEndian

    from mimic_server.archive import read
    from mimic_server.dimse import retrieve, stream_send
    from mimic_server.dimse.raw_send import StoredDataset
    from mimic_server.dimse.stream_send import StreamedDataset
    from mimic_server.query.finder import InstanceRef
    from mimic_server.storage.memory import MemoryStore
    from tests.data import ct_small

    keep_switches(monkeypatch)
    data = ct_small().read_bytes()
    store = MemoryStore()
    store.objects["k"] = data
    ref = InstanceRef("1.2.840.10008.5.1.4.1.1.2", "1.2.3", ExplicitVRLittleEndian, "k",
                      hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(read.open_verified, "__defaults__", (1024, None))  # ct_small is large

    patches.apply()
    assert stream_send.enabled
    assert type(retrieve.read_verified(store, ref)) is StreamedDataset

    streamed = next(p for p in patches.PATCHES if p.name == patches.STREAMED_SEND)
    dt_1 = next(s for s in streamed.sites if s.target == "pynetdicom.fsm:DT_1")
    change_source(monkeypatch, dt_1)
    with caplog.at_level(logging.WARNING, logger="mimic_server.patches"):
        fence = patches.apply()
    assert patches.STREAMED_SEND in fence.skipped
    assert "no longer uses" in fence.skipped[patches.STREAMED_SEND]
    assert not stream_send.enabled
    assert type(retrieve.read_verified(store, ref)) is StoredDataset


def test_without_its_fence_a_sub_association_is_pynetdicoms_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """requestor-responses relies on ``AE.associate`` triggering EVT_ESTABLISHED before it
    starts the association's thread: a release that changed it leaves C-MOVE's
    sub-associations unguarded (pynetdicom's race, with a WARNING), never guarded late."""
    from mimic_server.net import acknowledge, requestor

    keep_switches(monkeypatch)
    adapter = patches.apply().requestor_adapter
    assert isinstance(adapter, functools.partial)
    assert adapter.args == ((requestor.keep_responses, acknowledge.acknowledge_reads),)
    guard = next(p for p in patches.PATCHES if p.name == patches.REQUESTOR_RESPONSES)
    associate = next(s for s in guard.sites if s.target.endswith("ApplicationEntity.associate"))
    change_source(monkeypatch, associate)
    fence = patches.apply()
    assert patches.REQUESTOR_RESPONSES in fence.skipped
    assert patches.REQUESTOR_ACKS in fence.skipped  # swapped as established, or never
    assert fence.requestor_adapter is None


def test_without_its_fence_the_duls_queues_are_pynetdicoms_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """dul-queues relies on pynetdicom only putting to and getting from the DUL's event and
    received-PDU queues: a release that changes one of the state machine's actions taking a
    PDU turns the swap off, and the acceptor keeps pynetdicom's ``queue.Queue``."""
    import queue
    import socket

    from pynetdicom import AE
    from pynetdicom.association import Association
    from pynetdicom.transport import AssociationSocket

    def queues_of_a_new_acceptor(fence: patches.Fence) -> tuple[type, type]:
        assoc = Association(AE(), mode="acceptor")
        ours, peer = socket.socketpair()
        with ours, peer:
            assoc.dul.socket = AssociationSocket(assoc, client_socket=ours)  # as accepted
            fence.association_adapter(64 * 1024)(assoc)
            assert assoc.dul.event_queue.get(False) == "Evt5"
        return type(assoc.dul.event_queue), type(assoc.dul._recv_pdu)

    keep_switches(monkeypatch)
    fence = patches.apply()
    assert queues_of_a_new_acceptor(fence) == (queue.SimpleQueue, queue.SimpleQueue)
    entry = next(p for p in patches.PATCHES if p.name == patches.DUL_QUEUES)
    change_source(monkeypatch, next(s for s in entry.sites if s.target.endswith("fsm:DT_2")))
    fence = patches.apply()
    assert patches.DUL_QUEUES in fence.skipped
    assert queues_of_a_new_acceptor(fence) == (queue.Queue, queue.Queue)


def _functions_using(package_dir: Path, names: tuple[str, ...]) -> set[str]:
    """``module:Qualified.name`` of every function of a package whose code uses one of
    ``names`` as an attribute (a property's getter as ``Class.name.fget``)."""
    found: set[str] = set()
    for path in sorted(package_dir.rglob("*.py")):
        relative = path.relative_to(package_dir.parent).with_suffix("")
        if "tests" in relative.parts:
            continue
        module = ".".join(relative.parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())

        def visit(node: ast.AST, prefix: str, module: str = module) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.")
                elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    uses = any(isinstance(n, ast.Attribute) and n.attr in names
                               for n in ast.walk(child))
                    is_property = any(isinstance(d, ast.Name) and d.id == "property"
                                      for d in child.decorator_list)
                    if uses:
                        name = f"{prefix}{child.name}" + (".fget" if is_property else "")
                        found.add(f"{module}:{name}")
                    visit(child, f"{prefix}{child.name}.")

        visit(tree, "")
    return found


def test_dul_queues_pins_every_pynetdicom_function_that_uses_the_queues() -> None:
    """The fence can only notice a change in a function it pins: every function of the
    installed pynetdicom that touches the DUL's event or received-PDU queue is one of
    dul-queues' sites, so a release that starts peeking at or joining them elsewhere is
    seen here, not in production."""
    import pynetdicom

    entry = next(p for p in patches.PATCHES if p.name == patches.DUL_QUEUES)
    users = _functions_using(Path(pynetdicom.__file__).parent, ("event_queue", "_recv_pdu"))
    assert users  # the scan itself works
    assert users <= {site.target for site in entry.sites}
