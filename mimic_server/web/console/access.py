"""Who may use which console page: token roles -> viewer / operator.

The roles are the token's (Entra ID app roles, the ``roles`` claim by default), the same
claim the DIMSE and DICOMweb doors read. An operator sees everything the console shows,
including the trusted modalities, the live associations and the audit trail; a viewer sees
the study pages only. Neither right widens what the archive's access policy grants:
images and queries still go through the same query engine and object store checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum


class Right(Enum):
    STUDIES = "studies"
    OPERATE = "operate"  # modalities, now, audit


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    """A signed-in console user, as read back from the session cookie."""

    subject: str
    name: str
    roles: frozenset[str]
    #: The session's id (sign-out revokes it) and expiry (Unix seconds).
    session_id: str
    expires: int


@dataclass(frozen=True, slots=True)
class RoleMap:
    operator_roles: frozenset[str]
    viewer_roles: frozenset[str]

    @classmethod
    def parse(cls, operators: str, viewers: str) -> RoleMap:
        def names(text: str) -> frozenset[str]:
            return frozenset(r.strip() for r in text.split(",") if r.strip())

        return cls(names(operators), names(viewers))

    def rights(self, roles: Iterable[str]) -> frozenset[Right]:
        held = set(roles)
        if held & self.operator_roles:
            return frozenset(Right)
        if held & self.viewer_roles:
            return frozenset({Right.STUDIES})
        return frozenset()
