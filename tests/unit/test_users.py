"""Username + passcode users (User Identity Negotiation type 2): Argon2id hashes in a file."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
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


def test_a_full_disk_leaves_the_user_file_as_it_was(tmp_path: Path) -> None:
    """``mimic users add`` on a disk that fills midway (a file size limit here): exit 2 with
    one line, and the file whole as before. It was rewritten in place: cut at the limit,
    no longer TOML, every user refused by the server that read it again; and a traceback."""
    path = tmp_path / "users.toml"
    for name in ("alice", "bob", "carol", "dave", "eve", "frank"):
        add_user(path, name, f"passcode of {name}", ["reader"])
    before = path.read_bytes()
    limit = len(before) + 16  # the new entry's longer role does not fit

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, as ENOSPC, not a signal

    done = subprocess.run(
        [sys.executable, "-m", "mimic_server", "users", "add", "alice", "--file", str(path),
         "--passcode", "a new passcode of alice", "--role", "reader",
         "--role", "a role long enough to push the file past the limit"],
        preexec_fn=small_disk, capture_output=True, text=True, timeout=120,
    )

    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("mimic: ") and "Traceback" not in done.stderr
    assert path.read_bytes() == before
    assert sorted(parse_users(path.read_text(), str(path))) == [
        "alice", "bob", "carol", "dave", "eve", "frank"]
    assert [p.name for p in tmp_path.iterdir()] == ["users.toml"]
