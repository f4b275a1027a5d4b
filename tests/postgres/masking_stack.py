"""The masking suites' stack: a database of its own with two Luhn-invalid card numbers in
`cards` (and what `alice` sees of them in `cards_seen`), the shipped PCI pack decided
in-process (its row budget out of the way), the audit trail in SQLite, and the proxy, which
`alice` (group `dev`: `pan` masked, `cvv` redacted) logs in to. `open_masking_stack` builds it
with the caller's extra schema (objects a DBA made before alice came) and, optionally, with the
proxy logging in upstream as a role that is no superuser (row security applies to it).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import tuple_row

from adapters.enforcement.records import Resource
from adapters.postgres.bridge import PolicyBridge
from adapters.postgres.catalog import Catalog
from adapters.postgres.proxy import ProxyConfig
from engine.audit import open_audit_log
from engine.audit.recorder import AuditRecorder
from engine.client import InProcessDecisionClient
from engine.engine import Engine
from engine.identity.users import load_users
from engine.masking import luhn_valid, mask_pan
from engine.policy import load_policy_set
from tests.postgres.conftest import PSQL, ProxyThread, psql_env, upstream_url

REPO = Path(__file__).resolve().parents[2]
# Clear order id 1 < id 2; masked order id 2 < id 1 (****0001 < ****0002): ORDER BY can tell.
PANS = {1: "3000000000000002", 2: "4000000000000001"}
SEEN = {i: mask_pan(p) for i, p in PANS.items()}
CVV = {1: "123", 2: "987"}
USERS_YAML = "users:\n  - {name: alice, password: alice-secret, groups: [dev]}\n"
SCHEMA = [
    "CREATE TABLE cards (id int PRIMARY KEY, holder text, pan text, cvv text)",
    "CREATE TABLE cards_seen (id int PRIMARY KEY, holder text, pan text, cvv text)",
    "CREATE TABLE loot (id serial PRIMARY KEY, note text)",
    "CREATE SEQUENCE seq_ok",
    "CREATE TABLE wallet (id int PRIMARY KEY, pan text)",
    # made by a DBA before alice came: their bodies read cards where no rewrite reaches
    "CREATE FUNCTION get_pan(int) RETURNS text LANGUAGE sql AS "
    "'SELECT pan FROM cards WHERE id = $1'",
    "CREATE VIEW pans_by_function AS SELECT id, get_pan(id) AS g FROM cards",
]


class Setup:
    def __init__(self, proxy: ProxyThread, dbname: str, direct: str, audit_url: str) -> None:
        self.proxy, self.dbname, self.direct, self.audit_url = proxy, dbname, direct, audit_url

    def connect(self, notices: list[str] | None = None) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            f"host=127.0.0.1 port={self.proxy.port} dbname={self.dbname} user=alice "
            "password=alice-secret sslmode=disable connect_timeout=10",
            autocommit=True, row_factory=tuple_row)
        if notices is not None:
            conn.add_notice_handler(lambda d: notices.append(str(d.message_primary or "")
                                                             + str(d.message_detail or "")))
        return conn

    def seen(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """`sql` run directly on what alice sees (`cards_seen`)."""
        with psycopg.connect(self.direct, autocommit=True) as conn:
            return conn.execute(re.sub(r"\bcards\b", "cards_seen", sql), params).fetchall()

    def clear(self, sql: str) -> list[tuple[Any, ...]]:
        """`sql` run directly on the clear values."""
        with psycopg.connect(self.direct, autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def psql(self, *commands: str) -> subprocess.CompletedProcess[str]:
        args = [PSQL, "-X", "-A", "-t", "-q", "-h", "127.0.0.1", "-p", str(self.proxy.port),
                "-U", "alice", "-d", self.dbname]
        for command in commands:
            args += ["-c", command]
        return subprocess.run(args, env=psql_env("alice-secret"), capture_output=True,
                              text=True, timeout=60, check=False)

    def trail(self) -> str:
        """The audit trail as text, without the statements' own text (which holds what the
        client typed, guessed card numbers included)."""
        with sqlite3.connect(self.audit_url[len("sqlite:///"):]) as db:
            rows = db.execute("SELECT payload FROM ordinance_audit ORDER BY seq").fetchall()
        payloads = [json.loads(r[0]) for r in rows]
        return "\n".join(json.dumps({k: v for k, v in p.items() if k != "text"})
                         for p in payloads)


def without_row_budget(tmp: Path) -> str:
    """The shipped policies with the PCI pack's per-session row budget raised past what these
    tests read, and copies not held (masking is tested here; the budget and the copy hold in
    test_bulk_rows.py and the pack's decision tests)."""
    target = tmp / "policies"
    shutil.copytree(REPO / "policies", target)
    data = target / "settings" / "pci" / "data.yaml"
    # (7777777: the number shows in reasons, and no digit of it is a PAN's)
    text, found = re.subn(r"^bulk_row_limit:.*$", "bulk_row_limit: 7777777",
                          data.read_text(), flags=re.MULTILINE)
    assert found == 1
    text, found = re.subn(r"^hold_bulk_copies:.*$", "hold_bulk_copies: false", text,
                          flags=re.MULTILINE)  # copies are masked: that is what is tested here
    assert found == 1
    data.write_text(text)
    return str(target)


@contextlib.contextmanager
def open_masking_stack(pg_dsn: str, tmp: Path, extra: Sequence[str] = (), *,
                       least_privilege: bool = False) -> Iterator[Setup]:
    """The stack on a new database with `SCHEMA` and then `extra` made in it. With
    `least_privilege` the proxy (and its catalog connection) log in as a role of its own
    (dropped at the end), which may read and write every table and owns none."""
    assert not any(luhn_valid(p) for p in PANS.values())  # only the rewrite can hide them
    name = "m_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(pg_dsn)
    params["dbname"] = name
    direct = make_conninfo(**params)
    role = "lp_" + name
    with psycopg.connect(direct, autocommit=True) as conn:
        for statement in SCHEMA:
            conn.execute(statement)
        for i in PANS:
            conn.execute("INSERT INTO cards VALUES (%s, %s, %s, %s)",
                         (i, f"holder {i}", PANS[i], CVV[i]))
            conn.execute("INSERT INTO cards_seen VALUES (%s, %s, %s, '[REDACTED]')",
                         (i, f"holder {i}", SEEN[i]))
            conn.execute("INSERT INTO wallet VALUES (%s, %s)", (i, PANS[i]))
        for statement in extra:
            conn.execute(statement)
        upstream = direct
        if least_privilege:
            for grant in (f"CREATE ROLE {role} LOGIN PASSWORD 'lp-secret' NOSUPERUSER "
                          "NOBYPASSRLS",
                          f'GRANT CONNECT, TEMPORARY ON DATABASE "{name}" TO {role}',
                          f"GRANT USAGE ON SCHEMA public TO {role}",
                          "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public "
                          f"TO {role}",
                          f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"):
                conn.execute(grant)
            upstream = make_conninfo(**{**params, "user": role, "password": "lp-secret"})
    (tmp / "users.yaml").write_text(USERS_YAML)
    audit_url = f"sqlite:///{tmp / 'audit.db'}"
    audit = open_audit_log(audit_url)
    recorder = AuditRecorder(audit).start()
    catalog = Catalog(upstream)
    bridge = PolicyBridge(  # the pack, its row budget out of the way of 160-query oracles
        InProcessDecisionClient(Engine(load_policy_set(without_row_budget(tmp)))),
        resource=Resource("payments", {"env": "prod"}, type="postgres"), catalog=catalog,
        recorder=recorder)
    proxy = ProxyThread(ProxyConfig(upstream_url=upstream_url(upstream),
                                    directory=load_users(tmp / "users.yaml"), **bridge.hooks()))
    try:
        yield Setup(proxy, name, direct, audit_url)
    finally:
        proxy.run(catalog.close())
        proxy.stop()
        recorder.close()
        audit.close()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            if least_privilege:
                conn.execute(f"DROP ROLE IF EXISTS {role}")


def clear_derived(setup: Setup, expressions: list[str]) -> set[str]:
    """What each expression gives on the clear PANs where that differs from the masked ones
    (at least 6 characters, so a match cannot be chance)."""
    found: set[str] = set()
    for expression in expressions:
        clear = setup.clear(f"SELECT ({expression})::text FROM cards ORDER BY id")
        seen = setup.seen(f"SELECT ({expression})::text FROM cards ORDER BY id")
        found |= {c for (c,), (s,) in zip(clear, seen, strict=True)
                  if c is not None and c != s and len(c) >= 6}
    return found


def assert_nothing_clear(text: str, leaks: set[str]) -> None:
    for pan in PANS.values():
        assert pan not in text
    for cvv in CVV.values():
        assert f"'{cvv}'" not in text and f'"{cvv}"' not in text
    for leak in leaks:
        assert leak not in text, leak
