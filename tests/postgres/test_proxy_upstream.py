"""Robustness of the proxy: upstream down / back / dying mid-session, administrator shutdown,
failing decision hooks, token authentication over TLS and loopback, and no descriptor leaks
across many sessions."""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from adapters.enforcement.hooks import SessionContext, StatementVerdict
from adapters.postgres.proxy import ProxyConfig
from tests.postgres.conftest import (
    USERS,
    Directory,
    Hook,
    ProxyThread,
    proxy_dsn,
    upstream_url,
    wait_until,
)
from tests.support.pg_cluster import free_port

pytestmark = pytest.mark.postgres


class Forwarder:
    """A TCP relay standing in for the upstream server, which a test can stop and start."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


def _target(upstream_db: str) -> tuple[str, int]:
    from psycopg.conninfo import conninfo_to_dict
    p = conninfo_to_dict(upstream_db)
    return str(p["host"]), int(p["port"])


@pytest.fixture
def flaky(upstream_db: str, dbname: str) -> Iterator[tuple[ProxyThread, Forwarder]]:
    port = free_port()
    url = upstream_url(upstream_db).replace(f":{_target(upstream_db)[1]}/", f":{port}/")
    harness = ProxyThread(ProxyConfig(upstream_url=url, decide=Hook(),
                                      directory=Directory(USERS), connect_timeout=5))
    forwarder = Forwarder(port, _target(upstream_db))
    yield harness, forwarder
    harness.run(forwarder.stop())
    harness.stop()


def test_upstream_down_then_back_then_dying_mid_session(
        flaky: tuple[ProxyThread, Forwarder], dbname: str) -> None:
    harness, forwarder = flaky
    dsn = proxy_dsn(harness.port, dbname)
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(dsn)
    assert "FATAL:  upstream PostgreSQL server is unavailable: Connect call failed" in str(
        info.value)

    harness.run(forwarder.start())
    conn = psycopg.connect(dsn)
    assert conn.execute("SELECT 1").fetchone() == (1,)
    harness.run(forwarder.stop())
    with pytest.raises(psycopg.OperationalError) as lost:
        conn.execute("SELECT 2")
    assert "upstream PostgreSQL server closed the connection unexpectedly" in str(lost.value)
    conn.close()

    harness.run(forwarder.start())
    with psycopg.connect(dsn) as again:
        assert again.execute("SELECT 3").fetchone() == (3,)
    wait_until(lambda: harness.call(lambda: harness.proxy.active_sessions) == 0,
               "sessions to end")


def test_administrator_shutdown_is_relayed(proxy: ProxyThread, dbname: str,
                                           upstream_db: str) -> None:
    conn = psycopg.connect(proxy_dsn(proxy.port, dbname, application_name="victim"))
    with psycopg.connect(upstream_db, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'victim'")
    with pytest.raises(errors.AdminShutdown):
        conn.execute("SELECT 1")
    conn.close()
    with psycopg.connect(proxy_dsn(proxy.port, dbname)) as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)


def test_failing_or_hanging_decision_denies(upstream_db: str, dbname: str) -> None:
    async def decide(sql: str, ctx: SessionContext) -> StatementVerdict:
        if "explode" in sql:
            raise RuntimeError("engine down")
        if "hang" in sql:
            await asyncio.sleep(3600)
        if "weird" in sql:
            return "allow"  # type: ignore[return-value]
        return StatementVerdict.allow()

    harness = ProxyThread(ProxyConfig(upstream_url=upstream_url(upstream_db), decide=decide,
                                      directory=Directory(USERS), decide_timeout=0.2))
    try:
        with psycopg.connect(proxy_dsn(harness.port, dbname), autocommit=True) as conn:
            for sql, reason in [("SELECT 'explode'", "the policy decision failed"),
                                ("SELECT 'hang'", "the policy decision timed out"),
                                ("SELECT 'weird'", "the policy decision failed")]:
                with pytest.raises(errors.InsufficientPrivilege, match=reason):
                    conn.execute(sql)
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        harness.stop()


def test_no_descriptor_leaks_across_many_sessions(proxy: ProxyThread, dbname: str) -> None:
    """1000 sequential sessions: complete ones (a query and a denial through psycopg) mixed
    with clients that vanish before or during start-up, bogus cancel requests and garbage.
    The process ends with as many descriptors as it had and no session left behind."""
    from adapters.postgres import messages as m

    async def short_lived(port: int, kind: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if kind == 1:  # start up, then vanish during SCRAM
            writer.write(m.StartupMessage((("user", "alice"), ("database", dbname))).encode())
            await reader.read(100)
        elif kind == 2:  # a cancel request with a bogus key
            writer.write(m.CancelRequest(kind, b"abcd").encode())
            await reader.read(100)
        elif kind == 3:  # garbage
            writer.write(b"\x00\x00\x00\x08\x00\x00\x00\x00")
            await reader.read(100)
        writer.close()
        await writer.wait_closed()

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    dsn = proxy_dsn(proxy.port, dbname)
    with psycopg.connect(dsn) as conn:  # warm up thread pools and the like, then measure
        conn.execute("SELECT 1")
    before = fds()
    for i in range(1000):
        if i % 5 == 4:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SELECT 1")
                with pytest.raises(errors.InsufficientPrivilege):
                    conn.execute("SELECT 'forbidden'")
        else:
            proxy.run(short_lived(proxy.port, i % 5))
    wait_until(lambda: proxy.call(lambda: proxy.proxy.active_sessions) == 0, "sessions to end")
    assert fds() <= before + 2


# ------------------------------------------------------------------------------------------
# Token authentication and TLS


class Subject:
    def __init__(self, id: str, groups: tuple[str, ...]) -> None:
        self.id = id
        self.groups = groups
        self.claims = {"iss": "https://idp.example"}


def verify_token(token: str) -> Subject:
    if token != "good-token":
        raise ValueError("signature verification failed")
    return Subject("carol@example.com", ("analysts",))


def _self_signed(tmp: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return context


def _external_address() -> str | None:
    """A non-loopback address of this machine (no packet is sent), or None."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture(scope="module")
def tls_proxy(upstream_db: str, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[ProxyThread, Hook]]:
    hook = Hook()
    harness = ProxyThread(ProxyConfig(
        upstream_url=upstream_url(upstream_db), decide=hook, directory=Directory(USERS),
        verify_token=verify_token, server_ssl=_self_signed(tmp_path_factory.mktemp("tls")),
        host="0.0.0.0" if _external_address() else "127.0.0.1"))
    yield harness, hook
    harness.stop()


def test_token_needs_tls_off_loopback(tls_proxy: tuple[ProxyThread, Hook], dbname: str) -> None:
    harness, _ = tls_proxy
    address = _external_address()
    if address is None:
        pytest.skip("no non-loopback address on this machine")
    base = proxy_dsn(harness.port, dbname, "carol", password="good-token").replace(
        "host='127.0.0.1'", f"host='{address}'")
    with pytest.raises(psycopg.OperationalError,
                       match="token authentication requires a TLS"):
        psycopg.connect(base)
    with psycopg.connect(base.replace("sslmode='disable'", "sslmode='require'")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_token_as_password(tls_proxy: tuple[ProxyThread, Hook], dbname: str,
                           sslmode: str) -> None:
    harness, hook = tls_proxy
    dsn = proxy_dsn(harness.port, dbname, "carol", password="good-token", sslmode=sslmode)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 'token ok'").fetchone() == ("token ok",)
        assert conn.info.pgconn.ssl_in_use is (sslmode == "require")
    ctx: Any = next(c for s, c in reversed(hook.seen) if "token ok" in s)
    assert (ctx.user, ctx.groups, ctx.auth_method, ctx.requested_user, ctx.tls) == (
        "carol@example.com", ("analysts",), "token", "carol", sslmode == "require")
    assert ctx.claims == {"iss": "https://idp.example"}
    with pytest.raises(psycopg.OperationalError,
                       match='password authentication failed for user "carol"'):
        psycopg.connect(proxy_dsn(harness.port, dbname, "carol", password="forged",
                                  sslmode=sslmode))


def test_scram_over_tls(tls_proxy: tuple[ProxyThread, Hook], dbname: str) -> None:
    harness, hook = tls_proxy
    with psycopg.connect(proxy_dsn(harness.port, dbname, "bob", sslmode="require")) as conn:
        assert conn.info.pgconn.ssl_in_use
        assert conn.execute("SELECT 'tls scram'").fetchone() == ("tls scram",)
    ctx: Any = next(c for s, c in reversed(hook.seen) if "tls scram" in s)
    assert (ctx.user, ctx.auth_method, ctx.tls) == ("bob", "scram-sha-256", True)


def test_wrong_upstream_credentials_are_not_revealed(upstream_db: str, dbname: str) -> None:
    url = upstream_url(upstream_db).replace(":ordinance-test@", ":wrong@")
    harness = ProxyThread(ProxyConfig(upstream_url=url, decide=Hook(),
                                      directory=Directory(USERS)))
    try:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(proxy_dsn(harness.port, dbname))
        assert "did not accept the proxy's login" in str(info.value)
        assert "postgres" not in str(info.value).split("FATAL:")[1]
    finally:
        harness.stop()


def test_a_slow_reader_over_tls_gets_a_large_result_whole(
        tls_proxy: tuple[ProxyThread, Hook], dbname: str) -> None:
    """Flow control through the TLS transport: the proxy stops reading the server while the
    client does not read, and resumes."""
    import time

    from adapters.postgres import messages as m
    from adapters.postgres.auth import UpstreamLogin
    from tests.postgres.test_proxy_protocol import RawClient

    harness, _ = tls_proxy
    client = RawClient(harness.port, dbname, startup=False)
    try:
        client.send(m.SSLRequest())
        assert client.sock.recv(1) == b"S"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        client.sock = context.wrap_socket(client.sock)
        client.send(m.StartupMessage((("user", "bob"), ("database", dbname))))
        login = UpstreamLogin("bob", USERS["bob"][0])
        while not isinstance(message := client.recv(), m.ReadyForQuery):
            assert not isinstance(message, m.ErrorResponse), message
            if isinstance(message, m.Authentication):
                client.send(*login.receive(message))
        client.send(m.Query("SELECT g, repeat('x', 2000) FROM generate_series(1, 20000) g"))
        time.sleep(0.5)  # ~40 MB waiting
        rows = [x for x in client.until_ready() if isinstance(x, m.DataRow)]
        assert [int(r.values[0] or b"0") for r in rows] == list(range(1, 20001))
        client.send(m.Query("SELECT 'still here'"))
        assert any(isinstance(x, m.DataRow) and x.values == (b"still here",)
                   for x in client.until_ready())
    finally:
        client.close()
