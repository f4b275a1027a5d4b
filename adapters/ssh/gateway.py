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
- direct-tcpip (`ssh -L`, `-W`, `-J`) decided as `forward` (kind `local`); remote forwarding
  (`-R`), agent and X11 forwarding refused (not implemented: refused whatever the policies say).

Must not: decide anything itself (beyond refusing what it cannot enforce), or know policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import asyncssh
from asyncssh.stream import SSHReader, SSHServerStreamSession, SSHTCPStreamSession, SSHWriter

from adapters.ssh.enforcer import Command, SshEnforcer, SshSession, Verdict
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
PTY_HOLD_S = 0.25
"""How long a possible card number's first digits are held back from an interactive view."""
UPSTREAM_CONNECT_TIMEOUT = 15.0
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
    enforcer: SshEnforcer
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
        self.session: SshSession | None = None
        self._started: asyncio.Future[None] | None = None
        self._upstream: asyncio.Task[asyncssh.SSHClientConnection] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._done = asyncio.Event()
        self._end_reason = "the client closed the connection"

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
                task.cancel()
            await asyncio.gather(*[t for t in self._tasks if t is not asyncio.current_task()],
                                 return_exceptions=True)
            if self._upstream is not None:
                self._upstream.cancel()
                with contextlib.suppress(BaseException):
                    upstream = await self._upstream
                    upstream.close()
                    await upstream.wait_closed()
            if self._started is not None and self.session is not None:
                with contextlib.suppress(BaseException):
                    await self._started
                try:
                    await self.config.enforcer.session_ended(self.session, self._end_reason)
                except Exception as exc:
                    log.error("session %s: end not recorded: %s", self.session.session_id, exc)
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
        if authorized.validate(key, host, host) is None:
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
            return False
        self.token_subject = subject
        return True

    def auth_completed(self) -> None:
        if self.token_subject is not None:
            who, method, credential = self.token_subject, "oidc-token", self.token_subject.id
        else:
            directory = self.config.directory
            entry = directory.lookup(self.user) if directory is not None else None
            assert entry is not None
            who, method, credential = entry.subject(), "publickey", self.fingerprint
        if self.target is None:
            return  # every channel is refused with the reason (`_no_target`)
        self.session = SshSession(
            session_id=secrets.token_hex(8), user=who.id, groups=tuple(who.groups),
            claims=dict(who.claims), requested_user=self.user, client_addr=self.peer,
            auth_method=method, credential=credential, target=self.target)
        self._started = self.spawn(self.config.enforcer.session_started(self.session))
        self._upstream = asyncio.ensure_future(self._connect(self.target))

    async def _connect(self, target: Target) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            target.host, target.port, username=target.user, client_keys=target.client_keys(),
            known_hosts=target.known_hosts, agent_path=None, config=None,
            preferred_auth="publickey", connect_timeout=UPSTREAM_CONNECT_TIMEOUT,
            keepalive_interval=30)

    async def ready(self) -> tuple[SshSession, asyncssh.SSHClientConnection]:
        """The session (its start record durable) and the target connection; `_Refused`."""
        if self.session is None or self._upstream is None or self._started is None:
            raise _Refused(f"no target named: log in as {self.user}+TARGET (for example "
                           f"ssh -p PORT {self.user}+web1@gateway)")
        try:
            await self._started
        except Exception as exc:
            log.error("session %s: start not recorded: %s", self.session.session_id, exc)
            raise _Refused("the audit trail is unavailable, so nothing can be run") from None
        try:
            return self.session, await asyncio.shield(self._upstream)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise _Refused(f"target {self.session.target.name}'s host key does not match its "
                           f"pinned known_hosts entries ({exc}): connection refused; if the "
                           "key was changed on purpose, update the targets file") from None
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            raise _Refused(f"target {self.session.target.name} "
                           f"({self.session.target.host}:{self.session.target.port}) cannot be "
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
            session, upstream = await self.ready()
        except _Refused as exc:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            str(exc)) from None
        facts = {"kind": "local", "host": dest_host, "port": dest_port,
                 "originator": f"{orig_host}:{orig_port}"}
        text = f"forward local {dest_host}:{dest_port}"
        if self._is_ssh_server(dest_host, dest_port):
            await self.config.enforcer.refuse(session, "forward", text, PROXYJUMP_REFUSED)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            f"ordinance: {PROXYJUMP_REFUSED}")
        verdict = await self.config.enforcer.decide(session, "forward",
                                                    {"raw": "", "forward": facts}, text)
        if verdict.effect != "allow":
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"ordinance: port forwarding to {dest_host}:{dest_port} denied: "
                f"{verdict.message or 'approval required'}")
        try:
            reader, writer = await upstream.open_connection(dest_host, dest_port)
        except (OSError, asyncssh.Error) as exc:
            await verdict.command.finished(exit_status=None, error=str(exc))
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None

        async def relay(down_r: SSHReader[bytes], down_w: SSHWriter[bytes]) -> None:
            counts = [0, 0]
            try:
                await asyncio.gather(_pipe(down_r, writer, counts, 0),
                                     _pipe(reader, down_w, counts, 1))
            finally:
                writer.close()
                await verdict.command.finished(exit_status=None, bytes_in=counts[0],
                                               bytes_out=counts[1])

        return SSHTCPStreamSession[bytes](relay)

    def _is_ssh_server(self, host: str, port: int) -> bool:
        """Port 22, or a target's SSH address: what `-J`/ProxyJump would tunnel to."""
        return port == 22 or any((t.host, t.port) == (host, port)
                                 for t in self.config.targets)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        """`ssh -R`: refused (the gateway does not listen on targets' behalf), recorded."""
        if self.session is not None:
            self.spawn(self.config.enforcer.refuse(
                self.session, "forward", f"forward remote {listen_host}:{listen_port}",
                "remote port forwarding is not supported by the gateway"))
        return False


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
        self.pty = {"term": term_type, "cols": term_size[0], "rows": term_size[1]}
        self.term_modes = term_modes
        return True

    @property
    def chan(self) -> asyncssh.SSHServerChannel[bytes]:
        assert self._chan is not None
        return cast(asyncssh.SSHServerChannel[bytes], self._chan)

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == "sftp"

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
                session, upstream = await self.connection.ready()
            except _Refused as exc:
                stderr.write(f"ordinance: {exc}\r\n".encode())
                chan.exit(GATEWAY_FAILED_EXIT)
                return
            if chan.get_subsystem() == "sftp":
                await _Sftp(self, session, upstream, stdin, stdout, stderr).run()
                return
            command = chan.get_command()
            enforcer = self.connection.config.enforcer
            if command is None:
                await self._shell(session, upstream, stdin, stdout, stderr)
                return
            facts: dict[str, Any] = {"raw": command}
            if self.pty is not None:
                facts["pty"] = dict(self.pty)
            decided = await enforcer.decide(session, "exec", facts, command)
            verdict = await self._settle(decided, stderr)
            if verdict is None:
                return
            await _Relay(self, upstream, verdict.command, stdin, stdout, stderr,
                         command_line=command).run()
        except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as exc:
            log.info("channel of %s ended: %s", self.connection.peer, exc)
            with contextlib.suppress(Exception):
                chan.close()
        except Exception:
            log.exception("channel of %s failed", self.connection.peer)
            with contextlib.suppress(Exception):
                stderr.write(b"ordinance: internal error in the gateway (see its log)\r\n")
                chan.exit(GATEWAY_FAILED_EXIT)

    async def _settle(self, verdict: Verdict, stderr: SSHWriter[bytes]) -> Verdict | None:
        """The allowed verdict, after a hold; None when refused (told on stderr, exit 126)."""
        chan = self.chan
        if verdict.effect == "review" and verdict.hold is not None:
            async def notify(message: str) -> None:
                stderr.write(message.encode("utf-8", "replace") + b"\r\n")
                await stderr.drain()

            verdict = await verdict.hold(notify)
        if verdict.effect == "allow":
            return verdict
        stderr.write(f"ordinance: denied by policy: {verdict.message}"
                     f"{_decision_ref(verdict.command)}\r\n".encode("utf-8", "replace"))
        chan.exit(DENIED_EXIT)
        return None

    async def _shell(self, session: SshSession, upstream: asyncssh.SSHClientConnection,
                     stdin: SSHReader[bytes], stdout: SSHWriter[bytes],
                     stderr: SSHWriter[bytes]) -> None:
        config = self.connection.config
        facts: dict[str, Any] = {"raw": "", "shell": True}
        if self.pty is not None:
            facts["pty"] = dict(self.pty)
        text = f"interactive shell on {session.target.name}"
        verdict = await config.enforcer.decide(session, "shell", facts, text)
        if verdict.effect != "deny" and config.recordings is None:
            verdict = await verdict.command.refused(
                "interactive sessions need a recordings directory (--recordings), and the "
                "gateway has none")
        settled = await self._settle(verdict, stderr)
        if settled is None:
            return
        pty = self.pty or {}
        assert config.recordings is not None
        recording = ShellRecording(config.recordings, session.session_id,
                                   width=int(pty.get("cols") or 80),
                                   height=int(pty.get("rows") or 24),
                                   term=str(pty.get("term") or ""),
                                   title=f"{session.user} on {session.target.name}")
        await _Relay(self, upstream, settled.command, stdin, stdout, stderr,
                     command_line=None, recording=recording).run()


def _decision_ref(command: Command) -> str:
    return f" (decision {command.decision_id})" if command.decision_id else ""


class _Relay:
    """An allowed exec or shell, run on the target; both directions pumped, output masked
    (`PanStream`: one for the view, one for the recording, which never flushes early)."""

    def __init__(self, channel: _Channel, upstream: asyncssh.SSHClientConnection,
                 command: Command, stdin: SSHReader[bytes], stdout: SSHWriter[bytes],
                 stderr: SSHWriter[bytes], *, command_line: str | None,
                 recording: ShellRecording | None = None) -> None:
        self.channel = channel
        self.upstream = upstream
        self.command = command
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
            options.update(term_type=pty["term"], term_size=(pty["cols"], pty["rows"]),
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
        extra: dict[str, Any] = {}
        if self.recording is not None:
            rec = self.recording
            rec.event("i", self.recorded[0].flush())
            rec.event("o", self.recorded[1].flush())
            digest = await asyncio.to_thread(rec.close)
            extra["recording"] = {"format": "asciicast-v2", "path": str(rec.path),
                                  "sha256": digest, "bytes": rec.bytes}
        await self.command.finished(**outcome, **self.counts,  # type: ignore[arg-type]
                                    masked=self.views[0].masked + self.views[1].masked,
                                    **extra)

    async def _input(self, process: Any) -> None:
        try:
            await self._feed(process)
        except (OSError, asyncssh.Error, BrokenPipeError) as exc:
            log.info("session %s: input ended: %s", self.command.session.session_id, exc)
        except Exception:
            log.exception("session %s: input failed", self.command.session.session_id)
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
                recording.event("i", self.recorded[0].feed(data))
            process.stdin.write(data)
            await process.stdin.drain()
        process.stdin.write_eof()

    async def _output(self, reader: Any, writer: SSHWriter[bytes], index: int,
                      count: str) -> None:
        view = self.views[index]
        recording = self.recording
        interactive = self.channel.pty is not None
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
                    recording.event("o", self.recorded[1].feed(data))
                if timer is not None:
                    timer.cancel()
                    timer = None
                shown = view.feed(data)
                if shown:
                    writer.write(shown)
                if interactive and view.holding:
                    timer = loop.call_later(PTY_HOLD_S, release)
                await writer.drain()
        finally:
            if timer is not None:
                timer.cancel()
        tail = view.flush()
        if tail:
            writer.write(tail)


class _Sftp:
    """The sftp subsystem, relayed with each request decided."""

    def __init__(self, channel: _Channel, session: SshSession,
                 upstream: asyncssh.SSHClientConnection, stdin: SSHReader[bytes],
                 stdout: SSHWriter[bytes], stderr: SSHWriter[bytes]) -> None:
        self.channel = channel
        self.session = session
        self.upstream = upstream
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr

    async def run(self) -> None:
        chan = self.channel.chan
        enforcer = self.channel.connection.config.enforcer
        process = await self.upstream.create_process(subsystem="sftp", encoding=None)
        framer = SftpFramer()

        async def replies() -> None:
            while True:
                data = await process.stdout.read(READ_SIZE)
                if not data:
                    break
                self.stdout.write(data)
                await self.stdout.drain()

        relay = asyncio.ensure_future(replies())
        try:
            while True:
                data = await self.stdin.read(READ_SIZE)
                if not data:
                    break
                for packet in framer.feed(data):
                    await self._request(packet, process, enforcer)
            process.stdin.write_eof()
            await relay
        except SftpProtocolError as exc:
            log.info("session %s: sftp closed: %s", self.session.session_id, exc)
            self.stderr.write(f"ordinance: {exc}\r\n".encode())
        finally:
            relay.cancel()
            process.close()
        chan.exit(0)

    async def _request(self, packet: bytes, process: Any, enforcer: SshEnforcer) -> None:
        op = operation(packet)
        if op.unsupported is not None:
            assert op.request_id is not None
            await enforcer.refuse(self.session, "sftp", op.unsupported, op.unsupported)
            self.stdout.write(status(op.request_id, FX_OP_UNSUPPORTED, op.unsupported))
            return
        if op.facts is not None:
            assert op.request_id is not None
            text = op.text()
            verdict = await enforcer.decide(self.session, "sftp",
                                            {"raw": "", "sftp": op.facts}, text)
            if verdict.effect == "review" and verdict.hold is not None:
                async def notify(message: str) -> None:
                    self.stderr.write(message.encode("utf-8", "replace") + b"\r\n")

                verdict = await verdict.hold(notify)
            if verdict.effect != "allow":
                message = (f"ordinance: denied by policy: {verdict.message}"
                           f"{_decision_ref(verdict.command)}")
                self.stdout.write(status(op.request_id, FX_PERMISSION_DENIED, message))
                return
            await verdict.command.finished(exit_status=None)
        process.stdin.write(packet)
        await process.stdin.drain()
