"""Simulating a library release that moved or changed a call site MIMIC patches."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from mimic_server import patches


def owner_and_name(target: str) -> tuple[Any, str]:
    """The object holding a site (module or class) and the site's attribute name."""
    module_name, _, qualname = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def change_signature(monkeypatch: pytest.MonkeyPatch, site: patches.Site) -> None:
    """Replace the site by the library's own function under a new signature (an upstream
    release that added a parameter): it still works, but it is not what was verified."""
    original = patches.resolve(site.target)  # the library's own, not MIMIC's replacement
    owner, name = owner_and_name(site.target)

    def changed(*args: Any, added_upstream: Any = None, **kwargs: Any) -> Any:
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, changed)


def change_source(monkeypatch: pytest.MonkeyPatch, site: patches.Site) -> None:
    """Replace the site by a function of the same signature whose code differs."""
    original = patches.resolve(site.target)
    owner, name = owner_and_name(site.target)

    def changed(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **kwargs)  # a different body

    changed.__signature__ = patches.inspect.signature(original)  # type: ignore[attr-defined]
    monkeypatch.setattr(owner, name, changed)


def keep_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fence sets these module switches both ways: put back what was there afterwards."""
    from mimic_server.certs import vaulthttp
    from mimic_server.codec import answer
    from mimic_server.dimse import move_attempt, stream_send

    monkeypatch.setattr(move_attempt, "noting", move_attempt.noting)
    monkeypatch.setattr(vaulthttp, "retry_policy", vaulthttp.retry_policy)
    monkeypatch.setattr(answer, "self_encoding", answer.self_encoding)
    monkeypatch.setattr(stream_send, "enabled", stream_send.enabled)


def move_every_speed_up(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Change the first call site of every patch that has a fallback; their names."""
    keep_switches(monkeypatch)
    moved = set()
    for patch in patches.PATCHES:
        if not patch.required:
            change_signature(monkeypatch, patch.sites[0])
            moved.add(patch.name)
    return moved
