"""The tamper-evident audit trail (PCI DSS 10.2, 10.3, 10.5): open one by URL.

`open_audit_log("sqlite:///var/audit.db")` (relative path), `"sqlite:////abs/audit.db"` or
`"postgresql://user:pw@host/db"` returns an `AuditLog`. The HMAC key that seals retention
checkpoints comes from `hmac_key` or the environment variable `ORDINANCE_AUDIT_KEY` (UTF-8, at
least 16 bytes); `verify` needs the same key.
This package owns recording and checking evidence; it must not make policy decisions.
"""

from __future__ import annotations

import os
from datetime import timedelta

from engine.audit.base import (
    DEFAULT_RETENTION,
    EVENT_KINDS,
    MAX_RETENTION,
    AuditConfigError,
    AuditError,
    AuditEvent,
    AuditLog,
    AuditStoreUnavailable,
    AuditWriteError,
    InvalidAuditEvent,
    PreparedEvent,
    PruneResult,
    RetentionError,
    prepare_event,
)
from engine.audit.chain import AuditRecord, Checkpoint, VerifyResult
from engine.audit.durability import DURABILITIES, Durability
from engine.audit.stores import StoreUnavailable, parse_store_url

AUDIT_KEY_ENV = "ORDINANCE_AUDIT_KEY"

__all__ = [
    "AUDIT_KEY_ENV",
    "DEFAULT_RETENTION",
    "DURABILITIES",
    "EVENT_KINDS",
    "MAX_RETENTION",
    "AuditConfigError",
    "AuditError",
    "AuditEvent",
    "AuditLog",
    "AuditRecord",
    "AuditStoreUnavailable",
    "AuditWriteError",
    "Checkpoint",
    "Durability",
    "InvalidAuditEvent",
    "PreparedEvent",
    "PruneResult",
    "RetentionError",
    "VerifyResult",
    "open_audit_log",
    "prepare_event",
]


def open_audit_log(url: str, *, create: bool = True, retention: timedelta = DEFAULT_RETENTION,
                   hmac_key: bytes | None = None, durability: Durability = "fsync") -> AuditLog:
    """The trail at `url`, its schema created on first use unless `create=False`, in which case
    a missing database or trail raises `AuditStoreUnavailable` (as does any bad URL).
    `durability` (`engine.audit.durability`): "fsync" (an append returns once it is on disk)
    or "os" (once the OS has it; synced within `OS_SYNC_DELAY`)."""
    try:
        store = parse_store_url(url)
    except StoreUnavailable as exc:
        raise AuditStoreUnavailable(str(exc)) from exc
    if hmac_key is None and os.environ.get(AUDIT_KEY_ENV):
        hmac_key = os.environ[AUDIT_KEY_ENV].encode("utf-8")
    if store.dialect == "sqlite":
        from engine.audit.sqlite import SqliteAuditLog

        return SqliteAuditLog(store, create=create, retention=retention, hmac_key=hmac_key,
                              durability=durability)
    from engine.audit.postgres import PostgresAuditLog

    return PostgresAuditLog(store, create=create, retention=retention, hmac_key=hmac_key,
                            durability=durability)
