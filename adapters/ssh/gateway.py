"""The SSH gateway: an asyncssh server in front of the targets, enforcing every request.

A user logs in as `USER+TARGET` (`ssh -p 2222 alice+payments-db1@gateway`) with a public key
of the users file or an OIDC ID token (keyboard-interactive); the gateway then logs in to the
target with its own credential (the targets file), the target's host key checked against the
pinned entries. Per channel:

- exec (`ssh gw 'cmd'`, scp, rsync, git): decided (`SshEnforcer`), then refused (stderr, exit
  126, channel closed), held for approval (stderr names the request) or run on the target
  exactly as sent, its stdout/stderr through `PanStream`, its record durable before its exit
  status reaches the client;
- shell (pty-req + shell): decided; the session recorded (`ShellRecording`), both ways,
  output masked in what the user sees and in the recording;
- the `sftp` subsystem: relayed packet by packet, each request decided (`sftp_ops`);
- direct-tcpip (`ssh -L`, `-W`) decided as `forward` (kind `local`), tunnelled through the
  target; a tunnel to an SSH server (`-J`) refused; `-R` decided as kind `remote`; agent and
  X11 forwarding refused (not implemented: refused whatever the policies say).

Must not: decide anything itself (beyond refusing what it cannot enforce), or know policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import asyncssh
from asyncssh.stream import SSHReader, SSHServerStreamSession, SSHTCPStreamSession, SSHWriter

from adapters.enforcement.hooks import (
    HOLD_CLIENT_GONE,
    StatementOutcome,
    StatementVerdict,
)
from adapters.postgres.proxy import new_session_id  # (no card number in it)
from adapters.ssh.enforcer import SshContext, SshEnforcer, text_of
from adapters.ssh.pan_stream import PanStream
from adapters.ssh.recording import ShellRecording
from adapters.ssh.sftp_ops import (
    FX_OP_UNSUPPORTED,
    FX_PERMISSION_DENIED,
    SftpFramer,
    SftpProtocolError,
    operation,
    status,
)
from adapters.ssh.targets import Target, Targets
from engine.identity import IdentityError, Subject

log = logging.getLogger("ordinance.adapters.ssh.gateway")

DENIED_EXIT = 126
GATEWAY_FAILED_EXIT = 255  # what ssh itself exits with when it cannot reach the host
READ_SIZE = 64 * 1024
HOLD_RELEASE_S = 0.1
"""How long output that may be the start of a card number is held back when nothing follows
it: protocols over exec wait for an answer after printing digits (git's pkt-line `0000`), and
a prompt must echo `123` as typed. The recording's stream never releases early."""
UPSTREAM_CONNECT_TIMEOUT = 15.0
MAX_AUTH_FAILURES = 6  # as sshd's MaxAuthTries: then the connection is closed
PROXYJUMP_REFUSED = (
    "a tunnel to an SSH server (ssh -J / ProxyJump / -W) would carry an end-to-end encrypted "
    "session whose commands the gateway cannot see, so it is refused: log in as USER+TARGET "
    "instead (ssh -p PORT alice+web1@gateway)")


def split_login(username: str) -> tuple[str, str | None]:
    """`alice+payments-db1` -> ("alice", "payments-db1"); no `+` -> (name, None)."""
    user, sep, target = username.partition("+")
    return user, (target if sep else None)


@dataclass
class GatewayConfig:
    targets: Targets
    enforcers: Mapping[str, SshEnforcer]  # by target name (`enforcer.enforcers`)
    host_keys: list[asyncssh.SSHKey]
    host: str = "127.0.0.1"
    port: int = 2222
    directory: Any = None  # engine.identity.users.UserDirectory: public-key logins
    verify_token: Callable[[str], Subject] | None = None  # OIDC ID tokens (kbd-interactive)
    recordings: Path | None = None  # interactive sessions' asciicast files; None: refused
    login_timeout: float = 60.0


class SshGateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._server: asyncssh.SSHAcceptor | None = None
        self.connections: set[_Connection] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.get_port())

    @property
    def active_sessions(self) -> int:
        return len(self.connections)

    async def start(self) -> None:
        self._server = await asyncssh.create_server(
            lambda: _Connection(self), self.config.host, self.config.port,
            server_host_keys=self.config.host_keys, agent_forwarding=False,
            x11_forwarding=False, allow_pty=True, line_editor=False,
            login_timeout=self.config.login_timeout,
            password_auth=False, kbdint_auth=self.config.verify_token is not None,
            server_version="Ordinance_SSH_Gateway", keepalive_interval=30, encoding=None)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for conn in list(self.connections):
            conn.close("the gateway is shutting down")
        for conn in list(self.connections):
            await conn.closed()


class _Connection(asyncssh.SSHServer):
    """One client connection: its login, its target connection, its session record."""

    def __init__(self, gateway: SshGateway) -> None:
        self.gateway = gateway
        self.config = gateway.config
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = ""
        self.user = ""
        self.target: Target | None = None
        self.fingerprint = ""
        self.token_subject: Subject | None = None
        self.ctx: SshContext | None = None
        self.enforcer: SshEnforcer | None = None
        self._started: asyncio.Future[None] | None = None
        self._upstream: asyncio.Task[asyncssh.SSHClientConnection] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._done = asyncio.Event()
        self._end_reason = "the client closed the connection"
        self._failed_logins = 0

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("", 0)
        self.peer = f"{peer[0]}:{peer[1]}"
        self.gateway.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._end_reason = f"connection lost: {exc}"
        self.spawn(self._ended())

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _ended(self) -> None:
        try:
            for task in [t for t in self._tasks if t is not asyncio.current_task()]:
                task.cancel(HOLD_CLIENT_GONE)  # a held request is withdrawn and recorded
            await asyncio.gather(*[t for t in self._tasks if t is not asyncio.current_task()],
                                 return_exceptions=True)
            if self._upstream is not None:
                self._upstream.cancel()
                with contextlib.suppress(BaseException):
                    upstream = await self._upstream
                    upstream.close()
                    await upstream.wait_closed()
            if self._started is not None and self.ctx is not None and self.enforcer:
                with contextlib.suppress(BaseException):
                    await self._started
                try:
                    await self.enforcer.session_ended(self.ctx, self._end_reason)
                except Exception as exc:
                    log.error("session %s: end not recorded: %s", self.ctx.session_id, exc)
        finally:
            self.gateway.connections.discard(self)
            self._done.set()

    def close(self, reason: str) -> None:
        self._end_reason = reason
        if self.conn is not None:
            self.conn.close()

    async def closed(self) -> None:
        await self._done.wait()

    # -- authentication -------------------------------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        self.user, target = split_login(username)
        self.target = self.config.targets.get(target) if target else None
        return True

    def public_key_auth_supported(self) -> bool:
        return self.config.directory is not None

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        directory = self.config.directory
        entry = directory.lookup(self.user) if directory is not None else None
        if entry is None or not entry.ssh_keys:
            return False
        authorized = asyncssh.import_authorized_keys("\n".join(entry.ssh_keys) + "\n")
        host, _, _ = self.peer.rpartition(":")
        options = authorized.validate(key, host, host)
        if options is None:
            return False
        if set(options) - {"from"}:  # (the users file refuses such lines; fail closed)
            log.warning("login %s: key options %s are not honoured: key refused", self.user,
                        sorted(set(options) - {"from"}))
            return False
        self.fingerprint = key.get_fingerprint()
        self.token_subject = None
        return True

    def kbdint_auth_supported(self) -> bool:
        return self.config.verify_token is not None

    def get_kbdint_challenge(self, username: str, lang: str, submethods: str
                             ) -> tuple[str, str, str, list[tuple[str, bool]]]:
        return ("Ordinance SSH gateway", "Paste an OIDC ID token to log in.", "en",
                [("ID token: ", False)])

    async def validate_kbdint_response(self, username: str, responses: Sequence[str]
                                       ) -> bool:
        verify = self.config.verify_token
        if verify is None or len(responses) != 1:
            return False
        try:
            subject = await asyncio.to_thread(verify, responses[0].strip())
        except IdentityError as exc:
            log.info("login %s from %s: ID token refused: %s", username, self.peer, exc)
            self._failed_logins += 1
            if self._failed_logins >= MAX_AUTH_FAILURES and self.conn is not None:
                self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                                     "too many failed logins")
            return False
        self.token_subject = subject
        return True

    def auth_completed(self) -> None:
        if self.token_subject is not None:
            who, method = self.token_subject, "oidc-token"
            credential = {"token_subject": self.token_subject.id}
        else:
            directory = self.config.directory
            entry = directory.lookup(self.user) if directory is not None else None
            assert entry is not None
            who, method = entry.subject(), "publickey"
            credential = {"key_fingerprint": self.fingerprint}
        if self.target is None:
            return  # every channel is refused with the reason (`ready`)
        assert self.conn is not None
        self.enforcer = self.config.enforcers[self.target.name]
        self.ctx = SshContext(
            new_session_id(), who.id, tuple(who.groups), self.target.user,
            str(self.conn.get_extra_info("client_version") or ""), self.peer, True, method,
            requested_user=self.user, claims=dict(who.claims), protocol="ssh",
            credential=credential, target=self.target.name)
        # not one of the cancellable tasks: a session that ends at once still has its start
        self._started = asyncio.ensure_future(self.enforcer.session_started(self.ctx))
        self._upstream = asyncio.ensure_future(self._connect(self.target))

    async def _connect(self, target: Target) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            target.host, target.port, username=target.user, client_keys=target.client_keys(),
            known_hosts=target.known_hosts, agent_path=None, config=None,
            preferred_auth="publickey", connect_timeout=UPSTREAM_CONNECT_TIMEOUT,
            keepalive_interval=30)

    async def ready(self) -> tuple[SshContext, SshEnforcer, asyncssh.SSHClientConnection]:
        """The session (its start record durable), its enforcer and the target connection;
        `_Refused` with the reason."""
        if (self.ctx is None or self.enforcer is None or self._upstream is None
                or self._started is None):
            raise _Refused(f"no target named: log in as {self.user}+TARGET (for example "
                           f"ssh -p PORT {self.user}+web1@gateway)")
        try:
            await self._started
        except Exception as exc:
            log.error("session %s: start not recorded: %s", self.ctx.session_id, exc)
            raise _Refused("the audit trail is unavailable, so nothing can be run") from None
        try:
            return self.ctx, self.enforcer, await asyncio.shield(self._upstream)
        except asyncssh.HostKeyNotVerifiable as exc:
            target = self.enforcer.target
            raise _Refused(f"target {target.name}'s host key does not match its "
                           f"pinned known_hosts entries ({exc}): connection refused; if the "
                           "key was changed on purpose, update the targets file") from None
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            target = self.enforcer.target
            raise _Refused(f"target {target.name} ({target.host}:{target.port}) cannot be "
                           f"reached: {exc}") from None

    # -- channels -----------------------------------------------------------------------------

    def session_requested(self) -> asyncssh.SSHServerSession[bytes]:
        return _Channel(self)

    async def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                                   orig_port: int) -> Any:
        """`ssh -L` / `-W` / `-J`: decided as a `forward` of kind `local`, tunnelled
        through the target when allowed. With `-J` (ProxyJump) the client's own SSH session
        to the target would run inside it, end to end encrypted: the gateway could see none
        of its commands: a tunnel to port 22 or to a target's address is refused whatever
        the policies say (`PROXYJUMP_REFUSED`)."""
        try:
            ctx, enforcer, upstream = await self.ready()
        except _Refused as exc:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            str(exc)) from None
        command = {"request": "forward",
                   "forward": {"kind": "local", "host": dest_host, "port": dest_port,
                               "originator": f"{orig_host}:{orig_port}"}}
        text = text_of("forward", command)
        if self._is_ssh_server(dest_host, dest_port):
            await enforcer.refused(text, PROXYJUMP_REFUSED, ctx)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            f"ordinance: {PROXYJUMP_REFUSED}")
        verdict = await enforcer.decide(text, ctx, command)
        if verdict.effect != "allow":
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"ordinance: port forwarding to {dest_host}:{dest_port} denied: "
                f"{verdict.message or 'approval required'}{_decision_ref(verdict)}")
        started = time.monotonic()
        try:
            reader, writer = await upstream.open_connection(dest_host, dest_port)
        except (OSError, asyncssh.Error) as exc:
            await _completed(verdict, started, "", error=f"the target refused it: {exc}")
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None

        async def relay(down_r: SSHReader[bytes], down_w: SSHWriter[bytes]) -> None:
            counts = [0, 0]
            try:
                await asyncio.gather(_pipe(down_r, writer, counts, 0),
                                     _pipe(reader, down_w, counts, 1))
            finally:
                writer.close()
                await _completed(verdict, started, "closed", bytes_in=counts[0],
                                 bytes_out=counts[1])

        return SSHTCPStreamSession[bytes](relay)

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        """`ssh -R`: decided as a `forward` of kind `remote`; when allowed the target listens
        (its sshd's own rules apply too) and each connection it accepts comes back to the
        client as a forwarded-tcpip channel. The record is written when the listener closes."""
        return self._remote(listen_host, listen_port)

    async def _remote(self, listen_host: str, listen_port: int) -> Any:
        try:
            ctx, enforcer, upstream = await self.ready()
        except _Refused:
            return False
        command = {"request": "forward",
                   "forward": {"kind": "remote", "host": listen_host, "port": listen_port}}
        text = text_of("forward", command)
        verdict = await enforcer.decide(text, ctx, command)
        if verdict.effect == "review":
            verdict = await enforcer.refused(text, "a remote forward cannot wait for an "
                                             "approval", ctx)
        if verdict.effect != "allow":
            return False
        started = time.monotonic()
        counts = [0, 0, 0]  # connections, bytes from the target side, bytes from the client
        assert self.conn is not None
        client = self.conn

        def accepted(orig_host: str, orig_port: int) -> Any:
            async def relay(up_r: SSHReader[bytes], up_w: SSHWriter[bytes]) -> None:
                counts[0] += 1
                try:
                    down_r, down_w = await client.open_connection(
                        listen_host, listener.get_port(), orig_host, orig_port)
                except (OSError, asyncssh.Error):
                    up_w.close()
                    return
                pair = [0, 0]
                try:
                    await asyncio.gather(_pipe(up_r, down_w, pair, 0),
                                         _pipe(down_r, up_w, pair, 1))
                finally:
                    counts[1] += pair[0]
                    counts[2] += pair[1]
                    up_w.close()
                    down_w.close()

            return relay

        try:
            listener = await upstream.start_server(accepted, listen_host, listen_port)
        except (OSError, asyncssh.Error) as exc:
            await _completed(verdict, started, "", error=f"the target refused it: {exc}")
            return False

        async def recorded() -> None:
            try:
                await listener.wait_closed()
            finally:
                await asyncio.shield(_completed(
                    verdict, started, "closed", connections=counts[0], bytes_out=counts[1],
                    bytes_in=counts[2], port=listener.get_port()))

        self.spawn(recorded())
        return listener

    def _is_ssh_server(self, host: str, port: int) -> bool:
        """Port 22, or a target's SSH address: what `-J`/ProxyJump would tunnel to."""
        return port == 22 or any((t.host, t.port) == (host, port)
                                 for t in self.config.targets)


async def _completed(verdict: StatementVerdict, started: float, tag: str, *,
                     error: str | None = None, **details: Any) -> None:
    """The allowed request's record (durable when this returns)."""
    if verdict.on_complete is not None:
        await verdict.on_complete(StatementOutcome(
            tag, None, time.monotonic() - started, error_code="ssh" if error else None,
            error_message=error, details=details))


def _decision_ref(verdict: StatementVerdict) -> str:
    return f" (decision {verdict.decision_id})" if verdict.decision_id else ""


async def _pipe(reader: Any, writer: Any, counts: list[int], index: int) -> None:
    while True:
        data = await reader.read(READ_SIZE)
        if not data:
            break
        counts[index] += len(data)
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(Exception):
        writer.write_eof()


class _Refused(Exception):
    """The gateway cannot serve the channel; the message is for the user."""


class _Channel(SSHServerStreamSession[bytes]):
    """One session channel: exec, shell or the sftp subsystem."""

    def __init__(self, connection: _Connection) -> None:
        super().__init__(self._run)
        self.connection = connection
        self.pty: dict[str, Any] | None = None

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int],
                      term_modes: Mapping[int, int]) -> bool:
        self.pty = {"term": term_type, "width": term_size[0], "height": term_size[1]}
        self.term_modes = term_modes
        return True

    @property
    def chan(self) -> asyncssh.SSHServerChannel[bytes]:
        assert self._chan is not None
        return cast(asyncssh.SSHServerChannel[bytes], self._chan)

    def subsystem_requested(self, subsystem: str) -> bool:
        """Only sftp (its requests are decided one by one); another is refused, recorded."""
        if subsystem == "sftp":
            return True
        connection = self.connection
        if connection.ctx is not None and connection.enforcer is not None:
            connection.spawn(connection.enforcer.refused(
                f"subsystem {subsystem}", "only the sftp subsystem is served by the gateway",
                connection.ctx))
        return False

    def session_started(self) -> None:
        chan = self.chan
        chan.set_encoding(None)
        self._encoding = None  # the stream session's own copy: bytes both ways
        stdin = SSHReader[bytes](self, chan)  # type: ignore[arg-type]
        stdout = SSHWriter[bytes](self, chan)  # type: ignore[arg-type]
        stderr = SSHWriter[bytes](self, chan, asyncssh.EXTENDED_DATA_STDERR)  # type: ignore
        self.connection.spawn(self._run(stdin, stdout, stderr))

    async def _run(self, stdin: SSHReader[bytes], stdout: SSHWriter[bytes],
                   stderr: SSHWriter[bytes]) -> None:
        chan = self.chan
        try:
            try:
                ctx, enforcer, upstream = await self.connection.ready()
            except _Refused as exc:
                stderr.write(f"ordinance: {exc}\r\n".encode())
                chan.exit(GATEWAY_FAILED_EXIT)
                return
            if chan.get_subsystem() == "sftp":
                await _Sftp(self, ctx, enforcer, upstream, stdin, stdout, stderr).run()
                return
            command_line = chan.get_command()
            if command_line is None:
                await self._shell(ctx, enforcer, upstream, stdin, stdout, stderr)
                return
            command: dict[str, Any] = {"request": "exec"}
            if self.pty is not None:
                command["pty"] = dict(self.pty)
            decided = await enforcer.decide(command_line, ctx, command)
            verdict = await self._settle(decided, stderr)
            if verdict is None:
                return
            await _Relay(self, upstream, verdict, stdin, stdout, stderr,
                         command_line=command_line).run()
        except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as exc:
            log.info("channel of %s ended: %s", self.connection.peer, exc)
            with contextlib.suppress(Exception):
                chan.close()
        except Exception:
            log.exception("channel of %s failed", self.connection.peer)
            with contextlib.suppress(Exception):
                stderr.write(b"ordinance: internal error in the gateway (see its log)\r\n")
                chan.exit(GATEWAY_FAILED_EXIT)

    async def _settle(self, verdict: StatementVerdict, stderr: SSHWriter[bytes]
                      ) -> StatementVerdict | None:
        """The allowed verdict, after a hold; None when refused (told on stderr, exit 126,
        the channel closed)."""
        if verdict.effect == "review" and verdict.hold is not None:
            async def notify(message: str) -> None:
                stderr.write(f"ordinance: {message}\r\n".encode("utf-8", "replace"))
                await stderr.drain()

            verdict = await verdict.hold(notify)
        if verdict.effect == "allow":
            return verdict
        why = ("approval required: " if verdict.effect == "review" else "") + verdict.message
        stderr.write(f"ordinance: denied by policy: {why}{_decision_ref(verdict)}\r\n"
                     .encode("utf-8", "replace"))
        self.chan.exit(DENIED_EXIT)
        return None

    async def _shell(self, ctx: SshContext, enforcer: SshEnforcer,
                     upstream: asyncssh.SSHClientConnection, stdin: SSHReader[bytes],
                     stdout: SSHWriter[bytes], stderr: SSHWriter[bytes]) -> None:
        """A shell (with or without a pty: without one its commands come on stdin, so it is
        a shell all the same): decided once, recorded whole."""
        recordings = self.connection.config.recordings
        command: dict[str, Any] = {"request": "shell"}
        if self.pty is not None:
            command["pty"] = dict(self.pty)
        text = text_of("shell", command)
        if recordings is None:
            verdict = await enforcer.refused(text, "interactive sessions need a recordings "
                                             "directory (--recordings), and the gateway has "
                                             "none", ctx)
        else:
            verdict = await enforcer.decide(text, ctx, command)
        settled = await self._settle(verdict, stderr)
        if settled is None:
            return
        assert recordings is not None
        pty = self.pty or {}
        recording = ShellRecording(recordings, ctx.session_id,
                                   width=int(pty.get("width") or 80),
                                   height=int(pty.get("height") or 24),
                                   term=str(pty.get("term") or ""),
                                   title=f"{ctx.user} on {enforcer.target.name}")
        await _Relay(self, upstream, settled, stdin, stdout, stderr,
                     command_line=None, recording=recording).run()


class _Relay:
    """An allowed exec or shell, run on the target; both directions pumped, output masked
    (`PanStream`: one for the view, one for the recording, which never flushes early)."""

    def __init__(self, channel: _Channel, upstream: asyncssh.SSHClientConnection,
                 verdict: StatementVerdict, stdin: SSHReader[bytes], stdout: SSHWriter[bytes],
                 stderr: SSHWriter[bytes], *, command_line: str | None,
                 recording: ShellRecording | None = None) -> None:
        self.channel = channel
        self.upstream = upstream
        self.verdict = verdict
        self.started = time.monotonic()
        self.command_line = command_line
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.recording = recording
        self.counts = {"bytes_in": 0, "bytes_out": 0, "bytes_err": 0}
        self.views = (PanStream(), PanStream())  # stdout, stderr as the user sees them
        self.recorded = (PanStream(), PanStream())  # input, output in the recording

    async def run(self) -> None:
        chan = self.channel.chan
        pty = self.channel.pty
        options: dict[str, Any] = {"request_pty": "force" if pty else False}
        if pty:
            options.update(term_type=pty["term"], term_size=(pty["width"], pty["height"]),
                           term_modes=self.channel.term_modes)
        outcome: dict[str, Any] = {"exit_status": None, "error": None}
        try:
            process = await self.upstream.create_process(self.command_line, encoding=None,
                                                         **options)
        except (OSError, asyncssh.Error) as exc:
            await self._finish(outcome | {"error": f"the target refused the channel: {exc}"})
            self.stderr.write(f"ordinance: target refused the channel: {exc}\r\n".encode())
            chan.exit(GATEWAY_FAILED_EXIT)
            return
        feeding = asyncio.ensure_future(self._input(process))
        try:
            await asyncio.gather(
                self._output(process.stdout, self.stdout, 0, "bytes_out"),
                self._output(process.stderr, self.stderr, 1, "bytes_err"))
            done = await process.wait(check=False)
            outcome["exit_status"] = done.exit_status if done.exit_signal is None else None
            outcome["signal"] = done.exit_signal[0] if done.exit_signal else None
        except asyncio.CancelledError:
            outcome["error"] = "the client disconnected"
            await asyncio.shield(self._finish(outcome))
            raise
        except (OSError, asyncssh.Error) as exc:
            outcome["error"] = f"the channel failed: {exc}"
        finally:
            feeding.cancel()
            process.close()
        await self._finish(outcome)  # durable before the client gets the exit status
        if outcome.get("signal"):
            assert done.exit_signal is not None
            chan.exit_with_signal(*done.exit_signal)
        elif outcome["exit_status"] is not None:
            chan.exit(outcome["exit_status"])
        else:
            chan.exit(GATEWAY_FAILED_EXIT)

    async def _finish(self, outcome: dict[str, Any]) -> None:
        details: dict[str, Any] = {
            "request": "exec" if self.command_line is not None else "shell",
            "exit_status": outcome["exit_status"], "signal": outcome.get("signal"),
            **self.counts, "masked_pans": self.views[0].masked + self.views[1].masked}
        if self.recording is not None:
            rec = self.recording
            rec.input(self.recorded[0].flush())
            rec.output(self.recorded[1].flush())
            digest = await asyncio.to_thread(rec.close)
            details["recording"] = {"format": "asciicast-v2", "path": str(rec.path),
                                    "sha256": digest, "bytes": rec.bytes}
        status, signal = outcome["exit_status"], outcome.get("signal")
        tag = f"exit {status}" if status is not None else f"signal {signal}" if signal else ""
        await _completed(self.verdict, self.started, tag, error=outcome["error"], **details)

    async def _input(self, process: Any) -> None:
        try:
            await self._feed(process)
        except (OSError, asyncssh.Error, BrokenPipeError) as exc:
            log.info("channel of %s: input ended: %s", self.channel.connection.peer, exc)
        except Exception:
            log.exception("channel of %s: input failed", self.channel.connection.peer)
            process.close()

    async def _feed(self, process: Any) -> None:
        recording = self.recording
        while True:
            try:
                data = await self.stdin.read(READ_SIZE)
            except asyncssh.TerminalSizeChanged as exc:
                process.change_terminal_size(exc.width, exc.height, exc.pixwidth,
                                             exc.pixheight)
                if recording is not None:
                    recording.resize(exc.width, exc.height)
                continue
            except asyncssh.SignalReceived as exc:
                process.send_signal(exc.signal)
                continue
            except asyncssh.BreakReceived as exc:
                process.send_break(exc.msec)
                continue
            if not data:
                break
            self.counts["bytes_in"] += len(data)
            if recording is not None:
                recording.input(self.recorded[0].feed(data))
            process.stdin.write(data)
            await process.stdin.drain()
        process.stdin.write_eof()

    async def _output(self, reader: Any, writer: SSHWriter[bytes], index: int,
                      count: str) -> None:
        view = self.views[index]
        recording = self.recording
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None

        def release() -> None:
            with contextlib.suppress(Exception):
                writer.write(view.idle())

        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                self.counts[count] += len(data)
                if recording is not None:
                    recording.output(self.recorded[1].feed(data))
                if timer is not None:
                    timer.cancel()
                    timer = None
                shown = view.feed(data)
                if shown:
                    writer.write(shown)
                if view.holding:
                    timer = loop.call_later(HOLD_RELEASE_S, release)
                await writer.drain()
        finally:
            if timer is not None:
                timer.cancel()
        tail = view.flush()
        if tail:
            writer.write(tail)


class _Sftp:
    """The sftp subsystem, relayed packet by packet with each request decided; a refused one
    is answered by the gateway (SSH_FX_PERMISSION_DENIED with the reason) and never reaches
    the target. An allowed request's record is durable before it is sent on."""

    def __init__(self, channel: _Channel, ctx: SshContext, enforcer: SshEnforcer,
                 upstream: asyncssh.SSHClientConnection, stdin: SSHReader[bytes],
                 stdout: SSHWriter[bytes], stderr: SSHWriter[bytes]) -> None:
        self.channel = channel
        self.ctx = ctx
        self.enforcer = enforcer
        self.upstream = upstream
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr

    async def run(self) -> None:
        chan = self.channel.chan
        process = await self.upstream.create_process(subsystem="sftp", encoding=None)
        framer = SftpFramer()

        async def replies() -> None:
            # whole packets only: a refusal the gateway answers goes in between two of them
            replies = SftpFramer()
            while True:
                data = await process.stdout.read(READ_SIZE)
                if not data:
                    break
                for reply in replies.feed(data):
                    self.stdout.write(reply)
                await self.stdout.drain()

        relay = asyncio.ensure_future(replies())
        try:
            while True:
                data = await self.stdin.read(READ_SIZE)
                if not data:
                    break
                for packet in framer.feed(data):
                    await self._request(packet, process)
            process.stdin.write_eof()
            await relay
        except SftpProtocolError as exc:
            log.info("session %s: sftp closed: %s", self.ctx.session_id, exc)
            await self.enforcer.refused("sftp", str(exc), self.ctx)
            self.stderr.write(f"ordinance: {exc}\r\n".encode())
        finally:
            relay.cancel()
            process.close()
        chan.exit(0)

    async def _request(self, packet: bytes, process: Any) -> None:
        op = operation(packet)
        if op.unsupported is not None:
            assert op.request_id is not None
            await self.enforcer.refused(op.unsupported, op.unsupported, self.ctx)
            self.stdout.write(status(op.request_id, FX_OP_UNSUPPORTED, op.unsupported))
            return
        if op.facts is not None:
            assert op.request_id is not None
            command = {"request": "sftp", "sftp": op.facts}
            text = text_of("sftp", command)
            started = time.monotonic()
            verdict = await self.enforcer.decide(text, self.ctx, command)
            if verdict.effect == "review" and verdict.hold is not None:
                async def notify(message: str) -> None:
                    self.stderr.write(f"ordinance: {message}\r\n".encode("utf-8", "replace"))

                verdict = await verdict.hold(notify)
            if verdict.effect != "allow":
                message = (f"ordinance: denied by policy: {verdict.message}"
                           f"{_decision_ref(verdict)}")
                self.stdout.write(status(op.request_id, FX_PERMISSION_DENIED, message))
                return
            await _completed(verdict, started, "sent", request="sftp")
        process.stdin.write(packet)
        await process.stdin.drain()
