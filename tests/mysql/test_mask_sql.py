"""The masking expressions of adapters/mysql/mask_sql.py, evaluated by a real MariaDB, equal the
Python methods of `engine.masking` (for `pan`: on all-ASCII values; others are hidden whole),
on columns of several character sets and collations and under hostile `sql_mode`s."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.mysql.mask_sql import SQL_METHODS, mask_sql
from tests.mysql.conftest import connect
from tests.postgres.test_mask_sql import EDGE_CASES, VALUE, expected

pytestmark = pytest.mark.mysql

METHODS = sorted(SQL_METHODS)
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
COLUMNS = {
    "t": "TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci",
    "vc": "VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
    "b": "TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
}


@pytest.fixture(scope="module")
def conn(mysql_dsn: str) -> Iterator[pymysql.connections.Connection[Any]]:
    with connect(mysql_dsn, charset="utf8mb4") as connection, connection.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS mask_sql_test")
        cur.execute("USE mask_sql_test")
        cur.execute("DROP TABLE IF EXISTS v")
        cur.execute("CREATE TABLE v (n INT PRIMARY KEY, "
                    + ", ".join(f"{c} {t}" for c, t in COLUMNS.items())
                    + ", l VARCHAR(200) CHARACTER SET latin1)")
        yield connection
        cur.execute("DROP DATABASE mask_sql_test")


def evaluate(conn: pymysql.connections.Connection[Any], method: str, column: str,
             values: Sequence[str | None]) -> list[tuple[str | None, str | None]]:
    with conn.cursor() as cur:
        cur.execute("DELETE FROM v")
        latin = [v if v is None or _latin1(v) else None for v in values]
        cur.executemany("INSERT INTO v VALUES (%s, %s, %s, %s, %s)",
                        [(n, v, v, v, lv) for n, (v, lv) in enumerate(zip(values, latin,
                                                                          strict=True))])
        cur.execute(f"SELECT o.{column}, {mask_sql(method, f'o.`{column}`')} FROM v AS o "
                    "ORDER BY o.n")
        rows = list(cur.fetchall())
    stored = latin if column == "l" else list(values)
    assert [v for v, _ in rows] == stored  # stored and returned as given
    return rows


def _latin1(value: str) -> bool:
    try:
        value.encode("cp1252")  # MySQL's latin1 is cp1252
    except UnicodeEncodeError:
        return False
    return True


def check(conn: pymysql.connections.Connection[Any], method: str,
          values: Sequence[str | None], columns: Sequence[str] = ("t", "vc", "b", "l")) -> None:
    for column in columns:
        got = evaluate(conn, method, column, values)
        wrong = [(v, masked, expected(method, v)) for v, masked in got
                 if masked != expected(method, v)]
        assert not wrong, f"{method} on {column}: (value, MariaDB, expected): {wrong[:5]}"


@pytest.mark.parametrize("method", METHODS)
def test_edge_cases(conn: pymysql.connections.Connection[Any], method: str) -> None:
    check(conn, method, EDGE_CASES)


@pytest.mark.parametrize("method", METHODS)
@SETTINGS
@given(values=st.lists(VALUE, min_size=20, max_size=60))
def test_equal_to_python(conn: pymysql.connections.Connection[Any], method: str,
                         values: list[str | None]) -> None:
    check(conn, method, values, columns=("t", "l"))


@pytest.mark.parametrize("mode", ["ANSI,NO_BACKSLASH_ESCAPES", "PIPES_AS_CONCAT,ANSI_QUOTES",
                                  "ORACLE"])
def test_hostile_sql_modes(conn: pymysql.connections.Connection[Any], mode: str) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT @@SESSION.sql_mode")
        (before,) = cur.fetchone()  # type: ignore[misc]
        cur.execute("SET SESSION sql_mode = %s", (mode,))
        try:
            for method in METHODS:
                check(conn, method, EDGE_CASES, columns=("t",))
        finally:
            cur.execute("SET SESSION sql_mode = %s", (before,))


def test_examples(conn: pymysql.connections.Connection[Any]) -> None:
    assert [m for _, m in evaluate(conn, "pan", "t", [
        "1234567890123", "4111-1111-1111-1111", "**** 1234", "4111 1111 1111 111\u0661"])] == [
        "*********0123", "****-****-****-1111", "**** ****", "*" * 19]
    assert [m for _, m in evaluate(conn, "email", "t", ["a@b@c", "alice@example.com", "x"])] == [
        "a***@c", "a***@example.com", "***"]


@pytest.mark.parametrize("method", ["hash", "nope", "PAN"])
def test_methods_without_an_sql_form(method: str) -> None:
    with pytest.raises(ValueError, match="cannot be applied by MySQL"):
        mask_sql(method, "v")
