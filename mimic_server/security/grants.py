"""What one identity may do: services, Move Destinations, query limits, user requirement.

A rule comes from the policy file (``MIMIC_POLICY_FILE``, a TOML table per trust entry) or,
for an entry without one there, from the entry itself (Key Vault tags ``mimic-services`` ...,
or the development PKI's binding file). The same parser reads both, so a tag and a file key of
the same name mean the same thing. Deny by default: an identity with no rule gets
:data:`MODALITY` (echo and store), never Query/Retrieve.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Service(Enum):
    ECHO = "C-ECHO"
    STORE = "C-STORE"
    FIND = "C-FIND"
    MOVE = "C-MOVE"
    GET = "C-GET"


#: How services are named in a rule ("find"), and the shorthand "all".
SERVICE_NAMES = {s.name.lower(): s for s in Service}


class UserRequirement(Enum):
    """Whether an association of this identity must assert a user (User Identity Negotiation)."""

    OPTIONAL = "optional"
    REQUIRED = "required"


class RuleError(ValueError):
    """A rule that cannot be read; the message names where and what."""


@dataclass(frozen=True, slots=True)
class Grants:
    services: frozenset[Service]
    #: AE titles of registered Move Destinations this identity may name; None: every one.
    move_destinations: frozenset[str] | None = frozenset()
    #: Most matches one C-FIND may return (None: the server's MIMIC_MAX_FIND_RESULTS).
    max_find_results: int | None = None
    #: A C-FIND must carry at least one of these keys with a value that narrows (no wildcard
    #: only): a compromised workstation cannot page through the whole archive.
    find_requires: frozenset[str] = frozenset()
    user: UserRequirement = UserRequirement.OPTIONAL
    #: Token role -> the services that role allows; a user's services are the identity's
    #: services narrowed to those of its roles. Empty: roles do not narrow.
    roles: Mapping[str, frozenset[Service]] = field(default_factory=dict)

    def services_for(self, user_roles: Iterable[str] | None) -> frozenset[Service]:
        """The services of an association, given the roles of its user (None: no user)."""
        if user_roles is None or not self.roles:
            return self.services
        allowed: set[Service] = set()
        for role in user_roles:
            allowed |= self.roles.get(role, frozenset())
        return self.services & frozenset(allowed)

    def may_move_to(self, ae_title: str) -> bool:
        return self.move_destinations is None or ae_title in self.move_destinations


#: An identity with no rule: a modality.
MODALITY = Grants(frozenset({Service.ECHO, Service.STORE}))
#: Everything, to every registered destination (the development PKI's first client).
FULL = Grants(frozenset(Service), move_destinations=None)

_KEYS = {"services", "move_destinations", "max_find_results", "find_requires", "user", "roles"}


def parse_rule(raw: Mapping[str, Any], where: str) -> Grants:
    """A rule from a TOML table (lists) or from tags (comma-separated strings).

    Tag names use dashes and a ``mimic-`` prefix (``mimic-move-destinations``); they are
    normalised to the file's keys before this is called (see :func:`from_tags`).
    """
    if not isinstance(raw, Mapping):
        raise RuleError(f"{where}: must be a table of keys (services, ...)")
    unknown = set(raw) - _KEYS
    if unknown:
        raise RuleError(f"{where}: unknown keys {sorted(unknown)}")
    services = _services(raw.get("services", ["echo", "store"]), f"{where}: services")
    destinations_raw = raw.get("move_destinations", [])
    destinations = _names(destinations_raw, f"{where}: move_destinations")
    move_destinations = None if destinations == {"*"} else frozenset(destinations)
    limit = raw.get("max_find_results")
    if limit is not None:
        # A whole number only: int() truncated 2.5 and raised OverflowError on JSON's
        # Infinity (or TOML's inf), which no caller expected from a rule.
        if isinstance(limit, bool) or not isinstance(limit, int | str) or (
                isinstance(limit, str) and not limit.strip().isdigit()):
            raise RuleError(f"{where}: max_find_results must be a whole number")
        limit = int(limit)
        if limit < 1:
            raise RuleError(f"{where}: max_find_results must be at least 1")
    requires = frozenset(_names(raw.get("find_requires", []), f"{where}: find_requires"))
    try:
        user = UserRequirement(str(raw.get("user", "optional")).strip().lower())
    except ValueError as exc:
        raise RuleError(f"{where}: user must be 'optional' or 'required'") from exc
    roles_raw = raw.get("roles", {})
    if not isinstance(roles_raw, Mapping):
        raise RuleError(f"{where}: roles must be a table of role = [services]")
    roles = {str(role): _services(s, f"{where}: roles.{role}") for role, s in roles_raw.items()}
    return Grants(services, move_destinations, limit, requires, user, roles)


#: Key Vault tag -> rule key.
TAGS = {
    "mimic-services": "services",
    "mimic-move-destinations": "move_destinations",
    "mimic-max-find-results": "max_find_results",
    "mimic-find-requires": "find_requires",
    "mimic-user": "user",
}


def from_tags(tags: Mapping[str, str] | None) -> dict[str, str] | None:
    """The rule carried by a Key Vault entry's tags, or None when it carries none."""
    rule = {key: tags[tag] for tag, key in TAGS.items() if tags and tag in tags}
    return rule or None


def _names(value: Any, where: str) -> set[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple | set | frozenset):
        raise RuleError(f"{where}: expected a list")
    names = {str(item).strip() for item in items if str(item).strip()}
    if any(len(n) > 64 or not n.isprintable() for n in names):
        raise RuleError(f"{where}: a name is too long or not printable")
    return names


def _services(value: Any, where: str) -> frozenset[Service]:
    names = {n.lower() for n in _names(value, where)}
    if "all" in names:
        return frozenset(Service)
    unknown = names - set(SERVICE_NAMES)
    if unknown:
        raise RuleError(f"{where}: unknown services {sorted(unknown)} "
                        f"(known: {', '.join(sorted(SERVICE_NAMES))}, all)")
    return frozenset(SERVICE_NAMES[n] for n in names)
