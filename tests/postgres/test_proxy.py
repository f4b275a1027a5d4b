"""The proxy against a real PostgreSQL, with real clients (psycopg and psql): login, results
identical to a direct connection, denials in both protocols, masking, COPY, cancel."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid

import psycopg
import pytest
from psycopg import errors
from psycopg.rows import tuple_row

from tests.postgres.conftest import (
    PSQL,
    USERS,
    Hook,
    ProxyThread,
    proxy_dsn,
    psql_env,
    wait_until,
)

pytestmark = pytest.mark.postgres
PSQL_FLAGS = ["-X", "-A", "-q", "-P", "footer=off", "-v", "ON_ERROR_STOP=0"]


def connect(proxy: ProxyThread, dbname: str, user: str = "alice", **kw: object
            ) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(proxy_dsn(proxy.port, dbname, user), row_factory=tuple_row,
                           **kw)  # type: ignore[arg-type]


def psql(proxy: ProxyThread, dbname: str, *commands: str, user: str = "alice",
         password: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    args = [PSQL, *PSQL_FLAGS, "-h", "127.0.0.1", "-p", str(proxy.port), "-U", user, "-d",
            dbname]
    for command in commands:
        args += ["-c", command]
    result = subprocess.run(args, env=psql_env(password or USERS.get(user, ("",))[0]),
                            capture_output=True, text=True, timeout=60, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


# ------------------------------------------------------------------------------------------
# Login


def test_scram_login_with_psycopg_and_psql(proxy: ProxyThread, dbname: str, hook: Hook) -> None:
    with connect(proxy, dbname, "bob") as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
        assert row == ("postgres", dbname)  # the proxy's upstream credentials
        real_pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert real_pid is not None and conn.info.backend_pid != real_pid[0]  # proxy's key
    _, ctx = next((s, c) for s, c in reversed(hook.seen) if "current_user" in s)
    assert (ctx.user, ctx.groups, ctx.auth_method, ctx.database, ctx.tls) == (
        "bob", ("dba", "oncall"), "scram-sha-256", dbname, False)
    out = psql(proxy, dbname, "SELECT 'via psql'")
    assert out.stdout.splitlines() == ["?column?", "via psql"]


@pytest.mark.parametrize("user", ["alice", "mallory"])
def test_bad_password_or_unknown_user_fails_like_postgres(proxy: ProxyThread, dbname: str,
                                                         user: str) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(proxy_dsn(proxy.port, dbname, user, password="wrong"))
    assert f'password authentication failed for user "{user}"' in str(info.value)
    out = psql(proxy, dbname, "SELECT 1", user=user, password="wrong", check=False)
    assert out.returncode == 2
    assert f'FATAL:  password authentication failed for user "{user}"' in out.stderr


def test_start_up_options_are_not_forwarded_and_the_client_is_told(proxy: ProxyThread,
                                                                    dbname: str) -> None:
    """`options` could set any setting (`-c role=...`): it is dropped with a notice naming it,
    and the session keeps the server's default; application_name is forwarded."""
    env = {**psql_env(USERS["alice"][0]), "PGOPTIONS": "-c search_path=nowhere",
           "PGAPPNAME": "opts-test"}
    args = [PSQL, *PSQL_FLAGS, "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "alice", "-d",
            dbname, "-c", "SHOW search_path", "-c", "SHOW application_name"]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["search_path", '"$user", public',
                                       "application_name", "opts-test"]
    assert ("the Ordinance proxy did not forward the start-up parameter(s) options"
            in out.stderr)
    assert "did not forward" not in psql(proxy, dbname, "SELECT 1").stderr  # psql's defaults


def test_wrong_database_is_refused(proxy: ProxyThread, dbname: str) -> None:
    with pytest.raises(psycopg.OperationalError, match='database "other" is not served'):
        psycopg.connect(proxy_dsn(proxy.port, "other"))


# ------------------------------------------------------------------------------------------
# Results identical to a direct connection

QUERIES = [
    ("SELECT 1 AS one, 'two'::text AS two, NULL::int AS nothing", None),
    ("SELECT 1.5::numeric, 2.5::float8, true, 'x'::bytea, '2024-02-29'::date, "
     "'2024-02-29 12:34:56+00'::timestamptz, ARRAY[1,2,NULL], '{\"a\": 1}'::jsonb", None),
    ("SELECT g, g * 2 FROM generate_series(1, 2000) AS g", None),
    ("SELECT %s::int + 1, %s::text || 'y', %s::bytea", (41, "x", b"\x00\xff")),
    ("SELECT id, holder FROM cards ORDER BY id", None),
    ("SELECT * FROM cards WHERE false", None),
    ("SELECT 'ü€😀'::text", None),
]


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("prepare", [False, True])
def test_extended_protocol_results_identical_to_direct(proxy: ProxyThread, dbname: str,
                                                       upstream_db: str, binary: bool,
                                                       prepare: bool) -> None:
    with psycopg.connect(upstream_db) as direct, connect(proxy, dbname) as proxied:
        for query, params in QUERIES:
            for _ in range(2):  # the second run reuses a server-side prepared statement
                expected = direct.cursor(binary=binary).execute(query, params,
                                                                prepare=prepare)
                got = proxied.cursor(binary=binary).execute(query, params, prepare=prepare)
                assert got.fetchall() == expected.fetchall(), query
                assert [d.name for d in got.description or []] == [
                    d.name for d in expected.description or []]
                assert got.statusmessage == expected.statusmessage


def test_simple_protocol_results_identical_to_direct(proxy: ProxyThread, dbname: str,
                                                     upstream_db: str) -> None:
    script = ("SELECT 1 AS a, NULL AS b; SELECT holder FROM cards ORDER BY id; "
              "CREATE TEMP TABLE t(x int); INSERT INTO t VALUES (1),(2); SELECT sum(x) FROM t;"
              "SELECT '';")
    with psycopg.ClientCursor(psycopg.connect(upstream_db)) as d, psycopg.ClientCursor(
            connect(proxy, dbname)) as p:
        d.execute(script)
        p.execute(script)
        while True:
            assert (p.description is None) == (d.description is None)
            if p.description is not None:
                assert p.fetchall() == d.fetchall()
            assert p.statusmessage == d.statusmessage
            more_p, more_d = p.nextset(), d.nextset()
            assert more_p == more_d
            if not more_p:
                break
    direct = subprocess.run([PSQL, *PSQL_FLAGS, "-d", upstream_db, "-c", script],
                            capture_output=True, text=True, timeout=60, env=psql_env(""))
    proxied = psql(proxy, dbname, script)
    assert proxied.stdout == direct.stdout
    assert proxied.stderr == direct.stderr == ""


def test_psql_meta_commands_work(proxy: ProxyThread, dbname: str) -> None:
    out = psql(proxy, dbname, r"\d cards", r"\dt")
    assert "holder" in out.stdout and "cards" in out.stdout


def test_pipeline_mode_results_identical(proxy: ProxyThread, dbname: str) -> None:
    with connect(proxy, dbname, autocommit=True) as conn:
        with conn.pipeline():
            cursors = [conn.execute("SELECT %s::int * 10", (i,)) for i in range(20)]
            last = conn.execute("SELECT count(*) FROM cards")
        assert [c.fetchone() for c in cursors] == [(i * 10,) for i in range(20)]
        assert last.fetchone() == (3,)


# ------------------------------------------------------------------------------------------
# Denials


def test_denied_statement_extended_protocol_and_session_goes_on(proxy: ProxyThread,
                                                                dbname: str) -> None:
    with connect(proxy, dbname, autocommit=True) as conn:
        for prepare in (False, True):
            with pytest.raises(errors.InsufficientPrivilege) as info:
                conn.execute("SELECT 'forbidden'", prepare=prepare)
            assert info.value.diag.message_primary == (
                "permission denied by policy: statement mentions forbidden things")
            assert info.value.diag.message_detail == "decision id: dec-42\nrule: no-forbidden"
            assert conn.execute("SELECT 7").fetchone() == (7,)


def test_denied_statement_in_transaction_fails_it_like_a_server_error(
        proxy: ProxyThread, dbname: str) -> None:
    with connect(proxy, dbname) as conn:
        conn.execute("CREATE TEMP TABLE tx_probe (x int)")
        conn.execute("INSERT INTO tx_probe VALUES (1)")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT 'forbidden'")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_denied_statement_simple_protocol_with_psql(proxy: ProxyThread, dbname: str) -> None:
    out = psql(proxy, dbname, "SELECT 1 AS before", "SELECT 'forbidden'", "SELECT 2 AS after")
    assert out.stdout.split() == ["before", "1", "after", "2"]
    assert "ERROR:  permission denied by policy: statement mentions forbidden things" in (
        out.stderr)
    assert "DETAIL:  decision id: dec-42" in out.stderr


def _pipeline_with_failure(conn: psycopg.Connection[tuple[object, ...]], failing: str
                           ) -> tuple[str, list[tuple[object, ...]]]:
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS pipe (x int)")
    conn.execute("TRUNCATE pipe")
    raised = ""
    try:
        with conn.pipeline() as p:
            conn.execute("INSERT INTO pipe VALUES (1)")
            p.sync()
            conn.execute("INSERT INTO pipe VALUES (2)")
            conn.execute(failing)
            conn.execute("INSERT INTO pipe VALUES (3)")
            p.sync()
            conn.execute("INSERT INTO pipe VALUES (4)")
    except psycopg.Error as exc:
        raised = type(exc).__name__
    return raised, conn.execute("SELECT x FROM pipe ORDER BY x").fetchall()


def test_denied_statement_in_the_middle_of_a_pipeline(proxy: ProxyThread, dbname: str,
                                                      upstream_db: str) -> None:
    """A denial in a pipeline behaves exactly like a server error at the same place: the
    batch up to Sync is rolled back and later batches work."""
    with psycopg.connect(upstream_db, autocommit=True) as direct:
        expected = _pipeline_with_failure(direct, "SELECT 1/0")  # type: ignore[arg-type]
    with connect(proxy, dbname, autocommit=True) as conn:
        got = _pipeline_with_failure(conn, "SELECT 'forbidden'")
        assert got == ("InsufficientPrivilege", expected[1])
        assert expected[0] == "DivisionByZero"
        with conn.pipeline():
            good = [conn.execute("SELECT %s::int", (i,)) for i in range(3)]
        assert [c.fetchone() for c in good] == [(0,), (1,), (2,)]


# ------------------------------------------------------------------------------------------
# Masking


def test_datarow_transform_masks_a_column(proxy: ProxyThread, dbname: str) -> None:
    expected = [(1, "************1111", "Ann"), (2, "************5559", "Bo\tb"),
                (3, None, "Cy")]
    with connect(proxy, dbname) as conn:
        for prepare in (False, True, True):
            rows = conn.execute("SELECT id, pan, holder FROM cards ORDER BY id",
                                prepare=prepare).fetchall()
            assert rows == expected
        binary = conn.cursor(binary=True).execute(
            "SELECT id, pan, holder FROM cards ORDER BY id").fetchall()
        assert binary == [(1, None, "Ann"), (2, None, "Bo\tb"), (3, None, "Cy")]
    out = psql(proxy, dbname, "SELECT pan FROM cards WHERE id = 1")
    assert "************1111" in out.stdout and "4111111111111111" not in out.stdout


def test_copy_to_stdout_is_masked(proxy: ProxyThread, dbname: str) -> None:
    with connect(proxy, dbname) as conn, conn.cursor() as cur:
        with cur.copy("COPY cards TO STDOUT") as copy:
            text = b"".join(bytes(chunk) for chunk in copy)
        assert text == (b"1\t************1111\tAnn\n2\t************5559\tBo\\tb\n"
                        b"3\t\\N\tCy\n")
        with cur.copy("COPY (SELECT * FROM cards ORDER BY id) TO STDOUT (FORMAT csv)") as copy:
            csv = b"".join(bytes(chunk) for chunk in copy)
        assert csv == b"1,************1111,Ann\n2,************5559,Bo\tb\n3,,Cy\n"
        with cur.copy("COPY cards TO STDOUT (FORMAT binary)") as copy:
            copy.set_types(["int4", "text", "text"])
            rows = list(copy.rows())
        assert rows == [(1, None, "Ann"), (2, None, "Bo\tb"), (3, None, "Cy")]
    out = psql(proxy, dbname, "COPY cards TO STDOUT")
    assert "4111111111111111" not in out.stdout and "************1111" in out.stdout


def test_copy_from_stdin_is_relayed(proxy: ProxyThread, dbname: str) -> None:
    with connect(proxy, dbname) as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE sink (a int, b text)")
        with cur.copy("COPY sink FROM STDIN") as copy:
            for i in range(500):
                copy.write_row((i, f"row {i}"))
        assert cur.execute("SELECT count(*), max(b) FROM sink").fetchone() == (500, "row 99")


# ------------------------------------------------------------------------------------------
# Cancel and disconnects


def test_cancel_reaches_the_running_query(proxy: ProxyThread, dbname: str) -> None:
    with connect(proxy, dbname) as conn:
        started = threading.Event()

        def cancel_when_running() -> None:
            started.wait(10)
            with psycopg.connect(proxy_dsn(proxy.port, dbname)) as watcher:
                for _ in range(200):
                    active = watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE query = "
                        "'SELECT pg_sleep(30)' AND state = 'active'").fetchone()
                    if active and active[0]:
                        break
                    time.sleep(0.05)
            conn.cancel_safe()

        thread = threading.Thread(target=cancel_when_running)
        thread.start()
        started.set()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        thread.join(30)
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _backends(upstream_db: str, marker: str) -> int:
    with psycopg.connect(upstream_db) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                           (marker,)).fetchone()
        return int(row[0]) if row else 0


def test_client_disconnect_mid_query_leaves_no_backend(proxy: ProxyThread, dbname: str,
                                                      upstream_db: str) -> None:
    marker = "disc_" + uuid.uuid4().hex[:8]
    args = [PSQL, "-X", "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "alice", "-d", dbname,
            "-c", "SELECT pg_sleep(60)"]
    env = psql_env(USERS["alice"][0]) | {"PGAPPNAME": marker}
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        def running() -> bool:
            with psycopg.connect(upstream_db) as conn:
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                   "application_name = %s AND query LIKE %s",
                                   (marker, "SELECT pg_sleep%")).fetchone()
                return bool(row and row[0])

        wait_until(running, "the query to start")
        process.kill()
    finally:
        process.wait(30)
    wait_until(lambda: _backends(upstream_db, marker) == 0, "the backend to go away")
