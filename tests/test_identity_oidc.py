"""OIDC ID-token verification against real keys, a JWKS file and a JWKS served over HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from engine.identity import IdentityError, Subject
from engine.identity.oidc import OidcVerifier

ISSUER = "https://idp.example.com"
AUDIENCE = "ordinance"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    public = key.public_key()
    algorithm = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
    out: dict[str, Any] = algorithm.to_jwk(public, as_dict=True)
    return {**out, "kid": kid, "use": "sig", **extra}


def write_jwks(path: Path, *keys: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"keys": list(keys)}))
    return path


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
              ec_key: ec.EllipticCurvePrivateKey) -> Path:
    return write_jwks(tmp_path / "jwks.json", jwk(rsa_key, "rsa1"), jwk(ec_key, "ec1"))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u-123",
                           "email": "alice@example.com", "groups": ["dev", "dba"],
                           "iat": now, "exp": now + 300}
    out.update(overrides)
    return {k: v for k, v in out.items() if v is not None}


def sign(key: Any, payload: dict[str, Any], *, kid: str | None = "rsa1",
         alg: str = "RS256") -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def verifier(jwks: Path, **kwargs: Any) -> OidcVerifier:
    kwargs.setdefault("algorithms", ("RS256", "ES256"))
    return OidcVerifier(ISSUER, AUDIENCE, jwks_file=jwks, **kwargs)


# --- accepted ---------------------------------------------------------------------------------

def test_valid_token_maps_claims_to_subject(jwks_file: Path,
                                            rsa_key: rsa.RSAPrivateKey) -> None:
    subject = verifier(jwks_file).verify(sign(rsa_key, claims()))
    assert subject == Subject(id="alice@example.com", groups=("dev", "dba"),
                              claims=subject.claims)
    assert subject.claims["sub"] == "u-123"
    assert subject.to_input() == {"id": "alice@example.com", "groups": ["dev", "dba"],
                                  "claims": subject.claims}


def test_es256_and_custom_claims(jwks_file: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    token = sign(ec_key, claims(roles="admins"), kid="ec1", alg="ES256")
    subject = verifier(jwks_file, id_claim="sub", groups_claim="roles").verify(token)
    assert (subject.id, subject.groups) == ("u-123", ("admins",))


def test_clock_skew_within_leeway_is_accepted(jwks_file: Path,
                                              rsa_key: rsa.RSAPrivateKey) -> None:
    now = int(time.time())
    token = sign(rsa_key, claims(exp=now - 30, nbf=now + 30))
    assert verifier(jwks_file, leeway=60).verify(token).id == "alice@example.com"


def test_token_without_kid_uses_the_only_fitting_key(jwks_file: Path,
                                                    rsa_key: rsa.RSAPrivateKey) -> None:
    assert verifier(jwks_file).verify(sign(rsa_key, claims(), kid=None)).id


def test_audience_list(jwks_file: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, claims(aud=["other", AUDIENCE]))
    assert verifier(jwks_file).verify(token).id == "alice@example.com"


# --- attacks and invalid tokens ---------------------------------------------------------------

def test_alg_none_is_rejected(jwks_file: Path) -> None:
    header = b64url(json.dumps({"alg": "none", "kid": "rsa1"}).encode())
    body = b64url(json.dumps(claims()).encode())
    for token in (f"{header}.{body}.", f"{header}.{body}"):
        with pytest.raises(IdentityError, match=r"algorithm 'none' not allowed|malformed"):
            verifier(jwks_file).verify(token)


def test_hs256_signed_with_the_public_key_is_rejected(jwks_file: Path,
                                                      rsa_key: rsa.RSAPrivateKey) -> None:
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = (b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}).encode())
                     + "." + b64url(json.dumps(claims()).encode()))
    for secret in (pem, pem.strip()):
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        with pytest.raises(IdentityError, match="algorithm 'HS256' not allowed"):
            verifier(jwks_file).verify(f"{signing_input}.{b64url(mac)}")


def test_symmetric_and_none_algorithms_cannot_be_allowed(jwks_file: Path) -> None:
    for algorithms in (("RS256", "HS256"), ("none",), ()):
        with pytest.raises(ValueError, match="asymmetric only"):
            verifier(jwks_file, algorithms=algorithms)


def test_symmetric_keys_in_jwks_are_ignored(tmp_path: Path) -> None:
    secret = {"kty": "oct", "kid": "hmac", "k": b64url(b"x" * 32)}
    jwks = write_jwks(tmp_path / "jwks.json", secret)
    signing_input = (b64url(json.dumps({"alg": "RS256", "kid": "hmac"}).encode()) + "."
                     + b64url(json.dumps(claims()).encode()))
    mac = hmac.new(b"x" * 32, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(IdentityError, match="no usable signature keys"):
        verifier(jwks).verify(f"{signing_input}.{b64url(mac)}")


def test_wrong_key_is_rejected(jwks_file: Path, other_rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(IdentityError, match="signature does not verify"):
        verifier(jwks_file).verify(sign(other_rsa_key, claims()))


def test_tampered_payload_is_rejected(jwks_file: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    header, _body, signature = sign(rsa_key, claims()).split(".")
    forged = b64url(json.dumps(claims(email="mallory@example.com",
                                      groups=["admins"])).encode())
    with pytest.raises(IdentityError, match="signature does not verify"):
        verifier(jwks_file).verify(f"{header}.{forged}.{signature}")


def test_key_type_must_fit_the_algorithm(jwks_file: Path, rsa_key: rsa.RSAPrivateKey,
                                         ec_key: ec.EllipticCurvePrivateKey) -> None:
    # An ES256 token naming the RSA key, and an RS256 token naming the EC key.
    with pytest.raises(IdentityError, match="does not fit algorithm ES256"):
        verifier(jwks_file).verify(sign(ec_key, claims(), kid="rsa1", alg="ES256"))
    with pytest.raises(IdentityError, match="does not fit algorithm RS256"):
        verifier(jwks_file).verify(sign(rsa_key, claims(), kid="ec1"))


def test_jwk_alg_must_match_token_alg(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks = write_jwks(tmp_path / "jwks.json", jwk(rsa_key, "rsa1", alg="PS256"))
    with pytest.raises(IdentityError, match="does not fit algorithm RS256"):
        verifier(jwks, algorithms=("RS256", "PS256")).verify(sign(rsa_key, claims()))
    token = sign(rsa_key, claims(), alg="PS256")
    assert verifier(jwks, algorithms=("RS256", "PS256")).verify(token).id


def test_algorithm_outside_allowlist(jwks_file: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(IdentityError, match="'RS384' not allowed"):
        verifier(jwks_file).verify(sign(rsa_key, claims(), alg="RS384"))


NOW = "now"
"""In a parametrized claim, ("now", offset) is replaced by the time the test runs + offset."""


@pytest.mark.parametrize(("overrides", "message"), [
    ({"exp": (NOW, -120)}, "token expired"),
    ({"nbf": (NOW, 120)}, "not valid yet"),
    ({"iat": (NOW, 120)}, "not valid yet|iat"),
    ({"aud": "someone-else"}, "audience not accepted"),
    ({"iss": "https://evil.example.com"}, "issuer not accepted"),
    ({"sub": None}, "lacks required claim 'sub'"),
    ({"exp": None}, "lacks required claim 'exp'"),
    ({"email": None}, "lacks required claim 'email'"),
    ({"email": ""}, "'email' is not a non-empty string"),
    ({"email_verified": False}, "not verified"),
    ({"groups": "dev,dba"}, None),                 # a single string is one group: accepted
    ({"groups": [1, 2]}, "'groups' is not a list of strings"),
])
def test_invalid_claims_are_rejected(jwks_file: Path, rsa_key: rsa.RSAPrivateKey,
                                     overrides: dict[str, Any], message: str | None) -> None:
    now = int(time.time())
    resolved = {k: now + v[1] if isinstance(v, tuple) and v[0] == NOW else v
                for k, v in overrides.items()}
    token = sign(rsa_key, claims(**resolved))
    if message is None:
        assert verifier(jwks_file).verify(token).groups == ("dev,dba",)
        return
    with pytest.raises(IdentityError, match=message):
        verifier(jwks_file).verify(token)


def test_malformed_tokens(jwks_file: Path) -> None:
    for token in ("", "abc", "a.b.c", "....", "eyJhbGciOiJSUzI1NiJ9.e30"):
        with pytest.raises(IdentityError):
            verifier(jwks_file).verify(token)


# --- key cache --------------------------------------------------------------------------------

def test_unknown_kid_refreshes_then_rejects(jwks_file: Path, rsa_key: rsa.RSAPrivateKey,
                                            other_rsa_key: rsa.RSAPrivateKey) -> None:
    v = verifier(jwks_file, refresh_interval=0)
    v.verify(sign(rsa_key, claims()))
    assert v.fetch_count == 1
    with pytest.raises(IdentityError, match="unknown signing key 'rotated'"):
        v.verify(sign(other_rsa_key, claims(), kid="rotated"))
    assert v.fetch_count == 2
    # The issuer rotates: the new key appears in the JWKS and is picked up on the next miss.
    write_jwks(jwks_file, jwk(rsa_key, "rsa1"), jwk(other_rsa_key, "rotated"))
    assert v.verify(sign(other_rsa_key, claims(), kid="rotated")).id
    assert v.fetch_count == 3
    v.verify(sign(other_rsa_key, claims(), kid="rotated"))
    assert v.fetch_count == 3


def test_unknown_kid_refresh_is_rate_limited(jwks_file: Path, rsa_key: rsa.RSAPrivateKey,
                                             other_rsa_key: rsa.RSAPrivateKey) -> None:
    v = verifier(jwks_file, refresh_interval=60)
    v.verify(sign(rsa_key, claims()))
    for i in range(5):
        with pytest.raises(IdentityError, match="unknown signing key"):
            v.verify(sign(other_rsa_key, claims(), kid=f"forged-{i}"))
    assert v.fetch_count == 1


def test_failed_refresh_keeps_cached_keys(jwks_file: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    v = verifier(jwks_file, refresh_interval=0, cache_ttl=0)
    v.verify(sign(rsa_key, claims()))
    jwks_file.write_text("not json")
    assert v.verify(sign(rsa_key, claims())).id == "alice@example.com"
    assert v.fetch_count >= 2


def test_unreadable_jwks_is_an_identity_error(tmp_path: Path,
                                              rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(IdentityError, match="cannot load JWKS"):
        verifier(tmp_path / "missing.json").verify(sign(rsa_key, claims()))
    (tmp_path / "bad.json").write_text('{"keys": "nope"}')
    with pytest.raises(IdentityError, match="'keys' list"):
        verifier(tmp_path / "bad.json").verify(sign(rsa_key, claims()))


def test_constructor_arguments(jwks_file: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        OidcVerifier(ISSUER, AUDIENCE)
    with pytest.raises(ValueError, match="exactly one"):
        OidcVerifier(ISSUER, AUDIENCE, jwks_file=jwks_file, jwks_url="https://x/jwks")
    with pytest.raises(ValueError, match="must be https"):
        OidcVerifier(ISSUER, AUDIENCE, jwks_url="http://idp.example.com/jwks")


# --- JWKS over HTTP ---------------------------------------------------------------------------

class _JwksServer:
    def __init__(self) -> None:
        self.body = b"{}"
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, *keys: dict[str, Any]) -> None:
        self.body = json.dumps({"keys": list(keys)}).encode()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks_server() -> Iterator[_JwksServer]:
    server = _JwksServer()
    yield server
    server.close()


def test_jwks_url(jwks_server: _JwksServer, rsa_key: rsa.RSAPrivateKey,
                  other_rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.serve(jwk(rsa_key, "rsa1"))
    v = OidcVerifier(ISSUER, AUDIENCE, jwks_url=jwks_server.url, refresh_interval=0)
    assert v.verify(sign(rsa_key, claims())).id == "alice@example.com"
    assert v.verify(sign(rsa_key, claims())).id == "alice@example.com"
    assert jwks_server.requests == 1                       # cached
    with pytest.raises(IdentityError, match="unknown signing key 'k2'"):
        v.verify(sign(other_rsa_key, claims(), kid="k2"))
    assert jwks_server.requests == 2                       # refreshed once, then rejected
    jwks_server.serve(jwk(rsa_key, "rsa1"), jwk(other_rsa_key, "k2"))
    assert v.verify(sign(other_rsa_key, claims(), kid="k2")).id
    assert jwks_server.requests == 3


def test_jwks_url_unreachable(rsa_key: rsa.RSAPrivateKey) -> None:
    server = _JwksServer()
    url = server.url
    server.close()
    v = OidcVerifier(ISSUER, AUDIENCE, jwks_url=url, http_timeout=2)
    with pytest.raises(IdentityError, match="cannot load JWKS"):
        v.verify(sign(rsa_key, claims()))
