"""Fixtures for the PostgreSQL proxy tests: a module-wide database, a tiny SCRAM user directory
built with scramp, a test decide hook, and a proxy running on its own event loop thread (so
blocking clients, psql and psycopg, can talk to it from the test)."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from scramp import ScramMechanism

from adapters.enforcement.hooks import SessionContext, StatementVerdict, ValueTransform
from adapters.postgres.descriptors import ColumnDescriptor, CopyLayout
from adapters.postgres.proxy import PostgresProxy, ProxyConfig

PSQL = "/usr/bin/psql"


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]
    info: tuple[bytes, bytes, bytes, int]

    def scram_auth_info(self) -> tuple[bytes, bytes, bytes, int]:
        return self.info


class Directory:
    def __init__(self, passwords: dict[str, tuple[str, tuple[str, ...]]]) -> None:
        mech = ScramMechanism()
        self.users = {name: User(name, groups, mech.make_auth_info(pw))
                      for name, (pw, groups) in passwords.items()}

    def lookup(self, name: str) -> User | None:
        return self.users.get(name)


USERS = {"alice": ("alice-secret", ("dev",)), "bob": ("bob-secret", ("dba", "oncall"))}


def last4(value: bytes) -> bytes:
    return b"*" * max(len(value) - 4, 0) + value[-4:]


@dataclass
class Hook:
    """The test decision hook: denies statements containing "forbidden", masks columns named
    `pan` (or, in COPY, column #1 of `cards`), and records what it saw."""

    seen: list[tuple[str, SessionContext]] = field(default_factory=list)
    mask_copy_format: str = "text"

    async def __call__(self, sql: str, ctx: SessionContext) -> StatementVerdict:
        self.seen.append((sql, ctx))
        if "forbidden" in sql.lower():
            return StatementVerdict.deny("statement mentions forbidden things",
                                         decision_id="dec-42", detail="rule: no-forbidden")
        if "pg_sleep_forever" in sql:
            await asyncio.sleep(3600)
        if "/* decide slowly */" in sql:  # a decision that waits (as a remote one does)
            await asyncio.sleep(0.02)
        lowered = sql.lower()
        if lowered.startswith("copy") and "cards" in lowered and "to stdout" in lowered:
            layout = CopyLayout(format="csv") if "csv" in lowered else CopyLayout()

            def copy_masker(column: ColumnDescriptor) -> ValueTransform | None:
                return last4 if column.index == 1 else None

            return StatementVerdict.allow(copy_masker, decision_id="dec-copy",
                                          copy_layout=layout)
        if "pan" in lowered:
            def masker(column: ColumnDescriptor) -> ValueTransform | None:
                return last4 if column.name == "pan" else None

            return StatementVerdict.allow(masker, decision_id="dec-mask")
        return StatementVerdict.allow(decision_id="dec-ok")


class ProxyThread:
    """A proxy (PostgresProxy, or `proxy_class` of `config`: the MySQL proxy's tests) on a
    private event loop in a daemon thread."""

    def __init__(self, config: Any, proxy_class: Callable[[Any], Any] = PostgresProxy) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = proxy_class(config)
        self.run(self.proxy.start())

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any]) -> Any:
        async def wrapper() -> Any:
            return fn()
        return self.run(wrapper())

    @property
    def port(self) -> int:
        return self.proxy.port

    def stop(self) -> None:
        self.run(self.proxy.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def upstream_db(pg_dsn: str) -> Iterator[str]:
    """A database for the whole module (dropped at the end); its superuser DSN."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = "p_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(pg_dsn)
    params["dbname"] = name
    dsn = make_conninfo(**params)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE cards (id int PRIMARY KEY, pan text, holder text)")
        conn.execute("INSERT INTO cards VALUES (1, '4111111111111111', 'Ann'), "
                     "(2, '5500005555555559', 'Bo\tb'), (3, NULL, 'Cy')")
    yield dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def upstream_url(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict
    p = conninfo_to_dict(dsn)
    return (f"postgresql://{p['user']}:{p['password']}@{p['host']}:{p['port']}/"
            f"{p['dbname']}")


@pytest.fixture(scope="module")
def hook() -> Hook:
    return Hook()


@pytest.fixture(scope="module")
def proxy(upstream_db: str, hook: Hook) -> Iterator[ProxyThread]:
    harness = ProxyThread(ProxyConfig(upstream_url=upstream_url(upstream_db), decide=hook,
                                      directory=Directory(USERS)))
    yield harness
    harness.stop()


@pytest.fixture(scope="module")
def dbname(upstream_db: str) -> str:
    from psycopg.conninfo import conninfo_to_dict
    return str(conninfo_to_dict(upstream_db)["dbname"])


def proxy_dsn(port: int, dbname: str, user: str = "alice", password: str | None = None,
              **extra: str) -> str:
    password = USERS[user][0] if password is None and user in USERS else password
    parts = {"host": "127.0.0.1", "port": str(port), "dbname": dbname, "user": user,
             "password": password or "", "sslmode": "disable", "connect_timeout": "10",
             **extra}
    return " ".join(f"{k}='{v}'" for k, v in parts.items())


def wait_until(predicate: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    """Poll `predicate` until true; the limit only bounds a broken test, it asserts nothing
    about speed."""
    import time
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def psql_env(password: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PGPASSWORD=password, PGCLIENTENCODING="UTF8", PGSSLMODE="disable",
               PGCONNECT_TIMEOUT="10")
    env.pop("PGSERVICE", None)
    return env
