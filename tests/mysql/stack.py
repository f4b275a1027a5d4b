"""An `ordinance proxy mysql` stack for tests: a fresh database on the test MariaDB behind an
in-process proxy (its own event loop in a thread) with the shipped policies (`env=prod`), its
audit trail and approvals in a temp dir. Card 1's PAN is Luhn-valid (the backstop masks it
wherever it shows up), card 2's is not (only the mask rules hide it)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pymysql

from adapters.enforcement.records import Resource
from adapters.enforcement.review import ApprovalGate
from adapters.mysql.bridge import MySQLBridge
from adapters.mysql.catalog import Catalog, connect_url
from adapters.mysql.proxy import MySQLProxy, ProxyConfig, UpstreamTarget
from engine.approvals import ApprovalStore, open_approval_store
from engine.audit import open_audit_log
from engine.audit.recorder import AuditRecorder
from engine.client import InProcessDecisionClient
from engine.engine import Engine
from engine.identity.users import (
    load_users,
    mysql_native_verifier,
    mysql_sha2_verifier,
)
from engine.policy import load_policy_set
from tests.mysql.conftest import connect
from tests.postgres.conftest import ProxyThread

REPO = Path(__file__).resolve().parents[2]
PAN1, PAN2 = "4111111111111111", "4111111111111112"  # Luhn-valid, Luhn-invalid
PASSWORDS = {"alice": "alice-secret", "dana": "dana-secret", "nat": "nat-secret",
             "sha": "sha-secret", "scr": "scr-secret"}


def users_yaml() -> str:
    from engine.identity.users import format_verifier, scram_auth_info

    return f"""users:
  - {{name: alice, password: alice-secret, groups: [dev]}}
  - {{name: dana, password: dana-secret, groups: [dba-leads]}}
  - {{name: nat, mysql_native_password: "{mysql_native_verifier('nat-secret')}", groups: [dev]}}
  - {{name: sha, caching_sha2_password: "{mysql_sha2_verifier('sha-secret')}", groups: [dev]}}
  - {{name: scr, scram: "{format_verifier(scram_auth_info('scr-secret'))}", groups: [dev]}}
"""


SCHEMA = [
    "CREATE TABLE holders (id int PRIMARY KEY, name varchar(40))",
    "CREATE TABLE cards (id int PRIMARY KEY, pan varchar(32) NOT NULL, cvv varchar(4), "
    "expiry date, holder_id int, notes varchar(100))",
    "CREATE TABLE scratch (id int, note varchar(100))",
    "INSERT INTO holders VALUES (1, 'Ann'), (2, 'Bob')",
    f"INSERT INTO cards VALUES (1, '{PAN1}', '123', '2030-01-31', 1, "
    "'call 4111 1111 1111 1111 asap'), "
    f"(2, '{PAN2}', '456', '2031-02-28', 2, 'nothing here')",
]


@dataclass
class Stack:
    proxy: ProxyThread
    database: str
    direct: str  # the database's root DSN (bypassing the proxy)
    audit_url: str
    users_file: Path
    store: ApprovalStore

    def connect(self, user: str = "alice", password: str | None = None,
                **kwargs: Any) -> pymysql.connections.Connection[Any]:
        return pymysql.connect(host="127.0.0.1", port=self.proxy.port, user=user,
                               password=PASSWORDS.get(user, "") if password is None
                               else password, database=self.database, autocommit=True,
                               connect_timeout=10, read_timeout=60, **kwargs)

    def direct_connect(self) -> pymysql.connections.Connection[Any]:
        return connect(self.direct)

    def ordinance(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engine.cli", *args], input=stdin,
                              capture_output=True, text=True, timeout=60, check=False,
                              cwd=REPO)

    def decide(self, verdict: str, request_id: str, approver: str = "dana") -> None:
        out = self.ordinance("approvals", verdict, request_id, "--as", approver, "--users",
                             str(self.users_file), "--audit", self.audit_url,
                             "--password-stdin", "--comment", "CHG-42",
                             stdin=PASSWORDS[approver] + "\n")
        assert out.returncode == 0, out.stderr

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The trail as it is on disk now (a reader of its own)."""
        path = self.audit_url[len("sqlite:///"):]
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT kind, session_id, decision_id, payload FROM "
                              "ordinance_audit ORDER BY seq").fetchall()
        return [{"kind": k, "session_id": s, "decision_id": d, **json.loads(p)}
                for k, s, d, p in rows if kind is None or k == kind]


@contextlib.contextmanager
def open_stack(mysql_dsn: str, tmp: Path, schema: list[str] = SCHEMA, *,
               approval_timeout: float = 30.0, env: str = "prod",
               policies: Path = REPO / "policies", **config: Any) -> Iterator[Stack]:
    name = "p_" + uuid.uuid4().hex[:12]
    with connect(mysql_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    url = urlsplit(mysql_dsn)
    direct = urlunsplit((url.scheme, url.netloc, "/" + name, "", ""))
    with connect(direct) as conn, conn.cursor() as cur:
        for statement in schema:
            cur.execute(statement)
    users_file = tmp / "users.yaml"
    users_file.write_text(users_yaml())
    audit_url = f"sqlite:///{tmp / 'audit.db'}"
    audit = open_audit_log(audit_url)
    recorder = AuditRecorder(audit).start()
    store = open_approval_store(audit_url, audit=audit)
    gate = ApprovalGate(store, timeout=approval_timeout,
                        approve_hint="ordinance approvals approve {id}")
    catalog = Catalog(connect_url(direct))
    engine = Engine(load_policy_set(str(policies)))
    bridge = MySQLBridge(InProcessDecisionClient(engine),
                         resource=Resource("payments", {"env": env}, type="mysql"),
                         recorder=recorder, catalog=catalog, approvals=gate)
    proxy = ProxyThread(ProxyConfig(upstream=UpstreamTarget.from_url(direct),
                                    directory=load_users(users_file), **bridge.hooks(),
                                    **config), MySQLProxy)
    try:
        yield Stack(proxy, name, direct, audit_url, users_file, store)
    finally:
        proxy.stop()
        catalog.close()
        gate.close()
        recorder.close()
        store.close()
        audit.close()
        with connect(mysql_dsn) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
