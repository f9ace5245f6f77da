"""Users who sign in with a username and passcode (User Identity Negotiation type 2).

The user file (``MIMIC_USERS_FILE``) is TOML, one table per user, with an Argon2id hash of the
passcode (memory-hard: a stolen file does not give the passcodes away cheaply) and the user's
roles, which the policy maps to services like a token's roles::

    [users.jdoe]
    passcode = "$argon2id$v=19$m=65536,t=3,p=4$..."
    roles = ["Radiologist"]

``mimic users add`` writes entries; the server only reads the file. Verification costs the
same for an unknown user as for a known one, so that timing does not tell which names exist.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from mimic_server.durable_files import replace_whole

_HASHER = PasswordHasher()  # Argon2id, RFC 9106's second recommended parameters


@cache
def _dummy_hash() -> str:
    """Verified against for an unknown user: the same work as for a known one. Made when a
    user file is opened, not at import (a quarter of a second of CPU and 64 MiB that every
    process without users would pay at its start), nor at the first unknown name (which
    would then take twice as long as a known one)."""
    return _HASHER.hash("mimic-unknown-user")


class UsersFileError(ValueError):
    """The user file cannot be read; the message says where (never a hash or passcode)."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    passcode_hash: str
    roles: frozenset[str] = frozenset()


def hash_passcode(passcode: str) -> str:
    if len(passcode) < 12:
        raise ValueError("a passcode needs at least 12 characters")
    return _HASHER.hash(passcode)


def parse_users(text: str, where: str = "users file") -> dict[str, User]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsersFileError(f"{where}: not valid TOML ({exc})") from exc
    tables = data.get("users", {})
    if not isinstance(tables, Mapping) or set(data) - {"users"}:
        raise UsersFileError(f"{where}: expected only [users.NAME] tables")
    users = {}
    for name, entry in tables.items():
        if not isinstance(entry, Mapping) or not str(entry.get("passcode", "")).startswith(
            "$argon2id$"
        ):
            raise UsersFileError(f"{where}: user {name!r} needs an Argon2id passcode hash")
        roles = entry.get("roles", [])
        if not isinstance(roles, list):
            raise UsersFileError(f"{where}: roles of {name!r} must be a list")
        users[str(name)] = User(str(name), str(entry["passcode"]),
                                frozenset(str(r) for r in roles))
    return users


class UserDirectory:
    """The users of one file, read again when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._version: tuple[int, int] | None = None
        self._users: dict[str, User] = {}
        self._dummy = _dummy_hash()

    def _current(self) -> dict[str, User]:
        try:
            stat = self.path.stat()
        except OSError as exc:
            raise UsersFileError(f"{self.path}: cannot be read ({type(exc).__name__})") from exc
        version = (stat.st_mtime_ns, stat.st_size)
        if version != self._version:
            self._users = parse_users(self.path.read_text(encoding="utf-8"), str(self.path))
            self._version = version
        return self._users

    def authenticate(self, name: str, passcode: str) -> User | None:
        """The user, or None for an unknown name or a wrong passcode (indistinguishable)."""
        user = self._current().get(name)
        try:
            _HASHER.verify(user.passcode_hash if user else self._dummy, passcode)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return user


def add_user(path: Path, name: str, passcode: str, roles: list[str]) -> None:
    """Add or replace one user in the file (``mimic users add``)."""
    users = parse_users(path.read_text(encoding="utf-8"), str(path)) if path.exists() else {}
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError("a user name is letters, digits, '.', '_' and '-'")
    if any(not r.isprintable() or '"' in r or "\\" in r for r in roles):
        raise ValueError("a role is printable text without quotes or backslashes")
    users[name] = User(name, hash_passcode(passcode), frozenset(roles))
    lines = []
    for user in users.values():
        lines += [f'[users."{user.name}"]', f'passcode = "{user.passcode_hash}"',
                  "roles = [" + ", ".join(f'"{r}"' for r in sorted(user.roles)) + "]", ""]
    _replace_whole(path, "\n".join(lines).encode("utf-8"))


def _replace_whole(path: Path, data: bytes) -> None:
    """``data`` as the user file, mode 0600, whole or not at all (``durable_files``): it
    was rewritten in place, and a full disk (or a crash) midway left it cut short, not TOML
    any more, and the server (which reads it again when it changes) then refused every user;
    a sign-in during the rewrite read half a file."""
    replace_whole(path, data, 0o600)
