"""Fixtures for the audit and approvals tests: every store test runs on SQLite and PostgreSQL.

`store_url` is a fresh SQLite file in tmp_path or a fresh PostgreSQL database (`pg_database`
from tests/conftest.py). `raw_sql` runs SQL straight on the database, bypassing the store, the
way a tamperer would.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest

RawSql = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/audit.db"
    return conninfo_to_url(request.getfixturevalue("pg_database"))


def conninfo_to_url(conninfo: str) -> str:
    """`postgresql://user:pw@host:port/db` for a libpq key=value string (the fixture's form)."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    if conninfo.startswith(("postgresql://", "postgres://")):
        return conninfo
    p = conninfo_to_dict(conninfo)
    auth = quote(str(p.get("user", "")), safe="")
    if p.get("password"):
        auth += ":" + quote(str(p["password"]), safe="")
    return (f"postgresql://{auth}@{p.get('host', 'localhost')}:{p.get('port', 5432)}/"
            f"{quote(str(p.get('dbname', '')), safe='')}")


def run_raw_sql(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Execute one statement outside the store (autocommit) and return any rows."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
        try:
            cur = conn.execute(sql, params)
            return [tuple(r) for r in cur.fetchall()]
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(url, autocommit=True) as pg:
        cur = pg.execute(sql.replace("?", "%s"), params)
        return [tuple(r) for r in cur.fetchall()] if cur.description else []


@pytest.fixture
def raw_sql(store_url: str) -> Iterator[RawSql]:
    def run(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return run_raw_sql(store_url, sql, tuple(params))

    yield run
