"""The hardened PCI pack through the real proxy (issue 13): statements that run SQL the policies
cannot see, change who the session is or reach the server's files are denied before they reach
PostgreSQL; MERGE and CREATE RULE fall under the write rules; an approval covers one execution
of a prepared statement (extended protocol and SQL PREPARE / EXECUTE); the proxy's own denials
are recorded like the policies'. Real server, psycopg and psql, approvals from another process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from adapters.postgres import messages as m
from engine.approvals import command_sha256
from tests.postgres.conftest import wait_until
from tests.postgres.test_enforcement import MASKED1, MASKED2, Stack, stack
from tests.postgres.test_proxy_protocol import RawClient, shape

pytestmark = pytest.mark.postgres
__all__ = ["stack"]  # the module's own stack (a database, trail and proxy of its own)


def denied(stack: Stack, sql: str, user: str = "alice") -> str:
    """The denial's message for `sql`; asserts it is one (42501)."""
    with stack.connect(user) as conn, pytest.raises(psycopg.Error) as exc:
        conn.execute(sql)
    assert exc.value.sqlstate == "42501", exc.value
    return str(exc.value)


# ------------------------------------------------------------------------------------------
# The pack's new denials, through the proxy

UNSEEN = "functions that run a query given as text"
FILES = "functions that reach the database server's files"
CODE = "CREATE EXTENSION, RULE, TRIGGER and EVENT TRIGGER are not allowed on production"


@pytest.mark.parametrize(("sql", "reason"), [
    ("SELECT query_to_xml('select pan from cards', true, true, '')", UNSEEN),
    ("SELECT pg_catalog.table_to_xml('cards', true, false, '')", UNSEEN),
    ("SELECT * FROM public.dblink('dbname=x', 'select pan from cards') AS t(p text)", UNSEEN),
    ('SELECT "dblink_exec"(\'dbname=x\', \'drop table cards\')', UNSEEN),
    ("SELECT id FROM holders WHERE id IN (SELECT length(query_to_xml('select 1', true, true, "
     "''))::int)", UNSEEN),
    ("CREATE EXTENSION IF NOT EXISTS dblink", CODE),
    ("CREATE RULE r AS ON INSERT TO scratch DO ALSO DELETE FROM holders WHERE id = new.id",
     CODE),
    ("CREATE TRIGGER t BEFORE INSERT ON scratch FOR EACH ROW EXECUTE FUNCTION f()", CODE),
    ("SET ROLE postgres", "changing the session's role"),
    ("SET SESSION AUTHORIZATION postgres", "changing the session's role"),
    ("SELECT set_config('role', 'postgres', false)", "changing the session's role"),
    ("SELECT set_config(lower('ROLE'), 'postgres', false)",
     "a setting whose name the statement computes"),
    ("SELECT pg_read_file('PG_VERSION')", FILES),
    ("SELECT * FROM pg_catalog.pg_ls_dir('.')", FILES),
    ("SELECT lo_import('/etc/hosts')", FILES),
    ("COPY holders TO '/tmp/holders.csv'", "COPY to or from a file on the database server"),
    ("MERGE INTO holders USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE",
     "DELETE without WHERE affects every row"),
    ("MERGE INTO holders h USING (SELECT 1 AS one) s ON one = 1 WHEN MATCHED THEN "
     "UPDATE SET name = 'x'", "UPDATE without WHERE affects every row"),
    ('SELECT U&"d\\0062link"(\'dbname=x\', \'select 1\')', "unparseable SQL is denied"),
])
def test_the_pack_denies_before_anything_reaches_the_server(stack: Stack, sql: str,
                                                              reason: str) -> None:
    assert reason in denied(stack, sql)
    with psycopg.connect(stack.direct) as direct:  # nothing ran
        assert direct.execute("SELECT count(*) FROM holders").fetchone() == (2,)
        assert direct.execute("SELECT count(*) FROM pg_rules WHERE rulename = 'r'"
                              ).fetchone() == (0,)
        assert direct.execute("SELECT count(*) FROM pg_extension WHERE extname = 'dblink'"
                              ).fetchone() == (0,)


def test_reset_role_and_a_keyed_merge_are_allowed(stack: Stack) -> None:
    with stack.connect() as conn:
        conn.execute("RESET ROLE")
        conn.execute("MERGE INTO scratch t USING (SELECT 41 AS id, 'm' AS note) s "
                     "ON t.id = s.id WHEN NOT MATCHED THEN INSERT (id, note) VALUES (s.id, s.note)")
        assert conn.execute("SELECT note FROM scratch WHERE id = 41").fetchone() == ("m",)
        conn.execute("DELETE FROM scratch WHERE id = 41")


def test_psql_sees_the_denial_of_set_role_and_goes_on(stack: Stack) -> None:
    out = stack.psql("SET ROLE postgres", "SELECT current_user = session_user AS same")
    assert "ERROR:  permission denied by policy: changing the session's role" in out.stderr
    assert out.stdout.splitlines() == ["same", "t"]


# ------------------------------------------------------------------------------------------
# Approvals are per execution

def approve_each(stack: Stack, done: Callable[[], bool], verdicts: list[str]) -> list[Any]:
    """Decide each new pending request in turn (as dana, from another process), with the
    verdicts in order; returns the requests."""
    seen: set[str] = {r.id for r in stack.pending()}
    decided: list[Any] = []
    for verdict in verdicts:
        wait_until(lambda: done() or bool({r.id for r in stack.pending()} - seen),
                   "the next review request")
        fresh = [r for r in stack.pending() if r.id not in seen]
        assert fresh, "the statement ran without asking for approval"
        seen.add(fresh[0].id)
        stack.decide(verdict, fresh[0].id)
        decided.append(fresh[0])
    return decided


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = work()
        except psycopg.Error as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_each_execute_of_a_prepared_statement_asks_again(stack: Stack) -> None:
    sql = "SELECT id, pan FROM cards ORDER BY id LIMIT 1000"  # over the row budget
    conn = stack.connect()
    outcomes: list[Any] = []

    def work() -> None:
        for _ in range(3):
            try:
                outcomes.append(conn.execute(sql, prepare=True).fetchall())
            except psycopg.Error as exc:
                outcomes.append(exc)

    thread, _ = in_thread(work)
    try:
        requests = approve_each(stack, lambda: not thread.is_alive(),
                                ["approve", "approve", "deny"])
        thread.join(60)
    finally:
        conn.close()
    assert len({r.id for r in requests}) == 3
    assert all(r.command_sha256 == command_sha256(sql) for r in requests)
    assert outcomes[:2] == [[(1, MASKED1), (2, MASKED2)]] * 2
    assert isinstance(outcomes[2], psycopg.Error) and outcomes[2].sqlstate == "42501"
    assert f"approval {requests[2].id} was denied by dana" in str(outcomes[2])
    consumed = [e["request_id"] for e in stack.records("approval.consumed")]
    assert [r.id for r in requests[:2]] == [i for i in consumed if i in {
        r.id for r in requests}]
    for request in requests[:2]:  # each execution recorded with its own approval
        [record] = [r for r in stack.records("statement")
                    if (r.get("approval") or {}).get("id") == request.id]
        assert record["rows"] == 2 and record["approval"]["approver"] == "dana"


def test_each_sql_execute_of_a_reviewed_prepare_asks_again(stack: Stack) -> None:
    prepare = "PREPARE bulk AS SELECT id, pan FROM cards ORDER BY id LIMIT 1000"
    conn = stack.connect()

    def work() -> list[Any]:
        conn.execute(prepare)
        first = conn.execute("EXECUTE bulk").fetchall()  # covered by the PREPARE's approval
        second = conn.execute("EXECUTE bulk").fetchall()
        return [first, second]

    thread, result = in_thread(work)
    try:
        requests = approve_each(stack, lambda: not thread.is_alive(), ["approve", "approve"])
        thread.join(60)
        assert result.get("value") == [[(1, MASKED1), (2, MASKED2)]] * 2, result.get("error")
        assert [r.command_sha256 for r in requests] == [command_sha256(prepare)] * 2
        records = [r for r in stack.records("statement") if r["text"] == "EXECUTE bulk"]
        assert [r.get("prepared") for r in records[-1:]] == [prepare]
        assert records[-1]["approval"]["id"] == requests[1].id
        with pytest.raises(psycopg.Error) as exc:  # the same twice in one statement
            conn.execute("EXECUTE bulk; EXECUTE bulk")
        assert "must be executed once, in a statement of its own" in str(exc.value)
    finally:
        conn.close()


def test_psql_prepare_and_execute_each_wait_for_an_approval(stack: Stack) -> None:
    thread, result = in_thread(lambda: stack.psql(
        "PREPARE pq AS SELECT id, pan FROM cards ORDER BY id LIMIT 1000", "EXECUTE pq",
        "EXECUTE pq"))
    approve_each(stack, lambda: not thread.is_alive(), ["approve", "approve"])
    thread.join(60)
    out = result["value"]
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["id|pan", f"1|{MASKED1}", f"2|{MASKED2}"] * 2
    assert out.stderr.count("statement held for approval") == 2


def test_execute_of_a_statement_not_prepared_in_the_session_is_denied(stack: Stack) -> None:
    # A statement prepared with the protocol's Parse is one SQL EXECUTE could run: the policy
    # decided its Parse, not this text.
    client = RawClient(stack.proxy.port, stack.dbname, "alice", "alice-secret")
    try:
        client.send(m.Parse("hidden", "SELECT id FROM holders WHERE id = 1"), m.Sync())
        assert shape(client.until_ready()) == ["ParseComplete", "Ready:I"]
        client.send(m.Query("EXECUTE hidden"))
        got = client.until_ready()
        assert shape(got) == ["Error:42501", "Ready:I"]
        assert "'hidden' was not prepared through this proxy session" in str(got[0])
    finally:
        client.close()


# ------------------------------------------------------------------------------------------
# The proxy's own denials have their records

def test_the_proxys_own_denials_are_recorded_and_counted(stack: Stack) -> None:
    client = RawClient(stack.proxy.port, stack.dbname, "alice", "alice-secret")
    try:
        client.send(m.FunctionCall(1598), m.Sync())  # random()
        assert shape(client.until_ready() + client.until_ready()) == [
            "Error:42501", "Ready:I", "Ready:I"]
        client.send(m.Bind("", "never"), m.Execute(""), m.Sync())
        assert shape(client.until_ready()) == ["Error:42501", "Ready:I"]
        client.send(m.Query("DROP TABLE cards"))
        assert shape(client.until_ready()) == ["Error:42501", "Ready:I"]
        client.send(m.Terminate())
    finally:
        client.close()
    session = next(r["session_id"] for r in reversed(stack.records("statement"))
                   if r["text"] == "DROP TABLE cards")
    wait_until(lambda: any(r["session_id"] == session for r in stack.records("session.end")),
               "the session end")
    mine = [r for r in stack.records("statement") if r["session_id"] == session]
    assert [r["text"] for r in mine] == ["FunctionCall of function OID 1598",
                                         "Bind of prepared statement 'never'",
                                         "DROP TABLE cards"]
    assert all(r["effect"] == "deny" and r["error"].startswith("42501") for r in mine)
    assert mine[0]["reasons"] == [{"policy": "ordinance.proxy", "effect": "deny", "message":
                                   "the FunctionCall protocol message is not allowed through "
                                   "the proxy"}]
    [end] = [r for r in stack.records("session.end") if r["session_id"] == session]
    assert (end["statements"], end["denied"]) == (3, 3)


def test_a_decision_that_fails_is_a_recorded_denial(stack: Stack,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(input_doc: Any) -> Any:
        raise RuntimeError("the policy engine is gone")

    with stack.connect() as conn:
        monkeypatch.setattr(stack.engine, "decide", broken)
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("SELECT 'decided by nobody'")
        monkeypatch.undo()
        assert exc.value.sqlstate == "42501"
        assert "the policy decision failed" in str(exc.value)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    [record] = [r for r in stack.records("statement") if r["text"] == "SELECT 'decided by nobody'"]
    assert record["effect"] == "deny" and record["decision_id"] is None
    assert record["error"] == "42501: permission denied by policy: the policy decision failed"
