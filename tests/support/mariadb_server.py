"""A throwaway MariaDB server for tests, started from the installed binaries.

`mariadbd` refuses to run as root unless told to, so as root the data directory belongs to the
`mysql` system user and the server runs as that user. The server listens on 127.0.0.1 on a free
port (and on a private Unix socket), its `root@%` account has a password, and everything is
removed when the test session ends.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

ROOT_USER = "root"
ROOT_PASSWORD = "ordinance-test"


class ServerUnavailable(RuntimeError):
    """No MariaDB server binaries here, or they could not start a server."""


@dataclass
class MariaDBServer:
    root: str
    port: int
    socket_path: str
    process: subprocess.Popen[bytes]

    @property
    def dsn(self) -> str:
        return f"mysql://{ROOT_USER}:{ROOT_PASSWORD}@127.0.0.1:{self.port}/mysql"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def _binary(*names: str) -> str | None:
    for name in names:
        for path in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
            if path and os.access(path, os.X_OK):
                return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-800:]
    except OSError:
        return ""


def start_server(timeout: float = 60.0) -> MariaDBServer:
    """Initialise a data directory, start `mariadbd` on it and set the root password."""
    install_db = _binary("mariadb-install-db", "mysql_install_db")
    server = _binary("mariadbd", "mysqld")
    if install_db is None or server is None:
        raise ServerUnavailable("no MariaDB server binaries (mariadb-install-db, mariadbd) found")
    run_as: list[str] = []
    root = tempfile.mkdtemp(prefix="ordinance-mariadb-")
    os.chmod(root, 0o755)
    user = "mysql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(user)
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise ServerUnavailable("running as root and there is no 'mysql' user") from None
        shutil.chown(root, user)
        run_as = ["runuser", "-u", user, "--"]
    datadir = os.path.join(root, "data")
    socket_path = os.path.join(root, "mysqld.sock")
    log_path = os.path.join(root, "error.log")
    init = subprocess.run(
        [*run_as, install_db, "--no-defaults", f"--datadir={datadir}",
         "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
        capture_output=True, text=True, check=False,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise ServerUnavailable(f"mariadb-install-db failed: {init.stderr.strip()[-500:]}")
    port = _free_port()
    process = subprocess.Popen(
        [*run_as, server, "--no-defaults", f"--datadir={datadir}", f"--port={port}",
         "--bind-address=127.0.0.1", f"--socket={socket_path}", f"--pid-file={root}/mysqld.pid",
         f"--log-error={log_path}", "--skip-name-resolve", "--skip-log-bin",
         "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=0",
         "--innodb-doublewrite=0", "--max-connections=300", "--character-set-server=utf8mb4",
         "--collation-server=utf8mb4_general_ci", f"--secure-file-priv={root}/files"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.makedirs(f"{root}/files", exist_ok=True)
    if run_as:
        shutil.chown(f"{root}/files", user)
    deadline = time.monotonic() + timeout
    while not os.path.exists(socket_path):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            log = _log_tail(log_path)
            shutil.rmtree(root, ignore_errors=True)
            raise ServerUnavailable(f"mariadbd did not start: {log}")
        time.sleep(0.1)
    # `--auth-root-authentication-method=normal` creates root@localhost, root@127.0.0.1, root@::1
    # and root@HOSTNAME without a password, reachable over the private socket; keep only
    # root@localhost and root@%, both with the password.
    setup = (
        "DELETE FROM mysql.global_priv WHERE User = 'root' AND Host <> 'localhost';"
        "DELETE FROM mysql.global_priv WHERE User = '';"
        "FLUSH PRIVILEGES;"
        f"ALTER USER 'root'@'localhost' IDENTIFIED BY '{ROOT_PASSWORD}';"
        f"CREATE USER 'root'@'%' IDENTIFIED BY '{ROOT_PASSWORD}';"
        "GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;"
    )
    client = _binary("mariadb", "mysql")
    if client is None:
        server_obj = MariaDBServer(root, port, socket_path, process)
        server_obj.stop()
        raise ServerUnavailable("no MariaDB client binary (mariadb) to set the root password")
    done = subprocess.run(
        [*run_as, client, "--no-defaults", f"--socket={socket_path}", "-uroot", "-e", setup],
        capture_output=True, text=True, check=False,
    )
    server_obj = MariaDBServer(root, port, socket_path, process)
    if done.returncode != 0:
        server_obj.stop()
        raise ServerUnavailable(f"could not set the root password: {done.stderr.strip()[-500:]}")
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                server_obj.stop()
                raise ServerUnavailable(f"mariadbd does not accept TCP on port {port}") from None
            time.sleep(0.05)
    return server_obj
