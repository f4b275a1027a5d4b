"""The enforcement proxy end to end: the shipped PCI pack decided in-process, a real PostgreSQL,
real psql and psycopg, approvals given from another process, the audit trail checked after.

Card data: card 1's PAN is Luhn-valid (the backstop masks it wherever it shows up), card 2's is
not (only the mask rules hide it), so a test can tell the two mechanisms apart.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import tuple_row

from adapters.enforcement.records import Resource
from adapters.enforcement.review import ApprovalGate
from adapters.postgres.bridge import PolicyBridge
from adapters.postgres.catalog import Catalog
from adapters.postgres.proxy import ProxyConfig
from engine.approvals import ApprovalStore, open_approval_store
from engine.approvals.store import SqliteApprovalStore
from engine.audit import AuditLog, open_audit_log
from engine.audit.recorder import AuditRecorder
from engine.client import InProcessDecisionClient
from engine.engine import Engine
from engine.identity.users import load_users
from engine.policy import load_policy_set
from tests.postgres.conftest import PSQL, ProxyThread, psql_env, upstream_url, wait_until

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[2]
PAN1, PAN2 = "4111111111111111", "4111111111111112"  # Luhn-valid, Luhn-invalid
PASSWORDS = {"alice": "alice-secret", "dana": "dana-secret", "pat": "pat-secret"}
USERS_YAML = """users:
  - {name: alice, password: alice-secret, groups: [dev]}
  - {name: dana, password: dana-secret, groups: [dba-leads]}
  - {name: pat, password: pat-secret, groups: [pci-pan-viewers]}
"""
SCHEMA = [
    "CREATE TABLE holders (id int PRIMARY KEY, name text)",
    "CREATE TABLE cards (id int PRIMARY KEY, pan text, cvv text, expiry date, "
    "holder_id int REFERENCES holders, notes text)",
    "CREATE TABLE scratch (id int, note text)",
    "CREATE VIEW v_cards AS SELECT id, pan AS card, upper(pan) AS up, notes FROM cards",
    "INSERT INTO holders VALUES (1, 'Ann'), (2, 'Bob')",
    f"INSERT INTO cards VALUES (1, '{PAN1}', '123', '2030-01-31', 1, "
    "'call 4111 1111 1111 1111 asap'), "
    f"(2, '{PAN2}', '456', '2031-02-28', 2, 'nothing here')",
]


@dataclass
class Stack:
    proxy: ProxyThread
    dbname: str
    direct: str
    audit_url: str
    users_file: Path
    gate: ApprovalGate
    store: ApprovalStore
    recorder: AuditRecorder
    audit: AuditLog
    engine: Engine
    catalog: Catalog

    def dsn(self, user: str = "alice", **extra: str) -> str:
        parts = {"host": "127.0.0.1", "port": str(self.proxy.port), "dbname": self.dbname,
                 "user": user, "password": PASSWORDS[user], "sslmode": "disable",
                 "connect_timeout": "10", **extra}
        return " ".join(f"{k}='{v}'" for k, v in parts.items())

    def connect(self, user: str = "alice", notices: list[str] | None = None
                ) -> psycopg.Connection[tuple[Any, ...]]:
        conn = psycopg.connect(self.dsn(user), autocommit=True, row_factory=tuple_row)
        if notices is not None:
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        return conn

    def psql(self, *commands: str, user: str = "alice") -> subprocess.CompletedProcess[str]:
        args = [PSQL, "-X", "-A", "-q", "-P", "footer=off", "-h", "127.0.0.1", "-p",
                str(self.proxy.port), "-U", user, "-d", self.dbname]
        for command in commands:
            args += ["-c", command]
        return subprocess.run(args, env=psql_env(PASSWORDS[user]), capture_output=True,
                              text=True, timeout=60, check=False)

    def ordinance(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engine.cli", *args], input=stdin,
                              capture_output=True, text=True, timeout=60, check=False,
                              cwd=REPO)

    def pending(self) -> list[Any]:
        return self.store.list("pending")

    def decide(self, verdict: str, request_id: str, approver: str = "dana") -> None:
        out = self.ordinance("approvals", verdict, request_id, "--as", approver, "--users",
                             str(self.users_file), "--audit", self.audit_url,
                             "--password-stdin", "--comment", "CHG-42",
                             stdin=PASSWORDS[approver] + "\n")
        assert out.returncode == 0, out.stderr

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The trail as it is on disk now (a reader of its own, not the proxy's connection)."""
        import json

        path = self.audit_url[len("sqlite:///"):]
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT kind, session_id, decision_id, payload FROM "
                              "ordinance_audit ORDER BY seq").fetchall()
        return [{"kind": k, "session_id": s, "decision_id": d, **json.loads(p)}
                for k, s, d, p in rows if kind is None or k == kind]


@contextlib.contextmanager
def open_stack(pg_dsn: str, tmp: Path, schema: list[str], *, prefix: str,
               approval_timeout: float) -> Iterator[Stack]:
    """A fresh database holding `schema` behind an in-process proxy with the shipped policies
    (`env=prod`), its trail and approvals in `tmp`; all of it dropped afterwards."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = prefix + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(pg_dsn)
    params["dbname"] = name
    direct = make_conninfo(**params)
    with psycopg.connect(direct, autocommit=True) as conn:
        for statement in schema:
            conn.execute(statement)
    users_file = tmp / "users.yaml"
    users_file.write_text(USERS_YAML)
    audit_url = f"sqlite:///{tmp / 'audit.db'}"
    audit = open_audit_log(audit_url)
    recorder = AuditRecorder(audit).start()
    store = open_approval_store(audit_url, audit=audit)
    gate = ApprovalGate(store, timeout=approval_timeout,
                        approve_hint="ordinance approvals approve {id}")
    catalog = Catalog(direct)
    engine = Engine(load_policy_set(str(REPO / "policies")))
    bridge = PolicyBridge(
        InProcessDecisionClient(engine),
        resource=Resource("payments", {"env": "prod"}, type="postgres"),
        catalog=catalog, recorder=recorder, approvals=gate)
    proxy = ProxyThread(ProxyConfig(upstream_url=upstream_url(direct),
                                    directory=load_users(users_file), **bridge.hooks()))
    yield Stack(proxy, name, direct, audit_url, users_file, gate, store, recorder, audit,
                engine, catalog)
    proxy.run(catalog.close())
    proxy.stop()
    gate.close()
    recorder.close()
    store.close()
    audit.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def stack(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with open_stack(pg_dsn, tmp_path_factory.mktemp("enforcement"), SCHEMA, prefix="e_",
                    approval_timeout=30.0) as running:
        yield running


def denial(exc: pytest.ExceptionInfo[psycopg.Error]) -> str:
    assert exc.value.sqlstate == "42501", exc.value
    return str(exc.value)


# ------------------------------------------------------------------------------------------
# Allowed statements: exactly what the server returns

SAME = [
    "SELECT 1 AS one, 'two'::text AS two, NULL::int AS nothing, 1.5::numeric, now() > "
    "'2000-01-01', '{\"a\": [1, 2]}'::jsonb, ARRAY['x', 'y'], 'x'::bytea, "
    "'2024-02-29 12:34:56+00'::timestamptz",
    "SELECT g, g * 2, 'row ' || g FROM generate_series(1, 3000) AS g",
    "SELECT id, name FROM holders ORDER BY id",
    "SELECT id, holder_id, notes FROM cards WHERE id = 2",
]


@pytest.mark.parametrize("binary", [False, True])
def test_allowed_queries_return_exactly_what_the_server_returns(stack: Stack,
                                                                binary: bool) -> None:
    with psycopg.connect(stack.direct) as direct, stack.connect() as proxied:
        for query in SAME:
            for prepare in (False, True):
                expected = direct.cursor(binary=binary).execute(query, prepare=prepare)
                got = proxied.cursor(binary=binary).execute(query, prepare=prepare)
                assert got.fetchall() == expected.fetchall(), query
                assert got.statusmessage == expected.statusmessage
    out = stack.psql("SELECT name FROM holders ORDER BY id")
    assert out.returncode == 0 and out.stdout.splitlines() == ["name", "Ann", "Bob"]


def test_writes_and_copy_from_stdin_are_allowed(stack: Stack) -> None:
    with stack.connect() as conn:
        conn.execute("INSERT INTO scratch VALUES (1, 'a')")
        with conn.cursor().copy("COPY scratch FROM STDIN") as copy:
            copy.write_row((2, "b"))
        assert conn.execute("SELECT count(*) FROM scratch WHERE id IN (1, 2)").fetchone() == (2,)
        conn.execute("DELETE FROM scratch WHERE id IN (1, 2)")


# ------------------------------------------------------------------------------------------
# The PCI pack's blocking rules

@pytest.mark.parametrize(("sql", "reason"), [
    ("DROP TABLE scratch", "DROP is not allowed on production resources"),
    ("TRUNCATE scratch", "TRUNCATE is not allowed on production resources"),
    ("ALTER TABLE scratch ADD COLUMN x int", "ALTER is not allowed on production resources"),
    ("GRANT SELECT ON cards TO PUBLIC", "GRANT is not allowed on production resources"),
    ("UPDATE scratch SET note = 'x'", "UPDATE without WHERE affects every row"),
    ("WITH gone AS (DELETE FROM scratch RETURNING id) SELECT count(*) FROM gone",
     "DELETE without WHERE affects every row"),
    ("INSERT INTO cards (id, pan, cvv) VALUES (9, '1', '999')",
     "writing card verification codes (cvv) is forbidden"),
    ("SELEC pan FROM cards", "unparseable SQL is denied"),
    ("SELECT 1; CREATE TABLE x (y int)", "multi-statement strings that contain DDL"),
    ("COPY scratch TO PROGRAM 'cat'", "COPY ... PROGRAM runs shell commands"),
    ("DO $$ BEGIN EXECUTE 'CREATE TABLE x (y int)'; END $$",
     "DO blocks run code the policies cannot check"),
])
def test_pci_pack_denials_reach_the_client_with_reasons_and_decision_id(
        stack: Stack, sql: str, reason: str) -> None:
    with stack.connect() as conn, pytest.raises(psycopg.Error) as exc:
        conn.execute(sql)
    assert reason in denial(exc)
    assert exc.value.diag.message_detail and "decision id: " in exc.value.diag.message_detail
    with psycopg.connect(stack.direct) as direct:  # nothing reached the server
        assert direct.execute("SELECT count(*) FROM cards WHERE id = 9").fetchone() == (0,)
        assert direct.execute("SELECT to_regclass('x')").fetchone() == (None,)


def test_psql_shows_the_denial_and_the_session_goes_on(stack: Stack) -> None:
    out = stack.psql("DROP TABLE cards", "SELECT 'still here'")
    assert "ERROR:  permission denied by policy: DROP is not allowed on production " \
           "resources" in out.stderr
    assert "DETAIL:  decision id: " in out.stderr
    assert "still here" in out.stdout


def test_parameters_sent_without_spaces_between_them_are_decided_and_masked(
        stack: Stack) -> None:
    # `(%s,%s)` reaches the server as `($1,$2)`, as pgjdbc's `(?,?)` and its rewritten batches
    # (`VALUES ($1, $2),($3, $4)`) and node-postgres' `($1,$2)` do; they were denied as
    # unparseable.
    with stack.connect() as conn:
        assert conn.execute("SELECT id, pan, cvv FROM cards WHERE id IN (%s,%s) ORDER BY id",
                            (1, 2)).fetchall() == [(1, "************1111", "[REDACTED]"),
                                                   (2, "************1112", "[REDACTED]")]
        assert conn.execute("SELECT cvv||%s,%s::text FROM cards WHERE id = %s",
                            ("x", "y", 1)).fetchone() == ("[REDACTED]x", "y")
        conn.execute("INSERT INTO scratch (id, note) VALUES (%s,%s),(%s,%s)",
                     (41, "a", 42, "b"))
        assert conn.execute("DELETE FROM scratch WHERE id IN (%s,%s)", (41, 42)).rowcount == 2


def test_read_only_transactions_and_copy_options_without_with_are_allowed(
        stack: Stack) -> None:
    # psycopg's read_only and pgjdbc's setReadOnly(true) open transactions with BEGIN READ
    # ONLY; `COPY … TO STDOUT (FORMAT csv)` is PostgreSQL's own example syntax. Both were
    # denied as unparseable.
    with psycopg.connect(stack.dsn(), row_factory=tuple_row) as conn:
        conn.read_only = True
        assert conn.execute("SELECT name FROM holders WHERE id = 1").fetchone() == ("Ann",)
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("UPDATE holders SET name = name WHERE id = 1")
        assert exc.value.sqlstate == "25006", exc.value
    with stack.connect() as conn, conn.cursor() as cur:
        with cur.copy("COPY scratch (id, note) FROM STDIN (FORMAT csv)") as copy:
            copy.write(b"51,x\n")
        with cur.copy("COPY (SELECT id, note FROM scratch WHERE id = 51) TO STDOUT "
                      "(FORMAT csv, HEADER)") as copy:
            assert b"".join(copy) == b"id,note\n51,x\n"
        conn.execute("DELETE FROM scratch WHERE id = 51")


def test_text_between_parameters_is_not_hidden_from_the_policies(stack: Stack) -> None:
    # PostgreSQL: `$1` is a parameter of PREPARE a, then COMMIT and DROP run; a dollar-quote
    # tag cannot begin with a digit. sqlglot read one string from `$1;…$` to `$1;…$` and the
    # policies saw a lone PREPARE: the DROP ran, and a CVV came back unmasked.
    with psycopg.connect(stack.direct, autocommit=True) as direct:
        direct.execute("CREATE TABLE victim (id int)")
    drop = "1;COMMIT;DROP/**/TABLE/**/victim;COMMIT;PREPARE/**/b/**/AS/**/SELECT/**/"
    read = ("1;SELECT/**/id,cvv||'',translate(pan,'0123456789','abcdefghij')/**/FROM/**/"
            "cards/**/WHERE/**/id=1;PREPARE/**/b/**/AS/**/SELECT/**/")
    try:
        for tag, reason in ((drop, "DROP is not allowed on production resources"),
                            (read, "reads a relation with masked columns")):
            out = stack.psql(f"PREPARE a AS SELECT ${tag}$2;PREPARE c AS SELECT ${tag}$3")
            assert reason in out.stderr, out
            assert "123" not in out.stdout and "ebbbbbbbbbbbbbbb" not in out.stdout
        with psycopg.connect(stack.direct) as direct:
            assert direct.execute("SELECT to_regclass('victim')").fetchone() == ("victim",)
    finally:
        with psycopg.connect(stack.direct, autocommit=True) as direct:
            direct.execute("DROP TABLE IF EXISTS victim")


# ------------------------------------------------------------------------------------------
# Masks

MASKED1, MASKED2 = "************1111", "************1112"
REDACTED = "[REDACTED]"


def test_pan_cvv_and_expiry_rules(stack: Stack) -> None:
    notices: list[str] = []
    with stack.connect(notices=notices) as conn:
        rows = conn.execute("SELECT id, pan, cvv, expiry, notes FROM cards WHERE id IN (1, 2) "
                            "ORDER BY id").fetchall()
    assert rows == [(1, MASKED1, "[REDACTED]", None, "call **** **** **** 1111 asap"),
                    (2, MASKED2, "[REDACTED]", None, "nothing here")]
    assert any('column "expiry" is masked by policy (redact)' in n for n in notices)
    with stack.connect("pat") as conn:  # pci-pan-viewers: the PAN rule does not apply
        rows = conn.execute("SELECT pan, cvv FROM cards WHERE id IN (1, 2) ORDER BY id"
                            ).fetchall()
    # card 1 is still hidden by the content backstop, which applies whatever the rules say
    assert rows == [(MASKED1, "[REDACTED]"), (PAN2, "[REDACTED]")]


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT pan AS x FROM cards WHERE id = 2", [(MASKED2,)]),
    ("SELECT * FROM cards WHERE id = 2", [(2, MASKED2, "[REDACTED]", None, 2, "nothing here")]),
    ("SELECT c.pan, h.name FROM cards c JOIN holders h ON h.id = c.holder_id WHERE c.id = 2",
     [(MASKED2, "Bob")]),
    ("WITH x AS (SELECT pan FROM cards WHERE id = 2) SELECT pan, upper(pan) FROM x LIMIT 5",
     [(MASKED2, MASKED2)]),
    ("SELECT p FROM (SELECT pan AS p FROM cards WHERE id = 2) s LIMIT 5", [(MASKED2,)]),
    # an expression computes on the masked value (the statement is rewritten), so what it
    # makes of it is what it makes of the masked value
    ("SELECT substr(pan, 1, 6), pan || '', lower(pan) FROM cards WHERE id = 2",
     [("******", MASKED2, MASKED2)]),
    ("SELECT translate(pan, '0123456789', 'abcdefghij'), repeat('x', length(pan)) "
     "FROM cards WHERE id = 2", [("************bbbc", "x" * 16)]),
    ("SELECT d FROM (SELECT translate(pan, '0123456789', 'abcdefghij') AS d FROM cards "
     "WHERE id = 2) s LIMIT 1", [("************bbbc",)]),
    ("SELECT pan FROM cards WHERE id = 2 UNION ALL SELECT name FROM holders WHERE id = 1",
     [(MASKED2,), ("Ann",)]),
    ("UPDATE cards SET notes = notes WHERE id = 2 RETURNING pan, lower(pan)",
     [(MASKED2, MASKED2)]),
])
def test_masks_follow_the_column_through_the_query(stack: Stack, sql: str,
                                                   expected: list[tuple[Any, ...]]) -> None:
    with stack.connect() as conn:
        for prepare in (False, True):
            assert conn.execute(sql, prepare=prepare).fetchall() == expected, sql
    out = stack.psql(sql)
    assert out.returncode == 0 and PAN2 not in out.stdout, out.stderr


def test_named_cursors_are_masked_computed_ones_on_the_masked_value(stack: Stack) -> None:
    with stack.connect() as conn:
        with conn.transaction():
            cur = conn.cursor(name="plain")
            cur.execute("SELECT id, pan FROM cards WHERE id = 2")
            assert cur.fetchall() == [(2, MASKED2)]
        with conn.transaction():
            cur = conn.cursor(name="computed")
            cur.execute("SELECT substr(pan, 9, 8) FROM cards WHERE id = 2")
            assert cur.fetchall() == [("****1112",)]


@pytest.mark.parametrize(("sql", "reason"), [
    ("SELECT row_to_json(c) FROM cards c WHERE id = 2", "whole-row reference c"),
    ("SELECT c::text FROM cards c WHERE id = 2", "whole-row reference c"),
    ("SELECT (SELECT pan FROM cards WHERE id = 2)", "reads columns that policy masks"),
    # the view computes upper(pan) on the clear value (an error or a row count could answer
    # on it): a view whose definition uses a masked column but as a plain result column
    ("SELECT card, up, notes FROM v_cards WHERE id = 2", "view public.v_cards cannot be read"),
    ("SELECT card FROM v_cards WHERE id = 2", "its definition uses masked column pan"),
])
def test_an_opaque_expression_over_a_masked_table_is_denied(stack: Stack, sql: str,
                                                             reason: str) -> None:
    with stack.connect() as conn, pytest.raises(psycopg.Error) as exc:
        conn.execute(sql)
    assert reason in denial(exc)


def test_the_pan_backstop_masks_unmasked_text(stack: Stack) -> None:
    with stack.connect() as conn:
        assert conn.execute("SELECT notes FROM cards WHERE id = 1").fetchone() == (
            "call **** **** **** 1111 asap",)
        assert conn.execute(f"SELECT 'paid with {PAN1}' AS note, {PAN1}::int8 AS n"
                            ).fetchone() == (f"paid with {MASKED1}", None)
        assert conn.cursor(binary=True).execute("SELECT notes FROM cards WHERE id = 1"
                                                ).fetchone() == ("call **** **** **** 1111 asap",)


def test_the_pan_backstop_masks_errors_notices_and_notifications(stack: Stack) -> None:
    # The server quotes values in its errors (a failed cast), prints what a function raises
    # and delivers notification payloads: none of it is a result row, all of it reaches the
    # client.
    with psycopg.connect(stack.direct, autocommit=True) as direct:
        direct.execute("CREATE OR REPLACE FUNCTION shout(t text) RETURNS int LANGUAGE plpgsql "
                       "AS $$BEGIN RAISE NOTICE 'got %', t USING DETAIL = t; RETURN 1; END$$")
    notices: list[str] = []
    payloads: list[str] = []
    with stack.connect(notices=notices) as conn:
        conn.add_notify_handler(lambda n: payloads.append(n.channel + " " + n.payload))
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("SELECT pan::int FROM cards WHERE id = 1")
        assert exc.value.sqlstate == "22P02"  # the masked value is no integer
        assert PAN1 not in str(exc.value) and '"[REDACTED]"' in str(exc.value)
        for prepare in (False, True):
            with pytest.raises(psycopg.Error) as exc:
                conn.execute("SELECT pan::date FROM cards WHERE id = %s", (1,),
                             prepare=prepare)
            assert PAN1 not in str(exc.value), exc.value
        assert conn.execute("SELECT shout(notes) FROM cards WHERE id = 1").fetchone() == (1,)
        conn.execute("LISTEN ch")
        conn.execute(f"SELECT pg_notify('ch', 'paid with {PAN1}')")
        conn.execute("SELECT 1")
    assert "got call **** **** **** 1111 asap" in notices
    assert payloads == [f"ch paid with {MASKED1}"]
    assert not any(PAN1 in n or "4111 1111" in n for n in notices + payloads)


def test_errors_of_statements_on_masked_tables_withhold_the_values_they_quote(
        stack: Stack) -> None:
    """A failed cast quotes the value (class 22), an integrity violation's DETAIL quotes the
    key or the whole failing row (class 23): for a statement that reads or writes masked
    columns neither reaches the client or the record; other statements' errors are whole."""
    from adapters.postgres.session import WITHHELD_DETAIL

    with stack.connect() as conn:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("SELECT cvv::date FROM cards WHERE id = 2")
        assert exc.value.sqlstate == "22007"
        assert exc.value.diag.message_primary == (
            'invalid input syntax for type date: "[REDACTED]"')
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("UPDATE cards SET id = NULL WHERE id = 2")
        assert exc.value.sqlstate == "23502"  # DETAIL: Failing row contains (null, ..., 456, ...)
        assert exc.value.diag.message_detail == WITHHELD_DETAIL
        assert "456" not in str(exc.value)
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("UPDATE scratch SET id = 'seven' WHERE id = 1")
        assert exc.value.diag.message_primary == (
            'invalid input syntax for type integer: "seven"')
    records = [r for r in stack.records("statement") if "UPDATE cards SET id = NULL" in r["text"]
               or "cvv::date" in r["text"]]
    assert len(records) == 2 and all(r["error"] for r in records)
    # ids, revision hashes, database names and durations are random: "456" may occur in them
    random = {"session_id", "decision_id", "policy_revision", "database", "resource",
              "duration_ms"}
    assert not any("456" in json.dumps({k: v for k, v in r.items() if k not in random})
                   for r in records)


def test_binary_results_of_masked_columns_are_null_with_a_notice(stack: Stack) -> None:
    notices: list[str] = []
    with stack.connect(notices=notices) as conn:
        got = conn.cursor(binary=True).execute(
            "SELECT id, pan, cvv FROM cards WHERE id = 2").fetchone()
    assert got == (2, None, None)
    assert 'column "pan" is masked by policy and was requested in binary format: its values ' \
           "are sent as NULL" in notices


# The statements of one shape share a masking plan (made at the first, reused by the next):
# each runs exactly as the client sent it, and each result is masked by the proxy alike.

POCKET_ROWS = [  # (id, pan, holder): ASCII with separators, short, empty, NULL, non-ASCII
    (1, PAN1, "Ann"), (2, PAN2, "Bob 4111 1111 1111 1111"), (3, "4111-1111-1111-1112", "C"),
    (4, "1234", "D"), (5, "", "E"), (6, None, "F"), (7, "٤١١١١١١١١١١١١١١٢", "G"),
    (8, "card \uff15\uff15\uff15\uff15 4111 1111 1111 1112", "H"),  # fullwidth 5s
]


@pytest.fixture(scope="module")
def pocket_table(stack: Stack) -> str:
    with psycopg.connect(stack.direct, autocommit=True) as conn:
        conn.execute("CREATE TABLE pocket (id int PRIMARY KEY, pan varchar(64), holder text, "
                      "cvv text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO pocket VALUES (%s, %s, %s, '999')", POCKET_ROWS)
    return "pocket"


def pocket_query(conn: psycopg.Connection[Any], low: int, prepare: bool
                 ) -> tuple[list[tuple[Any, ...]], str, list[int], list[int]]:
    """Rows, the text the server ran (current_query()), and the table OIDs and types the
    client was told."""
    cur = conn.execute(pocket_sql(low, prepare), prepare=prepare)
    rows = cur.fetchall()
    result = cur.pgresult
    assert result is not None
    return ([r[:4] for r in rows], rows[0][4], [result.ftable(i) for i in range(5)],
            [result.ftype(i) for i in range(5)])


def pocket_sql(low: int, prepare: bool) -> str:  # a statement shape per `prepare`
    return (f"SELECT id, pan, holder, cvv, current_query() AS q{int(prepare)} FROM pocket "
            f"WHERE id >= {low} ORDER BY id")


@pytest.mark.parametrize("prepare", [False, True])
def test_the_statements_of_a_shape_run_as_sent_and_are_masked_alike(
        stack: Stack, pocket_table: str, prepare: bool) -> None:
    from engine.masking import mask_pan, scrub_pans

    expected = [(i, None if pan is None else mask_pan(pan), scrub_pans(holder), "[REDACTED]")
                for i, pan, holder in POCKET_ROWS]
    with stack.connect() as conn:
        first, ran_first, tables, types = pocket_query(conn, 0, prepare)
        second, ran_second, tables2, types2 = pocket_query(conn, 1, prepare)
        direct = psycopg.connect(stack.direct)
        with direct:
            oid = direct.execute("SELECT 'pocket'::regclass::oid").fetchone()[0]  # type: ignore[index]
    assert (ran_first, ran_second) == (pocket_sql(0, prepare), pocket_sql(1, prepare))
    # (values with non-ASCII characters too: each digit but the last 4 masked)
    assert first == second == expected, (first, second)
    assert tables == tables2 == [oid, oid, oid, oid, 0]
    assert types == types2 == [23, 1043, 25, 25, 25]
    records = [r for r in stack.records("statement") if "FROM pocket" in r["text"]][-2:]
    assert [r["text"] for r in records] == [pocket_sql(low, prepare) for low in (0, 1)]
    assert records[0]["masked"] == records[1]["masked"] == ["cvv:redact", "pan:pan"]


def test_pipelined_statements_of_a_shape_run_as_sent_and_are_masked_alike(
        stack: Stack, pocket_table: str) -> None:
    """Statements pipelined before the first result of their shape came back, and those of
    the next pipeline (its plan then made): the same masked rows, each run as sent."""
    sql = "SELECT id, pan, current_query() AS q3 FROM pocket WHERE id = %s"
    expected = [(1, "************1111"), (2, "************1112"), (3, "****-****-****-1112")]
    with stack.connect() as conn:
        for _ in range(2):
            with conn.pipeline():
                cursors = [conn.execute(sql, (n,)) for n in (1, 2, 3)]
            rows = [c.fetchone() for c in cursors]
            assert rows == [(*row, sql.replace("%s", "$1")) for row in expected]


def test_functions_and_operators_of_the_session_search_path_do_not_see_the_values(
        stack: Stack, pocket_table: str) -> None:
    """A session may put a schema of its own before pg_catalog, with a `right` and a `||`
    that give back their text argument whole: the masked values still come out masked, in
    the first statement of a shape and the next ones, and values computed through those
    functions are computed from the masked values (the masks name pg_catalog's own)."""
    with psycopg.connect(stack.direct, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS trap")
        conn.execute("CREATE OR REPLACE FUNCTION trap.right(text, int) RETURNS text "
                     "LANGUAGE sql AS 'SELECT $1'")
        conn.execute("CREATE OR REPLACE FUNCTION trap.leak(text, text) RETURNS text "
                     "LANGUAGE sql AS 'SELECT $2'")
        conn.execute("CREATE OPERATOR trap.|| (leftarg = text, rightarg = text, "
                     "function = trap.leak)")
        conn.execute("SET search_path = trap, pg_catalog, public")
        assert conn.execute("SELECT right('4111', 1), 'a' || 'b'").fetchone() == ("4111", "b")
    with stack.connect() as conn:
        conn.execute("SET search_path = trap, pg_catalog, public")
        for n in (1, 2, 1):
            masked = MASKED1 if n == 1 else MASKED2
            assert conn.execute(f"SELECT id, pan FROM pocket WHERE id = {n}").fetchall() == [
                (n, masked)]
            assert conn.execute(f"SELECT right(pan, 4), '' || pan FROM pocket WHERE id = {n}"
                                ).fetchall() == [(masked, masked)]  # trap's, on the mask


def test_a_statement_run_in_text_then_in_binary_is_masked_for_each_format(
        stack: Stack, pocket_table: str) -> None:
    notices: list[str] = []
    with stack.connect(notices=notices) as conn:
        for binary in (False, True):  # one plan, a description per format
            got = conn.cursor(binary=binary).execute(
                "SELECT id, pan FROM pocket WHERE id = 2").fetchone()
            assert got == (2, None if binary else MASKED2)
    assert any('column "pan" is masked by policy and was requested in binary format' in n
               for n in notices)


def test_ddl_invalidates_what_the_catalog_cache_knows(stack: Stack) -> None:
    with stack.connect() as conn:
        conn.execute("CREATE OR REPLACE VIEW v_swap AS SELECT id, notes AS x FROM cards "
                     "WHERE id > 0")
        assert conn.execute("SELECT x FROM v_swap WHERE id = 2").fetchone() == ("nothing here",)
        conn.execute("CREATE OR REPLACE VIEW v_swap AS SELECT id, pan AS x FROM cards "
                     "WHERE id > 0")
        assert conn.execute("SELECT x FROM v_swap WHERE id = 2").fetchone() == (MASKED2,)
        conn.execute("CREATE TABLE wallet (id int, pan text)")
        with psycopg.connect(stack.direct, autocommit=True) as direct:  # (alice may not
            direct.execute(f"INSERT INTO wallet VALUES (1, '{PAN2}')")  # write a pan)
        assert conn.execute("SELECT pan, lower(pan) FROM wallet WHERE id = 1").fetchone() == (
            MASKED2, MASKED2)


# ------------------------------------------------------------------------------------------
# Review: held until an approver decides, from another process


def held_query(stack: Stack, sql: str, results: dict[str, Any], user: str = "alice") -> None:
    notices: list[str] = []
    results["notices"] = notices
    try:
        with stack.connect(user, notices=notices) as conn:
            results["rows"] = conn.execute(sql).fetchall()
    except psycopg.Error as exc:
        results["error"] = exc


def start_held(stack: Stack, sql: str) -> tuple[threading.Thread, dict[str, Any], Any]:
    before = {r.id for r in stack.pending()}
    results: dict[str, Any] = {}
    thread = threading.Thread(target=held_query, args=(stack, sql, results), daemon=True)
    thread.start()
    wait_until(lambda: {r.id for r in stack.pending()} - before != set(), "the review request")
    request = next(r for r in stack.pending() if r.id not in before)
    return thread, results, request


def test_an_approval_from_another_process_releases_the_held_statement(stack: Stack) -> None:
    thread, results, request = start_held(stack, "SELECT id, pan FROM cards ORDER BY id "
                                          "LIMIT 1000")  # more than the row budget
    assert request.requester_id == "alice" and request.approver_groups == ("dba-leads",)
    # other sessions keep working while this one is held
    with stack.connect() as other:
        for _ in range(3):
            assert other.execute("SELECT name FROM holders WHERE id = 1").fetchone() == ("Ann",)
    assert thread.is_alive() and "rows" not in results
    refused = stack.ordinance("approvals", "approve", request.id, "--as", "alice", "--users",
                              str(stack.users_file), "--audit", stack.audit_url,
                              "--password-stdin", stdin="alice-secret\n")
    assert refused.returncode == 1 and "separation of duties" in refused.stderr
    stack.decide("approve", request.id)
    thread.join(60)
    assert results.get("rows") == [(1, MASKED1), (2, MASKED2)], results.get("error")
    assert any(f"Approval request {request.id}" in n and "ordinance approvals approve" in n
               for n in results["notices"])
    assert stack.store.get(request.id).stored_status == "consumed"
    record = [r for r in stack.records("statement") if (r.get("approval") or {}).get("id")
              == request.id][-1]
    assert record["approval"]["approver"] == "dana" and record["rows"] == 2


def test_a_denied_approval_errors_the_held_statement(stack: Stack) -> None:
    thread, results, request = start_held(stack, "SELECT pan FROM cards LIMIT 1000")
    stack.decide("deny", request.id)
    thread.join(60)
    error = results.get("error")
    assert isinstance(error, psycopg.Error) and error.sqlstate == "42501"
    assert f"approval {request.id} was denied by dana: CHG-42" in str(error)


def test_an_approval_timeout_errors_the_held_statement(stack: Stack,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack.gate, "timeout", 1.0)
    before = {r.id for r in stack.store.list()}
    with stack.connect() as conn, pytest.raises(psycopg.Error) as exc:
        conn.execute("SELECT cvv FROM cards LIMIT 1000")
    assert "was not given within 1s" in denial(exc)
    [request] = [r for r in stack.store.list() if r.id not in before]
    assert request.stored_status == "expired"  # closed, not left pending
    assert any(e["request_id"] == request.id for e in stack.records("approval.expired"))
    refused = stack.ordinance("approvals", "approve", request.id, "--as", "dana", "--users",
                              str(stack.users_file), "--audit", stack.audit_url,
                              "--password-stdin", stdin="dana-secret\n")
    assert refused.returncode == 1 and "expired unanswered" in refused.stderr


def statement_record(stack: Stack, request_id: str) -> dict[str, Any]:
    return [r for r in stack.records("statement")
            if (r.get("approval") or {}).get("id") == request_id][-1]


def assert_withdrawn(stack: Stack, request_id: str, reason: str) -> None:
    """The request is closed, audited, and an approver who tries anyway is told why."""
    assert stack.store.get(request_id).stored_status == "withdrawn"
    assert request_id not in {r.id for r in stack.pending()}
    [event] = [e for e in stack.records("approval.withdrawn")
               if e["request_id"] == request_id]
    assert event["reason"] == reason
    late = stack.ordinance("approvals", "approve", request_id, "--as", "dana", "--users",
                           str(stack.users_file), "--audit", stack.audit_url,
                           "--password-stdin", stdin="dana-secret\n")
    assert late.returncode == 1
    assert f"request {request_id} was withdrawn" in late.stderr
    assert "nobody waits for a verdict" in late.stderr
    listed = stack.ordinance("approvals", "list", "--audit", stack.audit_url, "--status",
                             "withdrawn")
    assert listed.returncode == 0 and f"{request_id}  withdrawn" in listed.stdout


def test_a_cancelled_held_statement_is_57014_and_its_request_withdrawn(stack: Stack) -> None:
    results: dict[str, Any] = {}
    conn = stack.connect()
    before = {r.id for r in stack.pending()}

    def run() -> None:
        try:
            conn.execute("SELECT expiry FROM cards LIMIT 1000")
        except psycopg.Error as exc:
            results["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: {r.id for r in stack.pending()} - before != set(), "the review request")
    request = next(r for r in stack.pending() if r.id not in before)
    conn.cancel_safe()  # cancel() would hold the GIL against the in-process proxy
    thread.join(30)
    assert not thread.is_alive()
    error = results.get("error")
    assert isinstance(error, psycopg.errors.QueryCanceled), error
    assert error.sqlstate == "57014"
    assert error.diag.message_primary == "canceling statement due to user request"
    assert "cancelled while it awaited approval" in (error.diag.message_detail or "")
    assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
    conn.close()
    record = statement_record(stack, request.id)
    assert record["error"] == "57014: canceling statement due to user request"
    assert record["approval"]["status"] == "withdrawn"
    assert_withdrawn(stack, request.id, "the client cancelled the statement")


def test_psql_cancelling_a_held_statement_sees_what_postgresql_says(stack: Stack) -> None:
    import signal

    before = {r.id for r in stack.pending()}
    args = [PSQL, "-X", "-h", "127.0.0.1", "-p", str(stack.proxy.port), "-U", "alice", "-d",
            stack.dbname, "-c", "SELECT cvv FROM cards LIMIT 1000"]
    process = subprocess.Popen(args, env=psql_env(PASSWORDS["alice"]), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: {r.id for r in stack.pending()} - before != set(), "the request")
        process.send_signal(signal.SIGINT)  # psql sends a CancelRequest
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert "ERROR:  canceling statement due to user request" in stderr
    request = next(r for r in stack.store.list("withdrawn") if r.id not in before)
    assert statement_record(stack, request.id)["error"].startswith("57014: ")


def test_a_client_hanging_up_on_a_held_statement_withdraws_its_request(stack: Stack) -> None:
    before = {r.id for r in stack.pending()}
    args = [PSQL, "-X", "-h", "127.0.0.1", "-p", str(stack.proxy.port), "-U", "alice", "-d",
            stack.dbname, "-c", "SELECT id, expiry FROM cards LIMIT 1000"]
    process = subprocess.Popen(args, env=psql_env(PASSWORDS["alice"]),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: {r.id for r in stack.pending()} - before != set(), "the request")
        request = next(r for r in stack.pending() if r.id not in before)
        process.kill()
    finally:
        process.wait(30)
    wait_until(lambda: stack.store.get(request.id).stored_status == "withdrawn", "withdrawal")
    session = request.session_id
    wait_until(lambda: any(r["session_id"] == session for r in stack.records("session.end")),
               "the session end")
    record = statement_record(stack, request.id)
    assert record["error"] == ("08006: the client disconnected while the statement awaited "
                               "approval")
    kinds = [r["kind"] for r in stack.records() if r["session_id"] == session]
    assert kinds[-3:] == ["approval.withdrawn", "statement", "session.end"]
    assert_withdrawn(stack, request.id, "the client disconnected")


def test_a_request_shared_by_two_holds_stays_open_while_one_waits(stack: Stack) -> None:
    sql = "SELECT id, cvv FROM cards ORDER BY id LIMIT 1000"
    before = {r.id for r in stack.pending()}
    outcomes: list[dict[str, Any]] = [{"notices": []}, {"notices": []}]
    conns = [stack.connect(notices=o["notices"]) for o in outcomes]

    def run(i: int) -> None:
        try:
            outcomes[i]["rows"] = conns[i].execute(sql).fetchall()
        except psycopg.Error as exc:
            outcomes[i]["error"] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in (0, 1)]
    threads[0].start()
    wait_until(lambda: {r.id for r in stack.pending()} - before != set(), "the review request")
    request = next(r for r in stack.pending() if r.id not in before)
    threads[1].start()  # the same text of the same user: it waits on the same request
    wait_until(lambda: any(request.id in n for n in outcomes[1]["notices"]), "the second hold")
    conns[0].cancel_safe()
    threads[0].join(30)
    assert isinstance(outcomes[0].get("error"), psycopg.errors.QueryCanceled)
    assert stack.store.get(request.id).stored_status == "pending"  # the other still waits
    stack.decide("approve", request.id)
    threads[1].join(60)
    assert outcomes[1].get("rows") == [(1, "[REDACTED]"), (2, "[REDACTED]")], outcomes[1]
    assert stack.store.get(request.id).stored_status == "consumed"
    assert statement_record(stack, request.id)["approval"]["status"] == "approved"
    for conn in conns:
        conn.close()


def side_proxy(stack: Stack, gate: ApprovalGate) -> tuple[ProxyThread, Catalog]:
    """Another proxy on the stack's database, trail and policies, with approvals from `gate`."""
    catalog = Catalog(stack.direct)
    bridge = PolicyBridge(
        InProcessDecisionClient(stack.engine),
        resource=Resource("payments", {"env": "prod"}, type="postgres"),
        catalog=catalog, recorder=stack.recorder, approvals=gate)
    return ProxyThread(ProxyConfig(upstream_url=upstream_url(stack.direct),
                                   directory=load_users(stack.users_file),
                                   **bridge.hooks())), catalog


def run_held(stack: Stack, port: int, sql: str, results: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        dsn = stack.dsn().replace(f"port='{stack.proxy.port}'", f"port='{port}'")
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                results["conn"] = conn
                conn.execute(sql)
        except psycopg.Error as exc:
            results["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_proxy_shutdown_withdraws_what_its_sessions_held(stack: Stack) -> None:
    proxy, catalog = side_proxy(stack, stack.gate)
    before = {r.id for r in stack.pending()}
    results: dict[str, Any] = {}
    thread = run_held(stack, proxy.port, "SELECT holder_id, cvv FROM cards LIMIT 1000", results)
    wait_until(lambda: {r.id for r in stack.pending()} - before != set(), "the review request")
    request = next(r for r in stack.pending() if r.id not in before)
    proxy.run(catalog.close())
    proxy.stop()
    thread.join(30)
    assert isinstance(results.get("error"), psycopg.OperationalError)
    assert stack.store.get(request.id).stored_status == "withdrawn"
    record = statement_record(stack, request.id)
    assert record["error"] == "08006: the session ended while the statement awaited approval"
    ends = [r for r in stack.records("session.end") if r["session_id"] == request.session_id]
    assert [e["reason"] for e in ends] == ["proxy shutdown"]


class SlowToFile(SqliteApprovalStore):
    """The stack's store, whose `request` waits for the test before filing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entered = threading.Event()
        self.proceed = threading.Event()

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        self.proceed.wait(20)
        return super().request(*args, **kwargs)


def test_a_request_filed_as_its_statement_is_cancelled_is_withdrawn(stack: Stack) -> None:
    from engine.audit.stores import parse_store_url

    store = SlowToFile(parse_store_url(stack.audit_url), audit=stack.audit)
    gate = ApprovalGate(store, timeout=30.0)
    proxy, catalog = side_proxy(stack, gate)
    before = {r.id for r in stack.store.list()}
    results: dict[str, Any] = {}
    try:
        thread = run_held(stack, proxy.port,
                          "SELECT id, holder_id, cvv FROM cards LIMIT 1000", results)
        assert store.entered.wait(20)
        results["conn"].cancel_safe()  # while the request is being filed
        time.sleep(0.2)
        store.proceed.set()
        thread.join(30)
        error = results.get("error")
        assert isinstance(error, psycopg.errors.QueryCanceled), error
        [request] = [r for r in stack.store.list() if r.id not in before]
        assert request.stored_status == "withdrawn"
        record = statement_record(stack, request.id)
        assert record["error"] == "57014: canceling statement due to user request"
        assert record["approval"]["status"] == "withdrawn"
    finally:
        store.proceed.set()
        proxy.run(catalog.close())
        proxy.stop()
        gate.close()
        store.close()


WINDOWED_RULE = """package ordinance.windowed

import rego.v1

review contains {"msg": "reading holders needs approval", "approvers": ["dba-leads"],
                 "window": "1h"} if {
	some s in input.command.statements
	"holders" in s.tables
	not s.has_where
}
"""


def test_an_approval_with_a_window_is_reused_for_the_same_text(
        stack: Stack, tmp_path: Path) -> None:
    import shutil

    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    (policies / "ordinance" / "windowed.rego").write_text(WINDOWED_RULE)
    shipped = stack.engine.policy_set
    stack.engine.swap(load_policy_set(str(policies)))
    try:
        thread, results, request = start_held(stack, "SELECT name FROM holders ORDER BY id")
        assert request.window is not None
        stack.decide("approve", request.id)
        thread.join(60)
        assert results.get("rows") == [("Ann",), ("Bob",)], results.get("error")
        notices: list[str] = []
        with stack.connect(notices=notices) as conn:  # within the window: no new hold
            for _ in range(2):
                assert conn.execute("SELECT name FROM holders ORDER BY id").fetchall() == [
                    ("Ann",), ("Bob",)]
        assert not any("held for approval" in n for n in notices)
        assert stack.store.get(request.id).uses == 3
        used = [r for r in stack.records("statement")
                if (r.get("approval") or {}).get("id") == request.id]
        assert len(used) == 3 and used[-1]["approval"]["standing"] is True
    finally:
        stack.engine.swap(shipped)


def test_binary_copy_is_masked_even_when_the_facts_cannot_parse_it(
        stack: Stack, tmp_path: Path) -> None:
    # A policy set with only the PCI masks (no denial of unparseable SQL): sqlglot cannot parse
    # `COPY ... (FORMAT binary)`, the proxy reads the statement itself.
    policies = tmp_path / "masks-only" / "ordinance" / "pci"
    policies.mkdir(parents=True)
    (policies / "masking.yaml").write_text(
        (REPO / "policies" / "ordinance" / "pci" / "masking.yaml").read_text())
    shipped = stack.engine.policy_set
    stack.engine.swap(load_policy_set(str(tmp_path / "masks-only")))
    notices: list[str] = []
    try:
        with stack.connect(notices=notices) as conn, conn.cursor().copy(
                "COPY cards (id, pan, notes) TO STDOUT (FORMAT binary)") as copy:
            copy.set_types(["int4", "text", "text"])
            rows = sorted(copy.rows())
    finally:
        stack.engine.swap(shipped)
    assert rows == [(1, None, "call **** **** **** 1111 asap"), (2, None, "nothing here")]
    assert "binary COPY: masked columns are sent as NULL" in notices


def test_copy_to_stdout_is_reviewed_then_masked(stack: Stack) -> None:
    for sql, expected in [
        ("COPY (SELECT id, pan, cvv FROM cards ORDER BY id) TO STDOUT WITH (FORMAT csv, "
         "HEADER)", f"id,pan,cvv\n1,{MASKED1},[REDACTED]\n2,{MASKED2},[REDACTED]\n"),
        ("COPY cards (id, pan, notes) TO STDOUT",
         f"1\t{MASKED1}\tcall **** **** **** 1111 asap\n2\t{MASKED2}\tnothing here\n"),
    ]:
        out: dict[str, Any] = {}

        def run(sql: str = sql, out: dict[str, Any] = out) -> None:
            out["psql"] = stack.psql(sql)

        before = {r.id for r in stack.pending()}
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        wait_until(lambda b=before: {r.id for r in stack.pending()} - b != set(), "request")
        request = next(r for r in stack.pending() if r.id not in before)
        stack.decide("approve", request.id)
        thread.join(60)
        result = out["psql"]
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected
        assert "statement held for approval" in result.stderr


def test_a_large_copy_is_relayed_in_runs_and_its_card_numbers_still_scrubbed(
        stack: Stack) -> None:
    """Thousands of CopyData messages arrive in runs: the clean ones go out whole, a run with
    a card number (or a CSV record across messages) goes message by message through the
    backstop. Through the proxy, the COPY equals the direct one but for the card numbers."""
    notes = [f"row {i}" for i in range(6000)]
    for i in (0, 2500, 5999):
        notes[i] = f"card {PAN1[:4]} {PAN1[4:8]} {PAN1[8:12]} {PAN1[12:]} row {i}"
    notes[4000] = 'a, "quoted"\nline'
    with psycopg.connect(stack.direct, autocommit=True) as conn:
        conn.execute("CREATE TABLE copy_runs (id int, note text)")
        with conn.cursor().copy("COPY copy_runs FROM STDIN") as copy:
            for i, note in enumerate(notes):
                copy.write_row((i, note))
    try:
        for sql in ("COPY copy_runs TO STDOUT", "COPY copy_runs TO STDOUT (FORMAT csv)"):
            with psycopg.connect(stack.direct, autocommit=True) as conn, \
                    conn.cursor().copy(sql) as copy:
                direct = b"".join(bytes(chunk) for chunk in copy)
            with stack.connect() as conn, conn.cursor().copy(sql) as copy:
                proxied = b"".join(bytes(chunk) for chunk in copy)
            assert proxied == direct.replace(
                f"{PAN1[:4]} {PAN1[4:8]} {PAN1[8:12]}".encode(), b"**** **** ****")
            assert proxied.count(b"**** **** **** 1111") == 3
    finally:
        with psycopg.connect(stack.direct, autocommit=True) as conn:
            conn.execute("DROP TABLE copy_runs")


# ------------------------------------------------------------------------------------------
# Recording


def test_every_statement_is_durable_before_the_client_sees_its_result(stack: Stack) -> None:
    with stack.connect() as conn:
        for i in range(5):
            marker = f"durable-{uuid.uuid4().hex[:8]}-{i}"
            conn.execute(f"SELECT '{marker}' AS m")
            # read straight from disk, right after the result arrived: no waiting
            assert any(marker in r.get("text", "") and r.get("tag") == "SELECT 1"
                       for r in stack.records("statement"))


def test_a_failing_audit_trail_withholds_the_result_and_ends_the_session(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.audit import AuditWriteError

    with stack.connect() as conn:
        def broken(events: Any) -> Any:
            raise AuditWriteError("disk full")

        monkeypatch.setattr(stack.recorder.audit, "commit_many", broken)
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("INSERT INTO scratch VALUES (99, 'unrecorded')")
        assert exc.value.sqlstate == "58030", exc.value
        assert "could not be recorded in the audit trail" in str(exc.value)
        monkeypatch.undo()
    with pytest.raises(psycopg.OperationalError):  # a new session cannot be recorded either
        monkeypatch.setattr(stack.recorder.audit, "commit_many", broken)
        stack.connect()
    monkeypatch.undo()
    assert stack.connect().execute("SELECT 1").fetchone() == (1,)


def test_the_audit_trail_has_sessions_statements_and_verifies(stack: Stack) -> None:
    with stack.connect() as conn:
        conn.execute("SELECT name FROM holders WHERE id = 2")
        session = conn.execute("SELECT 'x'").fetchone()
    del session
    wait_until(lambda: len(stack.records("session.end")) >= len(stack.records(
        "session.start")) - 1, "sessions to end")
    starts = stack.records("session.start")
    statements = stack.records("statement")
    ends = stack.records("session.end")
    assert starts and statements and ends
    last = starts[-1]
    assert (last["user"], last["auth_method"], last["tls"], last["client_addr"]) == (
        "alice", "scram-sha-256", False, "127.0.0.1")
    assert last["resource"] == {"type": "postgres", "name": "payments",
                                "labels": {"env": "prod"}}
    session_id = last["session_id"]
    mine = [r for r in statements if r["session_id"] == session_id]
    assert [r["text"] for r in mine] == ["SELECT name FROM holders WHERE id = 2", "SELECT 'x'"]
    assert all(r["decision_id"] and r["effect"] == "allow" and r["rows"] == 1 for r in mine)
    wait_until(lambda: any(r["session_id"] == session_id for r in stack.records(
        "session.end")), "the session end")
    end = next(r for r in stack.records("session.end") if r["session_id"] == session_id)
    assert end["reason"] == "client terminated" and end["statements"] == 2
    denied = [r for r in statements if r["effect"] == "deny"]
    assert denied and all(r["error"].startswith("42501") for r in denied)
    assert not any(PAN1 in str(r) for r in stack.records())  # the trail holds no card number
    transcript = stack.ordinance("audit", "export", "--audit", stack.audit_url, "--session",
                                 session_id, "--format", "text")
    assert transcript.returncode == 0
    lines = transcript.stdout.splitlines()
    assert lines[0] == f"Session {session_id} (alice)"
    assert "session.start alice from 127.0.0.1 to payments (scram-sha-256, no TLS" in lines[1]
    assert "statement [allow] SELECT name FROM holders WHERE id = 2 -> 1 rows" in lines[2]
    assert "session.end client terminated, 2 statements" in lines[-1]
    verify = stack.ordinance("audit", "verify", "--audit", stack.audit_url)
    assert verify.returncode == 0, verify.stderr



def test_a_backend_terminated_mid_statement_reaches_the_client_as_its_fatal(
        stack: Stack) -> None:
    # The FATAL ends a recorded statement, so it waits for the record while the server hangs
    # up right after it: the client must still get it, not a bare "connection closed".
    sql = "SELECT pg_sleep(30) AS terminate_me"
    with psycopg.connect(stack.direct, autocommit=True) as admin:
        def running() -> bool:
            return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE query = %s",
                                 (sql,)).fetchone() == (1,)

        def terminate() -> None:
            wait_until(running, "the statement to run")
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE query = %s", (sql,))

        killer = threading.Thread(target=terminate)
        conn = stack.connect()
        killer.start()
        try:
            with pytest.raises(psycopg.OperationalError) as exc:
                conn.execute(sql)
        finally:
            killer.join()
            conn.close()
    assert exc.value.sqlstate == "57P01", exc.value
    assert "terminating connection due to administrator command" in str(exc.value)
    wait_until(lambda: any(r.get("text") == sql and (r.get("error") or "").startswith("57P01")
                           for r in stack.records("statement")), "the statement's record")

if os.environ.get("ORDINANCE_ENFORCEMENT_DEBUG"):  # pragma: no cover
    import logging

    logging.basicConfig(level=logging.DEBUG)
