"""A throwaway PostgreSQL cluster for tests, started from the installed server binaries.

`initdb` refuses to run as root, so as root the cluster is created and run as the `postgres`
system user. The cluster listens on 127.0.0.1 on a free port with SCRAM-SHA-256 for TCP clients
(trust on its private Unix socket) and is removed when the test session ends. With `tls`
(a PEM certificate chain and key) it also accepts TLS connections (`ssl=on`).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "ordinance-test"


class ClusterUnavailable(RuntimeError):
    """No PostgreSQL server binaries here, or they could not start a cluster."""


@dataclass
class PgCluster:
    datadir: str
    port: int
    socket_dir: str
    bindir: str
    run_as: list[str]

    @property
    def dsn(self) -> str:
        return f"postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run(
            [*self.run_as, f"{self.bindir}/pg_ctl", "-D", self.datadir, "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(os.path.dirname(self.datadir), ignore_errors=True)


def find_bindir() -> str | None:
    """The directory holding initdb and pg_ctl, newest major version first."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    candidates += [os.path.dirname(p) for p in filter(None, [shutil.which("initdb")])]
    for bindir in candidates:
        if os.path.exists(f"{bindir}/initdb") and os.path.exists(f"{bindir}/pg_ctl"):
            return bindir
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(tls: tuple[bytes, bytes] | None = None, *, fsync: bool = False) -> PgCluster:
    """A throwaway cluster; `fsync=False` (tests) skips the server's syncs, `fsync=True`
    (benchmarks) keeps PostgreSQL's own durability, as users run it."""
    bindir = find_bindir()
    if bindir is None:
        raise ClusterUnavailable("no PostgreSQL server binaries (initdb, pg_ctl) found")
    run_as: list[str] = []
    root = tempfile.mkdtemp(prefix="ordinance-pg-")
    if os.geteuid() == 0:
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    datadir = os.path.join(root, "data")
    pwfile = os.path.join(root, "pw")
    with open(pwfile, "w") as f:
        f.write(SUPERUSER_PASSWORD + "\n")
    if run_as:
        shutil.chown(pwfile, "postgres")
    init = subprocess.run(
        [*run_as, f"{bindir}/initdb", "-D", datadir, "-U", SUPERUSER, "--pwfile", pwfile,
         "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync"],
        capture_output=True, text=True, check=False,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise ClusterUnavailable(f"initdb failed: {init.stderr.strip()[-500:]}")
    port = free_port()
    opts = (f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} "
            f"-c fsync={'on' if fsync else 'off'} -c max_connections=200 -c shared_buffers=64MB")
    if tls is not None:
        for name, data in zip(("server.crt", "server.key"), tls, strict=True):
            path = os.path.join(datadir, name)
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, 0o600)  # the server refuses a key others can read
            if run_as:
                shutil.chown(path, "postgres")
        opts += " -c ssl=on"
    started = subprocess.run(
        [*run_as, f"{bindir}/pg_ctl", "-D", datadir, "-o", opts, "-l",
         os.path.join(root, "log"), "-w", "-t", "30", "start"],
        capture_output=True, text=True, check=False,
    )
    if started.returncode != 0:
        log_path = os.path.join(root, "log")
        log = ""
        if os.path.exists(log_path):
            with open(log_path) as f:
                log = f.read()[-800:]
        shutil.rmtree(root, ignore_errors=True)
        raise ClusterUnavailable(f"pg_ctl start failed: {started.stderr.strip()} {log}")
    cluster = PgCluster(datadir=datadir, port=port, socket_dir=root, bindir=bindir, run_as=run_as)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return cluster
