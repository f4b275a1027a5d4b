"""Bulk reads measured by rows: the PCI pack's row budget (100 rows of cardholder tables per
session without approval) through the proxy, on a real server with 150 cards, with psycopg
(rows read as they arrive: `Cursor.stream`, named cursors) and psql; approvals from another
process. Whatever the statement's shape (WHERE id > 0, OFFSET pages, cursors, several
statements in one Query, UNION, CTE, a view), no row past the budget reaches the client before
an approval."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.postgres.conftest import PSQL, psql_env, wait_until
from tests.postgres.test_enforcement import PASSWORDS, Stack, open_stack

pytestmark = pytest.mark.postgres
CARDS = 150
BUDGET = 100  # policies/settings/pci/data.yaml: bulk_row_limit
SCHEMA = [
    "CREATE TABLE holders (id int PRIMARY KEY, name text)",
    "CREATE TABLE cards (id int PRIMARY KEY, pan text, cvv text, holder text)",
    f"INSERT INTO holders SELECT g, 'holder ' || g FROM generate_series(1, {CARDS}) g",
    "INSERT INTO cards SELECT g, '4000' || lpad(g::text, 12, '0'), '123', 'holder ' || g "
    f"FROM generate_series(1, {CARDS}) g",
    "CREATE VIEW card_holders AS SELECT id, holder FROM cards",
]


@pytest.fixture(scope="module")
def stack(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with open_stack(pg_dsn, tmp_path_factory.mktemp("bulk"), SCHEMA, prefix="b_",
                    approval_timeout=20.0) as running:
        yield running


class Reader:
    """Runs `read(conn, rows)` in a thread on a new proxied session; `rows` grows as rows
    arrive, so a test can count what the client got while the statement is held."""

    def __init__(self, stack: Stack,
                 read: Callable[[psycopg.Connection[Any], list[Any]], None]) -> None:
        self.rows: list[Any] = []
        self.notices: list[str] = []
        self.error: psycopg.Error | None = None
        self.conn = stack.connect(notices=self.notices)
        self.before = {r.id for r in stack.pending()}
        self.stack = stack
        self.thread = threading.Thread(target=self._run, args=(read,), daemon=True)
        self.thread.start()

    def _run(self, read: Callable[[psycopg.Connection[Any], list[Any]], None]) -> None:
        try:
            read(self.conn, self.rows)
        except psycopg.Error as exc:
            self.error = exc

    def request(self) -> Any:
        """The approval request the hold filed (waits for it)."""
        wait_until(lambda: {r.id for r in self.stack.pending()} - self.before != set(),
                   "the row hold's approval request")
        return next(r for r in self.stack.pending() if r.id not in self.before)

    def finish(self) -> None:
        self.thread.join(60)
        assert not self.thread.is_alive()


def streamed(sql: str) -> Callable[[psycopg.Connection[Any], list[Any]], None]:
    """Read `sql` row by row as the rows arrive (libpq single-row mode)."""
    def read(conn: psycopg.Connection[Any], rows: list[Any]) -> None:
        for row in conn.cursor().stream(sql):
            rows.append(row)
    return read


def settled(reader: Reader, count: int) -> None:
    """`count` rows arrived and no more come while the statement is held."""
    wait_until(lambda: len(reader.rows) >= count, f"{count} rows")
    time.sleep(0.5)  # room for a row that should not come
    assert len(reader.rows) == count and reader.thread.is_alive()


def record_of(stack: Stack, request_id: str) -> dict[str, Any]:
    return [r for r in stack.records("statement")
            if (r.get("approval") or {}).get("id") == request_id][-1]


def test_where_id_gt_0_is_held_after_100_rows_until_approved(stack: Stack) -> None:
    sql = "SELECT id, pan, holder FROM cards WHERE id > 0 ORDER BY id"
    reader = Reader(stack, streamed(sql))
    request = reader.request()
    settled(reader, BUDGET)
    assert request.command_preview == sql and request.approver_groups == ("dba-leads",)
    assert any(f"statement held for approval after {BUDGET} rows" in n
               and f"Approval request {request.id}" in n for n in reader.notices)
    stack.decide("approve", request.id)
    reader.finish()
    assert reader.error is None
    assert [r[0] for r in reader.rows] == list(range(1, CARDS + 1))
    assert reader.rows[0][1] == "************0001"  # still masked
    assert stack.store.get(request.id).stored_status == "consumed"
    record = record_of(stack, request.id)
    assert record["rows"] == CARDS and record["held_after_rows"] == BUDGET
    assert record["approval"]["status"] == "approved" and record["approval"]["approver"] == "dana"
    reader.conn.close()


def test_a_denied_row_hold_ends_the_statement_and_the_session_goes_on(stack: Stack) -> None:
    sql = "SELECT id, holder FROM cards WHERE id > 0"
    reader = Reader(stack, streamed(sql))
    request = reader.request()
    settled(reader, BUDGET)
    stack.decide("deny", request.id)
    reader.finish()
    assert isinstance(reader.error, psycopg.Error) and reader.error.sqlstate == "42501"
    assert f"approval {request.id} was denied by dana: CHG-42" in str(reader.error)
    assert len(reader.rows) == BUDGET
    # the session goes on (its allowance is spent; a table without a budget is not limited)
    assert reader.conn.execute("SELECT count(*) FROM holders").fetchone() == (CARDS,)
    record = record_of(stack, request.id)
    assert record["error"].startswith("42501: permission denied by policy: approval ")
    assert record["rows"] == BUDGET and record["held_after_rows"] == BUDGET
    assert record["approval"]["status"] == "denied"
    reader.conn.close()


def test_psql_sees_the_denial_and_goes_on(stack: Stack) -> None:
    results: dict[str, Any] = {}
    before = {r.id for r in stack.pending()}

    def run() -> None:
        results["out"] = stack.psql("SELECT id, holder FROM cards WHERE id > 0",
                                    "SELECT 'still here'")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: {r.id for r in stack.pending()} - before != set(), "the request")
    request = next(r for r in stack.pending() if r.id not in before)
    stack.decide("deny", request.id)
    thread.join(60)
    out = results["out"]
    assert f"ERROR:  permission denied by policy: approval {request.id} was denied" in out.stderr
    assert "holder 101" not in out.stdout and "still here" in out.stdout
    assert "statement held for approval after 100 rows" in out.stderr


def test_offset_paging_counts_against_the_session_allowance(stack: Stack) -> None:
    page = "SELECT id, holder FROM cards WHERE id > 0 ORDER BY id LIMIT 60 OFFSET {}"

    def read(conn: psycopg.Connection[Any], rows: list[Any]) -> None:
        rows.extend(conn.execute(page.format(0)).fetchall())  # 60: within the allowance
        for row in conn.cursor().stream(page.format(60)):
            rows.append(row)

    reader = Reader(stack, read)
    request = reader.request()
    settled(reader, BUDGET)  # 60 + the first 40 of the second page
    assert reader.rows[-1][0] == BUDGET
    reader.conn.cancel_safe()  # the client gives up: 57014, the request is withdrawn
    reader.finish()
    assert isinstance(reader.error, psycopg.errors.QueryCanceled), reader.error
    assert reader.conn.execute("SELECT 1").fetchone() == (1,)
    wait_until(lambda: stack.store.get(request.id).stored_status == "withdrawn", "withdrawn")
    record = record_of(stack, request.id)
    assert record["error"] == "57014: canceling statement due to user request"
    assert record["held_after_rows"] == 40
    reader.conn.close()


def test_cursor_fetches_count_and_one_approval_covers_the_cursor(stack: Stack) -> None:
    def read(conn: psycopg.Connection[Any], rows: list[Any]) -> None:
        with conn.transaction(), conn.cursor(name="bulk") as cursor:
            cursor.itersize = 30  # FETCH FORWARD 30 FROM "bulk", again and again
            cursor.execute("SELECT id FROM cards WHERE id > 0 ORDER BY id")
            for row in cursor:
                rows.append(row)

    reader = Reader(stack, read)
    request = reader.request()
    settled(reader, 90)  # three whole FETCHes; the fourth is held after its 10th row
    assert request.command_preview.startswith('DECLARE "bulk"')  # what made the rows is approved
    stack.decide("approve", request.id)
    reader.finish()
    assert reader.error is None, reader.error
    assert [r[0] for r in reader.rows] == list(range(1, CARDS + 1))
    assert len(stack.pending()) == len(reader.before)  # the later FETCHes asked nothing
    reader.conn.close()


def test_sql_cursors_and_prepared_statements_inherit_the_budget(stack: Stack) -> None:
    declare = "DECLARE c CURSOR FOR SELECT id FROM cards WHERE id > 0 ORDER BY id"

    def read(conn: psycopg.Connection[Any], rows: list[Any]) -> None:
        conn.execute("PREPARE p(int) AS SELECT id FROM cards WHERE id > $1")
        rows.extend(conn.execute("EXECUTE p(90)").fetchall())  # 60
        with conn.transaction():
            conn.execute(declare)
            rows.extend(conn.execute("FETCH 30 FROM c").fetchall())  # 90
            for row in conn.cursor().stream("FETCH 30 FROM c"):
                rows.append(row)

    reader = Reader(stack, read)
    request = reader.request()
    settled(reader, BUDGET)
    assert request.command_preview == declare  # the FETCH names no table: its cursor is asked about
    stack.decide("deny", request.id)
    reader.finish()
    assert isinstance(reader.error, psycopg.Error) and reader.error.sqlstate == "42501"
    assert reader.conn.execute("SELECT 1").fetchone() == (1,)
    reader.conn.close()

    prepare = "PREPARE q AS SELECT id FROM cards WHERE id > 0"

    def execute(conn: psycopg.Connection[Any], rows: list[Any]) -> None:
        conn.execute(prepare)
        for row in conn.cursor().stream("EXECUTE q"):
            rows.append(row)

    reader = Reader(stack, execute)
    request = reader.request()
    settled(reader, BUDGET)
    assert request.command_preview == prepare
    stack.decide("deny", request.id)
    reader.finish()
    assert isinstance(reader.error, psycopg.Error) and reader.error.sqlstate == "42501"
    reader.conn.close()


def test_small_results_are_never_held(stack: Stack) -> None:
    notices: list[str] = []
    before = {r.id for r in stack.store.list()}
    with stack.connect(notices=notices) as conn:
        assert conn.execute("SELECT count(*) FROM cards").fetchone() == (CARDS,)
        assert conn.execute("SELECT max(holder) FROM cards").fetchone() == ("holder 99",)
        for low in range(0, 90, 10):  # nine statements of 10 rows: 90 of the 100
            rows = conn.execute("SELECT id FROM cards WHERE id > %s AND id <= %s",
                                (low, low + 10)).fetchall()
            assert len(rows) == 10
        assert len(conn.execute("SELECT id FROM cards WHERE id <= 5").fetchall()) == 5
        assert len(conn.execute("SELECT * FROM holders").fetchall()) == CARDS
    assert {r.id for r in stack.store.list()} == before
    assert not any("held for approval" in n for n in notices)


@pytest.mark.parametrize("sql", [
    "SELECT id, holder FROM cards WHERE id > 0 UNION ALL SELECT id, name FROM holders",
    "WITH x AS (SELECT * FROM cards WHERE id > 0) SELECT id, holder FROM x",
    "SELECT c.id, h.name FROM holders h JOIN cards c ON c.id = h.id WHERE h.id > 0",
    "SELECT id, holder FROM card_holders WHERE id > 0",
])
def test_the_shape_of_the_statement_does_not_matter(stack: Stack, sql: str) -> None:
    reader = Reader(stack, streamed(sql))
    request = reader.request()
    settled(reader, BUDGET)
    stack.decide("deny", request.id)
    reader.finish()
    assert isinstance(reader.error, psycopg.Error) and reader.error.sqlstate == "42501"
    reader.conn.close()


def test_several_statements_in_one_query_share_the_allowance(stack: Stack) -> None:
    def read(conn: psycopg.Connection[Any], rows: list[Any]) -> None:
        cursor = conn.execute("SELECT id FROM cards WHERE id <= 60; "  # one simple Query
                              "SELECT id FROM cards WHERE id > 60")
        rows.extend(cursor.fetchall())
        while cursor.nextset():
            rows.extend(cursor.fetchall())

    reader = Reader(stack, read)
    request = reader.request()
    time.sleep(0.5)
    assert reader.thread.is_alive()
    stack.decide("approve", request.id)
    reader.finish()
    assert reader.error is None and sorted(reader.rows) == [(i,) for i in range(1, CARDS + 1)]
    record = record_of(stack, request.id)
    # held after 100 rows of the Query (60 + 40 of its second statement)
    assert record["held_after_rows"] == BUDGET and record["rows"] == CARDS - 60
    reader.conn.close()


def test_copy_of_the_table_is_held_before_any_data(stack: Stack) -> None:
    def read(conn: psycopg.Connection[Any], rows: list[Any]) -> None:
        with conn.cursor().copy("COPY (SELECT id, holder FROM cards WHERE id > 0) TO STDOUT"
                                ) as copy:
            for chunk in copy:
                rows.append(chunk)

    reader = Reader(stack, read)
    request = reader.request()
    time.sleep(0.3)
    assert reader.rows == []
    stack.decide("deny", request.id)
    reader.finish()
    assert isinstance(reader.error, psycopg.Error) and reader.error.sqlstate == "42501"
    assert reader.rows == []
    reader.conn.close()


def test_portal_executions_with_a_row_limit_add_up_and_a_denial_fails_the_block(
        stack: Stack) -> None:
    from adapters.postgres import messages as m
    from tests.postgres.test_proxy_protocol import RawClient, shape

    client = RawClient(stack.proxy.port, stack.dbname)
    before = {r.id for r in stack.pending()}
    try:
        client.send(m.Query("BEGIN"))
        client.until_ready()
        client.send(m.Parse("", "SELECT id FROM cards WHERE id > 0 ORDER BY id"),
                    m.Bind("po", ""), m.Execute("po", 60), m.Execute("po", 60), m.Sync())
        got: list[m.BackendMessage] = []
        while not (got and isinstance(got[-1], m.NoticeResponse)):
            got.append(client.recv())
        # 60 rows, PortalSuspended, the first 40 of the next execution, then the hold
        assert shape(got) == ["ParseComplete", "BindComplete", *["DataRow"] * 60,
                              "PortalSuspended", *["DataRow"] * 40]
        assert "held for approval after 100 rows" in got[-1].message  # type: ignore[attr-defined]
        wait_until(lambda: {r.id for r in stack.pending()} - before != set(), "the request")
        [request] = [r for r in stack.pending() if r.id not in before]
        stack.decide("deny", request.id)
        rest = client.until_ready()
        # the server had finished both executions: the proxy failed the block there too
        assert shape(rest) == ["Error:42501", "Ready:E"]
        client.send(m.Query("SELECT 1"))
        assert shape(client.until_ready()) == ["Error:25P02", "Ready:E"]
        client.send(m.Query("ROLLBACK"))
        assert shape(client.until_ready())[-1] == "Ready:I"
        client.send(m.Query("SELECT 1"))
        assert shape(client.until_ready()) == ["RowDescription", "DataRow", "CommandComplete",
                                               "Ready:I"]
    finally:
        client.close()


def test_a_session_cannot_make_the_proxy_forget_a_cursor(stack: Stack,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from adapters.postgres import bridge

    monkeypatch.setattr(bridge, "MAX_SESSION_NAMES", 2)
    with stack.connect() as conn, conn.transaction():
        conn.execute("DECLARE a CURSOR FOR SELECT id FROM cards WHERE id > 0")
        conn.execute("DECLARE b CURSOR FOR SELECT 1")
        conn.execute("DECLARE c CURSOR FOR SELECT 2")  # not tracked: it has no budget
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("DECLARE d CURSOR FOR SELECT id FROM cards WHERE id > 0")
        assert exc.value.sqlstate == "42501" and "CLOSE or DEALLOCATE" in str(exc.value)


def test_psql_fetch_count_pages_through_a_cursor_and_stops_at_the_budget(
        stack: Stack) -> None:
    results: dict[str, Any] = {}
    before = {r.id for r in stack.pending()}

    def run() -> None:  # psql DECLAREs a cursor and FETCHes 25 rows at a time
        args = [PSQL, "-X", "-A", "-q", "-P", "footer=off", "-v", "FETCH_COUNT=25", "-h",
                "127.0.0.1", "-p", str(stack.proxy.port), "-U", "alice", "-d", stack.dbname,
                "-c", "SELECT holder FROM cards WHERE id > 0 ORDER BY id"]
        results["out"] = subprocess.run(args, env=psql_env(PASSWORDS["alice"]),
                                        capture_output=True, text=True, timeout=60,
                                        check=False)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: {r.id for r in stack.pending()} - before != set(), "the request")
    request = next(r for r in stack.pending() if r.id not in before)
    assert "_psql_cursor" in request.command_preview
    stack.decide("deny", request.id)
    thread.join(60)
    out = results["out"]
    rows = [line for line in out.stdout.splitlines() if line.startswith("holder ")]
    assert len(rows) == BUDGET and rows[-1] == "holder 100"
    assert f"approval {request.id} was denied" in out.stderr


def test_an_aggregate_that_folds_the_table_into_one_row_is_held_before_it_runs(
        stack: Stack) -> None:
    reader = Reader(stack, streamed("SELECT string_agg(holder, ',') FROM cards WHERE id > 0"))
    request = reader.request()
    assert reader.rows == []
    assert any("folding the rows of cardholder table cards" in r for r in request.reasons)
    stack.decide("deny", request.id)
    reader.finish()
    assert isinstance(reader.error, psycopg.Error) and reader.error.sqlstate == "42501"
    assert reader.rows == []
    reader.conn.close()
