"""The PostgreSQL audit backend: one trail shared by every service replica.

Owns the PostgreSQL schema and its locking: each append runs in one transaction that first
takes `SELECT … FOR UPDATE` on the single head row, so replicas queue on the database's row lock
and the chain stays linear; schema creation is serialized by a transaction-scoped advisory lock.
`os` durability commits with `synchronous_commit = off` and syncs with a synchronous commit of
its own (`txid_current()`) within `OS_SYNC_DELAY`.
Tails wait with LISTEN/NOTIFY (channel `ordinance_audit`, notified inside the append
transaction, so it is delivered only on commit). It must not invent any locking of its own.
"""

from __future__ import annotations

import threading
import time
from contextlib import suppress
from typing import Any

from engine.audit.base import AuditLog
from engine.audit.stores import SqlConnection, connect_postgres

NOTIFY_CHANNEL = "ordinance_audit"
_SCHEMA_LOCK_KEY = 0x0A0D17  # pg_advisory_xact_lock key for schema creation


class PostgresAuditLog(AuditLog):
    dialect = "postgres"
    _LOCK_HEAD = AuditLog._LOCK_HEAD + " FOR UPDATE"
    _DDL = (
        "CREATE TABLE IF NOT EXISTS ordinance_audit ("
        " seq BIGINT PRIMARY KEY, id TEXT NOT NULL, ts TEXT NOT NULL, kind TEXT NOT NULL,"
        " subject TEXT, session_id TEXT, decision_id TEXT, payload TEXT NOT NULL,"
        " prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS ordinance_audit_ts ON ordinance_audit (ts)",
        "CREATE INDEX IF NOT EXISTS ordinance_audit_session ON ordinance_audit (session_id)",
        "CREATE INDEX IF NOT EXISTS ordinance_audit_subject ON ordinance_audit (subject)",
        "CREATE TABLE IF NOT EXISTS ordinance_audit_head ("
        " one INTEGER PRIMARY KEY CHECK (one = 1), seq BIGINT NOT NULL, hash TEXT NOT NULL,"
        " last_id TEXT, last_ts TEXT, seal TEXT)",
        "CREATE TABLE IF NOT EXISTS ordinance_audit_checkpoints ("
        " through_seq BIGINT PRIMARY KEY, through_hash TEXT NOT NULL,"
        " pruned_count BIGINT NOT NULL, created_at TEXT NOT NULL, seal_alg TEXT NOT NULL,"
        " seal TEXT NOT NULL)",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._listen: Any = None
        self._listen_lock = threading.Lock()
        self._sync_conn: Any = None
        self._sync_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def _schema_lock(self, tx: SqlConnection) -> None:
        tx.one(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_KEY})")

    def _has_head_seal_column(self) -> bool:
        row = self._conn.one("SELECT count(*) FROM information_schema.columns WHERE table_name "
                             "= 'ordinance_audit_head' AND column_name = 'seal' AND "
                             "table_schema = current_schema()")
        return bool(row and row[0])

    def _schema_exists(self) -> bool:
        row = self._conn.one("SELECT to_regclass('ordinance_audit') IS NOT NULL AND "
                             "to_regclass('ordinance_audit_head') IS NOT NULL")
        return bool(row and row[0])

    def _commit_to_os(self) -> None:
        # The server has the commit (a killed proxy loses nothing) and flushes its WAL later.
        # A connection reopened after a failure commits synchronously again: safe side.
        self._conn.run("SET synchronous_commit = off")

    def _sync_os_writes(self) -> None:
        # A synchronous commit of a transaction that has an id waits for the WAL to be flushed
        # up to its commit record, which is after every earlier (asynchronous) commit.
        with self._sync_lock:
            if self._sync_conn is None or self._sync_conn.closed or self._sync_conn.broken:
                self._sync_conn = connect_postgres(self.store.target)
            with self._sync_conn.transaction():  # synchronous whatever the server's default
                self._sync_conn.execute("SET LOCAL synchronous_commit = on")
                self._sync_conn.execute("SELECT txid_current()")

    def _notify(self, tx: SqlConnection, seq: int) -> None:
        tx.run(f"SELECT pg_notify('{NOTIFY_CHANNEL}', ?)", (str(seq),))  # no fetch: pipelined

    def _start_waiting(self) -> None:
        with self._listen_lock:
            if self._listen is None or self._listen.closed or self._listen.broken:
                try:
                    self._listen = connect_postgres(self.store.target)
                    self._listen.execute(f"LISTEN {NOTIFY_CHANNEL}")
                except self._connect_errors:
                    self._listen = None

    def _wait_signal(self, timeout: float) -> None:
        with self._listen_lock:
            listen = self._listen
            if listen is not None:
                try:
                    for _ in listen.notifies(timeout=timeout, stop_after=1):
                        pass
                    return
                except self._errors:
                    self._listen = None
        time.sleep(min(timeout, self.POLL_INTERVAL_S))  # no listener: poll
        self._start_waiting()

    def close(self) -> None:
        with self._listen_lock:
            if self._listen is not None:
                with suppress(Exception):
                    self._listen.close()
                self._listen = None
        super().close()  # the last sync first
        with self._sync_lock, suppress(Exception):
            if self._sync_conn is not None:
                self._sync_conn.close()
