"""Username + passcode users (User Identity Negotiation type 2): Argon2id hashes in a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mimic_server.security.users import (
    UserDirectory,
    UsersFileError,
    add_user,
    parse_users,
)


def test_add_and_authenticate(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    add_user(path, "jdoe", "correct horse battery", ["Radiologist"])
    add_user(path, "clerk.1", "another long passcode", [])
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert "correct horse" not in text and "$argon2id$" in text
    users = UserDirectory(path)
    user = users.authenticate("jdoe", "correct horse battery")
    assert user is not None and user.roles == {"Radiologist"}
    assert users.authenticate("jdoe", "wrong passcode!!") is None
    assert users.authenticate("nobody", "correct horse battery") is None
    # Replaced in place, and read again by a running directory.
    add_user(path, "jdoe", "a new passcode here", ["Clerk"])
    assert users.authenticate("jdoe", "correct horse battery") is None
    assert users.authenticate("jdoe", "a new passcode here").roles == {"Clerk"}


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="12 characters"):
        add_user(tmp_path / "u.toml", "jdoe", "short", [])
    with pytest.raises(ValueError, match="user name"):
        add_user(tmp_path / "u.toml", "j doe", "long enough passcode", [])
    with pytest.raises(UsersFileError, match="Argon2id"):
        parse_users('[users.jdoe]\npasscode = "plaintext"')
    with pytest.raises(UsersFileError, match="not valid TOML"):
        parse_users("[users.jdoe")
    with pytest.raises(UsersFileError, match="cannot be read"):
        UserDirectory(tmp_path / "missing.toml").authenticate("a", "b")
