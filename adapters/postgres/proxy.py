"""The asyncio PostgreSQL proxy: a thin loop around the codec, the session bookkeeping and the
two authentications.

Owns: listening, TLS towards clients and upstream (`upstream_tls`), the start-up negotiation
(SSLRequest, GSSENCRequest, CancelRequest, StartupMessage), client authentication, one upstream
connection per client made with the proxy's own credentials, proxy-issued cancel keys, the
relay (`_Relay`: both directions of a session), and every teardown path (client gone, upstream
gone, protocol error). Must not: parse SQL, hold policy, or decode protocol bytes itself
(`codec`, `session` and `auth` do).

Choices worth knowing:
- Upstream TLS follows the URL's libpq parameters (`sslmode`, default `prefer`; `sslrootcert`,
  `sslcert`, `sslkey`; see `upstream_tls`). A TLS failure is reported to the client as the
  upstream being unavailable, saying why (certificate not accepted, TLS refused).
- The client must ask for the upstream URL's database (or leave it to default to its user
  name when that is the same); anything else is refused with 3D000. One proxy serves one
  database, so what a policy calls the resource is never ambiguous.
- Only a small set of start-up parameters is forwarded upstream (`FORWARDED_PARAMETERS`);
  `options` (which could set any GUC, `role` included) and replication are refused or dropped.
- A client is authenticated with SCRAM-SHA-256 when the directory knows its user name; else,
  when a token verifier is configured, with "OIDC token as the password" over cleartext
  password auth, which is offered only on TLS or loopback connections.
- Once a session is set up, its bytes are handled in the transports' callbacks (asyncio
  protocols), not in reading tasks: what one arrival of bytes produces is sent on in one write,
  and a hook that answers without waiting (an in-process decision, a cached catalog lookup) is
  run inline. Only a hook that waits moves its side into a task, and what that side sends
  meanwhile waits for it (flow control stops a side whose peer is not reading).
- Statement decisions are made before anything goes upstream; a decision hook that fails or
  exceeds `decide_timeout` denies (fail closed).
- A verdict with `hold` (review) parks only its own session: the client side awaits the hold
  while still reading what the client sends (a hang-up ends the hold; a CancelRequest with the
  session's key cancels it, and the client gets 57014 as for a cancelled query); no decision
  timeout applies to it. A cancelled hold is awaited (boundedly), so what it records is done
  before the client hears of it or the session's end is recorded.
- A verdict with a row budget (`rows`) is metered as its DataRows arrive: at most the room
  left is relayed; at the next row the server side stops (relaying, then past
  `BUSY_READ_LIMIT` reading: backpressure) and the client side stops sending, while the
  budget's hold runs like a review's. Approved: the rest flows. Otherwise the statement is
  cancelled upstream (unless its end is already buffered) and ended with the hold's error
  (`Session.cut`); the session goes on.
- The end of an allowed statement's result (CommandComplete, ErrorResponse, ...) is held until
  the verdict's `on_complete` has returned (the audit record is durable first); if it fails,
  the result is withheld and the session ends with SQLSTATE 58030. Up to `HOLD_BEFORE_END`
  bytes of rows before the end are held with it, so a small answer leaves in one write.
- `session_started` is awaited before the client learns it is logged in (raising refuses the
  session); `session_ended` when it is over, with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
import secrets
import ssl
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from adapters.enforcement.hooks import (
    HOLD_CANCELLED,
    HOLD_CLIENT_GONE,
    DecideHook,
    HoldHook,
    RefusalHook,
    RowLimit,
    SessionContext,
    SessionEndHook,
    SessionStartHook,
    StatementVerdict,
)
from adapters.enforcement.session_ids import new_session_id
from adapters.postgres.auth import (
    SCRAM_SHA_256,
    AuthFailed,
    ScramServerExchange,
    TokenVerifier,
    UpstreamAuthError,
    UpstreamLogin,
    UserDirectory,
    is_loopback,
    password_failed,
)
from adapters.postgres.codec import (
    DEFAULT_MAX_MESSAGE_SIZE,
    BackendDecoder,
    Frame,
    FrontendDecoder,
    ProtocolError,
)
from adapters.postgres.descriptors import ColumnDescriptor
from adapters.postgres.messages import (
    Authentication,
    AuthenticationCleartextPassword,
    AuthenticationOk,
    AuthenticationOther,
    AuthenticationSASL,
    AuthResponse,
    BackendKeyData,
    CancelRequest,
    ErrorResponse,
    FrontendMessage,
    GSSENCRequest,
    Message,
    NegotiateProtocolVersion,
    NoticeResponse,
    ParameterStatus,
    ReadyForQuery,
    SSLRequest,
    StartupMessage,
    Terminate,
)
from adapters.postgres.results import RewriteError
from adapters.postgres.session import (
    SUPPORTED_CLIENT_ENCODINGS,
    Completion,
    Refusal,
    Session,
    SessionError,
    denial_error,
    notice_frame,
)
from adapters.postgres.upstream_tls import UpstreamTLS, UpstreamTLSError, describe_failure

log = logging.getLogger("ordinance.adapters.postgres")
_T = TypeVar("_T")

READ_SIZE = 256 * 1024
BUSY_READ_LIMIT = 128 * 1024  # what a side waiting for a hook buffers before it stops reading
HOLD_BEFORE_END = 4 * 1024  # result bytes held back to go out with the end of a statement
_STATEMENT_ENDS = frozenset({b"C", b"E", b"s", b"I", b"Z"})
AUTH_MESSAGE_LIMIT = 64 * 1024  # bounds what an unauthenticated client can make us buffer
FORWARDED_PARAMETERS = ("application_name", "client_encoding", "DateStyle", "TimeZone",
                        "IntervalStyle", "extra_float_digits")


@dataclass(frozen=True)
class UpstreamTarget:
    host: str
    port: int
    user: str
    password: str | None
    database: str
    tls: UpstreamTLS = field(default_factory=UpstreamTLS)

    @classmethod
    def from_url(cls, url: str) -> UpstreamTarget:
        """`postgresql://USER[:PASS]@HOST[:PORT][/DB][?sslmode=…&sslrootcert=…]`; DB defaults
        to USER; the TLS parameters are libpq's (`upstream_tls`)."""
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"upstream URL must start with postgresql://, got {parts.scheme!r}")
        if not parts.username:
            raise ValueError("upstream URL has no user name")
        user = unquote(parts.username)
        database = unquote(parts.path.lstrip("/")) or user
        return cls(parts.hostname or "localhost", parts.port or 5432, user,
                   None if parts.password is None else unquote(parts.password), database,
                   UpstreamTLS.from_query(parts.query))


@dataclass
class ProxyConfig:
    """Everything a `PostgresProxy` needs; `decide` is the statement decision hook."""

    upstream_url: str
    decide: DecideHook
    directory: UserDirectory | None = None
    verify_token: TokenVerifier | None = None
    host: str = "127.0.0.1"
    port: int = 0
    server_ssl: ssl.SSLContext | None = None
    upstream_ssl: ssl.SSLContext | None = None  # replaces the URL's TLS settings; TLS required
    allow_function_call: bool = False
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    auth_timeout: float = 30.0
    connect_timeout: float = 10.0
    decide_timeout: float = 30.0
    session_started: SessionStartHook | None = None
    session_ended: SessionEndHook | None = None
    refused: RefusalHook | None = None  # records the proxy's own denials
    session_hook_timeout: float = 30.0
    # applied to the strings of the server's errors, notices and notifications (the PAN
    # backstop: they can quote values from masked columns)
    scrub_server_text: Callable[[bytes], bytes] | None = None


class _ClientGone(ConnectionError):
    """The client hung up while its statement was held."""


class _UpstreamRefused(Exception):
    def __init__(self, error: ErrorResponse) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class _Identity:
    user: str
    groups: tuple[str, ...]
    method: str
    requested_user: str
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class _Upstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    decoder: BackendDecoder
    key: BackendKeyData | None
    greeting: list[bytes]
    fatal_seen: bool = False


class _Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrontendDecoder(max_message_size=AUTH_MESSAGE_LIMIT)
        self.tls = False
        self.peer: Any = writer.get_extra_info("peername")

    @property
    def address(self) -> str:
        if isinstance(self.peer, tuple) and self.peer:
            return str(self.peer[0])
        return str(self.peer or "local")

    async def read(self) -> FrontendMessage | None:
        """The next message, or None when the client hung up."""
        while True:
            message = self.decoder.next_message()
            if message is not None:
                return message
            data = await self.reader.read(READ_SIZE)
            if not data:
                return None
            self.decoder.feed(data)

    async def send(self, *messages: Message) -> None:
        self.writer.write(b"".join(m.encode() for m in messages))
        await self.writer.drain()

    async def fatal(self, error: ErrorResponse) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError, OSError):
            await self.send(error)


def _unread_bytes(reader: asyncio.StreamReader) -> int:
    """Bytes a StreamReader holds that nobody read yet (StreamReader has no public accessor).
    Checked just before switching to TLS, where such bytes would be clear-text injections
    (CVE-2021-23214 / CVE-2021-23222)."""
    buffer = getattr(reader, "_buffer", b"")
    return len(buffer)


def _dropped_parameters_notice(startup: StartupMessage) -> bytes:
    """A notice naming the start-up parameters the proxy did not forward (b"" if none), so a
    client's `options=-c search_path=...` does not vanish silently."""
    dropped = [name for name, _ in startup.params
               if name not in ("user", "database", "replication", *FORWARDED_PARAMETERS)]
    if not dropped:
        return b""
    return notice_frame(
        f"the Ordinance proxy did not forward the start-up parameter(s) {', '.join(dropped)} "
        "(they can change any setting, the role included): use SET after connecting")


def _fatal(code: str, message: str, **extra: str | None) -> ErrorResponse:
    return ErrorResponse.build(code, message, severity="FATAL", **extra)


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
        async with asyncio.timeout(5):
            await writer.wait_closed()


class PostgresProxy:
    """`await start()`, then clients connect to `host:port`; `await close()` ends everything."""

    def __init__(self, config: ProxyConfig) -> None:
        if config.directory is None and config.verify_token is None:
            raise ValueError("a PostgreSQL proxy needs a user directory or a token verifier")
        self.config = config
        self.target = UpstreamTarget.from_url(config.upstream_url)
        self._tls = (UpstreamTLS("require", context=config.upstream_ssl)
                     if config.upstream_ssl is not None else self.target.tls)
        self._tls_context = self._tls.ssl_context()  # ValueError: a bad TLS configuration
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cancel_keys: dict[int, tuple[bytes, BackendKeyData | None]] = {}
        self._holds: dict[int, asyncio.Task[StatementVerdict]] = {}
        self._ending: set[asyncio.Future[None]] = set()
        self._mock_secret = secrets.token_bytes(32)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def active_sessions(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, self.config.host,
                                                  self.config.port)
        log.info("postgres proxy listening on %s:%d for %s:%d/%s", self.config.host, self.port,
                 self.target.host, self.target.port, self.target.database)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._ending:  # session-end hooks of the sessions just cancelled
            await asyncio.wait(set(self._ending), timeout=self.config.session_hook_timeout)
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> PostgresProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----------------------------------------------------------------------------------------
    # One client connection

    async def _on_client(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        client = _Client(reader, writer)
        try:
            await self._serve(client)
        except asyncio.CancelledError:
            pass
        except ProtocolError as exc:
            log.info("client %s: protocol error: %s", client.address, exc)
            await client.fatal(_fatal("08P01", f"invalid frontend message: {exc}"))
        except (ConnectionError, OSError) as exc:
            log.info("client %s: connection lost: %s", client.address, exc)
        except Exception:
            log.exception("client %s: unexpected error", client.address)
            await client.fatal(_fatal("XX000", "internal error in the ordinance proxy"))
        finally:
            await _close_writer(writer)
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, client: _Client) -> None:
        try:
            async with asyncio.timeout(self.config.auth_timeout):
                startup = await self._negotiate(client)
                if startup is None:
                    return
                identity = await self._admit(client, startup)
                if identity is None:
                    return
        except TimeoutError:
            await client.fatal(_fatal("08006", "authentication timed out"))
            return
        ctx = SessionContext(
            protocol="postgres",
            session_id=new_session_id(), user=identity.user, groups=identity.groups,
            database=self.target.database,
            application_name=startup.get("application_name") or "",
            client_addr=client.address, tls=client.tls, auth_method=identity.method,
            requested_user=identity.requested_user, claims=identity.claims)
        try:
            upstream = await self._connect_upstream(startup)
        except _UpstreamRefused as exc:
            await client.fatal(exc.error)
            return
        except (OSError, TimeoutError, UpstreamAuthError, ProtocolError) as exc:
            log.warning("session %s: upstream %s:%d unavailable: %s", ctx.session_id,
                        self.target.host, self.target.port, exc)
            await client.fatal(_fatal(
                "08006", f"upstream PostgreSQL server is unavailable: {_describe(exc)}",
                detail=f"the ordinance proxy could not connect to {self.target.host}:"
                       f"{self.target.port}"))
            return
        if self.config.session_started is not None:
            try:
                async with asyncio.timeout(self.config.session_hook_timeout):
                    await self.config.session_started(ctx)
            except Exception as exc:
                log.error("session %s: refused, the session could not be recorded: %s",
                          ctx.session_id, exc)
                await client.fatal(_fatal("08004", "the session could not be recorded; "
                                          "refused (see the proxy log)"))
                await _close_writer(upstream.writer)
                return
        pid, secret = self._issue_key(upstream.key)
        reason = "client disconnected"
        try:
            client.writer.write(AuthenticationOk().encode() + b"".join(upstream.greeting)
                                + _dropped_parameters_notice(startup)
                                + BackendKeyData(pid, secret).encode()
                                + ReadyForQuery("I").encode())
            await client.writer.drain()
            log.info("session %s: %s (%s) connected from %s", ctx.session_id, ctx.user,
                     ctx.auth_method, ctx.client_addr)
            reason = await self._relay(client, upstream, ctx, pid)
        except asyncio.CancelledError:
            reason = "proxy shutdown"
            with contextlib.suppress(Exception):  # as PostgreSQL says it on a fast shutdown
                client.writer.write(_fatal("57P01", "terminating connection due to "
                                           "administrator command").encode())
            raise
        except Exception as exc:
            reason = f"error: {type(exc).__name__}: {exc}"
            raise
        finally:
            self._cancel_keys.pop(pid, None)
            await _close_writer(upstream.writer)
            if self.config.session_ended is not None:
                await self._session_ended(ctx, reason)

    async def _session_ended(self, ctx: SessionContext, reason: str) -> None:
        """Run the session-end hook to completion even when this session is being cancelled
        (the proxy shutting down): `close()` waits for such hooks."""
        assert self.config.session_ended is not None

        async def record() -> None:
            try:
                async with asyncio.timeout(self.config.session_hook_timeout):
                    await self.config.session_ended(ctx, reason)  # type: ignore[misc]
            except Exception as exc:
                log.error("session %s: session end not recorded: %r", ctx.session_id, exc)

        task = asyncio.ensure_future(record())
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)
        await asyncio.shield(task)

    def _issue_key(self, upstream_key: BackendKeyData | None) -> tuple[int, bytes]:
        while True:
            pid = secrets.randbelow(2**31 - 2) + 1
            if pid not in self._cancel_keys:
                break
        secret = secrets.token_bytes(4)
        self._cancel_keys[pid] = (secret, upstream_key)
        return pid, secret

    # ----------------------------------------------------------------------------------------
    # Start-up and authentication

    async def _negotiate(self, client: _Client) -> StartupMessage | None:
        """SSL / GSS negotiation and cancel requests, up to the StartupMessage."""
        while True:
            message = await client.read()
            if message is None:
                return None
            if isinstance(message, SSLRequest):
                if self.config.server_ssl is None or client.tls:
                    client.writer.write(b"N")
                    await client.writer.drain()
                    continue
                if client.decoder.buffered or _unread_bytes(client.reader):
                    # The client may not speak before our answer: anything already here was
                    # injected in clear text (CVE-2021-23214).
                    await client.fatal(_fatal("08P01",
                                              "received unencrypted data after SSL request"))
                    return None
                # No await between this write and the switch to TLS inside start_tls(), so
                # nothing the client sends after our "S" can land in the plain-text buffer.
                client.writer.write(b"S")
                await client.writer.start_tls(self.config.server_ssl)
                client.tls = True
                continue
            if isinstance(message, GSSENCRequest):
                client.writer.write(b"N")
                await client.writer.drain()
                continue
            if isinstance(message, CancelRequest):
                await self._handle_cancel(message)
                return None
            if not isinstance(message, StartupMessage):  # pragma: no cover - decoder guarantees
                raise ProtocolError(f"unexpected {type(message).__name__} during start-up")
            return message

    async def _admit(self, client: _Client, startup: StartupMessage) -> _Identity | None:
        if startup.major != 3:
            await client.fatal(_fatal("0A000", f"unsupported frontend protocol "
                                      f"{startup.major}.{startup.minor}: server supports 3.0 "
                                      "to 3.0"))
            return None
        unrecognized = tuple(k for k, _ in startup.params if k.startswith("_pq_."))
        if startup.minor > 0 or unrecognized:
            await client.send(NegotiateProtocolVersion(0, unrecognized))
        user = startup.get("user") or ""
        if not user:
            await client.fatal(_fatal("28000",
                                      "no PostgreSQL user name specified in startup packet"))
            return None
        replication = (startup.get("replication") or "false").lower()
        if replication not in ("false", "off", "no", "0"):
            await client.fatal(_fatal("0A000", "replication connections are not supported "
                                      "by the ordinance proxy"))
            return None
        identity = await self._authenticate(client, user)
        if identity is None:
            return None
        database = startup.get("database") or user
        if database != self.target.database:
            await client.fatal(_fatal("3D000", f'database "{database}" is not served by this '
                                      f'proxy (it serves "{self.target.database}")'))
            return None
        encoding = startup.get("client_encoding")
        if encoding is not None and encoding.upper() not in SUPPORTED_CLIENT_ENCODINGS:
            await client.fatal(_fatal("0A000", f"client_encoding {encoding} is not supported "
                                      "by the ordinance proxy (use UTF8)"))
            return None
        return identity

    async def _auth_response(self, client: _Client) -> AuthResponse | None:
        message = await client.read()
        if message is None:
            return None
        if not isinstance(message, AuthResponse):
            raise ProtocolError(f"expected an authentication response, got "
                                f"{type(message).__name__}")
        return message

    async def _authenticate(self, client: _Client, user: str) -> _Identity | None:
        entry = None
        auth_info = None
        if self.config.directory is not None:
            try:
                entry = self.config.directory.lookup(user)
                auth_info = None if entry is None else entry.scram_auth_info()
            except Exception:
                log.exception("user directory failed for %r", user)
                entry = auth_info = None
        if entry is None and self.config.verify_token is not None:
            return await self._token_auth(client, user, self.config.verify_token)
        exchange = ScramServerExchange(user, auth_info, self._mock_secret)
        try:
            await client.send(AuthenticationSASL((SCRAM_SHA_256,)))
            initial = await self._auth_response(client)
            if initial is None:
                return None
            await client.send(exchange.first(initial.as_sasl_initial()))
            response = await self._auth_response(client)
            if response is None:
                return None
            await client.send(exchange.final(response.as_sasl_response()))
        except AuthFailed as exc:
            log.info("client %s: SCRAM authentication failed for %r", client.address, user)
            await client.fatal(exc.error)
            return None
        assert entry is not None
        return _Identity(entry.name, tuple(entry.groups), "scram-sha-256", user)

    async def _token_auth(self, client: _Client, user: str,
                          verify: TokenVerifier) -> _Identity | None:
        if not (client.tls or is_loopback(client.peer)):
            await client.fatal(_fatal("28000", "token authentication requires a TLS "
                                      "(sslmode=require) or loopback connection"))
            return None
        await client.send(AuthenticationCleartextPassword())
        response = await self._auth_response(client)
        if response is None:
            return None
        token = response.as_password().password
        try:
            if inspect.iscoroutinefunction(verify):
                subject: Any = await verify(token)
            else:
                subject = await asyncio.to_thread(verify, token)
                if inspect.isawaitable(subject):
                    subject = await subject
        except Exception as exc:
            log.info("client %s: token rejected for %r: %s", client.address, user, exc)
            await client.fatal(password_failed(user))
            return None
        return _Identity(str(subject.id), tuple(subject.groups), "token", user,
                         dict(getattr(subject, "claims", {}) or {}))

    async def _handle_cancel(self, request: CancelRequest) -> None:
        entry = self._cancel_keys.get(request.pid)
        if entry is None or not hmac.compare_digest(entry[0], request.secret):
            log.info("cancel request with an unknown key ignored")
            return
        hold = self._holds.get(request.pid)
        if hold is not None:
            hold.cancel(HOLD_CANCELLED)  # the statement never went upstream: this is enough
            return
        if entry[1] is not None:
            await self._send_cancel(entry[1])

    # ----------------------------------------------------------------------------------------
    # Upstream

    async def _open_upstream(self, encrypt: bool
                             ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the server, with TLS when `encrypt` and the server accepts it (it
        must when the TLS settings require it)."""
        async with asyncio.timeout(self.config.connect_timeout):
            reader, writer = await asyncio.open_connection(self.target.host, self.target.port)
        if not encrypt or self._tls_context is None:
            return reader, writer
        try:
            writer.write(SSLRequest().encode())
            await writer.drain()
            async with asyncio.timeout(self.config.connect_timeout):
                answer = await reader.readexactly(1)
            if answer == b"N" and not self._tls.required:
                return reader, writer  # prefer / allow: go on in plain text
            if answer != b"S":
                raise UpstreamTLSError(f"it does not accept TLS connections "
                                       f"(sslmode={self._tls.mode})")
            if _unread_bytes(reader):
                raise UpstreamTLSError("it sent unencrypted data after accepting TLS")
            try:
                await writer.start_tls(self._tls_context, server_hostname=self.target.host)
            except ssl.SSLError as exc:
                raise describe_failure(exc, self._tls) from exc
        except BaseException:
            await _close_writer(writer)
            raise
        return reader, writer

    async def _connect_upstream(self, startup: StartupMessage) -> _Upstream:
        attempts = self._tls.attempts()
        for number, encrypt in enumerate(attempts, 1):
            try:
                async with asyncio.timeout(self.config.connect_timeout):
                    reader, writer = await self._open_upstream(encrypt)
                    try:
                        return await self._login_upstream(reader, writer, startup)
                    except BaseException:
                        await _close_writer(writer)
                        raise
            except (UpstreamTLSError, UpstreamAuthError, _UpstreamRefused) as exc:
                if number == len(attempts):
                    raise
                log.info("upstream %s:%d refused the %s attempt (%s); trying %s (sslmode=%s)",
                         self.target.host, self.target.port,
                         "TLS" if encrypt else "plain", exc,
                         "plain" if encrypt else "TLS", self._tls.mode)
        raise AssertionError("no connection attempt")  # pragma: no cover - attempts >= 1

    async def _login_upstream(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter, startup: StartupMessage
                              ) -> _Upstream:
        params = [("user", self.target.user), ("database", self.target.database)]
        for name in FORWARDED_PARAMETERS:
            value = startup.get(name)
            if value is not None:
                params.append((name, value))
        writer.write(StartupMessage(tuple(params)).encode())
        await writer.drain()
        login = UpstreamLogin(self.target.user, self.target.password)
        decoder = BackendDecoder(max_message_size=self.config.max_message_size)
        greeting: list[bytes] = []
        key: BackendKeyData | None = None
        while True:
            frame = await _read_frame(reader, decoder)
            if frame is None:
                raise ConnectionResetError("upstream closed the connection during login")
            message = decoder.decode(frame)
            if isinstance(message, ErrorResponse):
                if message.code.startswith("28"):
                    raise UpstreamAuthError(f"upstream refused the proxy's credentials: "
                                            f"{message.message}")
                raise _UpstreamRefused(message)
            if isinstance(message, Authentication | AuthenticationOther):
                for response in login.receive(message):
                    writer.write(response.encode())
                await writer.drain()
            elif isinstance(message, ParameterStatus | NoticeResponse):
                greeting.append(frame.raw)
            elif isinstance(message, BackendKeyData):
                key = message
            elif isinstance(message, ReadyForQuery):
                if not login.done:
                    raise UpstreamAuthError("upstream was ready before authenticating")
                return _Upstream(reader, writer, decoder, key, greeting)
            elif not isinstance(message, NegotiateProtocolVersion):
                raise UpstreamAuthError(f"unexpected {type(message).__name__} during login")

    async def _send_cancel(self, key: BackendKeyData) -> None:
        """Ask the upstream server to cancel what the backend with `key` is running."""
        attempts = self._tls.attempts()
        for number, encrypt in enumerate(attempts, 1):
            try:
                async with asyncio.timeout(self.config.connect_timeout):
                    reader, writer = await self._open_upstream(encrypt)
                    try:
                        writer.write(CancelRequest(key.pid, key.secret).encode())
                        await writer.drain()
                        await reader.read(1)  # the server closes once it has the request
                    finally:
                        await _close_writer(writer)
                return
            except UpstreamTLSError as exc:
                if number == len(attempts):
                    log.warning("could not send a cancel request upstream: %s", exc)
            except (OSError, TimeoutError, UpstreamAuthError) as exc:
                log.warning("could not send a cancel request upstream: %s", exc)
                return

    # ----------------------------------------------------------------------------------------
    # Relay

    async def _relay(self, client: _Client, upstream: _Upstream, ctx: SessionContext,
                     pid: int = 0) -> str:
        """Relay until either side ends; returns why the session ended."""
        client.decoder.max_message_size = self.config.max_message_size
        session = Session(max_copy_record=self.config.max_message_size,
                          scrub_text=self.config.scrub_server_text)
        relay = _Relay(self, client, upstream, session, ctx, pid)
        try:
            side, error, terminated = await relay.run()
        except asyncio.CancelledError:
            await relay.stop()
            await self._finish_upstream(upstream, session)
            raise
        await relay.stop()
        reason = "client disconnected"
        if side == "client":
            if error is None:
                reason = "client terminated" if terminated else "client disconnected"
            elif isinstance(error, ProtocolError | SessionError):
                log.info("session %s: client protocol error: %s", ctx.session_id, error)
                reason = f"client protocol error: {error}"
                await client.fatal(_fatal("08P01", f"invalid frontend message: {error}"))
            elif isinstance(error, _ClientGone):
                reason = str(error)
            elif not isinstance(error, ConnectionError | OSError):
                log.error("session %s: client pump failed", ctx.session_id, exc_info=error)
                reason = "internal error"
                await client.fatal(_fatal("XX000", "internal error in the ordinance proxy"))
        elif error is None:
            reason = "upstream closed"
            if not upstream.fatal_seen:
                await client.fatal(_fatal("08006", "upstream PostgreSQL server closed the "
                                          "connection unexpectedly"))
        elif isinstance(error, RewriteError):
            log.warning("session %s: result could not be masked: %s", ctx.session_id, error)
            reason = f"result could not be masked: {error}"
            await client.fatal(_fatal("42501", f"result could not be masked as policy "
                                      f"requires: {error}"))
        elif isinstance(error, SessionError | ProtocolError):
            log.warning("session %s: %s", ctx.session_id, error)
            reason = str(error)
            code = error.code if isinstance(error, SessionError) else "08P01"
            await client.fatal(_fatal(code, str(error)))
        elif not isinstance(error, ConnectionError | OSError):
            log.error("session %s: server pump failed", ctx.session_id, exc_info=error)
            reason = "internal error"
            await client.fatal(_fatal("XX000", "internal error in the ordinance proxy"))
        await self._finish_upstream(upstream, session)
        log.info("session %s: closed (%s)", ctx.session_id, reason)
        return reason

    async def _finish_upstream(self, upstream: _Upstream, session: Session) -> None:
        """Stop whatever the backend still runs for this client, then hang up."""
        if session.in_flight and upstream.key is not None:
            await self._send_cancel(upstream.key)
        with contextlib.suppress(Exception):
            upstream.writer.write(Terminate().encode())
        await _close_writer(upstream.writer)

    def _decide_now(self, sql: str, ctx: SessionContext
                    ) -> StatementVerdict | Awaitable[StatementVerdict]:
        """Start the decide hook: its verdict when it answers without waiting (an in-process
        decision does; no timeout can apply then), else an awaitable of the rest, bounded by
        `decide_timeout` from now. Fails closed like `_decide`."""
        deadline = asyncio.get_running_loop().time() + self.config.decide_timeout
        try:
            done, value = _run_eagerly(self.config.decide(sql, ctx))
        except Exception:
            log.exception("session %s: decision hook failed; denying", ctx.session_id)
            return self._refuse_now(Refusal(sql, "the policy decision failed"), ctx)
        if done:
            return _checked_verdict(value, ctx)
        return self._decide(value, sql, ctx, deadline)

    async def _decide(self, pending: Awaitable[Any], sql: str, ctx: SessionContext,
                      deadline: float) -> StatementVerdict:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the cancellation
        # that ends the session when the hook finishes at the same moment, leaving it hanging.
        try:
            async with asyncio.timeout_at(deadline):
                verdict = await pending
        except TimeoutError:
            log.warning("session %s: decision timed out; denying", ctx.session_id)
            return await _verdict(self._refuse_now(
                Refusal(sql, "the policy decision timed out"), ctx))
        except Exception:
            log.exception("session %s: decision hook failed; denying", ctx.session_id)
            return await _verdict(self._refuse_now(
                Refusal(sql, "the policy decision failed"), ctx))
        return _checked_verdict(verdict, ctx)

    def _refuse_now(self, refusal: Refusal, ctx: SessionContext
                    ) -> StatementVerdict | Awaitable[StatementVerdict]:
        """The denial of a message the proxy refuses itself (or could not have decided),
        after the `refused` hook has recorded it (bounded by `session_hook_timeout`); a hook
        that fails is logged, and the message is denied all the same."""
        hook = self.config.refused
        if hook is None:
            return StatementVerdict.deny(refusal.reason)
        try:
            done, value = _run_eagerly(hook(refusal.text, refusal.reason, ctx))
        except Exception:
            log.exception("session %s: denial not recorded", ctx.session_id)
            return StatementVerdict.deny(refusal.reason)
        if done:
            return value if isinstance(value, StatementVerdict) else StatementVerdict.deny(
                refusal.reason)
        return self._refused(value, refusal, ctx)

    async def _refused(self, pending: Awaitable[Any], refusal: Refusal,
                       ctx: SessionContext) -> StatementVerdict:
        try:
            async with asyncio.timeout(self.config.session_hook_timeout):
                verdict = await pending
        except Exception:
            log.exception("session %s: denial not recorded", ctx.session_id)
            return StatementVerdict.deny(refusal.reason)
        return verdict if isinstance(verdict, StatementVerdict) else StatementVerdict.deny(
            refusal.reason)


_Ending = tuple[str, BaseException | None, bool]
"""How a relay ended: the side ("client" or "server"), the error (None: end of stream), and
whether the client said Terminate."""


class _Pipe(asyncio.Protocol):
    """Takes over one side's transport for the relay (from its StreamReaderProtocol, which
    still learns of connection_lost so that its StreamWriter can close and drain)."""

    def __init__(self, relay: _Relay, side: str, previous: asyncio.BaseProtocol,
                 over_ssl: bool) -> None:
        self.relay = relay
        self.side = side
        self.previous = previous
        self.over_ssl = over_ssl

    def data_received(self, data: bytes) -> None:
        if self.side == "client":
            self.relay.client_data(data)
        else:
            self.relay.server_data(data)

    def eof_received(self) -> bool:
        self.relay.eof(self.side)
        return not self.over_ssl  # as StreamReaderProtocol: plain TCP may still be written

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.lost(self.side, exc)
        self.previous.connection_lost(exc)

    def pause_writing(self) -> None:
        self.relay.write_paused(self.side, True)

    def resume_writing(self) -> None:
        self.relay.write_paused(self.side, False)


class _Relay:
    """Both directions of one session, driven by the transports' callbacks.

    Each side's bytes are processed as they arrive, in the callback: what one arrival
    produces goes to the other side in one write. Only when a hook has to wait (a decision
    from a remote service, an approval hold, a catalog read, an audit record) does that side
    continue in a task; what arrives meanwhile is buffered (up to `BUSY_READ_LIMIT`, then
    the side stops reading, except during a hold, whose client may hang up) and processed
    when the task is done. A side whose peer cannot take more (the peer's transport is over
    its high-water mark) stops reading until it can.
    """

    def __init__(self, proxy: PostgresProxy, client: _Client, upstream: _Upstream,
                 session: Session, ctx: SessionContext, pid: int) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.session = session
        self.ctx = ctx
        self.pid = pid
        self.allow_function_call = proxy.config.allow_function_call
        self.loop = asyncio.get_running_loop()
        self.ended: asyncio.Future[_Ending] = self.loop.create_future()
        self.to_client = client.writer.transport
        self.to_server = upstream.writer.transport
        self.client_task: asyncio.Task[None] | None = None
        self.server_task: asyncio.Task[None] | None = None
        self.holding = False
        self.client_gone: asyncio.Future[BaseException | None] | None = None  # during a hold
        self.client_write_paused = False  # the client's transport is over its high-water mark
        self.server_write_paused = False
        self.server_eof = False  # the server hung up while its side waited in a task

    # -- life cycle ---------------------------------------------------------------------------

    async def run(self) -> _Ending:
        """Take over both transports and relay until a side ends."""
        taken = {}
        for side, reader, transport in (("client", self.client.reader, self.to_client),
                                        ("server", self.upstream.reader, self.to_server)):
            taken[side] = await _take_over(reader, transport, _Pipe(
                self, side, transport.get_protocol(), _over_ssl(transport)))
        for side in ("server", "client"):
            data, eof, error = taken[side]
            # the client's decoder may hold messages read with the login: processed now
            if data or side == "client":
                (self.client_data if side == "client" else self.server_data)(data)
            if error is not None:
                self.lost(side, error)
            elif eof:
                self.eof(side)
        return await self.ended

    def end(self, side: str, error: BaseException | None, terminated: bool = False) -> None:
        if self.ended.done():
            return
        self.ended.set_result((side, error, terminated))
        for transport in (self.to_client, self.to_server):
            with contextlib.suppress(Exception):
                _set_reading(transport, False)

    async def stop(self) -> None:
        """Stop the tasks a side may be waiting in (cancelled, boundedly)."""
        if not self.ended.done():
            self.ended.cancel()
        for task in (self.client_task, self.server_task):
            if task is not None:
                await _stop(task)

    def eof(self, side: str) -> None:
        self.lost(side, None)

    def lost(self, side: str, exc: BaseException | None) -> None:
        gone = self.client_gone
        if side == "client" and gone is not None:
            # A held statement: the hold records why it was abandoned, then the client's task
            # ends the session (with _ClientGone, or this error).
            if not gone.done():
                gone.set_result(exc)
            return
        if side == "server" and exc is None and self.server_task is not None:
            # What the server said last (a FATAL ending the running statement, say) may be
            # held in that task until its record is written: the task relays it, then ends.
            self.server_eof = True
            return
        self.end(side, exc)

    def _server_ended_meanwhile(self) -> None:
        if self.server_eof and self.server_task is None:
            self.end("server", None)

    def write_paused(self, side: str, paused: bool) -> None:
        if side == "client":
            self.client_write_paused = paused
        else:
            self.server_write_paused = paused
        self._update_reading()

    def _update_reading(self) -> None:
        """A side reads unless its peer cannot take more, or it waits in a task and has
        `BUSY_READ_LIMIT` bytes unprocessed (as a StreamReader would buffer; a short wait, as
        for an audit record, costs no pause and resume). During a hold the client is read
        whatever it sends, so that a hang-up is seen."""
        if self.ended.done():
            return
        client_full = (self.client_task is not None and not self.holding
                       and self.client.decoder.buffered > BUSY_READ_LIMIT)
        _set_reading(self.to_client, not (client_full or self.server_write_paused))
        server_full = (self.server_task is not None
                       and self.upstream.decoder.buffered > BUSY_READ_LIMIT)
        _set_reading(self.to_server, not (server_full or self.client_write_paused))

    def _wait(self, side: str, coro: Coroutine[Any, Any, None]) -> None:
        """Continue `side` in a task; what arrives meanwhile waits for it."""
        task = self.loop.create_task(coro)
        if side == "client":
            self.client_task = task
        else:
            self.server_task = task
        task.add_done_callback(lambda t: self._waited(side, t))
        self._update_reading()

    def _waited(self, side: str, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.end(side, error)

    def _resumed(self, side: str) -> bool:
        """At the end of a side's task: it reads again; False when the session has ended."""
        if side == "client":
            self.client_task = None
        else:
            self.server_task = None
        self._update_reading()
        return not self.ended.done()

    # -- client -> server ---------------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        if self.ended.done():
            return
        try:
            if data:
                self.client.decoder.feed(data)
            if self.client_task is None and not self.holding:
                self._client_process()
            else:
                self._update_reading()
        except Exception as exc:
            self.end("client", exc)

    def _send_server(self, out: list[bytes]) -> None:
        if out:
            self.to_server.write(out[0] if len(out) == 1 else b"".join(out))

    def _client_process(self) -> None:
        decoder = self.client.decoder
        session = self.session
        out: list[bytes] = []
        while (frame := decoder.next_frame()) is not None:
            message = decoder.decode(frame)
            if isinstance(message, Terminate):
                self._send_server(out)
                self.end("client", None, terminated=True)
                return
            sql = session.statement_text(message)
            verdict = None
            decided: StatementVerdict | Awaitable[StatementVerdict] | None = None
            if sql is not None:
                decided = self.proxy._decide_now(sql, self.ctx)
            elif (refused := session.refusal(
                    message, allow_function_call=self.allow_function_call)) is not None:
                decided = self.proxy._refuse_now(refused, self.ctx)
            if decided is not None:
                if not isinstance(decided, StatementVerdict):
                    self._send_server(out)  # do not hold earlier messages back while deciding
                    self._wait("client", self._client_decided(decided, frame, message))
                    return
                verdict = decided
                if verdict.hold is not None:
                    self._send_server(out)
                    self._wait("client", self._client_decided(verdict, frame, message))
                    return
            out.extend(session.client_message(frame, message, verdict,
                                              allow_function_call=self.allow_function_call))
        self._send_server(out)

    async def _client_decided(self, decided: StatementVerdict | Awaitable[StatementVerdict],
                              frame: Frame, message: FrontendMessage) -> None:
        verdict = decided if isinstance(decided, StatementVerdict) else await decided
        if verdict.hold is not None:
            verdict = await self._hold(verdict.hold, verdict.decision_id)
        if self.ended.done():
            return  # the session ended meanwhile: nothing more goes upstream
        self._send_server(self.session.client_message(
            frame, message, verdict, allow_function_call=self.allow_function_call))
        if self._resumed("client"):
            self._client_process()  # what arrived meanwhile

    async def _hold(self, hold_hook: HoldHook, decision_id: str) -> StatementVerdict:
        """Await `hold_hook` (a review's or a row budget's hold) while the client may go on
        sending (buffered, not processed) or hang up (the session ends, once the hold has
        recorded why it was abandoned); returns the final verdict. A cancel request answers
        57014."""
        ctx = self.ctx
        writer = self.client.writer

        async def notify(text: str) -> None:
            writer.write(notice_frame(text))
            await writer.drain()

        hold = asyncio.ensure_future(hold_hook(notify))
        proxy = self.proxy
        if self.pid:
            proxy._holds[self.pid] = hold
        gone = self.client_gone = self.loop.create_future()
        self.holding = True
        self._update_reading()
        why = "the session ended"
        try:
            await asyncio.wait({hold, gone}, return_when=asyncio.FIRST_COMPLETED)
            if gone.done() and not hold.done():
                error = gone.result()
                # a reset (a client killed with our NOTICE unread) is a hang-up too
                why = HOLD_CLIENT_GONE
                if error is not None:  # a broken connection: as a failed read
                    raise error
                raise _ClientGone("client disconnected while its statement was held")
            try:
                final = hold.result()
            except asyncio.CancelledError:
                log.info("session %s: held statement cancelled by the client", ctx.session_id)
                return StatementVerdict.cancelled(
                    decision_id=decision_id,
                    detail="the statement was cancelled while it awaited approval")
            except Exception:
                log.exception("session %s: hold failed; denying", ctx.session_id)
                return StatementVerdict.deny("the approval could not be obtained",
                                             decision_id=decision_id)
        finally:
            self.holding = False
            self.client_gone = None
            self._update_reading()
            if self.pid:
                proxy._holds.pop(self.pid, None)
            if not hold.done():
                hold.cancel(why)  # nobody waits any more; let it record that, boundedly
                await asyncio.wait({hold}, timeout=proxy.config.session_hook_timeout)
                if hold.done() and not hold.cancelled():
                    hold.exception()  # retrieved: asyncio must not report it as lost
        if not isinstance(final, StatementVerdict) or final.effect == "review" \
                or final.hold is not None:
            log.error("session %s: hold returned %r; denying", ctx.session_id, final)
            return StatementVerdict.deny("the approval could not be obtained",
                                         decision_id=decision_id)
        return final

    async def _rows_held(self, limit: RowLimit) -> None:
        """A row past a row budget has arrived: nothing more of the server's is relayed (and
        past `BUSY_READ_LIMIT` nothing read: the server blocks), nor anything of the client's
        sent, until the hold ends. Approved: the rest flows. Otherwise the statement is ended
        with the hold's error: cancelled upstream unless its end is already here, and what
        the server still sends for it dropped (`Session.cut`)."""
        verdict = await self._hold(limit.hold, "")
        if self.ended.done():
            return
        if verdict.effect != "allow" or not limit.released:
            self.session.cut(denial_error(verdict))
            ended = self.upstream.decoder.buffered_types() & _STATEMENT_ENDS
            if not ended and self.upstream.key is not None:
                await self.proxy._send_cancel(self.upstream.key)
        if self._resumed("server"):
            self._server_process([])  # the rest of the rows, or the end of the cut statement
            self._server_ended_meanwhile()
        if not self.ended.done() and self.client_task is None:
            self.client_data(b"")  # what the client sent during the hold

    # -- server -> client ---------------------------------------------------------------------

    def server_data(self, data: bytes) -> None:
        if self.ended.done():
            return
        try:
            if data:
                self.upstream.decoder.feed(data)
            if self.server_task is None:
                self._server_process([])
            else:
                self._update_reading()
        except Exception as exc:
            self.end("server", exc)

    def _send_client(self, out: list[bytes]) -> None:
        if out:
            self.to_client.write(out[0] if len(out) == 1 else b"".join(out))

    def _server_process(self, out: list[bytes]) -> None:
        decoder = self.upstream.decoder
        session = self.session
        while (kind := decoder.peek()) is not None:
            if kind == b"D":
                limit = session.row_limit()
                if limit is not None:  # a row budget: relay up to its room, then hold
                    room = limit.room()
                    if room > 0:
                        run, count = decoder.next_counted_run(b"D", room)
                        if run is None:
                            break  # an incomplete row: wait for the rest
                        limit.admit(count)
                        session.relay_run(run, out)
                        continue
                    if not decoder.has_complete(b"D"):
                        break
                    self._send_client(out)
                    self._wait("server", self._rows_held(limit))
                    return
                # Fast path: runs of unmasked DataRows are relayed raw, undecoded.
                if session.rows_pass_through():
                    run = decoder.next_run(b"D")
                    if run is not None:
                        out.append(run)
                        continue
                elif (rows := session.rows_rewriter()) is not None:
                    # Rewritten rows, a run at a time: a run in which a scan-only rewriter can
                    # find nothing is relayed raw, else row by row.
                    run = decoder.next_run(b"D")
                    if run is not None:
                        if rows.precheck is None or rows.precheck(run):
                            session.rewrite_run(run, out)
                        else:
                            out.append(run)
                        continue
            elif kind == b"d" and not session.cutting:
                # Runs of CopyData: relayed whole unless the COPY's rewriter changes them.
                run = decoder.next_run(b"d")
                if run is not None:
                    session.relay_copy_run(run, out)
                    continue
            frame = decoder.next_frame()
            if frame is None:
                break
            if kind == b"E":
                error = decoder.decode(frame)
                if isinstance(error, ErrorResponse) and error.severity in ("FATAL", "PANIC"):
                    self.upstream.fatal_seen = True
            elif kind == b"T":
                verdict = session.description_verdict()
                if verdict is not None and verdict.resolve_columns is not None:
                    done, rest = _run_eagerly(_resolve_columns(verdict,
                                                               session.describe(frame)))
                    if not done:  # the rows are not held back while the catalog is read
                        self._send_client(out)
                        self._wait("server", self._server_resolved(rest, frame))
                        return
            if not self._server_frame(frame, out):
                return
        self._send_client(out)
        if session.upstream:  # what the session has to say to the server (Session.cut)
            self._send_server(session.upstream)
            session.upstream.clear()

    def _server_frame(self, frame: Frame, out: list[bytes]) -> bool:
        """One server message through the session; False when the rest waits in a task."""
        completion = self.session.server_frame(frame, out)
        if completion is not None:
            done, rest = _run_eagerly(_complete(completion))
            if not done:
                # What came before the end of the statement goes now, unless it is small: then
                # it goes with the end, in one write (a `-S` transaction's row and its end).
                held = list(out) if sum(map(len, out)) <= HOLD_BEFORE_END else []
                if not held:
                    self._send_client(out)
                self._wait("server", self._server_completed(rest, completion, held))
                return False
            out.extend(completion.frames)
        return True

    async def _server_resolved(self, rest: Awaitable[None], frame: Frame) -> None:
        await rest
        if self.ended.done():
            return
        out: list[bytes] = []
        # (_server_frame is False when it waits again, in a task of its own)
        if self._server_frame(frame, out) and self._resumed("server"):
            self._server_process(out)  # and what arrived meanwhile
            self._server_ended_meanwhile()

    async def _server_completed(self, rest: Awaitable[None], completion: Completion,
                                held: list[bytes]) -> None:
        await rest
        if self._resumed("server"):
            self._server_process([*held, *completion.frames])  # and what arrived meanwhile
            self._server_ended_meanwhile()


async def _take_over(reader: asyncio.StreamReader, transport: asyncio.BaseTransport,
                     protocol: _Pipe) -> tuple[bytes, bool, BaseException | None]:
    """Switch `transport` to `protocol`; returns what its StreamReader held but nobody read
    yet, whether it had seen the end of the stream, and the error that ended it."""
    data = b""
    if _unread_bytes(reader):
        data = await reader.read(_unread_bytes(reader))  # returns at once: bytes are there
    transport.set_protocol(protocol)
    _set_reading(transport, True)  # a StreamReader with a full buffer may have paused it
    return data, reader.at_eof(), reader.exception()


def _over_ssl(transport: asyncio.BaseTransport) -> bool:
    return transport.get_extra_info("sslcontext") is not None


def _set_reading(transport: Any, reading: bool) -> None:
    """Pause or resume reading (any loop's transport: uvloop's are no asyncio.ReadTransport)."""
    if transport.is_closing() or transport.is_reading() == reading:
        return
    if reading:
        transport.resume_reading()
    else:
        transport.pause_reading()


def _checked_verdict(verdict: Any, ctx: SessionContext) -> StatementVerdict:
    if not isinstance(verdict, StatementVerdict):
        log.error("session %s: decision hook returned %r; denying", ctx.session_id,
                  type(verdict).__name__)
        return StatementVerdict.deny("the policy decision failed")
    return verdict


def _run_eagerly(awaitable: Awaitable[_T]) -> tuple[bool, Any]:
    """Run a coroutine until it first waits: `(True, its result)` when it finished without
    waiting (no event loop round trip, no task); else `(False, an awaitable of the rest)`,
    which must be awaited in the same task. Exceptions it raises before waiting propagate.
    Anything other than a coroutine is returned as it is, to be awaited."""
    if type(awaitable) is not types.CoroutineType:
        return False, awaitable
    try:
        yielded = awaitable.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, _resume(awaitable, yielded)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, _T], yielded: Any) -> Generator[Any, Any, _T]:
    """Go on with a coroutine that `_run_eagerly` started and that yielded `yielded` (what
    `await` does with a coroutine, from its second step on: what it waits for goes to the
    task, what the task sends or throws goes back to it)."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _verdict(decided: StatementVerdict | Awaitable[StatementVerdict]
                   ) -> StatementVerdict:
    return decided if isinstance(decided, StatementVerdict) else await decided


async def _resolve_columns(verdict: StatementVerdict,
                           columns: Sequence[ColumnDescriptor]) -> None:
    assert verdict.resolve_columns is not None
    try:
        await verdict.resolve_columns(columns)
    except Exception as exc:
        raise RewriteError(f"the result's columns could not be resolved: {exc}") from exc


async def _complete(completion: Completion) -> None:
    try:
        await completion.hook(completion.outcome)
    except Exception as exc:
        log.error("statement outcome not recorded: %r", exc)
        raise SessionError("the statement could not be recorded in the audit trail; its "
                           "result is withheld and the session ends", "58030") from exc


async def _stop(task: asyncio.Task[Any]) -> None:
    """Cancel a relay task and wait (boundedly) for it: a decide hook that swallows cancellation
    must not keep the session from closing."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    if not done:
        log.warning("a session task ignored cancellation; leaving it behind")
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
    elif not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as lost


async def _read_frame(reader: asyncio.StreamReader, decoder: BackendDecoder) -> Frame | None:
    while True:
        frame = decoder.next_frame()
        if frame is not None:
            return frame
        data = await reader.read(READ_SIZE)
        if not data:
            return None
        decoder.feed(data)


def _describe(exc: BaseException) -> str:
    """What a client may be told about an upstream failure (never the proxy's credentials)."""
    if isinstance(exc, UpstreamAuthError):
        return "it did not accept the proxy's login (see the proxy log)"
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
