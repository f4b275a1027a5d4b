"""Shared fixtures: a real PostgreSQL for the tests that need one.

`pg_dsn` is `ORDINANCE_TEST_PG_DSN` when set, else a throwaway cluster started for the session.
When neither is possible the tests skip with the reason, unless `ORDINANCE_REQUIRE_PG=1`
(set by `.ci/run`), which turns that skip into a failure.
"""

from __future__ import annotations

import contextlib
import os
import ssl  # noqa: F401  (before _mysql_connector, below)
import uuid
from collections.abc import Iterator

import pytest

# mysql-connector-python's C extension must load before the first C++ exception in this process.
# It reaches libstdc++'s thread-locals (std::__once_call) with the initial-exec TLS model, so
# libstdc++'s TLS must sit in the static TLS block; but libstdc++ is dlopen'd (engine/native.py,
# regopy), and the first exception regopy throws (a Rego load or evaluation error, e.g.
# tests/engine/test_rego_semantics.py) reads libstdc++'s exception globals through
# __tls_get_addr, which pins that TLS dynamic for good. Importing the extension afterwards fails
# ("libstdc++.so.6: cannot allocate memory in static TLS block"), and mysql.connector hides that
# as HAVE_CEXT false. Loaded here, before any test runs, it fixes libstdc++'s TLS as static.
# `ssl` is imported above it on purpose: whichever loads first provides the process's one
# libssl.so.3 (by SONAME), and Python's TLS should run on the system OpenSSL, not on the copy
# vendored under mysql/vendor.
with contextlib.suppress(ImportError):
    import _mysql_connector  # noqa: F401

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
