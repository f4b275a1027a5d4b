"""A throwaway OpenSSH server for tests, started from the installed `/usr/sbin/sshd`.

`start_sshd()` writes a config, an Ed25519 host key, a client key pair and a user CA into a
temp dir, and runs `sshd -D -e -f CONFIG` on a free 127.0.0.1 port: public-key authentication
only (an authorized key, or a certificate signed by the CA), no PAM, its `PidFile` and log in
the temp dir. As root the login user is `TEST_USER`, a non-root system user created when
missing (with a usable shell, an unlocked account: without PAM sshd refuses a `!` password
field); as another user, sshd can only log that user in, so that user is the login user.

`StrictModes no`: sshd refuses authorized keys under a group- or world-writable directory,
and every temp dir lies under `/tmp` (mode 1777); the keys are still only writable by us.
`stop()` kills the server and removes the directory (the user is kept, as `useradd` is slow
and other test processes may be using it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SSHD = "/usr/sbin/sshd"
TEST_USER = "ordinance-ssh"
"""The system user the server logs in when the tests run as root."""
TEST_USER_HOME = "/var/lib/ordinance-ssh"
START_TIMEOUT = 15.0


class SshdUnavailable(RuntimeError):
    """No sshd here, or it could not be started."""


@dataclass
class Sshd:
    host: str
    port: int
    user: str
    client_key: str
    """Path of the client's private key (OpenSSH format, mode 0600), authorized for `user`."""
    client_public_key: str
    host_public_key: str
    """The server's host key as an authorized-key line (`ssh-ed25519 AAAA...`)."""
    known_hosts: str
    """Path of a known_hosts file pinning `host_public_key` for `[host]:port`."""
    user_ca_key: str
    """Path of a CA private key whose user certificates (for `user`) the server accepts."""
    directory: str
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def known_hosts_line(self) -> str:
        return f"[{self.host}]:{self.port} {self.host_public_key}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "sshd.log")

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def authorize(self, public_key: str) -> None:
        """Add an authorized-key line for `user` (read by sshd at each authentication)."""
        with open(os.path.join(self.directory, "authorized_keys"), "a") as f:
            f.write(public_key.strip() + "\n")

    def ssh_command(self, *remote: str, extra: tuple[str, ...] = ()) -> list[str]:
        """An OpenSSH `ssh` command line logging in with the client key, host key pinned."""
        return ["ssh", "-p", str(self.port), "-i", self.client_key,
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                *extra, f"{self.user}@{self.host}", *remote]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def key_pair(directory: str, name: str) -> tuple[str, str]:
    """An Ed25519 key pair written as `name` (0600) and `name.pub`; (path, public line)."""
    key = Ed25519PrivateKey.generate()
    path = os.path.join(directory, name)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    with open(path + ".pub", "w") as f:
        f.write(f"{public} {name}\n")
    return path, public


def _ensure_test_user() -> str:
    """As root, the non-root login user (created when missing); otherwise the current user."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        missing = True
    else:
        missing = False
    if missing:
        shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
        made = subprocess.run(
            ["useradd", "--system", "--create-home", "--home-dir", TEST_USER_HOME,
             "--shell", shell, "--comment", "Ordinance sshd test user", TEST_USER],
            capture_output=True, text=True, check=False)
        if made.returncode not in (0, 9):  # 9: created meanwhile by another test process
            raise SshdUnavailable(f"useradd {TEST_USER} failed: {made.stderr.strip()}")
    # No password, but not locked: without PAM, sshd refuses an account whose hash starts `!`.
    subprocess.run(["usermod", "-p", "*", TEST_USER], capture_output=True, check=False)
    return TEST_USER


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(directory: str, port: int, user: str) -> str:
    d = directory
    return "\n".join([
        f"ListenAddress 127.0.0.1:{port}",
        f"HostKey {d}/host_key",
        f"PidFile {d}/sshd.pid",
        f"AuthorizedKeysFile {d}/authorized_keys",
        f"TrustedUserCAKeys {d}/user_ca.pub",
        f"AllowUsers {user}",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "PermitUserEnvironment no",
        # The target allows forwarding, so a test sees that the gateway is what refuses it.
        "AllowTcpForwarding yes",
        "AllowAgentForwarding yes",
        "X11Forwarding no",
        # 50 concurrent sessions must not meet sshd's default throttle (10:30:100).
        "MaxStartups 200",
        "MaxSessions 100",
        "LoginGraceTime 30",
        "Subsystem sftp internal-sftp",
        "LogLevel VERBOSE",
        "",
    ])


def _wait_ready(process: subprocess.Popen[bytes], port: int, log_path: str) -> None:
    """Until the server answers with its SSH banner, or fails."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-2.0-"):
                    return
        except OSError:
            time.sleep(0.05)
    with open(log_path, errors="replace") as f:
        log = f.read()[-800:]
    raise SshdUnavailable(f"sshd did not start on port {port}: {log.strip()}")


def start_sshd() -> Sshd:
    """A running throwaway sshd; call `stop()` when done."""
    if not os.access(SSHD, os.X_OK):
        raise SshdUnavailable(f"{SSHD} not found (Debian package openssh-server)")
    user = _ensure_test_user()
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
    directory = tempfile.mkdtemp(prefix="ordinance-sshd-")
    os.chmod(directory, 0o755)  # the login user must read authorized_keys
    try:
        _, host_public = key_pair(directory, "host_key")
        client_key, client_public = key_pair(directory, "client_key")
        ca_key, _ = key_pair(directory, "user_ca")
        with open(os.path.join(directory, "authorized_keys"), "w") as f:
            f.write(client_public + " ordinance-test-client\n")
        last_error: SshdUnavailable | None = None
        for _attempt in range(3):  # the free port may be taken before sshd binds it
            port = _free_port()
            config = os.path.join(directory, "sshd_config")
            with open(config, "w") as f:
                f.write(_config(directory, port, user))
            log_path = os.path.join(directory, "sshd.log")
            with open(log_path, "ab") as log:
                process = subprocess.Popen([SSHD, "-D", "-e", "-f", config],
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            try:
                _wait_ready(process, port, log_path)
            except SshdUnavailable as exc:
                last_error = exc
                if process.poll() is None:
                    process.kill()
                process.wait()
                continue
            known_hosts = os.path.join(directory, "known_hosts")
            with open(known_hosts, "w") as f:
                f.write(f"[127.0.0.1]:{port} {host_public}\n")
            return Sshd(host="127.0.0.1", port=port, user=user, client_key=client_key,
                        client_public_key=client_public, host_public_key=host_public,
                        known_hosts=known_hosts, user_ca_key=ca_key, directory=directory,
                        process=process)
        assert last_error is not None
        raise last_error
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
