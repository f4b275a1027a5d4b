"""The MySQL enforcement proxy's asyncio loop: one task per client session.

Owns: accepting clients, the upstream connection (one per session, made first: the client's
greeting offers what the server offers), the handshake (TLS mid-handshake on the client's
SSLRequest, `auth.ClientAuth` against the users file or an OIDC token, the proxy's own login
upstream with `auth.UpstreamAuth`), then the command loop: each command planned by
`session.CommandPlanner`, decided through the hooks, denied (ERR 1142), held, or sent upstream,
and its response followed by `session.ResponseReader` and relayed with its rows masked
(`results.ResultMasker`) and each result's record made durable before its end packet leaves.
Must not: decide anything or parse SQL.

Sequence ids: a command's response is re-framed towards the client (a masked row can change
size), so the proxy numbers the client's packets itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote, urlsplit

from adapters.enforcement.hooks import (
    HOLD_CLIENT_GONE,
    DecideHook,
    Notify,
    RefusalHook,
    SessionContext,
    SessionEndHook,
    SessionStartHook,
    StatementOutcome,
    StatementVerdict,
)
from adapters.enforcement.session_ids import new_session_id
from adapters.mysql.auth import (
    CACHING_SHA2,
    NATIVE,
    AuthDenied,
    ClientAuth,
    RsaKey,
    UpstreamAuth,
    UpstreamAuthError,
    new_scramble,
)
from adapters.mysql.codec import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Message,
    PacketDecoder,
    ProtocolError,
    encode_packets,
    packet_count,
)
from adapters.mysql.messages import (
    CLIENT_COMPRESS,
    CLIENT_CONNECT_ATTRS,
    CLIENT_CONNECT_WITH_DB,
    CLIENT_DEPRECATE_EOF,
    CLIENT_LOCAL_FILES,
    CLIENT_PLUGIN_AUTH,
    CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
    CLIENT_PROTOCOL_41,
    CLIENT_SECURE_CONNECTION,
    CLIENT_SSL,
    COM_INIT_DB,
    COM_QUERY,
    COM_STMT_PREPARE,
    ER_ACCESS_DENIED_ERROR,
    ER_DBACCESS_DENIED_ERROR,
    ER_HANDSHAKE_ERROR,
    ER_MALFORMED_PACKET,
    ER_NOT_ALLOWED_COMMAND,
    ER_QUERY_INTERRUPTED,
    ERR,
    OK,
    REQUIRED_CAPABILITIES,
    SUPPORTED_CAPABILITIES,
    UNSAFE_CHARSETS,
    UNSAFE_COLLATIONS,
    Command,
    Greeting,
    HandshakeResponse,
    SSLRequest,
    decode_auth_reply,
    decode_command,
    decode_eof,
    decode_err,
    decode_login,
    decode_ok,
    is_eof,
)
from adapters.mysql.results import ResultMasker, scrub_text
from adapters.mysql.session import CommandPlanner, Plan, Prepared, ResponseReader, quote_identifier
from adapters.postgres.auth import is_loopback
from engine.masking import may_hold_pan_bytes

log = logging.getLogger("ordinance.adapters.mysql.proxy")

TokenVerifier = Callable[[str], Any]
READ_SIZE = 256 * 1024
FLUSH_AT = 256 * 1024


class _Closed(Exception):
    """The peer closed its connection."""


class _SessionOver(Exception):
    """The session ends; `reason` goes to its session.end record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class UpstreamTarget:
    host: str
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def from_url(cls, url: str) -> UpstreamTarget:
        """`mysql://USER[:PASS]@HOST[:PORT]/DB` (or `mariadb://`)."""
        parts = urlsplit(url)
        if parts.scheme not in ("mysql", "mariadb"):
            raise ValueError(f"upstream URL must start with mysql://, got {parts.scheme!r}")
        if not parts.username:
            raise ValueError("upstream URL has no user name")
        database = unquote(parts.path.lstrip("/"))
        if not database:
            raise ValueError("upstream URL names no database (mysql://USER:PASS@HOST/DB)")
        if parts.query:
            raise ValueError(f"upstream URL parameters are not supported: {parts.query!r}")
        return cls(parts.hostname or "localhost", parts.port or 3306, unquote(parts.username),
                   unquote(parts.password or ""), database)


@dataclass
class ProxyConfig:
    """Everything a `MySQLProxy` needs; `decide` is the statement decision hook."""

    upstream: UpstreamTarget
    decide: DecideHook
    refused: RefusalHook
    directory: Any = None
    verify_token: TokenVerifier | None = None
    host: str = "127.0.0.1"
    port: int = 0
    server_ssl: ssl.SSLContext | None = None
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    auth_timeout: float = 30.0
    connect_timeout: float = 10.0
    decide_timeout: float = 30.0
    session_started: SessionStartHook | None = None
    session_ended: SessionEndHook | None = None
    # the RSA key pair of caching_sha2 full authentication, made on first use (None: the
    # proxy refuses to hand out a public key; clients must use TLS)
    rsa_key: Callable[[], RsaKey] | None = field(default_factory=lambda: functools.cache(RsaKey))
    # applied to the server's error messages (the PAN backstop: they can quote values)
    scrub_server_text: Callable[[bytes], bytes] = scrub_text


class _Conn:
    """One side of a session: a packet decoder over a stream, and buffered writes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 direction: str, max_message_size: int) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = PacketDecoder(direction, max_message_size=max_message_size)
        self.out = bytearray()
        self._tls: ssl.SSLObject | None = None
        self._tls_in = ssl.MemoryBIO()
        self._tls_out = ssl.MemoryBIO()

    async def _raw(self) -> bytes:
        data = await self.reader.read(READ_SIZE)
        if not data:
            raise _Closed(self.decoder.direction)
        return data

    async def _recv(self) -> bytes:
        if self._tls is None:
            return await self._raw()
        while True:
            try:
                data = self._tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                self._push_tls()
                self._tls_in.write(await self._raw())
                continue
            except ssl.SSLError as exc:
                raise ProtocolError(f"{self.decoder.direction}: TLS: {exc}") from None
            if not data:
                raise _Closed(self.decoder.direction)
            return data

    def _push_tls(self) -> None:
        pending = self._tls_out.read()
        if pending:
            self.writer.write(pending)

    async def start_tls(self, context: ssl.SSLContext, early: bytes) -> None:
        """TLS over this connection (server side), in memory: a client sends its ClientHello
        right behind the SSLRequest, often in the same segment, so the bytes already read
        (`early`) are where the TLS stream begins."""
        self._tls = context.wrap_bio(self._tls_in, self._tls_out, server_side=True)
        self._tls_in.write(early)
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._push_tls()
                await self.writer.drain()
                self._tls_in.write(await self._raw())
            except ssl.SSLError as exc:
                raise ProtocolError(f"client: TLS handshake failed: {exc}") from None
        self._push_tls()
        await self.writer.drain()

    async def read(self) -> Message:
        while True:
            message = self.decoder.next_message()
            if message is not None:
                return message
            self.decoder.feed(await self._recv())

    async def fill(self) -> None:
        """Read what arrives into the decoder (a hang-up raises _Closed); what a peer sends
        while nobody reads its messages (a held statement's client) is bounded too."""
        self.decoder.feed(await self._recv())
        if self.decoder.buffered > 2 * self.decoder.max_message_size:
            raise ProtocolError(f"{self.decoder.direction}: more than "
                                f"{2 * self.decoder.max_message_size} bytes sent while its "
                                "statement was held")

    def queue(self, payload: bytes, seq: int) -> int:
        """Queue one message; returns the next sequence id."""
        self.out += encode_packets(payload, seq)
        return (seq + packet_count(len(payload))) & 0xFF

    async def flush(self) -> None:
        if self.out:
            if self._tls is not None:
                self._tls.write(bytes(self.out))
                self._push_tls()
            else:
                self.writer.write(bytes(self.out))
            self.out.clear()
        await self.writer.drain()

    async def send(self, payload: bytes, seq: int) -> int:
        seq = self.queue(payload, seq)
        await self.flush()
        return seq

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class MySQLProxy:
    """Listens for MySQL clients; each session runs in its own task."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._endings: set[asyncio.Future[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.config.host,
                                                  self.config.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await _Session(self.config, reader, writer, self._endings).run()
        finally:
            self._sessions.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel("proxy shutdown")
        if self._sessions:
            await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._endings:
            await asyncio.gather(*self._endings, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


ER_TABLEACCESS_DENIED = 1142
_QUOTED = re.compile(r"'(?:[^'\\]|\\.|'')*'")


def verdict_error(verdict: StatementVerdict) -> ERR:
    """The ERR a client gets for a denied verdict: 1142 (ER_TABLEACCESS_DENIED_ERROR, SQLSTATE
    42000) with the reasons and the decision id; a held statement the client's session gave
    up on (57014) is 1317 (ER_QUERY_INTERRUPTED, 70100)."""
    if verdict.sqlstate == "57014":
        return ERR(ER_QUERY_INTERRUPTED, "70100", "Query execution was interrupted: "
                   + verdict.message)
    text = verdict.message or "denied by policy"
    if not text.startswith("permission denied"):
        text = f"permission denied by policy: {text}"
    if verdict.decision_id:
        text += f" (decision id: {verdict.decision_id})"
    return ERR(ER_TABLEACCESS_DENIED, "42000", text)


def withhold_quoted(message: str) -> str:
    """A server error's message with its quoted values withheld (a statement on masked
    columns: `Duplicate entry '4111…' for key`, `Incorrect integer value: '…'`)."""
    return _QUOTED.sub("'[REDACTED]'", message)


class _Session:
    def __init__(self, config: ProxyConfig, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, endings: set[asyncio.Future[None]]) -> None:
        self.config = config
        self.endings = endings  # the proxy's session.end records being written
        self.client = _Conn(reader, writer, "client", config.max_message_size)
        self.upstream: _Conn | None = None
        peer = writer.get_extra_info("peername")
        self.client_addr = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.loopback = is_loopback(peer)
        self.ctx: SessionContext | None = None
        self.caps = 0
        self.planner = CommandPlanner()

    # -- the session --------------------------------------------------------------------

    async def run(self) -> None:
        reason = "client disconnected"
        try:
            await asyncio.wait_for(self._login(), self.config.auth_timeout)
            await self._commands()
        except _SessionOver as over:
            reason = over.reason
        except _Closed as closed:
            reason = "client disconnected" if str(closed) == "client" else "upstream closed"
        except TimeoutError:
            reason = "login timed out"
            await self._error(ERR(ER_HANDSHAKE_ERROR, "08S01", "Bad handshake: login timed "
                                                               "out"), 2)
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
            log.info("session from %s: %s", self.client_addr, exc)
            await self._error(ERR(ER_MALFORMED_PACKET, "08S01", f"Malformed packet: {exc}"), 0)
        except asyncio.CancelledError:
            reason = "proxy shutdown"
        except (ConnectionError, OSError) as exc:
            reason = f"connection error: {exc}"
        except Exception as exc:  # a bug: end this session, keep serving
            log.exception("session from %s failed", self.client_addr)
            reason = f"internal error: {exc}"
        finally:
            self.client.close()
            if self.upstream is not None:
                self.upstream.close()
            if self.ctx is not None and self.config.session_ended is not None:
                # its own task, which the proxy's close() waits for: a shutdown that cancels
                # this session while it ends must not lose the session.end record
                ending = asyncio.ensure_future(self.config.session_ended(self.ctx, reason))
                self.endings.add(ending)
                ending.add_done_callback(self._ended)
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(ending)

    def _ended(self, ending: asyncio.Future[None]) -> None:
        self.endings.discard(ending)
        if not ending.cancelled() and ending.exception() is not None:
            log.error("session %s: session.end not recorded: %s",
                      self.ctx.session_id if self.ctx else "-", ending.exception())

    async def _error(self, err: ERR, seq: int) -> None:
        with contextlib.suppress(Exception):
            await self.client.send(err.encode(), seq)

    # -- login --------------------------------------------------------------------------

    async def _connect_upstream(self) -> Greeting:
        target = self.config.upstream
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port), self.config.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise _SessionOver(f"upstream unavailable: {exc}") from None
        self.upstream = _Conn(reader, writer, "server", self.config.max_message_size)
        self.upstream.decoder.expect(0)
        try:
            return Greeting.decode((await self.upstream.read()).payload)
        except ProtocolError as exc:
            raise _SessionOver(f"upstream greeting: {exc}") from None

    async def _login(self) -> None:
        config = self.config
        try:
            server = await self._connect_upstream()
        except _SessionOver as over:
            await self._error(ERR(2003, "HY000", f"the proxy cannot reach the upstream "
                                                 f"server: {over.reason}"), 0)
            raise
        offered = server.capabilities & SUPPORTED_CAPABILITIES & ~CLIENT_SSL
        if config.server_ssl is not None:
            offered |= CLIENT_SSL
        scramble = new_scramble()
        greeting = Greeting(server.server_version, server.connection_id, scramble, offered,
                            server.charset or 45, server.status, CACHING_SHA2)
        client = self.client
        client.decoder.expect(1)
        await client.send(greeting.encode(), 0)
        message = await client.read()
        login = decode_login(message.payload)
        seq = message.next_seq
        tls = False
        if isinstance(login, SSLRequest):
            if config.server_ssl is None:
                raise ProtocolError("client: SSLRequest, but the proxy offered no TLS")
            await client.start_tls(config.server_ssl, client.decoder.take_buffered())
            client.decoder.expect(seq)
            message = await client.read()
            login = decode_login(message.payload)
            seq = message.next_seq
            tls = True
            if isinstance(login, SSLRequest):
                raise ProtocolError("client: a second SSLRequest")
        assert isinstance(login, HandshakeResponse)
        if login.capabilities & REQUIRED_CAPABILITIES != REQUIRED_CAPABILITIES:
            await self._error(ERR(ER_HANDSHAKE_ERROR, "08S01", "Bad handshake: the client "
                                  "needs protocol 4.1 with plugin authentication"), seq)
            raise _SessionOver("client without plugin authentication")
        if login.charset in UNSAFE_COLLATIONS:
            await self._error(ERR(1115, "42000", "the connection character set (collation "
                                  f"{login.charset}) is refused by the proxy: in "
                                  f"{', '.join(UNSAFE_CHARSETS)} a multibyte character can "
                                  "hide a quote or backslash from the policies' SQL parser"),
                              seq)
            raise _SessionOver(f"unsafe connection character set {login.charset}")
        self.caps = login.capabilities & offered & ~CLIENT_SSL
        identity, ok, seq = await self._authenticate(login, scramble, seq, tls)
        await self._login_upstream(server, login)
        ctx = SessionContext(
            session_id=new_session_id(), user=identity.user, groups=identity.groups,
            database=config.upstream.database,
            application_name=dict(login.attributes).get("program_name", ""),
            client_addr=self.client_addr, tls=tls, auth_method=identity.method,
            requested_user=login.user, claims=identity.claims, protocol="mysql")
        if config.session_started is not None:
            try:
                await config.session_started(ctx)
            except Exception as exc:
                log.error("session refused: session.start not recorded: %s", exc)
                await self._error(ERR(ER_ACCESS_DENIED_ERROR, "28000", "the session cannot be "
                                      "recorded in the audit trail, so it is refused"), seq)
                raise _SessionOver("audit trail unavailable") from None
        self.ctx = ctx
        if login.database and login.database != config.upstream.database:
            await self._use_database(login.database, seq)
        await client.send(ok.encode(self.caps), seq)

    async def _authenticate(self, login: HandshakeResponse, scramble: bytes, seq: int,
                            tls: bool) -> tuple[Any, OK, int]:
        config = self.config
        auth = ClientAuth(config.directory, user=login.user, host=self.client_addr or
                          "localhost", scramble=scramble, secure=tls, loopback=self.loopback,
                          token_login=config.verify_token is not None,
                          rsa_key=config.rsa_key)
        client = self.client
        try:
            replies = auth.start(login.auth_plugin or NATIVE, login.auth_response)
            while True:
                for packet in replies:
                    if isinstance(packet, OK):
                        assert auth.result is not None
                        return auth.result, packet, seq
                    seq = client.queue(packet.encode(), seq)
                await client.flush()
                if not replies and auth.token is not None:
                    replies = await self._verify_token(auth)
                    continue
                client.decoder.expect(seq)
                message = await client.read()
                seq = message.next_seq
                replies = auth.receive(message.payload)
        except AuthDenied as denied:
            log.info("login of %r from %s refused: %s", login.user, self.client_addr,
                     denied.error.message)
            await self._error(denied.error, seq)
            raise _SessionOver("login failed") from None

    async def _verify_token(self, auth: ClientAuth) -> Any:
        verify = self.config.verify_token
        assert verify is not None and auth.token is not None
        try:
            subject = verify(auth.token)
            if isinstance(subject, Awaitable):
                subject = await subject
        except Exception as exc:
            log.info("token login from %s refused: %s", self.client_addr, exc)
            raise auth.token_refused() from None
        return auth.token_verified(subject)

    async def _login_upstream(self, server: Greeting, login: HandshakeResponse) -> None:
        target = self.config.upstream
        up = self.upstream
        assert up is not None
        caps = ((self.caps | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH
                 | CLIENT_CONNECT_WITH_DB)
                & ~(CLIENT_SSL | CLIENT_CONNECT_ATTRS | CLIENT_COMPRESS)
                & server.capabilities) | (server.capabilities
                                          & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA)
        auth = UpstreamAuth(target.user, target.password, secure=False)
        plugin, token = auth.first(server.auth_plugin, server.auth_data)
        response = HandshakeResponse(caps, login.max_packet or 1 << 24, login.charset,
                                     target.user, token, target.database, plugin)
        seq = await up.send(response.encode(), 1)
        try:
            while True:
                up.decoder.expect(seq)
                message = await up.read()
                reply = decode_auth_reply(message.payload, caps)
                seq = message.next_seq
                if isinstance(reply, OK):
                    return
                if isinstance(reply, ERR):
                    raise UpstreamAuthError(f"the server refused the proxy's login: "
                                            f"{reply.code} {reply.message}")
                answer = auth.receive(reply)
                if answer is not None:
                    seq = await up.send(answer, seq)
        except (UpstreamAuthError, ProtocolError) as exc:
            log.error("upstream login failed: %s", exc)
            await self._error(ERR(ER_ACCESS_DENIED_ERROR, "28000",
                                  f"the proxy could not log in upstream: {exc}"), 2)
            raise _SessionOver(f"upstream login failed: {exc}") from None

    async def _use_database(self, database: str, seq: int) -> None:
        """A database the client asked for at login: decided as `USE db`, then selected."""
        verdict = await self._decide("USE " + quote_identifier(database))
        if verdict.effect == "allow":
            plan = Plan(Command(COM_INIT_DB, database.encode()), "ok")
            err = await self._run_quietly(plan, verdict)
            if err is None:
                return
            verdict = StatementVerdict.deny(f"{err.code} {err.message}")
        denied = verdict_error(verdict)
        await self._error(ERR(ER_DBACCESS_DENIED_ERROR, "42000", denied.message), seq)
        raise _SessionOver(f"database {database!r} refused")

    async def _run_quietly(self, plan: Plan, verdict: StatementVerdict) -> ERR | None:
        """Run an OK/ERR command upstream without relaying its answer; its ERR or None."""
        up = self.upstream
        assert up is not None
        started = time.monotonic()
        up.decoder.expect(1)
        await up.send(plan.command.encode(), 0)
        payload = (await up.read()).payload
        err = decode_err(payload) if payload[:1] == b"\xff" else None
        if verdict.on_complete is not None:
            await verdict.on_complete(StatementOutcome(
                "" if err else "OK", None if err else 0, time.monotonic() - started,
                str(err.code) if err else None, err.message if err else None))
        return err

    # -- commands -----------------------------------------------------------------------

    async def _decide(self, text: str) -> StatementVerdict:
        ctx = self.ctx
        assert ctx is not None
        try:
            return await asyncio.wait_for(self.config.decide(text, ctx),
                                          self.config.decide_timeout)
        except Exception as exc:
            log.error("session %s: decision failed: %s", ctx.session_id, exc)
            return await self.config.refused(text, f"the decision failed: {exc}", ctx)

    async def _hold(self, hold_fn: Callable[[Notify], Awaitable[StatementVerdict]]
                    ) -> StatementVerdict:
        """Await a hold (a review's, a row budget's) while watching the client: a hang-up
        cancels it. MySQL has no notices, so what the hold tells the client ends the ERR of a
        denial (the approval request and how to approve it)."""
        notices: list[str] = []

        async def notify(text: str) -> None:
            notices.append(text)
            log.info("session %s: %s", self.ctx.session_id if self.ctx else "-", text)

        hold = asyncio.ensure_future(hold_fn(notify))
        while True:
            watch = asyncio.ensure_future(self.client.fill())
            done, _ = await asyncio.wait({hold, watch}, return_when=asyncio.FIRST_COMPLETED)
            if hold in done:
                watch.cancel()
                with contextlib.suppress(BaseException):
                    await watch
                verdict = hold.result()
                if verdict.effect != "allow" and notices and verdict.sqlstate != "57014":
                    verdict = replace(verdict, message=f"{verdict.message}. {notices[-1]}")
                return verdict
            try:
                watch.result()
            except _Closed:
                hold.cancel(HOLD_CLIENT_GONE)
                with contextlib.suppress(BaseException):
                    await hold
                raise

    async def _commands(self) -> None:
        client = self.client
        assert self.ctx is not None
        while True:
            client.decoder.expect(0)
            try:
                message = await client.read()
            except _Closed:
                raise _SessionOver("client disconnected") from None
            command = decode_command(message.payload)
            plan = self.planner.plan(command)
            if plan.quit:
                raise _SessionOver("client terminated")
            if plan.refuse is not None:
                text = plan.statement.text if plan.statement is not None else command.name
                refusal = await self.config.refused(text, plan.refuse, self.ctx)
                await client.send(replace(verdict_error(refusal),
                                          code=ER_NOT_ALLOWED_COMMAND).encode(), 1)
                continue
            verdict = await self._verdict(plan)
            if verdict is not None and verdict.effect != "allow":
                await client.send(verdict_error(verdict).encode(), 1)
                continue
            await self._run(plan, verdict)

    async def _verdict(self, plan: Plan) -> StatementVerdict | None:
        """The verdict a planned command runs under (None: relayed without one)."""
        verdict: StatementVerdict | None = None
        if plan.decide is not None:
            verdict = await self._decide(plan.decide)
        elif plan.binary and plan.statement is not None:
            prepared = plan.statement
            verdict = prepared.verdict
            if prepared.executions and verdict.single_execution:
                verdict = await self._decide(prepared.text)  # approvals are per execution
            prepared.executions += 1
        if verdict is not None and verdict.effect == "review":
            if verdict.hold is None:
                return replace(verdict, effect="deny",
                               message=verdict.message or "approval required")
            verdict = await self._hold(verdict.hold)
        return verdict

    async def _run(self, plan: Plan, verdict: StatementVerdict | None) -> None:
        up = self.upstream
        assert up is not None
        command = plan.command
        payload = command.encode()
        if verdict is not None and verdict.rewritten is not None and command.code in (
                COM_QUERY, COM_STMT_PREPARE):  # (a prepared text's masked uses too)
            payload = bytes((command.code,)) + verdict.rewritten.encode("utf-8")
        up.decoder.expect(1)
        await up.send(payload, 0)
        if plan.resets:
            self.planner.reset()
        if plan.response == "none":
            return
        await self._relay(plan, verdict)

    async def _relay(self, plan: Plan, verdict: StatementVerdict | None) -> None:
        """Relay one command's response, masking rows and recording each result."""
        up, client = self.upstream, self.client
        assert up is not None
        reader = ResponseReader(plan.response, self.caps)
        seq = 1
        started = time.monotonic()
        mask = verdict.masker if verdict is not None else None
        withhold = verdict is not None and verdict.withhold_error_values
        meter = verdict.rows() if verdict is not None and verdict.rows is not None else None
        masker: ResultMasker | None = None
        rows = 0
        free = uncharged = 0  # rows a row budget admits without asking; sent, not charged
        refused_infile = False
        while not reader.done:
            if not up.decoder.buffered:
                await client.flush()
            message = await up.read()
            payload = message.payload
            before = reader.results
            kind = reader.read(payload)
            if kind == "column" and plan.response == "field_list":
                column = reader.columns[-1]  # COM_FIELD_LIST: a default value is data too
                if column.default is not None and may_hold_pan_bytes(column.default):
                    payload = replace(column, default=b"\xfb").encode()  # NULL, not the value
            elif kind == "column":
                if masker is None:
                    masker = ResultMasker(plan.binary, mask)
                changed = masker.add(reader.columns[-1])
                if changed is not None:
                    payload = changed.encode()
            elif kind == "row":
                assert masker is not None
                if meter is not None and not meter.released:
                    if not free:  # charge what went, then see what room is left
                        meter.admit(uncharged)
                        uncharged, free = 0, meter.room()
                    if not free:
                        await client.flush()
                        final = await self._hold(meter.hold)
                        if final.effect != "allow":
                            await self._drain(reader)
                            await client.send(verdict_error(final).encode(), seq)
                            return
                        meter.admit(1)
                    else:
                        free -= 1
                        uncharged += 1
                payload = masker.row(payload)
                rows += 1
            elif kind == "local_infile":
                if self._may_send_file(plan, verdict, payload):
                    seq = client.queue(payload, seq)
                    await client.flush()
                    seq = await self._relay_file(seq, message.next_seq)
                    continue
                # the server may not read the client's files: it gets an empty file, and
                # the client the proxy's refusal
                refused_infile = True
                up.decoder.expect(message.next_seq)
                await up.send(b"", message.next_seq)
                continue
            elif kind == "prepare_ok" and plan.decide is not None and verdict is not None:
                ok = reader.prepare
                self.planner.prepared[ok.statement_id] = Prepared(
                    ok.statement_id, plan.decide, verdict, ok.params)
            elif kind == "err":
                err = decode_err(payload)
                text = withhold_quoted(err.message) if withhold else err.message
                text = self.config.scrub_server_text(text.encode()).decode("utf-8", "replace")
                payload = replace(err, message=text).encode()
            if reader.results > before:
                if meter is not None and uncharged:
                    meter.admit(uncharged)
                    uncharged, free = 0, 0
                payload = await self._end_result(kind, payload, verdict, masker, rows,
                                                 started, refused_infile)
                masker, rows, refused_infile = None, 0, False
                started = time.monotonic()
            elif kind == "column_count":
                masker = None
            seq = client.queue(payload, seq)
            if len(client.out) >= FLUSH_AT:
                await client.flush()
        await client.flush()

    def _may_send_file(self, plan: Plan, verdict: StatementVerdict | None,
                       request: bytes) -> bool:
        """Whether the client gets the server's LOCAL INFILE request: the policies allowed a
        LOAD DATA LOCAL statement, the client offered LOCAL INFILE, and the file asked for is
        one the statement names (a quoted literal of its text: a server may not ask for
        another)."""
        if verdict is None or not verdict.local_files or plan.decide is None:
            return False
        if not self.caps & CLIENT_LOCAL_FILES:
            return False
        name = request[1:].decode("utf-8", "replace")  # (0xFB, the file name)
        return bool(name) and any(f"{q}{name}{q}" in plan.decide for q in "'\"")

    async def _relay_file(self, seq: int, up_seq: int) -> int:
        """Relay the file a client sends after a LOCAL INFILE request (packets up to an empty
        one) to the server; the client's next sequence id."""
        up, client = self.upstream, self.client
        assert up is not None
        while True:
            client.decoder.expect(seq)
            try:
                message = await client.read()
            except _Closed:
                raise _SessionOver("client disconnected") from None
            seq = message.next_seq
            up_seq = await up.send(message.payload, up_seq)
            if not message.payload:
                up.decoder.expect(up_seq)
                return seq

    async def _drain(self, reader: ResponseReader) -> None:
        """Read and drop the rest of a response (a statement ended by a row budget's hold)."""
        up = self.upstream
        assert up is not None
        while not reader.done:
            message = await up.read()
            if reader.read(message.payload) == "local_infile":
                up.decoder.expect(message.next_seq)
                await up.send(b"", message.next_seq)

    async def _end_result(self, kind: str, payload: bytes, verdict: StatementVerdict | None,
                          masker: ResultMasker | None, rows: int, started: float,
                          refused_infile: bool) -> bytes:
        """The end of one result: its record made durable, then the packet to relay."""
        error: ERR | None = decode_err(payload) if kind == "err" else None
        tag, count = "", None
        if refused_infile:
            error = ERR(ER_NOT_ALLOWED_COMMAND, "42000",
                        "LOAD DATA LOCAL INFILE is refused by the proxy: a server may not "
                        "read the client's files")
            payload = error.encode()
        elif error is None and kind == "ok":
            ok = decode_ok(payload, self.caps)
            tag, count = "OK", ok.affected_rows
        elif error is None:
            tag, count = "SELECT", rows
        if masker is not None and masker.withheld and error is None:
            payload = self._add_warnings(payload, masker.withheld)
        if verdict is not None and verdict.on_complete is not None:
            await self.client.flush()
            await verdict.on_complete(StatementOutcome(
                tag, count, time.monotonic() - started,
                str(error.code) if error else None, error.message if error else None))
        return payload

    def _add_warnings(self, payload: bytes, extra: int) -> bytes:
        """An end-of-rows packet counting `extra` more warnings (masked values withheld)."""
        if payload[:1] == b"\xfe" and not self.caps & CLIENT_DEPRECATE_EOF and is_eof(payload):
            eof = decode_eof(payload)
            return replace(eof, warnings=min(0xFFFF, eof.warnings + extra)).encode()
        ok = decode_ok(payload, self.caps)
        return replace(ok, warnings=min(0xFFFF, ok.warnings + extra)).encode(self.caps)

