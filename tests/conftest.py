"""Shared fixtures: a real PostgreSQL for the tests that need one.

`pg_dsn` is `ORDINANCE_TEST_PG_DSN` when set, else a throwaway cluster started for the session.
When neither is possible the tests skip with the reason, unless `ORDINANCE_REQUIRE_PG=1`
(set by `.ci/run`), which turns that skip into a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.support.pg_cluster import ClusterUnavailable, start_cluster


def _unavailable(reason: str) -> None:
    if os.environ.get("ORDINANCE_REQUIRE_PG") == "1":
        pytest.fail(f"PostgreSQL required (ORDINANCE_REQUIRE_PG=1) but unavailable: {reason}")
    pytest.skip(f"PostgreSQL unavailable: {reason}")


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A superuser DSN for a PostgreSQL server the tests may freely use."""
    dsn = os.environ.get("ORDINANCE_TEST_PG_DSN")
    if dsn:
        yield dsn
        return
    try:
        cluster = start_cluster()
    except ClusterUnavailable as exc:
        _unavailable(str(exc))
        return
    try:
        yield cluster.dsn
    finally:
        cluster.stop()


@pytest.fixture
def pg_database(pg_dsn: str) -> Iterator[str]:
    """A DSN for a fresh, empty database that is dropped after the test."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(pg_dsn)
    params["dbname"] = name
    yield make_conninfo(**params)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
