"""Access rules: the policy file and Key Vault tags read the same way; deny by default."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mimic_server.polling import Poller
from mimic_server.security.grants import (
    FULL,
    MODALITY,
    RuleError,
    Service,
    UserRequirement,
    from_tags,
    parse_rule,
)
from mimic_server.security.policy_file import PolicyFile, parse_policy

POLICY = """
[default]
services = ["echo"]

[certificates.reading-room]
services = ["echo", "find", "move", "get"]
move_destinations = ["WS1", "WS2"]
max_find_results = 200
find_requires = ["PatientID", "AccessionNumber"]
user = "required"
roles = { Radiologist = ["find", "move", "get"], Clerk = ["find"] }

[certificates.admin-console]
services = ["all"]
move_destinations = ["*"]
"""


def test_policy_file() -> None:
    rules = parse_policy(POLICY)
    assert rules.default.services == {Service.ECHO}
    room = rules.certificates["reading-room"]
    assert room.services == {Service.ECHO, Service.FIND, Service.MOVE, Service.GET}
    assert room.may_move_to("WS1") and not room.may_move_to("STORESCP")
    assert room.max_find_results == 200
    assert room.find_requires == {"PatientID", "AccessionNumber"}
    assert room.user is UserRequirement.REQUIRED
    admin = rules.certificates["admin-console"]
    assert admin.services == frozenset(Service) and admin.may_move_to("ANY")


def test_roles_narrow_the_services_of_a_user() -> None:
    room = parse_policy(POLICY).certificates["reading-room"]
    assert room.services_for(None) == room.services  # no user: the identity's services
    assert room.services_for({"Clerk"}) == {Service.FIND}
    assert room.services_for({"Clerk", "Radiologist"}) == {Service.FIND, Service.MOVE,
                                                           Service.GET}
    assert room.services_for({"Visitor"}) == frozenset()
    # Roles never widen: a role's service the identity lacks stays refused.
    wide = parse_rule({"services": ["find"], "roles": {"Admin": ["all"]}}, "t")
    assert wide.services_for({"Admin"}) == {Service.FIND}


def test_deny_by_default() -> None:
    assert parse_policy("").default == MODALITY
    assert MODALITY.services == {Service.ECHO, Service.STORE}
    assert not MODALITY.may_move_to("WS1")
    assert parse_rule({}, "t").services == {Service.ECHO, Service.STORE}
    assert FULL.services == frozenset(Service)


def test_tags_mean_what_the_file_means() -> None:
    tags = {"mimic-trust": "client", "mimic-services": "echo, find,get",
            "mimic-move-destinations": "WS1", "mimic-max-find-results": "50",
            "mimic-find-requires": "PatientID", "mimic-user": "Required"}
    rule = from_tags(tags)
    assert rule is not None
    grants = parse_rule(rule, "tags")
    assert grants.services == {Service.ECHO, Service.FIND, Service.GET}
    assert grants.move_destinations == {"WS1"} and grants.max_find_results == 50
    assert grants.user is UserRequirement.REQUIRED
    assert from_tags({"mimic-trust": "client"}) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[default]\nservices = ['print']", "unknown services"),
        ("[default]\nservice = ['echo']", "unknown keys"),
        ("[certificates.x]\nmax_find_results = 0", "at least 1"),
        ("[certificates.x]\nmax_find_results = 'many'", "whole number"),
        ("[certificates.x]\nuser = 'sometimes'", "'optional' or 'required'"),
        ("[certificates.x]\nroles = ['a']", "roles must be a table"),
        ("[policy]\n", "unknown tables"),
        ("default = 5", "must be a table"),  # valid TOML: raised TypeError, not RuleError
        ("[certificates]\nx = 5", "must be a table"),
        ("[default\n", "not valid TOML"),
    ],
)
def test_broken_rules_are_refused_with_where_and_what(text: str, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        parse_policy(text)


def test_policy_file_source(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    source = PolicyFile(path)
    missing = source.version()
    with pytest.raises(RuleError, match="cannot be read"):
        source.load()
    path.write_text(POLICY)
    assert source.version() != missing
    assert "reading-room" in source.load().certificates


def test_a_poll_that_raises_the_unexpected_leaves_the_watcher_running(tmp_path: Path) -> None:
    """A poll's unexpected exception ended the watcher's thread: every later edit of the
    policy, a withdrawn grant's included, went unseen until a restart."""
    polls: list[int] = []

    class Flaky(Poller):
        def poll(self) -> bool:
            polls.append(1)
            if len(polls) == 1:
                raise TypeError("unexpected")
            return False

    source = Flaky(0.05, "flaky")
    died: list[BaseException | None] = []
    previous, threading.excepthook = threading.excepthook, lambda a: died.append(a.exc_value)
    try:
        source.start()
        deadline = time.monotonic() + 5
        while len(polls) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        source.stop()
    finally:
        threading.excepthook = previous
    assert len(polls) >= 3 and not died
