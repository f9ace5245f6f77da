"""The policy file (``MIMIC_POLICY_FILE``): per trust entry rules and the default, in TOML.

::

    [default]                      # identities without a rule of their own
    services = ["echo", "store"]

    [certificates.reading-room]    # the trust entry's name (file stem or Key Vault name)
    services = ["echo", "find", "move", "get"]
    move_destinations = ["WS1"]    # "*" = every registered destination
    max_find_results = 200
    find_requires = ["PatientID", "AccessionNumber"]
    user = "required"
    roles = { Radiologist = ["find", "move", "get"], Clerk = ["find"] }

The file is read again when it changes; one that cannot be read keeps the last good rules
(the watcher says so at ERROR on every attempt).
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mimic_server.security.grants import MODALITY, Grants, RuleError, parse_rule


@dataclass(frozen=True, slots=True)
class PolicyRules:
    default: Grants = MODALITY
    certificates: Mapping[str, Grants] = field(default_factory=dict)


def parse_policy(text: str, where: str = "policy file") -> PolicyRules:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"{where}: not valid TOML ({exc})") from exc
    unknown = set(data) - {"default", "certificates"}
    if unknown:
        raise RuleError(f"{where}: unknown tables {sorted(unknown)}")
    default = parse_rule(data["default"], f"{where} [default]") if "default" in data else MODALITY
    tables = data.get("certificates", {})
    if not isinstance(tables, Mapping):
        raise RuleError(f"{where}: [certificates] must hold one table per trust entry")
    certificates = {
        str(name): parse_rule(rule, f"{where} [certificates.{name}]")
        for name, rule in tables.items()
    }
    return PolicyRules(default, certificates)


class PolicyFile:
    """The policy file as a polled source: ``version()`` is cheap, ``load()`` parses."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return str(self.path)

    def version(self) -> str:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError as exc:
            return f"unreadable: {type(exc).__name__}"

    def load(self) -> PolicyRules:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RuleError(f"{self.path}: cannot be read ({type(exc).__name__})") from exc
        return parse_policy(text, str(self.path))
