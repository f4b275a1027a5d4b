"""TLS to clients (MySQL's SSLRequest mid-handshake) and OIDC ID tokens sent with
mysql_clear_password, through a real MariaDB and PyMySQL."""

from __future__ import annotations

import datetime
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pymysql
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm

from engine.identity.oidc import OidcVerifier
from engine.service.tls import tls_config
from tests.mysql.stack import PASSWORDS, Stack, open_stack

ISSUER, AUDIENCE = "https://idp.example.com", "ordinance"


def _certificate(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def tls_stack(mysql_dsn: str, tmp_path_factory: pytest.TempPathFactory,
              signing_key: rsa.RSAPrivateKey) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("mysql-tls")
    cert, key = _certificate(tmp)
    tls = tls_config(str(cert), str(key), None)
    assert tls is not None
    jwks = tmp / "jwks.json"
    public = RSAAlgorithm.to_jwk(signing_key.public_key(), as_dict=True)
    jwks.write_text('{"keys": [' + __import__("json").dumps({**public, "kid": "k1"}) + "]}")
    verifier = OidcVerifier(ISSUER, AUDIENCE, jwks_file=jwks)
    with open_stack(mysql_dsn, tmp, server_ssl=tls.ssl_context(),
                    verify_token=verifier.verify) as running:
        yield running


def _client_tls() -> dict[str, object]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return {"ssl": context}


def _token(key: rsa.RSAPrivateKey, **claims: object) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u-1", "email": "oidc-user@example.com",
               "groups": ["dev"],
               "iat": now, "exp": now + 300, **claims}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "k1"})


def test_tls_login_with_full_authentication_in_clear(tls_stack: Stack) -> None:
    """scr has only a SCRAM verifier: caching_sha2 full authentication, the password sent in
    clear inside TLS."""
    with tls_stack.connect("scr", **_client_tls()) as conn, conn.cursor() as cur:
        cur.execute("SELECT pan FROM cards WHERE id = 2")
        assert cur.fetchall() == (("************1112",),)
    start = [r for r in tls_stack.records("session.start") if r["user"] == "scr"][-1]
    assert start["tls"] is True


def test_oidc_token_over_tls(tls_stack: Stack, signing_key: rsa.RSAPrivateKey) -> None:
    token = _token(signing_key)
    with tls_stack.connect("oidc-user", token, **_client_tls()) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchall() == ((1,),)
    start = [r for r in tls_stack.records("session.start")
             if r["user"] == "oidc-user@example.com"][-1]
    assert start["auth_method"] == "oidc-token" and start["groups"] == ["dev"]


def test_oidc_token_refused_without_tls_or_when_bad(tls_stack: Stack,
                                                    signing_key: rsa.RSAPrivateKey) -> None:
    # without TLS no cleartext plugin: caching_sha2 full authentication, which PyMySQL tries
    # with RSA (a token is longer than RSA-OAEP can carry: it fails in the client)
    with pytest.raises((pymysql.err.OperationalError, ValueError)):
        tls_stack.connect("oidc-user", _token(signing_key), ssl_disabled=True)
    assert not [r for r in tls_stack.records("session.start")
                if r["auth_method"] == "oidc-token" and not r["tls"]]
    with pytest.raises(pymysql.err.OperationalError) as exc:
        tls_stack.connect("oidc-user", _token(signing_key, aud="someone-else"),
                          **_client_tls())
    assert exc.value.args[0] == 1045
    assert PASSWORDS  # directory users still log in
    with tls_stack.connect("alice", **_client_tls()) as conn, conn.cursor() as cur:
        cur.execute("SELECT 2")
        assert cur.fetchall() == ((2,),)
