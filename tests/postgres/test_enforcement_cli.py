"""`ordinance proxy postgres` as an operator runs it: a subprocess, its ready line, psql through
it, decisions in-process or from `ordinance serve` over gRPC (and denied when that service is
unreachable), clean shutdown on SIGTERM with every session recorded."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.postgres.conftest import PSQL, psql_env, upstream_url
from tests.postgres.test_enforcement import USERS_YAML

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def database(pg_dsn: str) -> Iterator[str]:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = "c_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(pg_dsn)
    params["dbname"] = name
    dsn = make_conninfo(**params)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE cards (id int PRIMARY KEY, pan text, cvv text)")
        conn.execute("INSERT INTO cards VALUES (1, '4111111111111112', '123')")
    yield dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Running:
    def __init__(self, args: list[str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            _, err = self.process.communicate(timeout=30)
            raise AssertionError(f"no ready line; stderr:\n{err}")
        self.ready: dict[str, Any] = json.loads(line)

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=60)
        return self.process.returncode, err


def proxy_args(tmp: Path, dsn: str, *source: str) -> list[str]:
    users = tmp / "users.yaml"
    users.write_text(USERS_YAML)
    return ["proxy", "postgres", "--listen", "127.0.0.1:0", "--upstream", upstream_url(dsn),
            *source, "--audit", f"sqlite:///{tmp / 'audit.db'}", "--users", str(users),
            "--resource-name", "payments", "--resource-label", "env=prod",
            "--approval-timeout", "30s", "--decision-deadline", "1s"]


def psql(port: int, dbname: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PSQL, "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(port), "-U",
                           "alice", "-d", dbname, "-c", sql], env=psql_env("alice-secret"),
                          capture_output=True, text=True, timeout=60, check=False)


def ordinance(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def dbname_of(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return str(conninfo_to_dict(dsn)["dbname"])


def test_in_process_policies_ready_line_psql_and_clean_shutdown(
        database: str, tmp_path: Path) -> None:
    running = Running(proxy_args(tmp_path, database, "--policies", str(REPO / "policies")),
                      REPO)
    try:
        ready = running.ready
        assert ready["event"] == "listening" and ready["decisions"].startswith("in-process:")
        assert ready["resource"] == {"type": "postgres", "name": "payments",
                                     "labels": {"env": "prod"}}
        assert "ordinance-test" not in json.dumps(ready)  # the upstream password stays out
        port = int(ready["listen"].rsplit(":", 1)[1])
        name = dbname_of(database)
        out = psql(port, name, "SELECT pan, cvv FROM cards WHERE id = 1")
        assert out.returncode == 0 and out.stdout.strip() == "************1112|[REDACTED]"
        out = psql(port, name, "DROP TABLE cards")
        assert "DROP is not allowed on production resources" in out.stderr
        lingering = psycopg.connect(f"host=127.0.0.1 port={port} dbname={name} user=alice "
                                    "password=alice-secret sslmode=disable")
        lingering.execute("SELECT 1")
    finally:
        code, err = running.stop()
    assert code == 0, err
    audit = f"sqlite:///{tmp_path / 'audit.db'}"
    export = ordinance("audit", "export", "--audit", audit, "--kind", "session.end")
    reasons = [json.loads(line)["payload"]["reason"] for line in export.stdout.splitlines()]
    assert reasons.count("client terminated") == 2 and "proxy shutdown" in reasons
    assert ordinance("audit", "verify", "--audit", audit).returncode == 0
    with pytest.raises(psycopg.errors.AdminShutdown, match="administrator command"):
        lingering.execute("SELECT 1")  # what PostgreSQL's own fast shutdown tells a session
    lingering.close()


def test_decisions_from_ordinance_serve_over_grpc(database: str, tmp_path: Path) -> None:
    serve = Running(["serve", "--policies", str(REPO / "policies"), "--grpc", "127.0.0.1:0",
                     "--http", "off", "--decision-log-file", str(tmp_path / "decisions.jsonl")],
                    REPO)
    try:
        proxy = Running(proxy_args(tmp_path, database, "--decision-service",
                                   serve.ready["grpc"]), REPO)
        try:
            port = int(proxy.ready["listen"].rsplit(":", 1)[1])
            name = dbname_of(database)
            out = psql(port, name, "SELECT upper(pan), cvv FROM cards WHERE id = 1")
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == "************1112|[REDACTED]"  # upper() of the mask
            out = psql(port, name, "TRUNCATE cards")
            assert "TRUNCATE is not allowed on production resources" in out.stderr
        finally:
            code, err = proxy.stop()
        assert code == 0, err
    finally:
        serve.stop()


def test_an_unreachable_decision_service_denies(database: str, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    running = Running(proxy_args(tmp_path, database, "--decision-service", dead), REPO)
    try:
        port = int(running.ready["listen"].rsplit(":", 1)[1])
        out = psql(port, dbname_of(database), "SELECT 1")
        assert out.returncode != 0
        assert "permission denied by policy: decision service error (UNAVAILABLE" in out.stderr
    finally:
        code, err = running.stop()
    assert code == 0, err
    export = ordinance("audit", "export", "--audit", f"sqlite:///{tmp_path / 'audit.db'}",
                       "--kind", "statement")
    records = [json.loads(line)["payload"] for line in export.stdout.splitlines()]
    assert [(r["text"], r["effect"]) for r in records] == [("SELECT 1", "deny")]


@pytest.mark.parametrize(("extra", "message"), [
    (["--users", ""], "clients need a way to log in"),
    (["--oidc-jwks", "jwks.json"], "--oidc-jwks, --oidc-issuer and --oidc-audience go together"),
    (["--listen", "0.0.0.0:0"], "refusing to listen on non-loopback address"),
    (["--tls-cert", "missing.pem", "--tls-key", "missing.pem"], "TLS file not found"),
])
def test_bad_configurations_exit_2(database: str, tmp_path: Path, extra: list[str],
                                   message: str) -> None:
    args = proxy_args(tmp_path, database, "--policies", str(REPO / "policies"))
    if extra[:2] == ["--users", ""]:
        index = args.index("--users")
        del args[index:index + 2]
        extra = []
    result = ordinance(*args, *extra)
    assert result.returncode == 2
    assert message in result.stderr
