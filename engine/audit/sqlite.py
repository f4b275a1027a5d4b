"""The SQLite audit backend: one file, WAL, `synchronous=FULL`, `BEGIN IMMEDIATE` appends.

Owns the SQLite schema, `os` durability (`synchronous=NORMAL`, the WAL file synced by
`DelayedSync`) and how tails wait for news: a per-file `threading.Condition` wakes
waiters in this process at once; other processes' appends are seen by polling every
`POLL_INTERVAL_S`. Concurrency between processes relies on SQLite's database write lock, taken
by `BEGIN IMMEDIATE` before the tail is read. It must not hold that lock longer than one append.
"""

from __future__ import annotations

import os
import threading

from engine.audit.base import AuditLog

_WAKERS: dict[str, threading.Condition] = {}
_WAKERS_LOCK = threading.Lock()


def _waker(path: str) -> threading.Condition:
    with _WAKERS_LOCK:
        return _WAKERS.setdefault(path, threading.Condition())


class SqliteAuditLog(AuditLog):
    dialect = "sqlite"
    _DDL = (
        "CREATE TABLE IF NOT EXISTS ordinance_audit ("
        " seq INTEGER PRIMARY KEY, id TEXT NOT NULL, ts TEXT NOT NULL, kind TEXT NOT NULL,"
        " subject TEXT, session_id TEXT, decision_id TEXT, payload TEXT NOT NULL,"
        " prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS ordinance_audit_ts ON ordinance_audit (ts)",
        "CREATE INDEX IF NOT EXISTS ordinance_audit_session ON ordinance_audit (session_id)",
        "CREATE INDEX IF NOT EXISTS ordinance_audit_subject ON ordinance_audit (subject)",
        "CREATE TABLE IF NOT EXISTS ordinance_audit_head ("
        " one INTEGER PRIMARY KEY CHECK (one = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL,"
        " last_id TEXT, last_ts TEXT, seal TEXT)",
        "CREATE TABLE IF NOT EXISTS ordinance_audit_checkpoints ("
        " through_seq INTEGER PRIMARY KEY, through_hash TEXT NOT NULL,"
        " pruned_count INTEGER NOT NULL, created_at TEXT NOT NULL, seal_alg TEXT NOT NULL,"
        " seal TEXT NOT NULL)",
    )

    def _has_head_seal_column(self) -> bool:
        return any(row[1] == "seal" for row in
                   self._conn.all("PRAGMA table_info(ordinance_audit_head)"))

    def _schema_exists(self) -> bool:
        row = self._conn.one("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name "
                             "IN ('ordinance_audit', 'ordinance_audit_head')")
        return bool(row and row[0] == 2)

    def _commit_to_os(self) -> None:
        # In WAL mode, NORMAL writes each commit to the WAL file without syncing it (SQLite
        # syncs it at checkpoints): a killed process loses nothing, a power loss may.
        self._conn.run("PRAGMA synchronous=NORMAL")

    def _sync_os_writes(self) -> None:
        # fdatasync flushes the file, whichever descriptor asks: every commit written to the
        # WAL so far is then durable (its frames are checksummed; recovery replays them).
        try:
            fd = os.open(self.store.target + "-wal", os.O_RDONLY)
        except FileNotFoundError:
            return  # checkpointed and removed: the database file itself was synced
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _after_commit(self) -> None:
        waker = _waker(self.store.target)
        with waker:
            waker.notify_all()

    def _wait_signal(self, timeout: float) -> None:
        waker = _waker(self.store.target)
        with waker:
            waker.wait(min(timeout, self.POLL_INTERVAL_S))

