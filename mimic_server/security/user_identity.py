"""User Identity Negotiation (PS3.7 D.3.3.7): the item an A-ASSOCIATE-RQ carries -> a user.

Type 5 (JSON Web Token) is validated against the configured OpenID Connect issuer
(:class:`~mimic_server.security.tokens.TokenValidator`), type 2 (username and passcode)
against the user file (:class:`~mimic_server.security.users.UserDirectory`). Type 1 (a
username without any proof) is refused: over mutual TLS it would let any trusted
workstation claim any user, and the user narrows services and appears in the audit trail as
if it had been authenticated. Types 3 (Kerberos) and 4 (SAML) are not supported.

Messages of :class:`UserRefused` are safe for logs and audit records: they never hold the
token, the passcode or a claim value.
"""

from __future__ import annotations

from dataclasses import dataclass

from mimic_server.security.tokens import InvalidToken, TokenValidator
from mimic_server.security.users import UserDirectory, UsersFileError

USERNAME, USERNAME_PASSCODE, KERBEROS, SAML, JWT = 1, 2, 3, 4, 5
_METHODS = {USERNAME: "username", USERNAME_PASSCODE: "username-passcode",
            KERBEROS: "kerberos", SAML: "saml", JWT: "jwt"}


@dataclass(frozen=True, slots=True)
class AssociationUser:
    """The user an association asserted and MIMIC verified."""

    #: User name (type 2), or the token's readable name, else its subject (type 5).
    name: str
    roles: frozenset[str]
    #: How it was proven: "jwt" or "username-passcode".
    method: str


class UserRefused(Exception):
    """A user identity item MIMIC does not accept; the message is log-safe."""

    def __init__(self, reason: str, method: str, user: str = "") -> None:
        super().__init__(reason)
        self.method = method
        #: The name the requestor claimed, where one is known and safe to record.
        self.user = user


def method_name(user_identity_type: int | None) -> str:
    return _METHODS.get(user_identity_type or 0, f"type {user_identity_type}")


class UserAuthority:
    """Verifies the User Identity Negotiation item of one association request."""

    def __init__(
        self, tokens: TokenValidator | None = None, users: UserDirectory | None = None
    ) -> None:
        self.tokens = tokens
        self.users = users

    def verify(self, user_identity_type: int | None, primary: bytes, secondary: bytes) -> (
        AssociationUser
    ):
        """The verified user, or :class:`UserRefused` with the reason."""
        method = method_name(user_identity_type)
        if user_identity_type == JWT:
            if self.tokens is None:
                raise UserRefused("JWT user identity is not configured (MIMIC_OIDC_ISSUER)",
                                  method)
            try:
                token = primary.decode("ascii")
            except UnicodeDecodeError as exc:
                raise UserRefused("token is not ASCII", method) from exc
            try:
                user = self.tokens.validate(token)
            except InvalidToken as exc:
                raise UserRefused(f"token refused: {exc}", method) from exc
            return AssociationUser(user.name or user.subject, user.roles, method)
        if user_identity_type == USERNAME_PASSCODE:
            name = _text(primary)
            if self.users is None:
                raise UserRefused("username and passcode are not configured (MIMIC_USERS_FILE)",
                                  method, name)
            try:
                found = self.users.authenticate(name, secondary.decode("utf-8", "replace"))
            except UsersFileError as exc:
                raise UserRefused(f"user file unavailable: {exc}", method, name) from exc
            if found is None:
                # Unknown user and wrong passcode are the same answer (users.py).
                raise UserRefused("unknown user or wrong passcode", method, name)
            return AssociationUser(found.name, found.roles, method)
        if user_identity_type == USERNAME:
            raise UserRefused("a username without passcode or token proves nothing", method,
                              _text(primary))
        raise UserRefused(f"user identity {method} is not supported", method)


def _text(value: bytes) -> str:
    """A claimed user name, printable and short enough for a log line."""
    name = value.decode("utf-8", "replace")[:64]
    return name if name.isprintable() else name.encode("unicode_escape").decode("ascii")
