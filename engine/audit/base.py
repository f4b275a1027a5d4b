"""The audit trail's public types and its SQL implementation shared by both backends.

Owns `AuditLog`: append (durable before it returns), verify, prune with a sealed checkpoint,
export iteration and tail waiting, over a `SqlConnection`. The event kinds the engine writes are
declared once in `EVENT_KINDS`. Every event passes `engine.masking.scrub_document` before it is
hashed or stored, so no card number reaches the trail in clear (PCI DSS 3.4).

It must not decide anything about policy, must not write outside the transaction that holds
the trail's write lock, and must not swallow a write failure: an append either returns a
durable record or raises `AuditWriteError` (the caller then fails closed).
Backend modules supply only what differs: schema DDL, the tail lock, and how to wait for news.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from engine.audit.chain import (
    GENESIS_HASH,
    HEAD_SEAL_ALG,
    Anchor,
    AuditRecord,
    Checkpoint,
    EncodedEvent,
    Head,
    VerifyResult,
    canonical_json,
    format_ts,
    head_seal_problem,
    json_or_null,
    json_string,
    new_ulid,
    parse_ts,
    seal_checkpoint,
    seal_head,
    verify_chain,
)
from engine.audit.durability import DelayedSync, Durability, check_durability
from engine.audit.stores import SqlConnection, StoreUnavailable, StoreURL, driver_errors
from engine.masking import may_hold_pan, scrub_document

DEFAULT_RETENTION = timedelta(days=365)
MAX_RETENTION = timedelta(days=7 * 365 + 2)
"""Seven years, leap days included; a longer retention is refused."""

MAX_EVENT_BYTES = 1 << 20
"""A record's canonical encoding may not exceed 1 MiB: callers truncate huge statements."""

EVENT_KINDS: dict[str, str] = {
    "decision": "a Decision for one command: effect, reasons, masks, policy_revision, command",
    "session.start": "a client session opened: client address, resource, protocol",
    "session.end": "a client session closed: duration, statement count, reason",
    "statement": "one statement run in a session: text, effect, rows, error, duration_ms",
    "approval.requested": "a review request was filed",
    "approval.approved": "an approver granted a request",
    "approval.denied": "an approver refused a request",
    "approval.withdrawn": "a pending request was closed: the statement it held was cancelled "
                          "or its client left, so nobody waits for a verdict",
    "approval.expired": "a pending request was closed unanswered when its holder stopped "
                        "waiting (the approval timeout)",
    "approval.refused": "an attempt to decide a request was rejected (self-approval, group, …)",
    "approval.consumed": "an approved request was used to run a command",
    "approval.not_consumed": "a command looked for an approval and found none usable",
    "approval.accessed": "a call to the ApprovalService: method, caller, how it authenticated, "
                         "outcome (refused calls too)",
    "policy.reload": "a policy set was loaded (or a broken one rejected): revision, errors",
    "audit.pruned": "records older than the retention were removed behind a checkpoint",
    "audit.accessed": "the trail was verified, exported or followed (PCI DSS 10.2.1.3)",
}
"""Kinds the engine writes. Others are accepted if they match `KIND_PATTERN`."""

KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")

_COLUMNS = "seq, id, ts, kind, subject, session_id, decision_id, payload, prev_hash, hash"
_ROWS_PER_INSERT = 64
"""Rows per INSERT statement (640 parameters: under SQLite's old limit of 999)."""


@functools.cache
def _insert_sql(rows: int) -> str:
    """One INSERT of `rows` records: one statement step (and one GIL release) for a batch."""
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    return f"INSERT INTO ordinance_audit ({_COLUMNS}) VALUES {values}"


_PAGE = 500


class AuditError(Exception):
    """Base of everything the audit trail raises."""


class AuditStoreUnavailable(AuditError):
    """The URL is wrong, the database is missing or unreachable, or holds no audit trail."""


class AuditWriteError(AuditError):
    """An append did not become durable; nothing was acknowledged."""


class InvalidAuditEvent(AuditError, ValueError):
    """The event cannot be recorded as given (bad kind, payload not a JSON object, too large)."""


class AuditConfigError(AuditError, ValueError):
    """The trail is configured wrongly (e.g. an HMAC key too short to be a key)."""


class RetentionError(AuditConfigError):
    """A retention period that is not positive or exceeds seven years."""


MIN_HMAC_KEY_BYTES = 16


@dataclass(frozen=True)
class PruneResult:
    pruned: int
    cutoff: str
    checkpoint: Checkpoint | None
    """None when nothing was old enough to remove."""


@dataclass(frozen=True)
class AuditEvent:
    """One event for `AuditLog.append_many`; the same fields `append` takes."""

    kind: str
    payload: dict[str, Any]
    subject: str | None = None
    session_id: str | None = None
    decision_id: str | None = None


@dataclass(frozen=True)
class PreparedEvent:
    """An event scrubbed and normalized to JSON values, ready to be chained (`prepare_event`).

    `payload_json` is the canonical encoding of the payload, the stored text; `payload` is it
    parsed, made only when asked for (the recorder's commits never ask); `encoded` holds the
    parts of the record's hashed encoding that do not depend on where it lands in the chain.
    """

    kind: str
    subject: str | None
    session_id: str | None
    decision_id: str | None
    payload_json: str
    encoded: EncodedEvent

    @functools.cached_property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.payload_json)  # type: ignore[no-any-return]


def check_retention(period: timedelta) -> timedelta:
    if not isinstance(period, timedelta) or period <= timedelta(0):
        raise RetentionError(f"retention must be a positive duration, got {period!r}")
    if period > MAX_RETENTION:
        raise RetentionError(
            f"retention {period.days} days exceeds the maximum of {MAX_RETENTION.days} days "
            f"(7 years)")
    return period


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_ts(value) if value.tzinfo else value.isoformat()
    if isinstance(value, date | timedelta | Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False, default=_json_default)
"""`canonical_json` with `_json_default`: encodes a payload in one pass."""

_C_MAKE_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)
_C_CANONICAL: Any = _C_MAKE_ENCODER and _C_MAKE_ENCODER(
    None, _json_default, json_string, None, ":", ",", True, False, False)
"""`_CANONICAL`'s C encoder, made once and without its cycle check (`markers=None`): a cycle
ends in RecursionError, and `_encode_payload` leaves such a payload to the general path."""


def _encode_payload(payload: dict[str, Any]) -> str:
    if _C_CANONICAL is None:
        return _CANONICAL.encode(payload)
    return "".join(_C_CANONICAL(payload, 0))


_NON_STR_KEY = re.compile(r'[{,]"(?:[-\d]|(?:true|false|null)")')
"""Where a key that was not a str may have landed in a compact JSON text (a number, true, false
or null as a key starts with one of these). Such keys were sorted before they became strings,
so that text is not canonical; a str key or list element of this shape only costs the slow
path."""

_ENVELOPE_BYTES = len('{"decision_id":,"payload":,"session_id":,"subject":}')


def prepare_event(kind: str, payload: dict[str, Any], subject: str | None,
                  session_id: str | None, decision_id: str | None) -> PreparedEvent:
    """Validate, normalize to plain JSON values, and scrub card numbers from every field.

    The usual event is encoded once: its canonical text is both what is stored and part of what
    is hashed. One test over that text (and the three ids) shows when no card number can be in
    any string or integer of the event, which is then not scrubbed value by value. Anything
    else (a candidate card number, keys that are not strings, a value JSON cannot hold) takes
    `_prepare_slowly`, the general path, which decides and words every refusal.
    """
    if not isinstance(kind, str) or len(kind) > 64 or not KIND_PATTERN.match(kind):
        raise InvalidAuditEvent(f"invalid event kind {kind!r}: lowercase dotted words, e.g. "
                                f"'session.start'")
    if not isinstance(payload, dict):
        raise InvalidAuditEvent(f"payload must be a dict, got {type(payload).__name__}")
    for name, value in (("subject", subject), ("session_id", session_id),
                        ("decision_id", decision_id)):
        if value is not None and (not isinstance(value, str) or "\x00" in value):
            raise InvalidAuditEvent(f"{name} must be a string without NUL, or None")
    try:
        text = _encode_payload(payload)
    except (TypeError, ValueError, RecursionError):  # unsortable mixed keys, not JSON, a cycle
        return _prepare_slowly(kind, payload, subject, session_id, decision_id)
    if (_NON_STR_KEY.search(text) or may_hold_pan(text)
            or (subject is not None and may_hold_pan(subject))
            or (session_id is not None and may_hold_pan(session_id))
            or (decision_id is not None and may_hold_pan(decision_id))):
        return _prepare_slowly(kind, payload, subject, session_id, decision_id)
    try:
        size = _ENVELOPE_BYTES + sum(len(part.encode("utf-8")) for part in (
            text, json_or_null(subject), json_or_null(session_id),
            json_or_null(decision_id)))
    except UnicodeEncodeError as exc:
        raise InvalidAuditEvent(f"event holds text that is not valid Unicode: {exc}") from exc
    if size > MAX_EVENT_BYTES:
        raise InvalidAuditEvent(f"event is {size} bytes; the limit is {MAX_EVENT_BYTES}")
    return PreparedEvent(kind, subject, session_id, decision_id, text,
                         EncodedEvent.of(kind, subject, session_id, decision_id, text))


def _prepare_slowly(kind: str, payload: dict[str, Any], subject: str | None,
                    session_id: str | None, decision_id: str | None) -> PreparedEvent:
    """`prepare_event` for any event: normalize through a JSON round trip, scrub every string
    and integer, encode canonically. The arguments' types are already checked."""
    try:
        plain = json.loads(json.dumps(payload, default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidAuditEvent(f"payload is not representable as JSON: {exc}") from exc
    scrubbed = scrub_document({"subject": subject, "session_id": session_id,
                               "decision_id": decision_id, "payload": plain})
    try:
        size = len(canonical_json(scrubbed).encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidAuditEvent(f"event holds text that is not valid Unicode: {exc}") from exc
    if size > MAX_EVENT_BYTES:
        raise InvalidAuditEvent(f"event is {size} bytes; the limit is {MAX_EVENT_BYTES}")
    text = canonical_json(scrubbed["payload"])
    subject, session_id, decision_id = (scrubbed["subject"], scrubbed["session_id"],
                                        scrubbed["decision_id"])
    return PreparedEvent(kind, subject, session_id, decision_id, text,
                         EncodedEvent.of(kind, subject, session_id, decision_id, text))


def _row_to_record(row: tuple[Any, ...]) -> AuditRecord:
    seq, rid, ts, kind, subject, session_id, decision_id, payload, prev_hash, h = row
    try:
        body = json.loads(payload)
    except (TypeError, ValueError):
        body = {"unparseable_payload": str(payload)}  # cannot hash-match: reported as edited
    return AuditRecord(int(seq), rid, ts, kind, subject, session_id, decision_id, body,
                       prev_hash, h)


class AuditLog:
    """An append-only, hash-chained trail of events in one SQL database.

    Use `engine.audit.open_audit_log(url)` rather than a backend class. Thread-safe; several
    processes (or service replicas) may append to one trail at once.
    """

    dialect: str = ""
    _DDL: tuple[str, ...] = ()
    _ADD_HEAD_SEAL = "ALTER TABLE ordinance_audit_head ADD COLUMN seal TEXT"
    """Trails made before heads were sealed get the column on first open."""
    _LOCK_HEAD = ("SELECT seq, hash, last_id, last_ts, {seal} FROM ordinance_audit_head "
                  "WHERE one = 1")
    POLL_INTERVAL_S = 0.2

    def __init__(self, store: StoreURL, *, create: bool = True,
                 retention: timedelta = DEFAULT_RETENTION, hmac_key: bytes | None = None,
                 durability: Durability = "fsync") -> None:
        self.store = store
        self.retention = check_retention(retention)
        try:
            self.durability = check_durability(durability)
        except ValueError as exc:
            raise AuditConfigError(str(exc)) from None
        self._os_sync: DelayedSync | None = None
        if hmac_key is not None and len(hmac_key) < MIN_HMAC_KEY_BYTES:
            raise AuditConfigError(f"the audit HMAC key must be at least {MIN_HMAC_KEY_BYTES} "
                                   f"bytes")
        self.hmac_key = hmac_key
        self._errors = driver_errors(store.dialect)
        self._connect_errors: tuple[type[BaseException], ...] = (StoreUnavailable,
                                                                 *self._errors)
        try:
            self._conn = SqlConnection(store, create=create)
        except StoreUnavailable as exc:
            raise AuditStoreUnavailable(str(exc)) from exc
        try:
            if create:
                self._create_schema()
                self._head_seal_column = True
            elif not self._schema_exists():
                raise AuditStoreUnavailable(f"no audit trail at {store.redacted()}")
            else:
                self._head_seal_column = self._ensure_head_seal_column()
        except self._errors as exc:
            self._conn.close()
            raise AuditStoreUnavailable(f"cannot use audit store {store.redacted()}: "
                                        f"{exc}") from exc
        except AuditStoreUnavailable:
            self._conn.close()
            raise
        if self.durability == "os":
            try:
                self._commit_to_os()
            except self._errors as exc:
                self._conn.close()
                raise AuditStoreUnavailable(f"cannot use audit store {store.redacted()}: "
                                            f"{exc}") from exc
            self._os_sync = DelayedSync(self._sync_os_writes, name="audit-sync")

    # -- backend hooks --------------------------------------------------------------------

    def _create_schema(self) -> None:
        with self._conn.write() as tx:
            self._schema_lock(tx)
            for stmt in self._DDL:
                tx.run(stmt)
            if not self._has_head_seal_column():
                tx.run(self._ADD_HEAD_SEAL)
            seal = seal_head(0, GENESIS_HASH, self.hmac_key) if self.hmac_key else None
            tx.run("INSERT INTO ordinance_audit_head (one, seq, hash, seal) VALUES (1, 0, ?, ?) "
                   "ON CONFLICT DO NOTHING", (GENESIS_HASH, seal))

    def _ensure_head_seal_column(self) -> bool:
        """Whether the head row has its `seal` column, adding it to an older trail. False only
        when it is missing and cannot be added (read-only credentials): heads stay unsealed."""
        if self._has_head_seal_column():
            return True
        try:
            with self._conn.write() as tx:
                self._schema_lock(tx)
                if not self._has_head_seal_column():
                    tx.run(self._ADD_HEAD_SEAL)
        except self._errors:
            return False
        return True

    def _has_head_seal_column(self) -> bool:
        raise NotImplementedError

    def _schema_lock(self, tx: SqlConnection) -> None:
        """Serialize schema creation between processes (SQLite's write lock already does)."""

    def _schema_exists(self) -> bool:
        raise NotImplementedError

    def _notify(self, tx: SqlConnection, seq: int) -> None:
        """Tell waiting tails about `seq`, from inside the writing transaction."""

    def _after_commit(self) -> None:
        """Wake in-process waiters after a commit."""

    def _wait_signal(self, timeout: float) -> None:
        time.sleep(min(timeout, self.POLL_INTERVAL_S))

    def _start_waiting(self) -> None:
        """Subscribe to news before the first read of a wait loop."""

    def _commit_to_os(self) -> None:
        """Make this writer's commits return once written to the OS, not synced (`os`
        durability)."""
        raise NotImplementedError

    def _sync_os_writes(self) -> None:
        """Make every commit written to the OS so far durable (`os` durability's sync)."""
        raise NotImplementedError

    # -- writing ----------------------------------------------------------------------------

    def append(self, kind: str, payload: dict[str, Any], *, subject: str | None = None,
               session_id: str | None = None, decision_id: str | None = None) -> AuditRecord:
        """Chain one event after the trail's last record; returns once it is durable."""
        return self._append_prepared([prepare_event(kind, payload, subject, session_id,
                                                    decision_id)])[0]

    def append_many(self, events: Iterable[AuditEvent | PreparedEvent]) -> list[AuditRecord]:
        """Chain several events in one transaction: all become durable, or none (an invalid
        event is refused before anything is written). One commit for the batch, so a batch
        costs about as much as a single append. Events may come already prepared
        (`prepare_event`), e.g. by a caller that validates them on its own thread."""
        prepared = [e if isinstance(e, PreparedEvent) else
                    prepare_event(e.kind, e.payload, e.subject, e.session_id, e.decision_id)
                    for e in events]
        return self._append_prepared(prepared) if prepared else []

    def commit_many(self, events: list[PreparedEvent]) -> None:
        """`append_many` of prepared events for a caller that needs no records back (the
        group-commit recorder): nothing is built or parsed beyond what is stored."""
        if events:
            self._commit_prepared(events)

    def _append_prepared(self, events: list[PreparedEvent]) -> list[AuditRecord]:
        rows = self._commit_prepared(events)
        return [AuditRecord(seq, rid, ts, event.kind, event.subject, event.session_id,
                            event.decision_id, event.payload, prev_hash, digest)
                for (seq, rid, ts, *_, prev_hash, digest), event in zip(rows, events,
                                                                        strict=True)]

    def _commit_prepared(self, events: list[PreparedEvent]) -> list[tuple[Any, ...]]:
        self._check_os_sync()
        try:
            with self._conn.write(pipelined=True) as tx:
                rows = self._append_locked(tx, self._lock_head(tx), events)
        except self._errors as exc:
            raise AuditWriteError(f"audit append failed, nothing recorded: {exc}") from exc
        self._committed()
        self._after_commit()
        return rows

    def _check_os_sync(self) -> None:
        """Refuse to write while `os` durability's syncs fail: what was acknowledged may not
        reach the disk, and nothing more is acknowledged (fail closed)."""
        if self._os_sync is not None and self._os_sync.broken is not None:
            raise AuditWriteError(f"the audit trail cannot sync its writes "
                                  f"({self._os_sync.broken}); nothing recorded")

    def _committed(self) -> None:
        if self._os_sync is not None:
            self._os_sync.written()

    def _lock_head(self, tx: SqlConnection, *, trusted: bool = True) -> tuple[Any, ...]:
        """The head row, locked for this transaction; unless `trusted=False`, only a head this
        writer may extend (`head_seal_problem`), else AuditWriteError."""
        head = tx.one(self._LOCK_HEAD.format(seal="seal" if self._head_seal_column else "NULL"))
        if head is None:
            raise AuditWriteError("the audit trail's head row is missing (trail damaged)")
        problem = head_seal_problem(int(head[0]), head[1], head[4], self.hmac_key)
        if trusted and problem:
            raise AuditWriteError(f"{problem}; nothing recorded")
        return head

    def seal(self) -> VerifyResult:
        """Adopt a trail written without the key: verify it (under the write lock, so nothing
        moves meanwhile) and, when nothing but the missing seal is wrong, seal its head."""
        if not self.hmac_key:
            raise AuditConfigError("sealing the head needs the audit key (ORDINANCE_AUDIT_KEY)")
        try:
            with self._conn.write() as tx:
                seq, digest = self._lock_head(tx, trusted=False)[:2]
                result = self.verify()
                if result.ok or result.damage == "head_unsealed":
                    tx.run("UPDATE ordinance_audit_head SET seal = ? WHERE one = 1",
                           (seal_head(int(seq), digest, self.hmac_key),))
        except self._errors as exc:
            raise AuditWriteError(f"sealing the head failed: {exc}") from exc
        self._committed()
        return result if not result.ok and result.damage != "head_unsealed" else self.verify()

    def _append_locked(self, tx: SqlConnection, head: tuple[Any, ...],
                       events: list[PreparedEvent]) -> list[tuple[Any, ...]]:
        """Chain `events` after `head` (read under the write lock): insert them, move the head,
        notify; returns the rows inserted (`_COLUMNS`). Issues no read, so on PostgreSQL it all
        travels in one pipelined round trip."""
        last_seq, last_hash, last_id, last_ts = head[:4]
        now = datetime.now(UTC)
        ts = format_ts(now)
        if last_ts and ts < last_ts:
            now = parse_ts(last_ts)  # a lagging clock never makes time run backwards
            ts = format_ts(now)
        rows: list[tuple[Any, ...]] = []
        seq = int(last_seq)
        for event in events:
            seq += 1
            rid = new_ulid(now, last_id)
            digest = event.encoded.hash(seq, rid, ts, last_hash)
            rows.append((seq, rid, ts, event.kind, event.subject, event.session_id,
                         event.decision_id, event.payload_json, last_hash, digest))
            last_hash, last_id = digest, rid
        last_seq = seq
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start:start + _ROWS_PER_INSERT]
            tx.run(_insert_sql(len(chunk)), [value for row in chunk for value in row])
        if self._head_seal_column:
            seal = seal_head(last_seq, last_hash, self.hmac_key) if self.hmac_key else None
            tx.run("UPDATE ordinance_audit_head SET seq = ?, hash = ?, last_id = ?, "
                   "last_ts = ?, seal = ? WHERE one = 1", (last_seq, last_hash, last_id, ts, seal))
        else:
            tx.run("UPDATE ordinance_audit_head SET seq = ?, hash = ?, last_id = ?, "
                   "last_ts = ? WHERE one = 1", (last_seq, last_hash, last_id, ts))
        self._notify(tx, last_seq)
        return rows

    # -- retention --------------------------------------------------------------------------

    def prune(self, older_than: timedelta | None = None, *,
              now: datetime | None = None) -> PruneResult:
        """Remove records older than `older_than` (default: the configured retention) and leave
        a sealed checkpoint naming the last removed record, so the rest still verifies. The
        prune itself is recorded as an `audit.pruned` event in the same transaction."""
        period = check_retention(older_than if older_than is not None else self.retention)
        cutoff = format_ts((now or datetime.now(UTC)) - period)
        self._check_os_sync()
        try:
            with self._conn.write() as tx:
                head = self._lock_head(tx)
                row = tx.one("SELECT seq, hash FROM ordinance_audit WHERE seq = "
                             "(SELECT max(seq) FROM ordinance_audit WHERE ts < ?)", (cutoff,))
                if row is None:
                    return PruneResult(0, cutoff, None)
                through_seq, through_hash = int(row[0]), row[1]
                pruned = tx.run("DELETE FROM ordinance_audit WHERE seq <= ?", (through_seq,))
                fields = {"through_seq": through_seq, "through_hash": through_hash,
                          "pruned_count": pruned, "created_at": format_ts(datetime.now(UTC))}
                alg, seal = seal_checkpoint(fields, self.hmac_key)
                checkpoint = Checkpoint(**fields, seal_alg=alg, seal=seal)
                tx.run("INSERT INTO ordinance_audit_checkpoints (through_seq, through_hash, "
                       "pruned_count, created_at, seal_alg, seal) VALUES (?, ?, ?, ?, ?, ?)",
                       (through_seq, through_hash, pruned, fields["created_at"], alg, seal))
                event = prepare_event("audit.pruned", {
                    "through_seq": through_seq, "pruned": pruned, "cutoff": cutoff,
                    "retention_days": period.days, "seal_alg": alg}, None, None, None)
                self._append_locked(tx, head, [event])
        except self._errors as exc:
            raise AuditWriteError(f"audit prune failed, nothing removed: {exc}") from exc
        self._committed()
        self._after_commit()
        return PruneResult(pruned, cutoff, checkpoint)

    # -- reading ----------------------------------------------------------------------------

    def iter_records(self, since: datetime | None = None, until: datetime | None = None,
                     subject: str | None = None, session_id: str | None = None,
                     kind: str | None = None, *, after_seq: int = 0,
                     limit: int | None = None) -> Iterator[AuditRecord]:
        """Records in seq order, filtered; `since` inclusive, `until` exclusive. Pages through
        the table, so a long export neither holds a lock nor loads everything at once."""
        where: list[str] = ["seq > ?"]
        params: list[Any] = [after_seq]
        for column, value in (("subject", subject), ("session_id", session_id),
                              ("kind", kind)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("ts >= ?")
            params.append(format_ts(_aware(since)))
        if until is not None:
            where.append("ts < ?")
            params.append(format_ts(_aware(until)))
        sql = (f"SELECT {_COLUMNS} FROM ordinance_audit WHERE {' AND '.join(where)} "
               f"ORDER BY seq LIMIT ?")
        remaining = limit
        while remaining is None or remaining > 0:
            page = _PAGE if remaining is None else min(_PAGE, remaining)
            rows = self._conn.all(sql, (*params, page))
            for row in rows:
                yield _row_to_record(row)
            if len(rows) < page:
                return
            params[0] = int(rows[-1][0])
            if remaining is not None:
                remaining -= len(rows)

    def tail(self, n: int) -> list[AuditRecord]:
        """The last `n` records, oldest first."""
        rows = self._conn.all(f"SELECT {_COLUMNS} FROM ordinance_audit ORDER BY seq DESC "
                              f"LIMIT ?", (max(0, n),))
        return [_row_to_record(r) for r in reversed(rows)]

    def last_seq(self) -> int:
        row = self._conn.one("SELECT seq FROM ordinance_audit_head WHERE one = 1")
        return int(row[0]) if row else 0

    def wait_for_new(self, after_seq: int, timeout: float) -> list[AuditRecord]:
        """Records after `after_seq` (up to one page), waiting up to `timeout` seconds for the
        first to arrive; an empty list means none came."""
        deadline = time.monotonic() + max(0.0, timeout)
        self._start_waiting()
        while True:
            records = list(self.iter_records(after_seq=after_seq, limit=_PAGE))
            remaining = deadline - time.monotonic()
            if records or remaining <= 0:
                return records
            self._wait_signal(remaining)

    # -- verification -----------------------------------------------------------------------

    def _head_sql(self) -> str:
        seal = "seal" if self._head_seal_column else "NULL"
        return f"SELECT seq, hash, {seal}, last_id, last_ts FROM ordinance_audit_head WHERE one = 1"

    def anchor(self) -> Anchor:
        """The head as it is now, for write-once storage: its record's seq and hash, sealed
        with the key when one is configured (`verify(anchor=...)` checks a trail against it)."""
        row = self._conn.one(self._head_sql())
        if row is None:
            raise AuditStoreUnavailable("the audit trail's head row is missing (trail damaged)")
        seq, digest = int(row[0]), str(row[1])
        seal = seal_head(seq, digest, self.hmac_key) if self.hmac_key else None
        return Anchor(seq, digest, row[3], row[4], format_ts(datetime.now(UTC)),
                      HEAD_SEAL_ALG if seal else "none", seal)

    def verify(self, anchor: Anchor | None = None) -> VerifyResult:
        """Walk the whole trail from the latest checkpoint (or the first record) and report
        the first break; with `anchor`, the trail must still hold the anchored record. Reads
        one consistent snapshot on its own connection, so appends continue meanwhile and a
        concurrent prune cannot cause a false alarm."""
        reader = SqlConnection(self.store, create=False)
        try:
            with reader.snapshot() as snap:
                head_row = snap.one(self._head_sql())
                cp_row = snap.one("SELECT through_seq, through_hash, pruned_count, created_at, "
                                  "seal_alg, seal FROM ordinance_audit_checkpoints "
                                  "ORDER BY through_seq DESC LIMIT 1")
                checkpoint = (Checkpoint(int(cp_row[0]), cp_row[1], int(cp_row[2]), cp_row[3],
                                         cp_row[4], cp_row[5]) if cp_row else None)
                head = Head(int(head_row[0]), head_row[1], head_row[2]) if head_row else None

                def records() -> Iterator[AuditRecord]:
                    after = -(1 << 62)
                    while True:
                        rows = snap.all(f"SELECT {_COLUMNS} FROM ordinance_audit "
                                        f"WHERE seq > ? ORDER BY seq LIMIT ?", (after, _PAGE))
                        for row in rows:
                            yield _row_to_record(row)
                        if len(rows) < _PAGE:
                            return
                        after = int(rows[-1][0])

                def seq_of_hash(digest: str) -> int | None:
                    row = snap.one("SELECT seq FROM ordinance_audit WHERE hash = ? "
                                   "ORDER BY seq LIMIT 1", (digest,))
                    return int(row[0]) if row else None

                def seq_of_id(rid: str) -> int | None:
                    row = snap.one("SELECT seq FROM ordinance_audit WHERE id = ? "
                                   "ORDER BY seq LIMIT 1", (rid,))
                    return int(row[0]) if row else None

                if head is None:
                    return VerifyResult(False, 0, None, "the trail's head row is missing")
                return verify_chain(records(), checkpoint=checkpoint, head=head,
                                    key=self.hmac_key, anchor=anchor, seq_of_hash=seq_of_hash,
                                    seq_of_id=seq_of_id)
        finally:
            reader.close()

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        if self._os_sync is not None:
            self._os_sync.close()
        self._conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
