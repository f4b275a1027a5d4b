"""The SSH gateway end to end: a real sshd target, real clients (OpenSSH, asyncssh, paramiko)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from engine.masking import scrub_pans
from tests.ssh.gateway_stack import (
    DANA,
    MASKED,
    PAN,
    Stack,
    echo_server,
    open_fds,
    open_gateway,
    write_targets,
)
from tests.support.sshd import Sshd, key_pair


@pytest.fixture(scope="module")
def stack(sshd: Sshd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with open_gateway(sshd, tmp_path_factory.mktemp("gateway")) as running:
        yield running


def last_command(stack: Stack, text: str) -> dict[str, object]:
    text = scrub_pans(text)  # the trail scrubs card numbers everywhere
    found = [r for r in stack.records("statement") if r["text"] == text]
    assert found, f"no command record for {text!r}"
    return found[-1]


def pending_request(stack: Stack, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = stack.store.list("pending")
        if pending:
            return str(pending[0].id)
        time.sleep(0.05)
    raise AssertionError("no approval request was filed")


# -- exec ----------------------------------------------------------------------------

def test_allowed_exec_runs_and_is_recorded(stack: Stack) -> None:
    result = stack.ssh("echo", "hello", "gateway")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello gateway\n"
    record = last_command(stack, "echo hello gateway")
    assert record["effect"] == "allow" and record["exit_status"] == 0
    assert record["bytes_out"] == len(b"hello gateway\n")
    assert record["command"] == {"request": "exec"} and record["tag"] == "exit 0"
    assert isinstance(record["duration_ms"], float)
    start = next(r for r in stack.records("session.start")
                 if r["session_id"] == record["session_id"])
    assert start["user"] == "alice" and start["target"]["name"] == "web1"  # type: ignore[index]
    assert start["protocol"] == "ssh" and start["auth_method"] == "publickey"
    assert str(start["key_fingerprint"]).startswith("SHA256:")
    assert start["resource"]["labels"] == {"env": "prod"}  # type: ignore[index]
    assert str(start["client_addr"]).startswith("127.0.0.1:")


def test_exit_status_and_stderr_pass_through(stack: Stack) -> None:
    result = stack.ssh("sh -c 'echo oops >&2; exit 7'")
    assert result.returncode == 7
    assert result.stderr == b"oops\n"
    assert last_command(stack, "sh -c 'echo oops >&2; exit 7'")["exit_status"] == 7


def test_denied_exec_exits_126_with_the_reason_and_never_runs(stack: Stack) -> None:
    marker = stack.tmp / "must-survive"
    marker.write_text("x")
    result = stack.ssh("rm", "-f", str(marker))
    assert result.returncode == 126
    assert b"denied by policy: rm is not allowed on this host" in result.stderr
    assert marker.exists()
    record = last_command(stack, f"rm -f {marker}")
    assert record["effect"] == "deny" and "exit_status" not in record


def test_stdin_reaches_the_command(stack: Stack) -> None:
    result = stack.ssh("wc", "-c", input=b"x" * 100_000)
    assert result.returncode == 0
    assert result.stdout.strip() == b"100000"
    assert last_command(stack, "wc -c")["bytes_in"] == 100_000


def test_card_numbers_in_output_are_masked_even_split_across_writes(stack: Stack) -> None:
    command = "printf '4111 1111'; sleep 0.03; printf ' 1111 1111\\n'; echo 5500-0000-0000-0004 >&2"
    result = stack.ssh(command)
    assert result.returncode == 0
    assert result.stdout == f"{MASKED}\n".encode()
    assert result.stderr == b"****-****-****-0004\n"
    assert last_command(stack, command)["masked_pans"] == 2


def test_the_trail_never_holds_the_card_number_of_a_command_line(stack: Stack) -> None:
    result = stack.ssh(f"echo {PAN}")
    assert result.stdout == f"{MASKED}\n".encode()
    texts = [str(r["text"]) for r in stack.records("statement")]
    assert f"echo {MASKED}" in texts and not any(PAN in t for t in texts)


def test_scp_legacy_protocol_is_an_exec_request(stack: Stack) -> None:
    source = stack.shared / "scp-source.txt"
    source.write_text("payload\n")
    source.chmod(0o644)
    dest = stack.tmp / "scp-dest.txt"
    args = stack.ssh_args(f"alice+web1@127.0.0.1:{source}", str(dest), program="scp",
                          extra=("-O",))
    result = subprocess.run(args, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert dest.read_text() == "payload\n"
    assert last_command(stack, f"scp -f {source}")["effect"] == "allow"


def ssh_transport(stack: Stack) -> str:
    """An `ssh` command line for rsync -e / GIT_SSH_COMMAND, through the gateway."""
    return " ".join(stack.ssh_args(program="ssh")[:-1])


def test_rsync_and_git_over_the_gateway_are_exec_requests(stack: Stack, tmp_path: Path) -> None:
    (stack.shared / "data.txt").write_text("rsynced\n")
    (stack.shared / "data.txt").chmod(0o644)
    done = subprocess.run(["rsync", "-e", ssh_transport(stack),
                           f"alice+web1@127.0.0.1:{stack.shared}/data.txt", str(tmp_path / "r")],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r").read_text() == "rsynced\n"
    assert any(str(r["text"]).startswith("rsync --server --sender")
               and r["effect"] == "allow" for r in stack.records("statement"))
    repo = stack.shared / "repo.git"
    as_target_user = (["runuser", "-u", stack.sshd.user, "--"] if os.geteuid() == 0 else [])
    subprocess.run([*as_target_user, "git", "init", "-q", "--bare", str(repo)], check=True)
    clone = subprocess.run(["git", "clone", "-q", f"ssh://alice+web1@127.0.0.1{repo}",
                            str(tmp_path / "clone")], capture_output=True, timeout=60,
                           check=False, stdin=subprocess.DEVNULL,
                           env={**os.environ, "GIT_SSH_COMMAND": ssh_transport(stack)})
    assert clone.returncode == 0, clone.stderr
    assert last_command(stack, f"git-upload-pack '{repo}'")["effect"] == "allow"


def test_the_client_environment_is_not_passed_to_the_target(stack: Stack) -> None:
    result = stack.ssh("echo", "preload=$LD_PRELOAD", extra=("-o", "SetEnv=LD_PRELOAD=/x.so"))
    assert result.returncode == 0 and result.stdout == b"preload=\n"


def test_nothing_runs_when_the_trail_cannot_record(sshd: Sshd, tmp_path: Path) -> None:
    with open_gateway(sshd, tmp_path) as broken:
        broken.recorder.close()
        result = broken.ssh("echo", "unrecorded")
        assert result.returncode == 255 and b"unrecorded" not in result.stdout
        assert b"the audit trail is unavailable" in result.stderr


def test_a_login_without_target_is_told_how_to_name_one(stack: Stack) -> None:
    result = stack.ssh("true", login="alice")
    assert result.returncode == 255
    assert b"log in as alice+TARGET" in result.stderr


def test_an_unknown_key_or_user_cannot_log_in(stack: Stack, tmp_path: Path) -> None:
    stranger, _ = key_pair(str(tmp_path), "stranger")
    assert stack.ssh("true", key=stranger).returncode == 255
    assert stack.ssh("true", login="mallory+web1").returncode == 255
    assert stack.ssh("true", login="alice+web1", key=stack.dana_key).returncode == 255


# -- review ----------------------------------------------------------------------------

def test_review_holds_then_runs_exactly_as_sent_after_approval(stack: Stack) -> None:
    command = "systemctl --version | head -c 0; echo restarted"
    proc = subprocess.Popen(stack.ssh_args(command), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    request_id = pending_request(stack)
    assert proc.poll() is None  # held
    request = stack.store.get(request_id)
    assert request.requester_id == "alice" and list(request.approver_groups) == ["sre-leads"]
    stack.store.approve(request_id, DANA)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out == b"restarted\n"
    assert request_id.encode() in err
    assert b"ordinance: command held for approval: restarting services" in err
    record = last_command(stack, command)
    assert record["approval"]["status"] == "approved"  # type: ignore[index]
    assert record["approval"]["approver"] == "dana"  # type: ignore[index]
    # single use: the same command asks again
    again = subprocess.Popen(stack.ssh_args(command), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    second = pending_request(stack)
    assert second != request_id
    stack.store.deny(second, DANA, "not now")
    out, err = again.communicate(timeout=60)
    assert again.returncode == 126 and out == b""
    assert b"was denied by dana: not now" in err


def test_client_disconnecting_during_a_hold_withdraws_the_request(stack: Stack) -> None:
    command = "systemctl restart app-never-runs"
    proc = subprocess.Popen(stack.ssh_args(command), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    request_id = pending_request(stack)
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 20
    while stack.store.get(request_id).stored_status == "pending":
        assert time.monotonic() < deadline, "the request was never withdrawn"
        time.sleep(0.05)
    assert stack.store.get(request_id).stored_status == "withdrawn"
    deadline = time.monotonic() + 10
    while not [r for r in stack.records("statement") if r["text"] == command]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "disconnected" in str(last_command(stack, command)["error"])
    assert "exit_status" not in last_command(stack, command)  # it never ran


def test_a_hold_that_times_out_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    with open_gateway(sshd, tmp_path, approval_timeout=1.0) as quick:
        result = quick.ssh("systemctl restart app")
        assert result.returncode == 126
        assert b"held for approval" in result.stderr and b"was not given within 1s" in result.stderr
        request = quick.store.list()[-1]
        assert request.stored_status == "expired"


# -- other clients --------------------------------------------------------------------------------

def test_paramiko_exec_allowed_and_denied(stack: Stack) -> None:
    client = stack.paramiko()
    try:
        _, out, _ = client.exec_command("echo via paramiko")
        assert out.read() == b"via paramiko\n" and out.channel.recv_exit_status() == 0
        _, out, err = client.exec_command("rm -rf /nothing")
        assert out.channel.recv_exit_status() == 126
        assert b"rm is not allowed" in err.read()
        _, out, _ = client.exec_command("tty", get_pty=True)
        assert out.read().startswith(b"/dev/pts/")
    finally:
        client.close()


def test_asyncssh_exec_with_a_pty(stack: Stack) -> None:
    async def run() -> asyncssh.SSHCompletedProcess:
        async with asyncssh.connect(
                "127.0.0.1", stack.port, username="alice+web1", client_keys=[stack.alice_key],
                known_hosts=str(stack.known_hosts), agent_path=None, config=None) as conn:
            return await conn.run("tty; echo $TERM", term_type="xterm", check=False)

    done = asyncio.run(run())
    assert done.exit_status == 0
    assert str(done.stdout).startswith("/dev/pts/") and "xterm" in str(done.stdout)


# -- forwarding ----------------------------------------------------------------------------

def test_forwarding_is_refused_unless_a_policy_allows_it(stack: Stack) -> None:
    async def run() -> tuple[str, str, str]:
        async with asyncssh.connect(
                "127.0.0.1", stack.port, username="alice+web1", client_keys=[stack.alice_key],
                known_hosts=str(stack.known_hosts), agent_path=None, config=None) as conn:
            with pytest.raises(asyncssh.ChannelOpenError) as local:
                await conn.open_connection("127.0.0.1", 5432)
            with pytest.raises(asyncssh.ChannelListenError) as remote:
                await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 9)
            echo = await conn.run("echo $SSH_AUTH_SOCK", check=False)
            return local.value.reason, str(remote.value), str(echo.stdout)

    local, _remote, agent = asyncio.run(run())
    assert "port forwarding to 127.0.0.1:5432 denied: port forwarding is not allowed" in local
    assert agent.strip() == ""
    record = last_command(stack, "forward local 127.0.0.1:5432")
    assert record["effect"] == "deny" and record["command"]["forward"]["port"] == 5432  # type: ignore[index]
    assert last_command(stack, "forward remote 127.0.0.1:0")["effect"] == "deny"


def test_forwarding_a_policy_allows_is_tunnelled_through_the_target(stack: Stack) -> None:
    async def run() -> bytes:
        async with echo_server(b"echo:") as port, stack.connect(
                "dana+web1", stack.dana_key) as conn:
            reader, writer = await conn.open_connection("127.0.0.1", port)
            writer.write(b"ping")
            writer.write_eof()
            return bytes(await reader.read())

    assert asyncio.run(run()) == b"echo:ping"
    record = stack.wait_record("forward local", "allow")  # written when both ends closed
    assert record["bytes_in"] == 4 and record["bytes_out"] == 9 and record["tag"] == "closed"


def test_a_remote_forward_a_policy_allows_comes_back_to_the_client(stack: Stack) -> None:
    async def run() -> bytes:
        async with echo_server(b"back:") as port, stack.connect(
                "dana+web1", stack.dana_key) as conn:
            listener = await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", port)
            # the target listens: connect there, as a program on the target would
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.get_port())
            writer.write(b"pong")
            writer.write_eof()
            answer = await reader.read()
            writer.close()
            return answer

    assert asyncio.run(run()) == b"back:pong"
    record = stack.wait_record("forward remote", "allow")
    assert record["connections"] == 1 and record["bytes_out"] == 4


def test_other_subsystems_are_refused_and_recorded(stack: Stack) -> None:
    result = stack.ssh("netconf", extra=("-s",))
    assert result.returncode == 255 and b"subsystem request failed" in result.stderr
    stack.wait_record("subsystem netconf", "deny")


@contextlib.contextmanager
def ssh_agent(tmp: Path, *keys: str) -> Iterator[dict[str, str]]:
    """A real ssh-agent holding `keys`; yields the environment that points ssh at it."""
    sock = tmp / f"agent-{os.getpid()}-{time.monotonic_ns()}.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        for key in keys:
            subprocess.run(["ssh-add", key], env=env, check=True, capture_output=True)
        yield env
    finally:
        agent.terminate()
        agent.wait(10)


def test_agent_forwarding_a_policy_denies_is_not_passed_on(stack: Stack,
                                                          tmp_path: Path) -> None:
    with ssh_agent(tmp_path, stack.alice_key) as env:
        result = subprocess.run(
            stack.ssh_args("echo", "agent=$SSH_AUTH_SOCK", extra=("-A",)), env=env,
            capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"agent=\n"  # the command ran, without the agent
    assert b"ordinance: agent forwarding denied by policy: port forwarding is not allowed" \
        in result.stderr
    record = last_command(stack, "forward agent")
    assert record["effect"] == "deny" and record["command"] == {  # type: ignore[comparison-overlap]
        "request": "forward", "forward": {"kind": "agent"}}


def test_agent_forwarding_a_policy_allows_reaches_the_target(stack: Stack,
                                                            tmp_path: Path) -> None:
    fingerprint = subprocess.run(["ssh-keygen", "-lf", stack.dana_key + ".pub"],
                                 capture_output=True, check=True).stdout.split()[1]
    with ssh_agent(tmp_path, stack.dana_key) as env:
        result = subprocess.run(
            stack.ssh_args("ssh-add", "-l", login="dana+web1", key=stack.dana_key,
                           extra=("-A",)), env=env,
            capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert fingerprint in result.stdout  # the target's ssh-add asked dana's own agent
    record = stack.wait_record("forward agent", "allow")
    assert record["tag"] == "closed"
    # another channel of a connection without -A gets no agent on the target
    plain = stack.ssh("ssh-add", "-l", login="dana+web1", key=stack.dana_key)
    assert plain.returncode == 2 and fingerprint not in plain.stdout


def test_agent_forwarding_reaches_an_allowed_shell(stack: Stack, tmp_path: Path) -> None:
    fingerprint = subprocess.run(["ssh-keygen", "-lf", stack.dana_key + ".pub"],
                                 capture_output=True, check=True).stdout.split()[1]
    with ssh_agent(tmp_path, stack.dana_key) as env:
        result = subprocess.run(
            stack.ssh_args(login="dana+web1", key=stack.dana_key, extra=("-A", "-T")),
            env=env, input=b"ssh-add -l\nexit\n", capture_output=True, timeout=60,
            check=False)
    assert result.returncode == 0, result.stderr
    assert fingerprint in result.stdout
    shells = [r for r in stack.records("statement") if r["text"] == "shell"
              and r["effect"] == "allow"]
    agents = [r for r in stack.records("statement") if r["text"] == "forward agent"]
    assert shells and agents and agents[-1]["session_id"] == shells[-1]["session_id"]


def test_proxyjump_is_refused_with_the_reason(stack: Stack) -> None:
    jump = " ".join(stack.ssh_args(program="ssh")[:-1])
    result = subprocess.run(
        ["ssh", "-o", f"ProxyCommand={jump} -W %h:%p alice+web1@127.0.0.1",
         "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-p", str(stack.sshd.port),
         "-i", stack.sshd.client_key, f"{stack.sshd.user}@127.0.0.1", "true"],
        capture_output=True, timeout=60, check=False)
    assert result.returncode == 255
    assert b"stdio forwarding failed" in result.stderr
    record = last_command(stack, f"forward local 127.0.0.1:{stack.sshd.port}")
    assert record["effect"] == "deny" and "ProxyJump" in str(record["error"])


# -- targets ----------------------------------------------------------------------------

def test_a_changed_target_host_key_refuses_the_connection(fresh_sshd: Sshd,
                                                          tmp_path: Path) -> None:
    _, other_host_key = key_pair(str(tmp_path), "not-the-host-key")
    targets = tmp_path / "targets.yaml"
    write_targets(targets, fresh_sshd, fresh_sshd.client_key, known_hosts_line=other_host_key)
    with open_gateway(fresh_sshd, tmp_path, targets_file=targets) as stack:
        result = stack.ssh("echo", "should-not-run")
        assert result.returncode == 255
        assert b"host key does not match its pinned known_hosts entries" in result.stderr
        assert b"should-not-run" not in result.stdout
        assert not stack.records("statement")


# -- load ----------------------------------------------------------------------------

def test_fifty_concurrent_sessions_leave_no_leaks(stack: Stack) -> None:
    async def tasks() -> int:
        return len(asyncio.all_tasks())

    async def one(i: int) -> str:
        async with asyncssh.connect(
                "127.0.0.1", stack.port, username="alice+web1", client_keys=[stack.alice_key],
                known_hosts=str(stack.known_hosts), agent_path=None, config=None) as conn:
            done = await conn.run(f"echo session-{i}", check=False)
            return str(done.stdout)

    async def all_of_them() -> list[str]:
        return await asyncio.gather(*(one(i) for i in range(50)))

    stack.ssh("true")  # warm: the lazily made things exist before the baseline
    time.sleep(0.5)
    fds, before = open_fds(), stack.gateway.run(tasks())
    outputs = asyncio.run(all_of_them())
    assert outputs == [f"session-{i}\n" for i in range(50)]
    deadline = time.monotonic() + 20
    while True:
        now_fds, now_tasks = open_fds(), stack.gateway.run(tasks())
        if (now_fds <= fds and now_tasks <= before
                and stack.gateway.gateway.active_sessions == 0):
            break
        assert time.monotonic() < deadline, (fds, now_fds, before, now_tasks)
        time.sleep(0.2)
    ends = stack.records("session.end")
    assert len({r["session_id"] for r in ends}) >= 50


# -- the shipped PCI pack --------------------------------------------------------------------

@pytest.fixture(scope="module")
def pci(sshd: Sshd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    repo = Path(__file__).resolve().parents[2]
    with open_gateway(sshd, tmp_path_factory.mktemp("pci"), repo / "policies") as running:
        yield running


@pytest.mark.parametrize("command", [
    'sudo bash -c "rm -rf /srv"',
    "env -i sh -c 'rm -r /var/lib/app'",
    "timeout 5 nice -n 10 rm -rf /tmp/x",
    "cat /etc/shadow",
    "r''m -rf /",
    "$'\\x72m' -rf /",
    "X=rm; $X -rf /",
    "echo 'unterminated",
    "dd if=/dev/zero of=/dev/sda",
    "shutdown -h now",
    "apt-get remove -y openssh-server",
    "bash",  # reads its commands from stdin, where no policy sees them
    "sh -s",
    "vim /etc/hosts",  # `:!cmd`
    "less /var/log/syslog",
    "man ls",
    "awk -f /tmp/x.awk /etc/passwd",
    "gawk --source='BEGIN{system(\"id\")}'",
    "find / -name x -exec sh \\;",
    "perl -",
    "tar -xf x.tar --to-command=sh",
    "git -c core.sshCommand=sh fetch",
    "ssh -o ProxyCommand=sh other true",
])
def test_the_pci_pack_denies_destructive_and_opaque_commands_on_prod(pci: Stack,
                                                                       command: str) -> None:
    result = pci.ssh(command)
    assert result.returncode == 126, (result.stdout, result.stderr)
    assert b"ordinance: denied by policy:" in result.stderr
    assert last_command(pci, command)["effect"] == "deny"


def test_the_pci_pack_lets_ordinary_commands_run_on_prod(pci: Stack) -> None:
    result = pci.ssh("uname -s && ls / | head -1")
    assert result.returncode == 0 and result.stdout.startswith(b"Linux\n")


@pytest.mark.parametrize("command", ["bash", "sudo -i", "python3"])
def test_the_pci_pack_holds_a_shell_opened_as_an_exec_with_a_pty(pci: Stack,
                                                                command: str) -> None:
    """`ssh -tt prod bash` is an interactive shell (held for a window approval), not an
    opaque command; without the pty it is refused (its commands would come unseen)."""
    proc = subprocess.Popen(pci.ssh_args(command, extra=("-tt",)), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        request = pci.store.get(pending_request(pci))
        assert request.command_preview == f"{command} (on ssh target web1)"
        assert any("interactive shell" in reason for reason in request.reasons)
    finally:
        proc.kill()
        proc.wait(10)
    pci.wait_record(command, "review")


@pytest.mark.parametrize("command", ["echo id | bash", "cd /tmp && bash", "bash < /dev/null",
                                     "LD_PRELOAD=/tmp/x.so bash", "vim /etc/hosts"])
def test_a_pty_does_not_clear_a_shell_fed_from_elsewhere(pci: Stack, command: str) -> None:
    result = pci.ssh(command, extra=("-tt",))
    assert result.returncode == 126, (result.stdout, result.stderr)
    assert b"runs what cannot be checked" in result.stdout + result.stderr


def test_the_pci_pack_holds_sudo_on_prod(pci: Stack) -> None:
    proc = subprocess.Popen(pci.ssh_args("sudo -n true"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    request_id = pending_request(pci)
    request = pci.store.get(request_id)
    assert request.command_preview == "sudo -n true (on ssh target web1)"
    assert request.resource["name"] == "web1" and list(request.approver_groups)
    proc.kill()
    proc.wait(10)
