"""TLS from the proxy to the upstream server, set with libpq's URL parameters: a throwaway
cluster with `ssl=on` and a certificate made here (its CA, and another CA the server does not
use), every sslmode, hostname checks, a refused certificate reaching the client as a clear
error while the proxy goes on, cancel requests over TLS, and the CLI (the catalog connection
uses the same settings)."""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from adapters.postgres.proxy import PostgresProxy, ProxyConfig
from adapters.postgres.upstream_tls import UpstreamTLS
from tests.postgres.conftest import (
    USERS,
    Directory,
    Hook,
    ProxyThread,
    proxy_dsn,
    wait_until,
)
from tests.support.pg_cluster import (
    SUPERUSER,
    SUPERUSER_PASSWORD,
    ClusterUnavailable,
    PgCluster,
    start_cluster,
)

pytestmark = pytest.mark.postgres
SSL_IN_USE = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


@dataclass
class Pki:
    ca: Path
    wrong_ca: Path
    server: tuple[bytes, bytes]


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _ca(name: str) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate it signed for DNS name `localhost` only (so `127.0.0.1` does
    not match it), and an unrelated CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    tmp = tmp_path_factory.mktemp("upstream-pki")
    ca_cert, ca_key = _ca("ordinance test CA")
    wrong_cert, _ = _ca("some other CA")
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (tmp / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (tmp / "wrong-ca.pem").write_bytes(wrong_cert.public_bytes(pem))
    return Pki(tmp / "ca.pem", tmp / "wrong-ca.pem", (cert.public_bytes(pem), _pem_key(key)))


@pytest.fixture(scope="module")
def tls_cluster(pki: Pki) -> Iterator[PgCluster]:
    try:
        cluster = start_cluster(tls=pki.server)
    except ClusterUnavailable as exc:
        pytest.skip(f"cannot start a TLS cluster: {exc}")
    yield cluster
    cluster.stop()


def url(cluster: PgCluster, query: str = "", host: str = "127.0.0.1") -> str:
    return (f"postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@{host}:{cluster.port}/postgres"
            + (f"?{query}" if query else ""))


def through_proxy(upstream: str) -> tuple[ProxyThread, str]:
    harness = ProxyThread(ProxyConfig(upstream_url=upstream, decide=Hook(),
                                      directory=Directory(USERS), connect_timeout=5))
    return harness, proxy_dsn(harness.port, "postgres")


def upstream_ssl(upstream: str) -> bool:
    """Whether the proxy's upstream connection for a session uses TLS."""
    harness, dsn = through_proxy(upstream)
    try:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(SSL_IN_USE).fetchone()
            assert row is not None
            return bool(row[0])
    finally:
        harness.stop()


@pytest.mark.parametrize(("query", "encrypted"), [
    ("sslmode=disable", False),
    ("sslmode=allow", False),  # plain first, and the server takes it
    ("", True),  # prefer, libpq's default
    ("sslmode=prefer", True),
    ("sslmode=require", True),
])
def test_sslmodes_without_verification(tls_cluster: PgCluster, query: str,
                                       encrypted: bool) -> None:
    assert upstream_ssl(url(tls_cluster, query)) is encrypted


def test_verify_full_and_verify_ca(tls_cluster: PgCluster, pki: Pki) -> None:
    assert upstream_ssl(url(tls_cluster, f"sslmode=verify-full&sslrootcert={pki.ca}",
                            host="localhost"))
    # verify-ca checks the chain only: the certificate does not name 127.0.0.1
    assert upstream_ssl(url(tls_cluster, f"sslmode=verify-ca&sslrootcert={pki.ca}"))
    # libpq's rule: with a root certificate, require verifies the chain too
    assert upstream_ssl(url(tls_cluster, f"sslmode=require&sslrootcert={pki.ca}"))


def test_prefer_falls_back_to_plain_when_tls_fails_as_libpq_does(tls_cluster: PgCluster,
                                                                   pki: Pki) -> None:
    query = f"sslmode=prefer&sslrootcert={pki.wrong_ca}"
    with psycopg.connect(url(tls_cluster, query)) as direct:  # libpq itself
        assert direct.execute(SSL_IN_USE).fetchone() == (False,)
    assert upstream_ssl(url(tls_cluster, query)) is False


@pytest.mark.parametrize(("query", "host", "why"), [
    ("sslmode=verify-full&sslrootcert={wrong}", "localhost",
     "its TLS certificate was not accepted (unable to get local issuer certificate; "
     "sslmode=verify-full)"),
    ("sslmode=verify-ca&sslrootcert={wrong}", "127.0.0.1",
     "its TLS certificate was not accepted (unable to get local issuer certificate; "
     "sslmode=verify-ca)"),
    ("sslmode=require&sslrootcert={wrong}", "127.0.0.1", "unable to get local issuer"),
    ("sslmode=verify-full&sslrootcert={ca}", "127.0.0.1",
     "its TLS certificate was not accepted (IP address mismatch, certificate is not valid "
     "for '127.0.0.1'."),
])
def test_a_refused_certificate_is_a_clear_error_and_the_proxy_goes_on(
        tls_cluster: PgCluster, pki: Pki, query: str, host: str, why: str) -> None:
    upstream = url(tls_cluster, query.format(wrong=pki.wrong_ca, ca=pki.ca), host=host)
    harness, dsn = through_proxy(upstream)
    try:
        for _ in range(2):  # the same answer every time: nothing broke
            with pytest.raises(psycopg.OperationalError) as info:
                psycopg.connect(dsn)
            message = str(info.value)
            assert "FATAL:  upstream PostgreSQL server is unavailable: " in message
            assert why in message, message
        wait_until(lambda: harness.call(lambda: harness.proxy.active_sessions) == 0,
                   "the refused sessions to end")
    finally:
        harness.stop()


def test_prefer_goes_plain_and_require_refuses_a_server_without_tls(
        pg_dsn: str, upstream_db: str) -> None:
    from tests.postgres.conftest import upstream_url

    plain = upstream_url(upstream_db)
    dbname = plain.rsplit("/", 1)[1]
    harness = ProxyThread(ProxyConfig(upstream_url=plain + "?sslmode=prefer", decide=Hook(),
                                      directory=Directory(USERS)))
    try:
        with psycopg.connect(proxy_dsn(harness.port, dbname)) as conn:
            assert conn.execute(SSL_IN_USE).fetchone() == (False,)
    finally:
        harness.stop()
    harness = ProxyThread(ProxyConfig(upstream_url=plain + "?sslmode=require", decide=Hook(),
                                      directory=Directory(USERS)))
    try:
        with pytest.raises(psycopg.OperationalError,
                           match=r"it does not accept TLS connections \(sslmode=require\)"):
            psycopg.connect(proxy_dsn(harness.port, dbname))
    finally:
        harness.stop()


def test_cancel_requests_reach_the_server_over_tls(tls_cluster: PgCluster, pki: Pki) -> None:
    harness, dsn = through_proxy(url(tls_cluster, f"sslmode=verify-full&sslrootcert={pki.ca}",
                                     host="localhost"))
    try:
        with psycopg.connect(dsn) as conn:
            def cancel_soon() -> None:
                time.sleep(0.5)
                conn.cancel_safe()

            thread = threading.Thread(target=cancel_soon)
            thread.start()
            with pytest.raises(errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(30)")
            thread.join(30)
            conn.rollback()
            assert conn.execute(SSL_IN_USE).fetchone() == (True,)
    finally:
        harness.stop()


@pytest.mark.parametrize(("query", "error"), [
    ("sslmode=verify-full", "needs a root certificate"),
    ("sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem", "does not exist"),
    ("sslmode=required", "invalid sslmode 'required'"),
    ("sslmode=require&sslcrl=crl.pem", "'sslcrl' is not supported"),
    ("sslmode=require&sslrootcert=system", "sslrootcert=system needs sslmode=verify-full"),
    ("sslcert=client.pem", "sslcert and sslkey go together"),
])
def test_bad_tls_settings_are_refused_at_start(query: str, error: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt to fall back on
    with pytest.raises(ValueError, match=error):
        PostgresProxy(ProxyConfig(upstream_url=f"postgresql://u:p@db/x?{query}",
                                  decide=Hook(), directory=Directory(USERS)))


def test_defaults_follow_libpq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               pki: Pki) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert UpstreamTLS.from_query("").mode == "prefer"
    assert UpstreamTLS.from_query("sslrootcert=system").mode == "verify-full"
    assert UpstreamTLS.from_query("sslmode=require").ssl_context().verify_mode.name == \
        "CERT_NONE"
    (tmp_path / ".postgresql").mkdir()
    (tmp_path / ".postgresql" / "root.crt").write_bytes(pki.ca.read_bytes())
    context = UpstreamTLS.from_query("sslmode=require").ssl_context()
    assert context is not None and context.verify_mode.name == "CERT_REQUIRED"
    assert not context.check_hostname
    full = UpstreamTLS.from_query("sslmode=verify-full").ssl_context()
    assert full is not None and full.check_hostname
    assert UpstreamTLS.from_query("sslmode=disable").ssl_context() is None


def test_the_cli_reads_the_catalog_over_the_same_tls(tls_cluster: PgCluster, pki: Pki,
                                                     tmp_path: Path) -> None:
    from tests.postgres.test_enforcement_cli import REPO, Running, psql

    with psycopg.connect(url(tls_cluster), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS cards (id int PRIMARY KEY, pan text)")
        conn.execute("INSERT INTO cards VALUES (1, '4111111111111112') ON CONFLICT DO NOTHING")
    from tests.postgres.test_enforcement import USERS_YAML

    users = tmp_path / "users.yaml"
    users.write_text(USERS_YAML)
    upstream = url(tls_cluster, f"sslmode=verify-full&sslrootcert={pki.ca}", host="localhost")
    running = Running(["proxy", "postgres", "--listen", "127.0.0.1:0", "--upstream", upstream,
                       "--policies", str(REPO / "policies"), "--audit",
                       f"sqlite:///{tmp_path / 'audit.db'}", "--users", str(users)], REPO)
    try:
        assert running.ready["upstream_sslmode"] == "verify-full"
        port = int(running.ready["listen"].rsplit(":", 1)[1])
        out = psql(port, "postgres", "SELECT pan FROM cards WHERE id = 1")  # masks: catalog
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "************1112"
        assert psql(port, "postgres", SSL_IN_USE).stdout.strip() == "t"
    finally:
        code, err = running.stop()
    assert code == 0, err


def test_the_cli_refuses_a_tls_setting_it_cannot_honour(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    from engine.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    code = main(["proxy", "postgres", "--upstream", "postgresql://u:p@db/x?sslmode=verify-full",
                 "--policies", "policies", "--audit", f"sqlite:///{tmp_path / 'a.db'}",
                 "--users", "users.yaml"])
    assert code == 2
    assert "sslmode=verify-full needs a root certificate" in capsys.readouterr().err

