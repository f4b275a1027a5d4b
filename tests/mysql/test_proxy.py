"""`ordinance proxy mysql` end to end: a real MariaDB, real clients (PyMySQL, the `mariadb`
CLI, mysql-connector-python for the binary protocol), the shipped PCI pack in-process, the
audit trail read back after."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from tests.mysql.stack import PAN1, PAN2, PASSWORDS, REPO, Stack, open_stack

MARIADB = shutil.which("mariadb") or shutil.which("mysql")


@pytest.fixture(scope="module")
def stack(mysql_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with open_stack(mysql_dsn, tmp_path_factory.mktemp("mysql-proxy")) as running:
        yield running


def query(stack: Stack, sql: str, user: str = "alice") -> tuple[tuple[object, ...], ...]:
    with stack.connect(user) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return tuple(cur.fetchall())


def wait_for(probe: Callable[[], list[Any]], timeout: float = 20) -> list[Any]:
    """What `probe` returns once it is not empty (records are written as sessions end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("nothing found in time")


def denied(exc: pytest.ExceptionInfo[pymysql.MySQLError]) -> str:
    code, message = exc.value.args[0], exc.value.args[1]
    assert code == 1142, exc.value
    assert "decision id: " in message or "ordinance.proxy" in message or message
    return str(message)


# -- logins ---------------------------------------------------------------------------------

@pytest.mark.parametrize("user", ["alice", "nat", "sha", "scr"])
def test_login_with_each_kind_of_secret(stack: Stack, user: str) -> None:
    """alice: a plaintext password (caching_sha2 fast path); nat: only a
    mysql_native_password verifier (the proxy switches the client to that plugin); sha: only
    a caching_sha2 verifier; scr: only a SCRAM verifier (caching_sha2 full authentication,
    the password RSA-encrypted with the proxy's key since PyMySQL does not send it in clear
    without TLS)."""
    assert query(stack, "SELECT CURRENT_USER() IS NOT NULL", user) == ((1,),)


def test_native_password_plugin_chosen_by_the_client(stack: Stack) -> None:
    with stack.connect("nat", auth_plugin_map={}) as conn, conn.cursor() as cur:
        cur.execute("SELECT 7")
        assert cur.fetchall() == ((7,),)


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("nat", "alice-secret"),
                                                ("mallory", "x"), ("alice", "")])
def test_wrong_password_and_unknown_user_get_mysqls_answer(stack: Stack, user: str,
                                                           password: str) -> None:
    with pytest.raises(pymysql.err.OperationalError) as exc:
        stack.connect(user, password)
    assert exc.value.args[0] == 1045
    assert f"Access denied for user '{user}'@" in exc.value.args[1]


def test_login_records_session_start_and_end(stack: Stack) -> None:
    with stack.connect("sha") as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
    starts = [r for r in stack.records("session.start") if r["user"] == "sha"]
    assert starts and starts[-1]["protocol"] == "mysql"
    assert starts[-1]["auth_method"] == "caching_sha2_password"
    session = starts[-1]["session_id"]
    ends = wait_for(lambda: [r for r in stack.records("session.end")
                             if r["session_id"] == session])
    assert ends[0]["reason"] == "client terminated"


# -- decisions ------------------------------------------------------------------------------

def test_masked_read_and_backstop(stack: Stack) -> None:
    rows = query(stack, "SELECT id, pan, cvv, notes FROM cards WHERE id IN (1, 2) ORDER BY id")
    assert rows == ((1, "************1111", "[REDACTED]", "call **** **** **** 1111 asap"),
                    (2, "************1112", "[REDACTED]", "nothing here"))
    # masked everywhere: a predicate compares the masked value
    assert query(stack, "SELECT count(*) FROM cards WHERE id = 1 AND pan LIKE '4111%'") == (
        (0,),)


def test_deny_is_err_1142_and_the_session_goes_on(stack: Stack) -> None:
    with stack.connect() as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as exc:
            cur.execute("DROP TABLE scratch")
        message = denied(exc)
        assert "DROP is not allowed on production resources" in message
        assert "decision id: " in message
        cur.execute("SELECT name FROM holders WHERE id = 1")
        assert cur.fetchall() == (("Ann",),)
    with stack.direct_connect() as direct, direct.cursor() as cur:
        cur.execute("SHOW TABLES LIKE 'scratch'")
        assert cur.fetchall() == (("scratch",),)
    record = [r for r in stack.records("statement") if r["text"] == "DROP TABLE scratch"][-1]
    assert record["effect"] == "deny" and record["decision_id"]


def test_allowed_statements_return_what_the_server_returns(stack: Stack) -> None:
    sql = ("SELECT 1 AS one, 'two' AS two, NULL AS nothing, 1.5, DATE '2024-02-29', "
           "CAST(12345678901234 AS SIGNED), REPEAT('x', 70000) AS big")
    with stack.direct_connect() as direct, direct.cursor() as cur:
        cur.execute(sql)
        expected = cur.fetchall()
    assert query(stack, sql) == expected
    with stack.connect() as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO scratch VALUES (1, 'a'), (2, 'b')")
        assert cur.rowcount == 2
        cur.execute("DELETE FROM scratch WHERE id IN (1, 2)")
        assert cur.rowcount == 2


def test_a_16_mib_row_crosses_packet_boundaries(stack: Stack) -> None:
    """A row of 16 MiB + 3 bytes comes in two packets (MariaDB's default max_allowed_packet is
    16 MiB, enough for the value)."""
    size = 0xFFFFFF - 2
    with stack.connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT REPEAT('y', {size}) AS v, 2")
        ((value, two),) = cur.fetchall()
    assert len(value) == size and two == 2


def test_multi_statements_are_decided_whole(stack: Stack) -> None:
    flag = pymysql.constants.CLIENT.MULTI_STATEMENTS
    with stack.connect(client_flag=flag) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1; SELECT pan FROM cards WHERE id = 2")
        assert cur.fetchall() == ((1,),)
        cur.nextset()
        assert cur.fetchall() == (("************1112",),)
        with pytest.raises(pymysql.err.OperationalError) as exc:
            cur.execute("SELECT 1; DROP TABLE scratch")
        assert "DROP is not allowed" in denied(exc)
        cur.execute("SELECT 3")
        assert cur.fetchall() == ((3,),)
    with stack.direct_connect() as direct, direct.cursor() as cur:
        cur.execute("SHOW TABLES LIKE 'scratch'")
        assert cur.fetchall() == (("scratch",),)
    texts = [r["text"] for r in stack.records("statement")]
    assert texts.count("SELECT 1; SELECT pan FROM cards WHERE id = 2") == 2  # one per result


@pytest.mark.parametrize("pure", [True, False])
def test_prepared_statements_binary_protocol(stack: Stack, pure: bool) -> None:
    mysql_connector = pytest.importorskip("mysql.connector")
    conn = mysql_connector.connect(host="127.0.0.1", port=stack.proxy.port, user="alice",
                                   password=PASSWORDS["alice"], database=stack.database,
                                   use_pure=pure)
    try:
        cur = conn.cursor(prepared=True)
        for card, pan in ((1, "************1111"), (2, "************1112")):
            cur.execute("SELECT id, pan, cvv, expiry FROM cards WHERE id = %s", (card,))
            (row,) = cur.fetchall()
            assert row[0] == card and row[1] == pan and row[2] == "[REDACTED]"
            assert row[3] is None  # a masked DATE has no valid masked value: NULL
        with pytest.raises(mysql_connector.Error) as exc:
            cur.execute("DROP TABLE scratch")
        assert exc.value.errno == 1142
        cur.execute("SELECT %s + 1", (41,))
        assert cur.fetchall() == [(42,)]
    finally:
        conn.close()


def test_change_user_is_refused(stack: Stack) -> None:
    mysql_connector = pytest.importorskip("mysql.connector")
    conn = mysql_connector.connect(host="127.0.0.1", port=stack.proxy.port, user="alice",
                                   password=PASSWORDS["alice"], database=stack.database,
                                   use_pure=True)
    try:
        with pytest.raises(mysql_connector.Error) as exc:
            conn.cmd_change_user(username="dana", password=PASSWORDS["dana"])
        assert "COM_CHANGE_USER is refused" in str(exc.value)
    finally:
        conn.close()
    refused = [r for r in stack.records("statement") if r["text"] == "COM_CHANGE_USER"]
    assert refused and refused[-1]["effect"] == "deny"


def test_init_db_is_decided_as_use(stack: Stack) -> None:
    with stack.connect() as conn:
        conn.select_db(stack.database)
        with conn.cursor() as cur:
            cur.execute("SELECT DATABASE()")
            assert cur.fetchall() == ((stack.database,),)
    assert any(r["text"] == f"USE `{stack.database}`" and r["effect"] == "allow"
               for r in stack.records("statement"))


def test_load_data_local_infile_is_refused(stack: Stack, tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("9,leaked\n")
    with stack.connect(local_infile=True) as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as exc:
            cur.execute(f"LOAD DATA LOCAL INFILE '{secret}' INTO TABLE scratch")
        assert exc.value.args[0] == 1142 and "PCI DSS 2.2.4" in str(exc.value)
        cur.execute("SELECT count(*) FROM scratch WHERE id = 9")
        assert cur.fetchall() == ((0,),)
    assert any(r["effect"] == "deny" and "LOCAL INFILE" in r["text"]
               for r in stack.records("statement"))


def test_load_data_local_infile_is_relayed_where_the_policies_allow_it(
        mysql_dsn: str, tmp_path: Path) -> None:
    """Under a policy that denies only DROP, LOAD DATA LOCAL is allowed: the server's request
    for the file the statement names reaches the client, and its data the server. A client
    that did not offer LOCAL INFILE still gets the proxy's refusal."""
    data = tmp_path / "rows.tsv"
    data.write_text("41\tfirst\n42\tsecond\n")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "drop.yaml").write_text(
        "rules:\n  - name: no-drop\n    effect: deny\n"
        "    when: has(command.kinds) && 'drop' in command.kinds\n"
        "    message: DROP is denied\n")
    (tmp_path / "dev").mkdir()
    with open_stack(mysql_dsn, tmp_path / "dev", env="dev", policies=policies) as dev:
        with dev.connect(local_infile=True) as conn, conn.cursor() as cur:
            cur.execute(f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE scratch")
            assert cur.rowcount == 2
            cur.execute("SELECT id, note FROM scratch WHERE id IN (41, 42) ORDER BY id")
            assert cur.fetchall() == ((41, "first"), (42, "second"))
            cur.execute("SELECT 1")  # the session goes on, in step
            assert cur.fetchall() == ((1,),)
        with dev.connect() as conn, conn.cursor() as cur:
            with pytest.raises(pymysql.MySQLError):
                cur.execute(f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE scratch")
            cur.execute("SELECT count(*) FROM scratch WHERE id > 40")
            assert cur.fetchall() == ((2,),)


@pytest.mark.skipif(MARIADB is None, reason="the mariadb command-line client is not installed")
def test_mariadb_command_line_client(stack: Stack) -> None:
    assert MARIADB is not None

    def run(sql: str, user: str = "alice") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [MARIADB, "-h", "127.0.0.1", "-P", str(stack.proxy.port), "-u", user,
             f"-p{PASSWORDS[user]}", "--batch", "--skip-ssl", stack.database, "-e", sql],
            capture_output=True, text=True, timeout=60, check=False)

    out = run("SELECT id, pan FROM cards WHERE id = 2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["id\tpan", "2\t************1112"]
    out = run("DROP TABLE scratch")
    assert out.returncode == 1 and "ERROR 1142 (42000)" in out.stderr
    out = run("SELECT 5", user="nat")
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "5", out.stderr


# -- review holds ---------------------------------------------------------------------------

def _pending(stack: Stack, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for request in stack.store.list("pending"):
            if request.command_preview == text:
                return request.id
        time.sleep(0.1)
    raise AssertionError(f"no pending request for {text!r}")


def test_review_holds_until_approved_and_runs_once(stack: Stack) -> None:
    sql = "SELECT id, holder_id FROM cards LIMIT 1000"  # over the row budget: held first
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["rows"] = query(stack, sql)
        except Exception as exc:
            result["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    request_id = _pending(stack, sql)
    stack.decide("approve", request_id)
    worker.join(30)
    assert result.get("rows") == ((1, 1), (2, 2)), result
    record = [r for r in stack.records("statement") if r["text"] == sql][-1]
    assert record["approval"]["id"] == request_id and record["approval"]["status"] == "approved"


def test_review_not_approved_in_time_names_the_request(mysql_dsn: str, tmp_path: Path) -> None:
    with open_stack(mysql_dsn, tmp_path, approval_timeout=1.5) as short:
        with pytest.raises(pymysql.err.OperationalError) as exc:
            query(short, "SELECT id, holder_id FROM cards LIMIT 1000")
        message = denied(exc)
        assert "Approval request" in message and "ordinance approvals approve" in message
        assert "was not given within" in message


def test_a_client_that_hangs_up_while_held_withdraws_the_request(stack: Stack) -> None:
    sql = "SELECT holder_id FROM cards LIMIT 500"
    conn = stack.connect()
    cur = conn.cursor()
    worker = threading.Thread(target=lambda: _swallow(cur, sql))
    worker.start()
    request_id = _pending(stack, sql)
    conn._sock.shutdown(socket.SHUT_RDWR)  # hang up without COM_QUIT
    worker.join(30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if [r for r in stack.store.list("withdrawn") if r.id == request_id]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the request was not withdrawn")


def _swallow(cur: pymysql.cursors.Cursor, sql: str) -> None:
    with contextlib.suppress(Exception):  # the connection is cut under it
        cur.execute(sql)


# -- garbage on the wire --------------------------------------------------------------------

@pytest.mark.parametrize("garbage", [
    b"\xff" * 64,  # a length over the maximum message size
    struct.pack("<I", 5 | 9 << 24) + b"\x03SEL",  # a wrong sequence id
    b"\x01\x00\x00\x01",  # truncated handshake response
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
])
def test_garbage_before_login_gets_an_error_and_the_proxy_goes_on(stack: Stack,
                                                                  garbage: bytes) -> None:
    with socket.create_connection(("127.0.0.1", stack.proxy.port), timeout=10) as sock:
        greeting = sock.recv(65536)
        assert greeting[4] == 10  # protocol version 10
        sock.sendall(garbage)
        sock.settimeout(10)
        data = b""
        with pytest.raises(OSError):
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError
                data += chunk
        assert data == b"" or data[4] == 0xFF
    assert query(stack, "SELECT 1") == ((1,),)


def test_garbage_after_login_ends_only_that_session(stack: Stack) -> None:
    conn = stack.connect()
    conn._sock.sendall(b"\x05\x00\x00\x07\x03SELE")  # a command with sequence id 7
    conn._sock.settimeout(10)
    data = conn._sock.recv(65536)
    assert data[4:5] == b"\xff" and b"sequence" in data
    assert query(stack, "SELECT 2") == ((2,),)
    conn.close()


def test_unknown_prepared_statement_and_refused_commands(stack: Stack) -> None:
    with stack.connect() as conn:
        conn._execute_command(0x17, struct.pack("<IBI", 999, 0, 1))  # COM_STMT_EXECUTE
        with pytest.raises(pymysql.MySQLError) as exc:
            conn._read_ok_packet()
        assert "not prepared through this proxy session" in str(exc.value)
        conn._execute_command(0x08, b"")  # COM_SHUTDOWN
        with pytest.raises(pymysql.MySQLError) as exc:
            conn._read_ok_packet()
        assert "is not allowed through the proxy" in str(exc.value)
        with conn.cursor() as cur:
            cur.execute("SELECT 3")
            assert cur.fetchall() == ((3,),)
    assert wait_for(lambda: [r for r in stack.records("session.end") if r["denied"] >= 2])


# -- the CLI --------------------------------------------------------------------------------

def test_ordinance_proxy_mysql_cli(stack: Stack, tmp_path: Path) -> None:
    env = {**os.environ, "ORDINANCE_UPSTREAM_URL": stack.direct}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "proxy", "mysql", "--listen", "127.0.0.1:0",
         "--policies", str(REPO / "policies"), "--audit", f"sqlite:///{tmp_path / 'a.db'}",
         "--users", str(stack.users_file), "--resource-label", "env=prod"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "listening" and ready["proxy"] == "mysql"
        assert ready["resource"] == {"type": "mysql", "name": stack.database,
                                     "labels": {"env": "prod"}}
        port = int(ready["listen"].rsplit(":", 1)[1])
        with pymysql.connect(host="127.0.0.1", port=port, user="alice",
                             password=PASSWORDS["alice"], database=stack.database) as conn, \
                conn.cursor() as cur:
            cur.execute("SELECT pan FROM cards WHERE id = 1")
            assert cur.fetchall() == (("************1111",),)
        idle = pymysql.connect(host="127.0.0.1", port=port, user="alice",
                               password=PASSWORDS["alice"], database=stack.database)
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0
    idle.close()
    out = stack.ordinance("audit", "export", "--audit", f"sqlite:///{tmp_path / 'a.db'}",
                          "--kind", "session.end", "--format", "jsonl")
    reasons = sorted(json.loads(line)["payload"]["reason"] for line in out.stdout.splitlines())
    assert reasons == ["client terminated", "proxy shutdown"], out.stdout
    out = stack.ordinance("audit", "verify", "--audit", f"sqlite:///{tmp_path / 'a.db'}")
    assert out.returncode == 0, out.stderr
    assert PAN1 not in (tmp_path / "a.db").read_bytes().decode("latin-1")
    assert PAN2  # card 2's PAN is not Luhn-valid: only the mask rules hide it


# -- row budgets and SQL-level prepared statements ------------------------------------------

MANY = [*[s for s in __import__("tests.mysql.stack", fromlist=["SCHEMA"]).SCHEMA],
        "INSERT INTO cards (id, pan, cvv) SELECT seq, '5500000000000004', '999' "
        "FROM seq_3_to_150"]


@pytest.fixture(scope="module")
def many(mysql_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with open_stack(mysql_dsn, tmp_path_factory.mktemp("mysql-rows"), MANY,
                    approval_timeout=2.0) as running:
        yield running


def test_row_budget_holds_at_the_first_row_past_the_allowance(many: Stack) -> None:
    with many.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM cards WHERE id <= 60")
        assert len(cur.fetchall()) == 60
        with pytest.raises(pymysql.err.OperationalError) as exc:
            cur.execute("SELECT id FROM cards WHERE id > 0")  # 40 rows left in the allowance
        message = denied(exc)
        assert "Approval request" in message and "was not given within" in message
        cur.execute("SELECT 1")
        assert cur.fetchall() == ((1,),)
    record = [r for r in many.records("statement")
              if r["text"] == "SELECT id FROM cards WHERE id > 0"][-1]
    assert record["held_after_rows"] == 40 and record["effect"] == "review"


def test_sql_execute_is_decided_as_its_prepare(many: Stack) -> None:
    with many.connect() as conn, conn.cursor() as cur:
        cur.execute("PREPARE s FROM 'SELECT id, pan FROM cards WHERE id > 0'")
        with pytest.raises(pymysql.err.OperationalError) as exc:
            cur.execute("EXECUTE s")  # 148 rows: past the session's 100
        assert "Approval request" in denied(exc)
        with pytest.raises(pymysql.err.OperationalError) as exc:
            cur.execute("EXECUTE nobody")
        assert "was not prepared through this proxy session" in denied(exc)
    record = [r for r in many.records("statement") if r["text"] == "EXECUTE s"][-1]
    assert record["prepared"] == "SELECT id, pan FROM cards WHERE id > 0"
    assert record["held_after_rows"] == 100


def test_server_errors_go_through_the_pan_backstop(stack: Stack) -> None:
    with stack.connect() as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as exc:
            cur.execute(f"SELECT * FROM nowhere_{PAN1}")
        assert PAN1 not in str(exc.value) and "1111" in str(exc.value)
    assert PAN1 not in json.dumps(stack.records())


def test_each_execution_of_an_approved_prepared_statement_asks_again(stack: Stack) -> None:
    """Issue 13's rule: an approval covers one execution. mysql-connector's prepared cursor
    sends COM_STMT_PREPARE once, then COM_STMT_EXECUTE per execute()."""
    mysql_connector = pytest.importorskip("mysql.connector")
    sql = "SELECT id FROM cards WHERE id > ? LIMIT 700"
    conn = mysql_connector.connect(host="127.0.0.1", port=stack.proxy.port, user="alice",
                                   password=PASSWORDS["alice"], database=stack.database,
                                   use_pure=True)
    results: list[object] = []

    def execute() -> None:
        try:
            cur.execute(sql.replace("?", "%s"), (0,))
            results.append(cur.fetchall())
        except Exception as exc:
            results.append(exc)

    try:
        cur = conn.cursor(prepared=True)
        first = threading.Thread(target=execute)
        first.start()
        stack.decide("approve", _pending(stack, sql))  # the PREPARE is held
        first.join(30)
        assert results == [[(1,), (2,)]]
        second = threading.Thread(target=execute)
        second.start()
        again = _pending(stack, sql)  # the second execution is held for a new approval
        stack.decide("deny", again)
        second.join(30)
        assert isinstance(results[1], mysql_connector.Error)
        assert f"approval {again} was denied by dana" in str(results[1])
    finally:
        conn.close()


@pytest.mark.parametrize("charset", ["gbk", "big5", "sjis"])
def test_character_sets_that_hide_quotes_are_refused(stack: Stack, charset: str) -> None:
    """In GBK, BIG5 and SJIS a multibyte character can end in 0x5C: `\\xbf\\x27` style texts
    read as one statement by a UTF-8 parser and as another by the server."""
    with pytest.raises(pymysql.err.OperationalError) as exc:
        stack.connect(charset=charset)
    assert exc.value.args[0] == 1115 and "refused by the proxy" in exc.value.args[1]
    with stack.connect() as conn, conn.cursor() as cur:
        for sql in (f"SET NAMES {charset}", f"SET character_set_client = {charset}",
                    f"SET @@session.character_set_connection = '{charset}'"):
            with pytest.raises(pymysql.err.OperationalError) as exc:
                cur.execute(sql)
            assert "are refused by the proxy" in denied(exc)
        cur.execute("SET NAMES utf8mb4")
        cur.execute("SELECT @@character_set_client")
        assert cur.fetchall() == (("utf8mb4",),)


def test_field_list_is_decided_as_show_columns(stack: Stack) -> None:
    with stack.connect() as conn:
        conn._execute_command(0x04, b"holders\x00")  # COM_FIELD_LIST
        names = []
        while True:
            packet = conn._read_packet()
            if packet.is_eof_packet():
                break
            names.append(packet.read_length_coded_string())  # catalog "def"
        assert len(names) == 2  # id, name
        with conn.cursor() as cur:
            cur.execute("SELECT 4")
            assert cur.fetchall() == ((4,),)
    assert any(r["text"] == "SHOW COLUMNS FROM `holders`" and r["effect"] == "allow"
               for r in stack.records("statement"))
