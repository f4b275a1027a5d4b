"""Interactive shells (recorded as asciicast, card numbers masked) and SFTP (decided per
request) through the gateway, with real clients against a real sshd."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.ssh.gateway_stack import DANA, MASKED, PAN, Stack, open_gateway
from tests.support.sshd import Sshd


@pytest.fixture(scope="module")
def stack(sshd: Sshd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with open_gateway(sshd, tmp_path_factory.mktemp("sessions")) as running:
        yield running


def shell(stack: Stack, login: str, key: str, lines: list[str]) -> tuple[str, int | None]:
    async def run() -> tuple[str, int | None]:
        async with asyncssh.connect(
                "127.0.0.1", stack.port, username=login, client_keys=[key],
                known_hosts=str(stack.known_hosts), agent_path=None, config=None) as conn:
            proc = await conn.create_process(term_type="xterm", term_size=(100, 30))
            for line in lines:
                try:
                    proc.stdin.write(line + "\n")
                except BrokenPipeError:  # the gateway refused the shell and closed
                    break
                await asyncio.sleep(0.2)
            output = await asyncio.wait_for(proc.stdout.read(), 30)
            errors = await asyncio.wait_for(proc.stderr.read(), 30)
            await proc.wait(check=False)
            return str(output) + str(errors), proc.exit_status

    return asyncio.run(run())


def shell_records(stack: Stack, user: str) -> list[dict[str, Any]]:
    return [r for r in stack.records("statement") if r["text"] == "shell"
            and r.get("recording") and any(
                s["session_id"] == r["session_id"] and s["user"] == user
                for s in stack.records("session.start"))]


def read_cast(path: str) -> tuple[dict[str, Any], list[list[Any]]]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def test_a_shell_is_recorded_with_card_numbers_masked(stack: Stack) -> None:
    output, status = shell(stack, "dana+web1", stack.dana_key,
                           [f"echo {PAN}", "printf '5500 0000'; printf ' 0000 0004\\n'",
                            "exit 3"])
    assert status == 3
    assert MASKED in output and "**** **** **** 0004" in output
    assert PAN not in output and "5500 0000 0000 0004" not in output
    record = shell_records(stack, "dana")[-1]
    assert record["effect"] == "allow" and record["exit_status"] == 3
    assert record["command"]["pty"] == {"term": "xterm", "width": 100, "height": 30}
    recording = record["recording"]
    data = Path(recording["path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == recording["sha256"]
    assert recording["bytes"] == len(data)
    assert PAN.encode() not in data and b"5500 0000 0000 0004" not in data
    header, events = read_cast(recording["path"])
    assert header["version"] == 2 and header["width"] == 100 and header["height"] == 30
    typed = "".join(e[2] for e in events if e[1] == "i")
    shown = "".join(e[2] for e in events if e[1] == "o")
    assert f"echo {MASKED}" in typed and "exit 3" in typed
    assert MASKED in shown and "**** **** **** 0004" in shown
    times = [e[0] for e in events]
    assert times == sorted(times)


def test_a_shell_on_prod_waits_for_an_approval_with_a_window(stack: Stack) -> None:
    def approve() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pending = [r for r in stack.store.list("pending") if r.requester_id == "alice"]
            if pending:
                stack.store.approve(pending[0].id, DANA)
                return
            time.sleep(0.05)

    approver = threading.Thread(target=approve)
    approver.start()
    output, status = shell(stack, "alice+web1", stack.alice_key, ["echo first-shell", "exit"])
    approver.join()
    assert status == 0 and "first-shell" in output
    record = shell_records(stack, "alice")[-1]
    assert record["approval"]["status"] == "approved"
    # the approval has a window: the next shell opens at once, using it
    output, status = shell(stack, "alice+web1", stack.alice_key, ["echo second-shell", "exit"])
    assert status == 0 and "second-shell" in output
    assert shell_records(stack, "alice")[-1]["approval"]["standing"] is True


def test_a_shell_is_refused_without_a_recordings_directory(sshd: Sshd, tmp_path: Path) -> None:
    with open_gateway(sshd, tmp_path, recordings=False) as bare:
        output, status = shell(bare, "dana+web1", bare.dana_key, ["echo never", "exit"])
        assert status == 126
        assert "never" not in output
        assert "need a recordings directory" in output


def test_a_shell_without_a_pty_is_a_shell_too(stack: Stack) -> None:
    result = stack.ssh(login="dana+web1", key=stack.dana_key, extra=("-T",),
                       input=b"echo piped-shell\nexit\n")
    assert result.returncode == 0 and result.stdout == b"piped-shell\n"
    record = shell_records(stack, "dana")[-1]
    assert "pty" not in record["command"]


# -- sftp -------------------------------------------------------------------------------------

def test_sftp_requests_are_decided_one_by_one(stack: Stack, tmp_path: Path) -> None:
    shared = stack.shared
    (shared / "report.txt").write_text("quarterly\n")
    (shared / "report.txt").chmod(0o644)
    upload = tmp_path / "upload.txt"
    upload.write_text("new\n")
    batch = tmp_path / "batch"
    batch.write_text(
        f"get {shared}/report.txt {tmp_path}/got.txt\n"
        f"-get /etc/shadow {tmp_path}/shadow\n"
        f"-get /etc/../etc/shadow {tmp_path}/shadow2\n"
        f"-put {upload} /etc/evil.txt\n"
        f"put {upload} {shared}/uploaded.txt\n"
        f"rename {shared}/uploaded.txt {shared}/renamed.txt\n"
        f"mkdir {shared}/newdir\n"
        f"ls {shared}\n")
    args = stack.ssh_args(program="sftp", extra=("-b", str(batch)))
    result = subprocess.run([*args, "alice+web1@127.0.0.1"], capture_output=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "got.txt").read_text() == "quarterly\n"
    assert not (tmp_path / "shadow").exists() and not (tmp_path / "shadow2").exists()
    assert not Path("/etc/evil.txt").exists()
    assert (shared / "renamed.txt").read_text() == "new\n" and (shared / "newdir").is_dir()
    assert b'dest open "/etc/evil.txt": Permission denied' in result.stderr
    records = {r["text"]: r for r in stack.records("statement")
               if str(r["text"]).startswith("sftp ")}
    shadow = [r for r in records.values() if r["command"]["sftp"]["path"] == "/etc/shadow"]
    assert shadow and all(r["effect"] == "deny" for r in shadow)
    assert "sftp open read /etc/shadow" not in records or records[
        "sftp open read /etc/shadow"]["effect"] == "deny"
    assert records["sftp open write /etc/evil.txt"]["effect"] == "deny"
    assert records[f"sftp open read {shared}/report.txt"]["effect"] == "allow"
    assert records[f"sftp rename {shared}/uploaded.txt -> {shared}/renamed.txt"][
        "effect"] == "allow"
    assert records[f"sftp mkdir {shared}/newdir"]["effect"] == "allow"
    assert records[f"sftp opendir {shared}"]["effect"] == "allow"


def test_paramiko_sftp_gets_the_reason_of_a_refusal(stack: Stack) -> None:
    client = stack.paramiko()
    try:
        sftp = client.open_sftp()
        with pytest.raises(PermissionError) as refused:
            sftp.open("/etc/shadow")
        assert "reading /etc/shadow is not allowed" in str(refused.value)
        assert sftp.stat("/etc/hostname").st_size is not None
        sftp.close()
    finally:
        client.close()


def test_scp_over_sftp_is_decided_per_request(stack: Stack, tmp_path: Path) -> None:
    args = stack.ssh_args("alice+web1@127.0.0.1:/etc/shadow", str(tmp_path / "s"),
                          program="scp")
    result = subprocess.run(args, capture_output=True, timeout=60, check=False)
    assert result.returncode != 0 and not (tmp_path / "s").exists()


def test_refusals_in_the_middle_of_a_pipelined_download(stack: Stack, tmp_path: Path) -> None:
    """The gateway's own replies go between whole packets of the target's: a download with
    many reads in flight stays intact while refused requests are answered beside it."""
    big = stack.shared / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    big.chmod(0o644)

    async def run() -> int:
        async with asyncssh.connect(
                "127.0.0.1", stack.port, username="alice+web1", client_keys=[stack.alice_key],
                known_hosts=str(stack.known_hosts), agent_path=None, config=None
        ) as conn, conn.start_sftp_client() as sftp:
            download = asyncio.ensure_future(
                sftp.get(str(big), str(tmp_path / "big.bin"), max_requests=64))
            refused = 0
            while not download.done():
                with pytest.raises(asyncssh.SFTPPermissionDenied):
                    await sftp.stat("/etc/shadow")
                refused += 1
            await download
            return refused

    refused = asyncio.run(run())
    assert refused >= 1
    assert (tmp_path / "big.bin").read_bytes() == big.read_bytes()
