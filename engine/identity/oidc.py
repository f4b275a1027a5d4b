"""OIDC ID tokens: verify a JWT against the issuer's JWKS and map its claims to a `Subject`.

Owns key loading (a JWKS file or URL), the key cache and the checks on every token: algorithm
allowlist, key type matching the algorithm, signature, `iss`, `aud`, `exp`, `nbf`, `iat` with
a clock-skew leeway, and required claims. It must not grant anything: it only says who.

Security choices:

* Only asymmetric algorithms (RS*, PS*, ES*, EdDSA) may be allowed; `none` and HS* are refused
  when the verifier is built, and symmetric (`oct`) keys in a JWKS are ignored. So a token
  signed with HMAC using the issuer's public key as secret (the RS/HS confusion) cannot verify.
* The key must fit the token's algorithm: RS*/PS* need an RSA key, ES256/384/512 an EC key on
  P-256/P-384/P-521, EdDSA an OKP key. A JWK's own `alg`, when present, must equal the token's,
  and keys whose `use` is not `sig` are ignored.
* An unknown `kid` triggers one JWKS refresh, at most every `refresh_interval` seconds, so a
  stream of forged kids cannot hammer the issuer. Keys older than `cache_ttl` are refetched;
  when that refetch fails the cached keys stay in use (an issuer outage must not lock everyone
  out) and the failure is logged.
* A JWKS URL must be https unless its host is loopback; responses are capped at 1 MiB.
* With `id_claim="email"`, a token carrying `email_verified: false` is refused.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from jwt.api_jwk import PyJWK

from engine.identity import IdentityError, Subject

log = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS: tuple[str, ...] = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)
DEFAULT_REQUIRED_CLAIMS: tuple[str, ...] = ("iss", "sub", "aud", "exp", "iat")
MAX_JWKS_BYTES = 1 << 20

# The key type (and curve) each algorithm needs.
_KEY_FAMILY: dict[str, tuple[str, frozenset[str] | None]] = {
    **{a: ("RSA", None) for a in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}


@dataclass(frozen=True)
class _Key:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: Any  # a cryptography public key object

    def fits(self, algorithm: str) -> bool:
        kty, curves = _KEY_FAMILY[algorithm]
        if self.kty != kty or (curves is not None and self.crv not in curves):
            return False
        return self.alg is None or self.alg == algorithm


def parse_jwks(document: Any, source: str) -> list[_Key]:
    """The usable signature keys of a JWKS document; `IdentityError` when there are none."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise IdentityError(f"JWKS from {source} is not an object with a 'keys' list")
    keys: list[_Key] = []
    for i, jwk in enumerate(document["keys"]):
        if not isinstance(jwk, dict):
            log.warning("JWKS %s: keys[%d] is not an object, ignored", source, i)
            continue
        kty = jwk.get("kty")
        if kty not in ("RSA", "EC", "OKP"):
            log.info("JWKS %s: keys[%d] has kty %r, ignored (asymmetric keys only)", source, i,
                     kty)
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        alg = jwk.get("alg")
        if alg is not None and alg not in _KEY_FAMILY:
            log.info("JWKS %s: keys[%d] has alg %r, ignored", source, i, alg)
            continue
        try:
            parsed = PyJWK(jwk)
        except jwt.PyJWTError as exc:
            log.warning("JWKS %s: keys[%d] unusable: %s", source, i, exc)
            continue
        keys.append(_Key(kid=jwk.get("kid"), kty=kty, crv=jwk.get("crv"), alg=alg,
                         key=parsed.key))
    if not keys:
        raise IdentityError(f"JWKS from {source} has no usable signature keys")
    return keys


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OidcVerifier:
    """Verifies OIDC ID tokens from one issuer for one audience (or several)."""

    def __init__(
        self,
        issuer: str,
        audience: str | Iterable[str],
        *,
        jwks_file: str | Path | None = None,
        jwks_url: str | None = None,
        algorithms: Iterable[str] = ("RS256", "ES256"),
        leeway: float = 60,
        id_claim: str = "email",
        groups_claim: str = "groups",
        required_claims: Iterable[str] = DEFAULT_REQUIRED_CLAIMS,
        refresh_interval: float = 30,
        cache_ttl: float = 3600,
        http_timeout: float = 5,
    ) -> None:
        if (jwks_file is None) == (jwks_url is None):
            raise ValueError("give exactly one of jwks_file and jwks_url")
        self.algorithms = tuple(algorithms)
        refused = [a for a in self.algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if refused or not self.algorithms:
            raise ValueError(f"algorithms {refused or '[]'} not allowed; choose among "
                             f"{', '.join(ASYMMETRIC_ALGORITHMS)} (asymmetric only)")
        if jwks_url is not None:
            parts = urllib.parse.urlsplit(jwks_url)
            if parts.scheme != "https" and not (parts.scheme == "http"
                                                and _is_loopback(parts.hostname)):
                raise ValueError(f"JWKS URL must be https (plain http only on loopback): "
                                 f"{jwks_url}")
        self.issuer = issuer
        self.audience = [audience] if isinstance(audience, str) else list(audience)
        self.jwks_file = Path(jwks_file) if jwks_file is not None else None
        self.jwks_url = jwks_url
        self.leeway = leeway
        self.id_claim = id_claim
        self.groups_claim = groups_claim
        self.required_claims = list(dict.fromkeys([*required_claims, id_claim]))
        self.refresh_interval = refresh_interval
        self.cache_ttl = cache_ttl
        self.http_timeout = http_timeout
        self._lock = threading.Lock()
        self._keys: list[_Key] | None = None
        self._loaded_at = 0.0
        self._last_attempt = float("-inf")
        self.fetch_count = 0
        """How many times the JWKS was (re)loaded; for tests and metrics."""

    @property
    def source(self) -> str:
        return str(self.jwks_file) if self.jwks_file is not None else str(self.jwks_url)

    # -- keys ------------------------------------------------------------------------------------

    def _fetch(self) -> list[_Key]:
        self.fetch_count += 1
        try:
            if self.jwks_file is not None:
                raw = self.jwks_file.read_bytes()
            else:
                assert self.jwks_url is not None
                request = urllib.request.Request(self.jwks_url,
                                                 headers={"Accept": "application/json"})
                with urllib.request.urlopen(request, timeout=self.http_timeout) as response:
                    raw = response.read(MAX_JWKS_BYTES + 1)
                if len(raw) > MAX_JWKS_BYTES:
                    raise IdentityError(f"JWKS from {self.source} exceeds {MAX_JWKS_BYTES} "
                                        "bytes")
            document = json.loads(raw)
        except (OSError, urllib.error.URLError) as exc:
            raise IdentityError(f"cannot load JWKS from {self.source}: {exc}") from exc
        except ValueError as exc:
            raise IdentityError(f"JWKS from {self.source} is not JSON: {exc}") from exc
        return parse_jwks(document, self.source)

    def refresh(self, *, force: bool = False) -> bool:
        """Reload the JWKS unless it was tried less than `refresh_interval` ago.

        Returns whether a reload happened. Raises `IdentityError` only when no keys were ever
        loaded; a failed refresh over good cached keys is logged and the cache kept.
        """
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last_attempt < self.refresh_interval:
                return False
            self._last_attempt = now
            try:
                keys = self._fetch()
            except IdentityError:
                if self._keys is None:
                    raise
                log.warning("JWKS refresh from %s failed; keeping cached keys", self.source,
                            exc_info=True)
                return False
            self._keys = keys
            self._loaded_at = now
            return True

    def _current_keys(self) -> list[_Key]:
        if self._keys is None:
            self.refresh(force=True)
        elif time.monotonic() - self._loaded_at > self.cache_ttl:
            self.refresh()
        assert self._keys is not None
        return self._keys

    def _find_key(self, kid: str | None, algorithm: str) -> _Key:
        for attempt in range(2):
            keys = self._current_keys()
            if kid is None:
                fitting = [k for k in keys if k.fits(algorithm)]
                if len(fitting) == 1:
                    return fitting[0]
                if len(fitting) > 1:
                    raise IdentityError(f"token has no 'kid' and the JWKS has {len(fitting)} "
                                        f"{algorithm} keys")
            else:
                matching = [k for k in keys if k.kid == kid]
                for key in matching:
                    if key.fits(algorithm):
                        return key
                if matching:
                    raise IdentityError(f"key {kid!r} does not fit algorithm {algorithm} "
                                        f"(key type {matching[0].kty})")
            if attempt == 0 and not self.refresh():
                break
        what = f"signing key {kid!r}" if kid is not None else f"{algorithm} key"
        raise IdentityError(f"unknown {what}: not in the JWKS from {self.source}")

    # -- tokens ----------------------------------------------------------------------------------

    def verify(self, token: str) -> Subject:
        """The subject of a valid ID token; `IdentityError` saying why for any other token."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise IdentityError(f"malformed token: {exc}") from exc
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise IdentityError(f"token algorithm {algorithm!r} not allowed (allowed: "
                                f"{', '.join(self.algorithms)})")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise IdentityError("token 'kid' is not a string")
        key = self._find_key(kid, algorithm)
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[algorithm], audience=self.audience,
                issuer=self.issuer, leeway=self.leeway,
                options={"require": self.required_claims, "verify_signature": True},
            )
        except jwt.ExpiredSignatureError as exc:
            raise IdentityError("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise IdentityError(f"token not valid yet: {exc}") from exc
        except jwt.InvalidAudienceError as exc:
            raise IdentityError(f"token audience not accepted (want one of "
                                f"{self.audience}): {exc}") from exc
        except jwt.InvalidIssuerError as exc:
            raise IdentityError(f"token issuer not accepted (want {self.issuer!r})") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise IdentityError(f"token lacks required claim {exc.claim!r}") from exc
        except jwt.InvalidSignatureError as exc:
            raise IdentityError("token signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise IdentityError(f"invalid token: {exc}") from exc
        return self.subject_from_claims(claims)

    def subject_from_claims(self, claims: dict[str, Any]) -> Subject:
        """Map verified claims to a Subject (`id_claim` -> id, `groups_claim` -> groups)."""
        subject_id = claims.get(self.id_claim)
        if not isinstance(subject_id, str) or not subject_id:
            raise IdentityError(f"token claim {self.id_claim!r} is not a non-empty string")
        if self.id_claim == "email" and claims.get("email_verified") is False:
            raise IdentityError("token e-mail address is not verified (email_verified: false)")
        raw_groups = claims.get(self.groups_claim, [])
        if isinstance(raw_groups, str):
            raw_groups = [raw_groups]
        if not isinstance(raw_groups, list) or not all(isinstance(g, str) for g in raw_groups):
            raise IdentityError(f"token claim {self.groups_claim!r} is not a list of strings")
        return Subject(id=subject_id, groups=tuple(raw_groups), claims=claims)
