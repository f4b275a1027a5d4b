"""An SSH gateway in front of a throwaway sshd, for the gateway's tests.

`open_gateway(sshd, tmp, policies)` runs `SshGateway` on a private event loop in a thread
(the clients under test are blocking: OpenSSH binaries, paramiko), with an in-process engine
over `policies`, a SQLite trail and approvals store in `tmp`, a users file with `alice`
(group dev) and `dana` (sre-leads, an approver) logging in with generated keys, and one target
`web1` (labels env=prod) that is the sshd.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from adapters.enforcement.review import ApprovalGate
from adapters.ssh.enforcer import enforcers
from adapters.ssh.gateway import GatewayConfig, SshGateway
from adapters.ssh.targets import load_targets
from engine.approvals import open_approval_store
from engine.audit import open_audit_log
from engine.audit.recorder import AuditRecorder
from engine.client import InProcessDecisionClient
from engine.engine import Engine
from engine.identity import Subject
from engine.identity.users import load_users
from engine.policy import load_policy_set
from tests.support.sshd import Sshd, key_pair

DANA = Subject(id="dana", groups=("sre-leads",))  # an approver of the test policy's reviews
PAN = "4111 1111 1111 1111"
MASKED = "**** **** **** 1111"

TEST_POLICY = """\
package ordinance.sshtest

import rego.v1

deny contains "rm is not allowed on this host" if {
	input.command.request == "exec"
	"rm" in input.command.programs
}

deny contains "reading /etc/shadow is not allowed" if {
	input.command.request == "sftp"
	input.command.sftp.path == "/etc/shadow"
}

deny contains "writing under /etc is not allowed" if {
	input.command.request == "sftp"
	input.command.sftp.mode in {"write", "readwrite"}
	startswith(input.command.sftp.path, "/etc/")
}

deny contains "port forwarding is not allowed" if {
	input.command.request == "forward"
	input.subject.id != "dana"
}

review contains {"msg": "restarting services needs an SRE lead", "approvers": ["sre-leads"]} if {
	input.command.request == "exec"
	"systemctl" in input.command.programs
}

review contains {"msg": "a shell on prod needs an SRE lead", "approvers": ["sre-leads"],
		"window": "10m"} if {
	input.command.request == "shell"
	input.resource.labels.env == "prod"
	not input.subject.id == "dana"
}
"""


class GatewayThread:
    """A running gateway on its own loop."""

    def __init__(self, config: GatewayConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gateway = SshGateway(config)
        self.run(self.gateway.start())

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def port(self) -> int:
        return self.gateway.port

    def stop(self) -> None:
        self.run(self.gateway.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Stack:
    gateway: GatewayThread
    sshd: Sshd
    tmp: Path
    audit_url: str
    users_file: Path
    targets_file: Path
    alice_key: str
    dana_key: str
    known_hosts: Path
    store: Any
    recordings: Path
    shared: Path
    """A directory the target's login user can read and write (the test's own are 0700)."""
    recorder: AuditRecorder

    @property
    def port(self) -> int:
        return self.gateway.port

    def ssh(self, *remote: str, login: str = "alice+web1", key: str | None = None,
            extra: tuple[str, ...] = (), input: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.ssh_args(*remote, login=login, key=key, extra=extra),
                              input=input, capture_output=True, timeout=timeout,
                              check=False)

    def ssh_args(self, *remote: str, login: str = "alice+web1", key: str | None = None,
                 extra: tuple[str, ...] = (), program: str = "ssh") -> list[str]:
        port_flag = "-P" if program in ("scp", "sftp") else "-p"
        args = [program, port_flag, str(self.port), "-i", key or self.alice_key,
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", *extra]
        if program == "ssh":
            return [*args, f"{login}@127.0.0.1", *remote]
        return [*args, *remote]

    def connect(self, login: str = "alice+web1", key: str | None = None) -> Any:
        """An asyncssh connection through the gateway (an async context manager)."""
        return asyncssh.connect("127.0.0.1", self.port, username=login,
                                client_keys=[key or self.alice_key],
                                known_hosts=str(self.known_hosts), agent_path=None,
                                config=None)

    def paramiko(self, login: str = "alice+web1") -> Any:
        """A connected paramiko client (close it)."""
        import paramiko

        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.load_host_keys(str(self.known_hosts))
        client.connect("127.0.0.1", self.port, username=login, key_filename=self.alice_key,
                       look_for_keys=False, allow_agent=False)
        return client

    def wait_record(self, text_prefix: str, effect: str, timeout: float = 10
                    ) -> dict[str, Any]:
        """The latest `statement` record whose text starts so, waiting for it (a forward's
        or a refused subsystem's record is written after the client has its answer)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records("statement") if r["effect"] == effect
                     and str(r["text"]).startswith(text_prefix)]
            if found:
                return found[-1]
            assert time.monotonic() < deadline, f"no {effect} record for {text_prefix!r}"
            time.sleep(0.05)

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        path = self.audit_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as db:
            rows = db.execute("SELECT kind, session_id, decision_id, payload FROM "
                              "ordinance_audit ORDER BY seq").fetchall()
        return [{"kind": k, "session_id": s, "decision_id": d, **json.loads(p)}
                for k, s, d, p in rows if kind is None or k == kind]


def write_targets(path: Path, sshd: Sshd, key: str, *, known_hosts_line: str | None = None,
                  name: str = "web1", labels: str = "{env: prod}") -> None:
    path.write_text(
        "targets:\n"
        f"  - name: {name}\n"
        f"    host: {sshd.host}\n"
        f"    port: {sshd.port}\n"
        f"    user: {sshd.user}\n"
        f"    key: {key}\n"
        f"    known_hosts: [{json.dumps(known_hosts_line or sshd.host_public_key)}]\n"
        f"    labels: {labels}\n")


@contextlib.contextmanager
def open_gateway(sshd: Sshd, tmp: Path, policies: Path | None = None, *,
                 approval_timeout: float = 30.0, recordings: bool = True,
                 targets_file: Path | None = None,
                 verify_token: Any = None) -> Iterator[Stack]:
    if policies is None:
        policies = tmp / "policies"
        (policies / "sshtest").mkdir(parents=True, exist_ok=True)
        (policies / "sshtest" / "ssh.rego").write_text(TEST_POLICY)
    alice_key, alice_pub = key_pair(str(tmp), "alice_key")
    dana_key, dana_pub = key_pair(str(tmp), "dana_key")
    users_file = tmp / "users.yaml"
    users_file.write_text(
        "users:\n"
        f"  - {{name: alice, groups: [dev], ssh_keys: [{json.dumps(alice_pub)}]}}\n"
        f"  - {{name: dana, groups: [sre-leads], ssh_keys: [{json.dumps(dana_pub)}]}}\n")
    if targets_file is None:
        targets_file = tmp / "targets.yaml"
        write_targets(targets_file, sshd, sshd.client_key)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    audit_url = f"sqlite:///{tmp / 'audit.db'}"
    audit = open_audit_log(audit_url)
    recorder = AuditRecorder(audit).start()
    store = open_approval_store(audit_url, audit=audit)
    gate = ApprovalGate(store, timeout=approval_timeout,
                        approve_hint="ordinance approvals approve {id}")
    engine = Engine(load_policy_set(str(policies)))
    targets = load_targets(targets_file)
    config = GatewayConfig(
        targets=targets, host_keys=[host_key],
        enforcers=enforcers(InProcessDecisionClient(engine), targets, recorder=recorder,
                            approvals=gate),
        host="127.0.0.1", port=0, directory=load_users(users_file), verify_token=verify_token,
        recordings=tmp / "recordings" if recordings else None)
    gateway = GatewayThread(config)
    known_hosts = tmp / "gateway_known_hosts"
    known_hosts.write_text(
        f"[127.0.0.1]:{gateway.port} {host_key.export_public_key().decode().strip()}\n")
    shared = Path(tempfile.mkdtemp(prefix="ordinance-ssh-shared-"))
    shared.chmod(0o777)
    try:
        yield Stack(gateway, sshd, tmp, audit_url, users_file, targets_file, alice_key,
                    dana_key, known_hosts, store, tmp / "recordings", shared, recorder)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        gateway.stop()
        gate.close()
        recorder.close()
        store.close()
        audit.close()


@contextlib.asynccontextmanager
async def echo_server(prefix: bytes) -> Any:
    """A local TCP server answering `prefix` + what it read; yields its port."""
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(prefix + await reader.read(100))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
