"""`ordinance proxy ssh` as a process, and OIDC logins (keyboard-interactive)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from engine.identity.oidc import OidcVerifier
from tests.ssh.gateway_stack import TEST_POLICY, open_gateway, write_targets
from tests.support.sshd import Sshd, key_pair
from tests.test_identity_oidc import AUDIENCE, ISSUER, claims, jwk, sign, write_jwks


def gateway_files(sshd: Sshd, tmp: Path) -> dict[str, Path]:
    policies = tmp / "policies" / "sshtest"
    policies.mkdir(parents=True)
    (policies / "ssh.rego").write_text(TEST_POLICY)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp / "host_key")], check=True)
    _, alice_public = key_pair(str(tmp), "alice_key")
    users = tmp / "users.yaml"
    users.write_text(f"users:\n  - {{name: alice, groups: [dev], ssh_keys: [{alice_public!r}]}}\n")
    targets = tmp / "targets.yaml"
    write_targets(targets, sshd, sshd.client_key)
    return {"policies": tmp / "policies", "host_key": tmp / "host_key", "users": users,
            "targets": targets}


def proxy_command(files: dict[str, Path], tmp: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli", "proxy", "ssh", "--listen", "127.0.0.1:0",
            "--host-key", str(files["host_key"]), "--targets", str(files["targets"]),
            "--policies", str(files["policies"]), "--audit", f"sqlite:///{tmp / 'audit.db'}",
            "--users", str(files["users"]), "--recordings", str(tmp / "casts"), *extra]


def ssh(port: int, tmp: Path, *remote: str) -> subprocess.CompletedProcess[bytes]:
    host_key = (tmp / "host_key.pub").read_text().split()
    (tmp / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    return subprocess.run(
        ["ssh", "-p", str(port), "-i", str(tmp / "alice_key"), "-o", "BatchMode=yes",
         "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
         "-o", f"UserKnownHostsFile={tmp / 'known_hosts'}", "-o", "LogLevel=ERROR",
         "alice+web1@127.0.0.1", *remote], capture_output=True, timeout=60, check=False)


def test_the_command_serves_until_sigterm(sshd: Sshd, tmp_path: Path) -> None:
    files = gateway_files(sshd, tmp_path)
    proc = subprocess.Popen(proxy_command(files, tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "listening" and ready["proxy"] == "ssh"
        assert ready["targets"] == ["web1"] and ready["auth"] == ["publickey"]
        port = int(ready["listen"].rsplit(":", 1)[1])
        done = ssh(port, tmp_path, "echo", "via-cli")
        assert done.returncode == 0 and done.stdout == b"via-cli\n"
        denied = ssh(port, tmp_path, "rm", "-rf", "/x")
        assert denied.returncode == 126 and b"rm is not allowed" in denied.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    import sqlite3

    with sqlite3.connect(tmp_path / "audit.db") as db:
        kinds = [k for (k,) in db.execute("SELECT kind FROM ordinance_audit ORDER BY seq")]
    assert kinds.count("session.start") == 2 and kinds.count("session.end") == 2
    assert kinds.count("statement") == 2


@pytest.mark.parametrize(("change", "message"), [
    ({"--host-key": "/nonexistent"}, "--host-key /nonexistent"),
    ({"--targets": "/nonexistent"}, "targets file"),
    ({"--users": None}, "clients need a way to log in"),
])
def test_configuration_errors_exit_2(sshd: Sshd, tmp_path: Path, change: dict[str, Any],
                                     message: str) -> None:
    files = gateway_files(sshd, tmp_path)
    args: Sequence[str] = proxy_command(files, tmp_path)
    out: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg in change:
            if change[arg] is not None:
                out += [arg, change[arg]]
            skip = True
            continue
        out.append(arg)
        del i
    done = subprocess.run(out, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "ORDINANCE_AUDIT_URL": ""})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


class _TokenClient(asyncssh.SSHClient):
    def __init__(self, token: str) -> None:
        self.token = token

    def kbdint_auth_requested(self) -> str:
        return ""

    def kbdint_challenge_received(self, name: str, instructions: str, lang: str,
                                  prompts: Sequence[tuple[str, bool]]) -> list[str]:
        return [self.token] if prompts else []


def test_an_oidc_id_token_logs_in_by_keyboard_interactive(sshd: Sshd, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = write_jwks(tmp_path / "jwks.json", jwk(key, "rsa1"))
    verify = OidcVerifier(ISSUER, AUDIENCE, jwks_file=jwks, algorithms=("RS256",)).verify
    good = sign(key, claims(sub="u-77", email="bob@example.com", groups=["dev"]))
    expired = sign(key, claims(exp=1, iat=0))

    with open_gateway(sshd, tmp_path, verify_token=verify) as stack:
        async def run(token: str) -> str:
            conn, _ = await asyncssh.create_connection(
                lambda: _TokenClient(token), "127.0.0.1", stack.port, username="bob+web1",
                known_hosts=str(stack.known_hosts), client_keys=None, agent_path=None,
                config=None, preferred_auth="keyboard-interactive")
            async with conn:
                return str((await conn.run("echo token-ok", check=False)).stdout)

        assert asyncio.run(run(good)) == "token-ok\n"
        with pytest.raises((asyncssh.PermissionDenied, asyncssh.ConnectionLost)):
            asyncio.run(run(expired))  # (this client retries a refused answer until cut off)
        start = stack.records("session.start")[-1]
        assert start["auth_method"] == "oidc-token"
        assert start["token_subject"] == start["user"] == "bob@example.com"
        assert start["requested_user"] == "bob"


def test_decisions_from_ordinance_serve_over_grpc(sshd: Sshd, tmp_path: Path) -> None:
    files = gateway_files(sshd, tmp_path)
    serve = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve", "--policies", str(files["policies"]),
         "--grpc", "127.0.0.1:0", "--http", "off", "--decision-log-file",
         str(tmp_path / "decisions.jsonl")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert serve.stdout is not None
        grpc = json.loads(serve.stdout.readline())["grpc"]
        args = proxy_command(files, tmp_path)
        at = args.index("--policies")
        args[at:at + 2] = ["--decision-service", grpc]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline())
            assert ready["decisions"] == f"grpc:{grpc}"
            port = int(ready["listen"].rsplit(":", 1)[1])
            assert ssh(port, tmp_path, "echo", "over-grpc").stdout == b"over-grpc\n"
            denied = ssh(port, tmp_path, "sudo rm -rf /x")
            assert denied.returncode == 126 and b"rm is not allowed" in denied.stderr
            serve.send_signal(signal.SIGTERM)
            serve.wait(30)
            gone = ssh(port, tmp_path, "echo", "unreachable")  # fail closed
            assert gone.returncode == 126 and b"unreachable" not in gone.stdout
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=30)
    logged = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text()
              .splitlines()]
    commands = [d["input"]["command"] for d in logged]
    assert {"protocol": "ssh", "request": "exec", "raw": "echo over-grpc"} in commands
