"""Fixtures for the MySQL tests: a real MariaDB server.

`mysql_dsn` is `ORDINANCE_TEST_MYSQL_DSN` when set (a `mysql://USER:PASS@HOST:PORT/DB` URL of
an account that may create databases), else a throwaway MariaDB started for the session from the
installed binaries (tests/support/mariadb_server.py). When neither is possible the tests skip
with the reason, unless `ORDINANCE_REQUIRE_MYSQL=1` (set by `.ci/run`), which turns that skip into
a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pymysql
import pytest

from tests.support.mariadb_server import ServerUnavailable, start_server


def _unavailable(reason: str) -> None:
    if os.environ.get("ORDINANCE_REQUIRE_MYSQL") == "1":
        pytest.fail(f"MySQL required (ORDINANCE_REQUIRE_MYSQL=1) but unavailable: {reason}")
    pytest.skip(f"MySQL unavailable: {reason}")


def connect(dsn: str, **kwargs: Any) -> pymysql.connections.Connection[Any]:
    """A PyMySQL connection (autocommit) to a `mysql://` URL."""
    url = urlsplit(dsn)
    return pymysql.connect(
        host=url.hostname or "127.0.0.1", port=url.port or 3306, user=url.username or "",
        password=url.password or "", database=url.path.lstrip("/") or None, autocommit=True,
        **kwargs,
    )


@pytest.fixture(scope="session")
def mysql_dsn() -> Iterator[str]:
    """A DSN (`mysql://root:…@127.0.0.1:PORT/mysql`) of an account with every privilege."""
    dsn = os.environ.get("ORDINANCE_TEST_MYSQL_DSN")
    if dsn:
        yield dsn
        return
    try:
        server = start_server()
    except ServerUnavailable as exc:
        _unavailable(str(exc))
        return
    try:
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture
def mysql_database(mysql_dsn: str) -> Iterator[str]:
    """A DSN for a fresh, empty database that is dropped after the test."""
    name = "t_" + uuid.uuid4().hex[:12]
    with connect(mysql_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    url = urlsplit(mysql_dsn)
    yield urlunsplit((url.scheme, url.netloc, "/" + name, "", ""))
    with connect(mysql_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
