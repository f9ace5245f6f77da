"""Bearer tokens (JWT) from an OpenID Connect issuer: User Identity Negotiation type 5
(PS3.7 D.3.3.7) today, the DICOMweb front door tomorrow: one validator for both.

The issuer's discovery document names its JWKS; keys are cached and fetched again only for a
key id not seen yet, at most once per ``refetch_seconds`` (a peer sending tokens with random
key ids must not make the archive hammer the issuer). Microsoft Entra ID is the issuer in
Azure: ``https://login.microsoftonline.com/<tenant>/v2.0``, roles in the ``roles`` claim.

A DICOMweb client sends the same access token with every request for its lifetime, and an
RS256 signature check costs more than the rest of a small WADO-RS retrieve's own work. So a
token that validated is remembered (keyed by the token's exact text, ``cache_size`` of them
at most) with the key that verified it: on its next use it is accepted again without the
signature check only while that key is still the one the issuer publishes for its key id
(the same lookup, the same JWKS refresh rules as a first use) and while its ``exp`` (and
``nbf``/``iat``) hold at that moment, with the same leeway. A refused token is never
remembered: each use of it is validated, refused and reported again.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

#: Asymmetric algorithms only: an HMAC "signature" would be checked with a public key as the
#: shared secret (algorithm confusion), and ``none`` is no signature at all.
DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")
_FORBIDDEN = frozenset({"none", "HS256", "HS384", "HS512"})


class InvalidToken(Exception):
    """A token we do not accept; the message is safe to log (it holds no claim values)."""


@dataclass(frozen=True, slots=True)
class TokenUser:
    """Who a valid token names, as the policy and the audit trail see it."""

    subject: str
    #: A readable name when the token has one (``preferred_username``, ``upn``, ``name``).
    name: str
    roles: frozenset[str] = frozenset()
    issuer: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class _Validated:
    """A token that validated: who it names, the key that verified it, its time window."""

    user: TokenUser
    kid: str
    key: Any
    expires: float
    not_before: float


class TokenValidator:
    """Validates JWTs of one issuer for one audience (see the module docstring for the
    cache of validated tokens; ``cache_size=0`` turns it off)."""

    def __init__(
        self,
        issuer: str,
        audience: str | Sequence[str],
        *,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        leeway_seconds: float = 60,
        ssl_context: ssl.SSLContext | None = None,
        timeout_seconds: float = 5,
        keys_cache_seconds: float = 3600,
        refetch_seconds: float = 30,
        roles_claim: str = "roles",
        cache_size: int = 4096,
    ) -> None:
        bad = _FORBIDDEN.intersection(algorithms)
        if bad:
            raise ValueError(f"algorithms not allowed for tokens: {sorted(bad)}")
        self.issuer = issuer.rstrip("/")
        self.audience = [audience] if isinstance(audience, str) else list(audience)
        self.algorithms = list(algorithms)
        self.leeway = leeway_seconds
        self.roles_claim = roles_claim
        self._ssl = ssl_context
        self._timeout = timeout_seconds
        self._keys_ttl = keys_cache_seconds
        self._refetch = refetch_seconds
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_at = float("-inf")
        self._jwks_uri: str | None = None
        self._cache_size = cache_size
        self._cache: OrderedDict[str, _Validated] = OrderedDict()
        self._cache_lock = threading.Lock()

    # -- validation --------------------------------------------------------------------------

    def validate(self, token: str) -> TokenUser:
        """Who the token names; :class:`InvalidToken` when it is refused."""
        if self._cache_size > 0:
            with self._cache_lock:
                known = self._cache.get(token)
            if known is not None:
                user = self._still_valid(token, known)
                if user is not None:
                    return user
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken("not a JWT") from exc
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise InvalidToken("the token's signature algorithm is not allowed")
        kid = str(header.get("kid") or "")
        key = self._key(kid)
        if not _fits(key, algorithm):
            raise InvalidToken("the token's signature algorithm does not fit its key")
        user = self._verify(token, key, algorithm)
        if self._cache_size > 0:
            self._remember(token, user, kid, key)
        return user

    def _still_valid(self, token: str, known: _Validated) -> TokenUser | None:
        """The remembered user while the token's time window and its key's trust hold;
        None when the token must be validated from the start (its key was replaced)."""
        now = time.time()
        if known.expires <= now - self.leeway:
            self._forget(token)
            raise InvalidToken("token has expired")
        if known.not_before > now + self.leeway:  # the clock went back
            self._forget(token)
            raise InvalidToken("token is not valid yet")
        # The issuer still publishes the same key under this key id (refreshing the JWKS
        # when its time has come, as for a first use); a key gone raises InvalidToken.
        if self._key(known.kid) is not known.key:
            self._forget(token)
            return None
        return known.user

    def _remember(self, token: str, user: TokenUser, kid: str, key: Any) -> None:
        claims = user.claims
        not_before = max(_number(claims.get("nbf")), _number(claims.get("iat")))
        entry = _Validated(user, kid, key, _number(claims["exp"]), not_before)
        with self._cache_lock:
            self._cache[token] = entry
            self._cache.move_to_end(token)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)  # the oldest first

    def _forget(self, token: str) -> None:
        with self._cache_lock:
            self._cache.pop(token, None)

    def _verify(self, token: str, key: Any, algorithm: str) -> TokenUser:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise InvalidToken("token is not valid yet") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken("token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidToken("token is from another issuer") from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken("token signature does not verify") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"token lacks the {exc.claim!r} claim") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"token is invalid ({type(exc).__name__})") from exc
        except (TypeError, ValueError) as exc:  # a key PyJWT cannot use for the algorithm
            raise InvalidToken("token cannot be verified with its key") from exc
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise InvalidToken("token lacks the 'sub' claim")
        roles = claims.get(self.roles_claim) or []
        if isinstance(roles, str):
            roles = roles.split()
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            # A number raised TypeError (DICOMweb: 500, User Identity Negotiation: a
            # transient reject, neither audited as a refusal); an object gave its keys, a
            # nested list its repr, as role names.
            raise InvalidToken(f"token's {self.roles_claim!r} claim is not a list of names")
        name = next(
            (str(claims[c]) for c in ("preferred_username", "upn", "name") if claims.get(c)),
            str(claims["sub"]),
        )
        return TokenUser(
            subject=str(claims["sub"]),
            name=name,
            roles=frozenset(str(r) for r in roles),
            issuer=self.issuer,
            claims=claims,
        )

    # -- keys --------------------------------------------------------------------------------

    def _key(self, kid: str) -> Any:
        with self._lock:
            now = time.monotonic()
            stale = now - self._keys_at > self._keys_ttl
            if stale or (kid not in self._keys and now - self._keys_at > self._refetch):
                self._load_keys()
            if kid in self._keys:
                return self._keys[kid].key
            if not kid and len(self._keys) == 1:
                return next(iter(self._keys.values())).key
        raise InvalidToken("token is signed with an unknown key")

    def _load_keys(self) -> None:
        try:
            if self._jwks_uri is None:
                discovery = self._get_json(f"{self.issuer}/.well-known/openid-configuration")
                if str(discovery.get("issuer", "")).rstrip("/") != self.issuer:
                    raise InvalidToken("the issuer's discovery document names another issuer")
                self._jwks_uri = str(discovery["jwks_uri"])
            keys = jwt.PyJWKSet.from_dict(self._get_json(self._jwks_uri)).keys
        except InvalidToken:
            raise
        except (OSError, ValueError, KeyError, jwt.PyJWTError) as exc:
            # Keep the keys we have; the next unknown key id tries again after refetch_seconds.
            self._keys_at = time.monotonic() - self._keys_ttl + self._refetch
            if not self._keys:
                raise InvalidToken("the token issuer cannot be reached") from exc
            return
        self._keys = {str(k.key_id or ""): k for k in keys}
        self._keys_at = time.monotonic()

    def _get_json(self, url: str) -> dict[str, Any]:
        if not url.startswith("https://"):
            raise InvalidToken("the token issuer must be reached over HTTPS")
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=self._timeout, context=self._ssl) as response:
            document = json.load(response)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        return document


def _number(value: Any) -> float:
    """A time claim as a number (validated already by PyJWT when present); 0 when absent."""
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


#: The elliptic curve of each ECDSA algorithm (RFC 7518 3.4, RFC 8812 3.2).
_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1",
           "ES256K": "secp256k1"}


def _fits(key: Any, algorithm: str) -> bool:
    """Whether ``key`` is of the kind ``algorithm`` verifies with. The header names the
    algorithm and the key id names the key, both chosen by whoever made the token: PyJWT
    handed an RSA key for ES256 raises TypeError, not one of its own errors, which made a
    500 of a forged token and left the refusal unaudited."""
    if algorithm[:2] in ("RS", "PS"):
        return isinstance(key, rsa.RSAPublicKey)
    if algorithm in _CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _CURVES[algorithm]
    if algorithm == "EdDSA":  # RFC 8037
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return True  # another asymmetric algorithm: a key it cannot use is refused by _verify
