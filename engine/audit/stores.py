"""Store URLs and connections shared by the audit trail and the approvals store.

Owns: parsing `sqlite:///relative.db`, `sqlite:////absolute.db` and `postgresql://…` URLs,
opening a connection with the settings durability needs (SQLite: WAL, `synchronous=FULL`, a
busy timeout), and `SqlConnection`, a thin wrapper that lets one SQL text (with `?` markers)
run on both drivers inside explicit transactions.

It must not know any table: schemas and queries belong to the stores that use it.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any, Literal

Dialect = Literal["sqlite", "postgres"]

SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long a writer waits for another process's write lock before giving up (fail closed)."""

_SQLITE_WRITERS: dict[str, threading.RLock] = {}
_SQLITE_WRITERS_LOCK = threading.Lock()


def _sqlite_writer_lock(path: str) -> threading.RLock:
    """One lock per database file for this process's writers: connections of one process queue
    here instead of in SQLite's sleeping busy handler. SQLite's lock still rules between
    processes."""
    with _SQLITE_WRITERS_LOCK:
        return _SQLITE_WRITERS.setdefault(path, threading.RLock())


class StoreUnavailable(Exception):
    """The URL is malformed, names an unsupported backend, or the store cannot be reached."""


@dataclass(frozen=True)
class StoreURL:
    dialect: Dialect
    target: str
    """Absolute file path for SQLite; a libpq connection string for PostgreSQL."""
    url: str

    def redacted(self) -> str:
        """The URL with any password hidden, for messages."""
        return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", self.url)


def parse_store_url(url: str) -> StoreURL:
    """`sqlite:///rel/path.db` (relative to the working directory), `sqlite:////abs/path.db`,
    or `postgresql://user:pw@host:port/db` (also `postgres://`)."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if not path or path.endswith("/"):
            raise StoreUnavailable(f"sqlite URL names no file: {url!r}")
        return StoreURL("sqlite", os.path.abspath(path), url)
    if url.startswith("sqlite:"):
        raise StoreUnavailable(
            f"malformed sqlite URL {url!r}: use sqlite:///relative.db or sqlite:////abs/path.db")
    if url.startswith(("postgresql://", "postgres://")):
        return StoreURL("postgres", url, url)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise StoreUnavailable(
        f"unsupported store URL scheme {scheme!r} in {url!r} (use sqlite:/// or postgresql://)")


def connect_sqlite(path: str, *, create: bool) -> sqlite3.Connection:
    """An autocommit connection (transactions are explicit) in WAL mode with synchronous=FULL."""
    if not create and not os.path.exists(path):
        raise StoreUnavailable(f"no database at {path}")
    parent = os.path.dirname(path)
    if create and parent and not os.path.isdir(parent):
        raise StoreUnavailable(f"directory {parent} does not exist")
    if create and not os.path.exists(path):
        # Owner-only from the first byte (PCI DSS 10.3.2); SQLite gives its -wal and -shm
        # files the same mode. An empty file is a valid empty database.
        try:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as exc:
            raise StoreUnavailable(f"cannot create SQLite database {path}: {exc}") from exc
    try:
        conn = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot open SQLite database {path}: {exc}") from exc
    return conn


def connect_postgres(conninfo: str) -> Any:
    """An autocommit psycopg connection (transactions are explicit)."""
    import psycopg

    try:
        return psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {msg}") from exc


def driver_errors(dialect: Dialect) -> tuple[type[BaseException], ...]:
    if dialect == "sqlite":
        return (sqlite3.Error,)
    import psycopg

    return (psycopg.Error,)


class SqlConnection:
    """One connection, one SQL text for both drivers, explicit transactions, thread-safe.

    Write `?` for parameters; on PostgreSQL they become `%s` (so SQL text must not contain a
    literal `?` or `%`). A thread lock serializes use of the connection within a process; the
    database's own locking serializes processes. A PostgreSQL connection that broke is replaced
    on next use.
    """

    def __init__(self, store: StoreURL, *, create: bool) -> None:
        self.store = store
        self.dialect: Dialect = store.dialect
        self.lock = threading.RLock()
        self._create = create
        self._raw: Any = self._open()

    def _open(self) -> Any:
        if self.dialect == "sqlite":
            return connect_sqlite(self.store.target, create=self._create)
        return connect_postgres(self.store.target)

    @property
    def raw(self) -> Any:
        if self.dialect == "postgres" and (self._raw.closed or self._raw.broken):
            self._raw = self._open()
        return self._raw

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgres" else sql

    # Each statement takes the lock too (re-entrant inside a transaction), so a read from one
    # thread can never run inside, and see the uncommitted rows of, another's transaction.

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.lock:
            return int(self.raw.execute(self._sql(sql), params).rowcount)

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.lock:
            if self.dialect == "sqlite":
                self.raw.executemany(sql, rows)
            else:
                with self.raw.cursor() as cur:
                    cur.executemany(self._sql(sql), rows)

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self.lock:
            row = self.raw.execute(self._sql(sql), params).fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return [tuple(r) for r in self.raw.execute(self._sql(sql), params).fetchall()]

    @contextmanager
    def write(self, *, pipelined: bool = False) -> Iterator[SqlConnection]:
        """A read-write transaction. On SQLite `BEGIN IMMEDIATE` takes the database's write lock
        up front, so a read of the tail and the insert after it cannot interleave with another
        writer. On PostgreSQL the caller locks the rows it reads (`FOR UPDATE`).

        `pipelined` (PostgreSQL): statements are sent without waiting for each answer; a read
        (`one`, `all`) waits for everything before it, and the commit is confirmed when the
        block ends. `run` then returns no meaningful row count, so only callers that do not
        need one ask for it. Any error still aborts the whole transaction."""
        process_writers = (_sqlite_writer_lock(self.store.target) if self.dialect == "sqlite"
                           else nullcontext())
        pipeline = (self.raw.pipeline() if pipelined and self.dialect == "postgres"
                    else nullcontext())
        with self.lock, process_writers:
            try:
                with pipeline:
                    self.run("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
                    yield self
                    self.run("COMMIT")
            except BaseException:
                self._rollback()
                raise

    @contextmanager
    def snapshot(self) -> Iterator[SqlConnection]:
        """A read-only transaction that sees one consistent state for all its queries."""
        with self.lock:
            self.run("BEGIN" if self.dialect == "sqlite"
                     else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield self
            finally:
                self._rollback()

    def _rollback(self) -> None:
        with suppress(Exception):
            self._raw.execute("ROLLBACK")

    def close(self) -> None:
        with self.lock, suppress(Exception):
            self._raw.close()

