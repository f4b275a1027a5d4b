"""The client matrix through `ordinance proxy mysql` (in-process, the shipped PCI pack, env=prod,
a real MariaDB): PyMySQL, mysqlclient, mysql-connector-python (C extension and pure Python), the
`mariadb` command-line client, and MariaDB Connector/J from a small Java program compiled at test
time. Each logs in as alice, reads a masked PAN (card 2's is Luhn-invalid: only the mask rules
hide it), is denied a DROP on prod with ERR 1142, and runs a prepared statement (server-side
where the client has one) whose masked column is masked and whose predicate on it compares the
masked value."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mysql.stack import PASSWORDS, Stack, open_stack

pytestmark = pytest.mark.mysql

MASKED2 = "************1112"
JAR = Path("/usr/share/java/mariadb-java-client.jar")
JAVA_SOURCE = Path(__file__).with_name("java") / "ClientCheck.java"


@pytest.fixture(scope="module")
def stack(mysql_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with open_stack(mysql_dsn, tmp_path_factory.mktemp("mysql-clients")) as running:
        yield running


def _check_dbapi(connection: Any, errors: type[Exception], errno: Any, *,
                 placeholder: str = "%s", prepared: Any = None) -> None:
    """Login happened; masked read, deny, prepared statement through one DB-API connection."""
    cur = connection.cursor()
    cur.execute("SELECT pan, cvv FROM cards WHERE id = 2")
    assert [tuple(r) for r in cur.fetchall()] == [(MASKED2, "[REDACTED]")]
    with pytest.raises(errors) as exc:
        cur.execute("DROP TABLE scratch")
    assert errno(exc.value) == 1142
    cur.close()
    pcur = prepared() if prepared is not None else connection.cursor()
    pcur.execute(f"SELECT id, pan FROM cards WHERE id = {placeholder}", (2,))
    assert [tuple(r) for r in pcur.fetchall()] == [(2, MASKED2)]
    pcur.execute(f"SELECT count(*) FROM cards WHERE pan LIKE {placeholder}", ("4111%",))
    assert [tuple(r) for r in pcur.fetchall()] == [(0,)]
    pcur.close()


def test_pymysql(stack: Stack) -> None:
    import pymysql

    with stack.connect("alice") as conn:
        _check_dbapi(conn, pymysql.MySQLError, lambda e: e.args[0])


def test_mysqlclient(stack: Stack) -> None:
    MySQLdb = pytest.importorskip("MySQLdb")
    conn = MySQLdb.connect(host="127.0.0.1", port=stack.proxy.port, user="alice",
                           password=PASSWORDS["alice"], database=stack.database,
                           autocommit=True, ssl_mode="DISABLED")
    try:  # (mysqlclient has no server-side prepared statements: parameters are quoted)
        _check_dbapi(conn, MySQLdb.MySQLError, lambda e: e.args[0])
    finally:
        conn.close()


@pytest.mark.parametrize("pure", [False, True], ids=["c-extension", "pure"])
def test_mysql_connector_python(stack: Stack, pure: bool) -> None:
    connector = pytest.importorskip("mysql.connector")
    if not pure and not connector.HAVE_CEXT:
        pytest.fail("mysql-connector-python's C extension does not load here")
    conn = connector.connect(host="127.0.0.1", port=stack.proxy.port, user="alice",
                             password=PASSWORDS["alice"], database=stack.database,
                             use_pure=pure, autocommit=True, ssl_disabled=True)
    try:
        assert (type(conn).__name__ == "CMySQLConnection") is (not pure)
        _check_dbapi(conn, connector.Error, lambda e: e.errno,
                     prepared=lambda: conn.cursor(prepared=True))
    finally:
        conn.close()


def test_mariadb_command_line_client(stack: Stack) -> None:
    client = shutil.which("mariadb") or shutil.which("mysql")
    if client is None:
        pytest.fail("the mariadb command-line client is not installed (.ci/run installs it)")

    def run(sql: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [client, "-h", "127.0.0.1", "-P", str(stack.proxy.port), "-u", "alice",
             f"-p{PASSWORDS['alice']}", "--batch", "--skip-ssl", stack.database, "-e", sql],
            capture_output=True, text=True, timeout=60, check=False)

    out = run("SELECT pan, cvv FROM cards WHERE id = 2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["pan\tcvv", f"{MASKED2}\t[REDACTED]"]
    out = run("DROP TABLE scratch")
    assert out.returncode == 1 and "ERROR 1142 (42000)" in out.stderr
    out = run("PREPARE s FROM 'SELECT id, pan FROM cards WHERE id = ?'; SET @i = 2; "
              "EXECUTE s USING @i; "
              "PREPARE o FROM 'SELECT count(*) FROM cards WHERE pan LIKE ''4111%'''; EXECUTE o")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["id\tpan", f"2\t{MASKED2}", "count(*)", "0"]


def test_mariadb_connector_j(stack: Stack, tmp_path: Path) -> None:
    javac, java = shutil.which("javac"), shutil.which("java")
    if javac is None or java is None or not JAR.exists():
        pytest.fail("a JDK and libmariadb-java are needed (.ci/run installs them)")
    built = subprocess.run([javac, "-d", str(tmp_path), str(JAVA_SOURCE)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr
    for options in ("", "?useServerPrepStmts=true"):
        url = f"jdbc:mariadb://127.0.0.1:{stack.proxy.port}/{stack.database}{options}"
        out = subprocess.run(
            [java, "-cp", f"{tmp_path}:{JAR}", "ClientCheck", url, "alice", PASSWORDS["alice"]],
            capture_output=True, text=True, timeout=300, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.splitlines() == [
            f"read {MASKED2} [REDACTED]", "deny 1142 42000", f"prepared 2 {MASKED2}",
            "oracle 0"], (options, out.stdout, out.stderr[-1000:])
