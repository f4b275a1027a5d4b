"""The approvals store on SQLite or PostgreSQL, with every step written to the audit trail.

Owns persistence of `ApprovalRequest`s and the transactions that make verdicts and uses safe
under concurrency: the request row is read and changed in one write transaction (SQLite
`BEGIN IMMEDIATE`; PostgreSQL `SELECT … FOR UPDATE`), so two approvers, or two sessions
consuming one single-use approval, cannot both win. `wait()` sleeps on a signal instead of
spinning: PostgreSQL LISTEN/NOTIFY (channel `ordinance_approvals`); on SQLite an in-process
`threading.Condition` plus a modest poll for other processes.

The audit event of a step is appended right after its transaction commits (the store and the
trail may share one SQLite file, whose write lock cannot be held twice). If that append fails
the call raises `AuditWriteError`, so a caller that runs commands fails closed. The verdict
rules themselves live in `engine.approvals.model`; this module must not invent others.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.approvals.model import (
    COMMAND_PREVIEW_CHARS,
    MAX_TTL,
    STATUSES,
    ApprovalError,
    ApprovalNotFound,
    ApprovalRequest,
    Identity,
    InvalidApprovalRequest,
    Status,
    check_verdict_allowed,
    command_sha256,
)
from engine.audit import AuditLog
from engine.audit.chain import format_ts, new_ulid, parse_ts
from engine.audit.stores import (
    SqlConnection,
    StoreUnavailable,
    StoreURL,
    connect_postgres,
    driver_errors,
)
from engine.masking import scrub_document, scrub_pans


class ApprovalStoreError(ApprovalError):
    """The store could not be opened or a database operation failed."""


_COLUMNS = ("id, requester_id, requester_groups, resource, command_sha256, command_preview, "
            "reasons, approver_groups, status, created_at, expires_at, window_us, session_id, "
            "decided_by, decided_at, comment, uses, last_used_at")
_DDL = (
    "CREATE TABLE IF NOT EXISTS ordinance_approvals ("
    " id TEXT PRIMARY KEY, requester_id TEXT NOT NULL, requester_key TEXT NOT NULL,"
    " requester_groups TEXT NOT NULL, resource TEXT NOT NULL, command_sha256 TEXT NOT NULL,"
    " command_preview TEXT NOT NULL, reasons TEXT NOT NULL, approver_groups TEXT NOT NULL,"
    " status TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL,"
    " window_us BIGINT, session_id TEXT, decided_by TEXT, decided_at TEXT, comment TEXT,"
    " uses INTEGER NOT NULL DEFAULT 0, last_used_at TEXT)",
    "CREATE INDEX IF NOT EXISTS ordinance_approvals_use ON ordinance_approvals"
    " (requester_key, command_sha256)",
    "CREATE INDEX IF NOT EXISTS ordinance_approvals_status ON ordinance_approvals (status)",
)
_STORED_FOR: dict[str, tuple[str, ...]] = {
    "pending": ("pending",), "approved": ("approved",),
    "expired": ("pending", "approved", "expired"), "denied": ("denied",),
    "consumed": ("consumed",), "withdrawn": ("withdrawn",),
}


def _key(identity_id: str) -> str:
    return identity_id.strip().casefold()


def _ts(text: str | None) -> datetime | None:
    return parse_ts(text) if text else None


def _row_to_request(row: tuple[Any, ...]) -> ApprovalRequest:
    (rid, requester_id, groups, resource, sha, preview, reasons, approver_groups, status,
     created_at, expires_at, window_us, session_id, decided_by, decided_at, comment, uses,
     last_used_at) = row
    return ApprovalRequest(
        id=rid, requester_id=requester_id, requester_groups=tuple(json.loads(groups)),
        resource=json.loads(resource), command_sha256=sha, command_preview=preview,
        reasons=tuple(json.loads(reasons)), approver_groups=tuple(json.loads(approver_groups)),
        stored_status=status, created_at=parse_ts(created_at), expires_at=parse_ts(expires_at),
        window=timedelta(microseconds=int(window_us)) if window_us is not None else None,
        session_id=session_id, decided_by=decided_by, decided_at=_ts(decided_at),
        comment=comment, uses=int(uses), last_used_at=_ts(last_used_at))


class ApprovalStore:
    """Review requests and verdicts. Use `engine.approvals.open_approval_store(url, audit=…)`."""

    _FOR_UPDATE = ""
    POLL_INTERVAL_S = 0.5

    def __init__(self, store: StoreURL, *, audit: AuditLog,
                 default_approver_groups: Sequence[str] = (), create: bool = True,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.store = store
        self.audit = audit
        self.default_approver_groups = tuple(default_approver_groups)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._errors = driver_errors(store.dialect)
        self._connect_errors: tuple[type[BaseException], ...] = (StoreUnavailable,
                                                                 *self._errors)
        try:
            self._db = SqlConnection(store, create=create)
        except StoreUnavailable as exc:
            raise ApprovalStoreError(str(exc)) from exc
        try:
            with self._db.write() as tx:
                self._schema_lock(tx)
                for stmt in _DDL:
                    tx.run(stmt)
        except self._errors as exc:
            self._db.close()
            raise ApprovalStoreError(f"cannot use approvals store {store.redacted()}: "
                                     f"{exc}") from exc

    # -- backend hooks ----------------------------------------------------------------------

    def _schema_lock(self, tx: SqlConnection) -> None:
        """Serialize schema creation between processes (SQLite's write lock already does)."""

    def _notify(self, tx: SqlConnection, request_id: str) -> None:
        """Signal waiters from inside the verdict's transaction."""

    def _wake_local(self) -> None:
        """Wake waiters in this process after a commit."""

    @contextmanager
    def _signal(self) -> Iterator[Callable[[float], None]]:
        """A function that sleeps until a verdict may have happened or the timeout passes."""
        yield lambda timeout: time.sleep(min(timeout, self.POLL_INTERVAL_S))

    # -- reading ----------------------------------------------------------------------------

    def _now(self) -> datetime:
        return self._clock()

    def get(self, request_id: str) -> ApprovalRequest:
        try:
            row = self._db.one(f"SELECT {_COLUMNS} FROM ordinance_approvals WHERE id = ?",
                               (request_id,))
        except self._errors as exc:
            raise ApprovalStoreError(f"approvals store read failed: {exc}") from exc
        if row is None:
            raise ApprovalNotFound(f"no approval request {request_id!r}")
        return _row_to_request(row)

    def list(self, status: Status | None = None) -> list[ApprovalRequest]:
        """Requests, oldest first; `status` filters on the status as of now."""
        if status is not None and status not in STATUSES:
            raise InvalidApprovalRequest(f"unknown status {status!r} "
                                         f"(one of {', '.join(STATUSES)})")
        sql = f"SELECT {_COLUMNS} FROM ordinance_approvals"
        params: tuple[str, ...] = ()
        if status is not None:
            params = _STORED_FOR[status]
            sql += f" WHERE status IN ({', '.join('?' for _ in params)})"
        try:
            rows = self._db.all(sql + " ORDER BY id", params)
        except self._errors as exc:
            raise ApprovalStoreError(f"approvals store read failed: {exc}") from exc
        now = self._now()
        found = [_row_to_request(r) for r in rows]
        return [r for r in found if status is None or r.status_at(now) == status]

    # -- requesting -------------------------------------------------------------------------

    def request(self, requester: Identity, resource: dict[str, Any], command: str,
                reasons: Sequence[str], approver_groups: Sequence[str], ttl: timedelta,
                window: timedelta | None = None, *,
                session_id: str | None = None) -> ApprovalRequest:
        """File a review request for `command` by `requester`; returns it pending."""
        requester_id = getattr(requester, "id", None)
        if not isinstance(requester_id, str) or not requester_id.strip():
            raise InvalidApprovalRequest("the requester has no authenticated identity")
        if not isinstance(command, str) or not command:
            raise InvalidApprovalRequest("the command to approve is empty")
        if not isinstance(ttl, timedelta) or not timedelta(0) < ttl <= MAX_TTL:
            raise InvalidApprovalRequest(f"ttl must be positive and at most {MAX_TTL.days} "
                                         f"days, got {ttl!r}")
        if window is not None and (not isinstance(window, timedelta) or window <= timedelta(0)):
            raise InvalidApprovalRequest(f"window must be a positive duration, got {window!r}")
        groups = tuple(g for g in approver_groups if g) or self.default_approver_groups
        if not groups:
            raise InvalidApprovalRequest("the rule names no approver group and no default "
                                         "approver group is configured")
        now = self._now()
        req = ApprovalRequest(
            id=new_ulid(now), requester_id=requester_id,
            requester_groups=tuple(getattr(requester, "groups", ()) or ()),
            resource=scrub_document(dict(resource)), command_sha256=command_sha256(command),
            command_preview=scrub_pans(command)[:COMMAND_PREVIEW_CHARS],
            reasons=tuple(scrub_pans(str(r)) for r in reasons), approver_groups=groups,
            stored_status="pending", created_at=now, expires_at=now + ttl, window=window,
            session_id=session_id)
        try:
            with self._db.write() as tx:
                tx.run(f"INSERT INTO ordinance_approvals ({_COLUMNS}, requester_key) VALUES "
                       f"({', '.join('?' for _ in range(19))})", (
                           req.id, req.requester_id, json.dumps(list(req.requester_groups)),
                           json.dumps(req.resource, sort_keys=True, default=str),
                           req.command_sha256,
                           req.command_preview, json.dumps(list(req.reasons)),
                           json.dumps(list(req.approver_groups)), "pending",
                           format_ts(req.created_at), format_ts(req.expires_at),
                           _micros(window), session_id, None, None, None, 0, None,
                           _key(requester_id)))
        except self._errors as exc:
            raise ApprovalStoreError(f"approval request not stored: {exc}") from exc
        self._record("approval.requested", req, req.requester_id, {
            "resource": req.resource, "command": req.command_preview, "reasons": req.reasons,
            "approver_groups": req.approver_groups, "expires_at": format_ts(req.expires_at),
            "window_seconds": window.total_seconds() if window else None})
        return req

    # -- verdicts ---------------------------------------------------------------------------

    def approve(self, request_id: str, approver: Identity, comment: str = "") -> ApprovalRequest:
        """Grant a pending request. Raises `SelfApprovalError`, `NotAnApproverError`,
        `ApprovalExpiredError`, `VerdictFinalError` or `ApprovalNotFound`, each audited."""
        return self._decide(request_id, approver, comment, "approved")

    def deny(self, request_id: str, approver: Identity, comment: str = "") -> ApprovalRequest:
        """Refuse a pending request; the same rules as `approve`."""
        return self._decide(request_id, approver, comment, "denied")

    def _decide(self, request_id: str, approver: Identity, comment: str,
                verdict: Status) -> ApprovalRequest:
        now = self._now()
        approver_id = str(getattr(approver, "id", "") or "")
        try:
            with self._db.write() as tx:
                req = self._get_locked(tx, request_id)
                check_verdict_allowed(req, approver, now)
                tx.run("UPDATE ordinance_approvals SET status = ?, decided_by = ?, "
                       "decided_at = ?, comment = ? WHERE id = ?",
                       (verdict, approver_id, format_ts(now), comment or None, request_id))
                self._notify(tx, request_id)
        except ApprovalError as exc:
            self.audit.append("approval.refused", {
                "request_id": request_id,
                "action": "approve" if verdict == "approved" else "deny",
                "approver_groups_held": sorted(getattr(approver, "groups", ())),
                "refusal": type(exc).__name__, "reason": str(exc)}, subject=approver_id or None)
            raise
        except self._errors as exc:
            raise ApprovalStoreError(f"verdict not stored: {exc}") from exc
        self._wake_local()
        decided = replace(req, stored_status=verdict, decided_by=approver_id, decided_at=now,
                          comment=comment or None)
        self._record(f"approval.{verdict}", decided, approver_id, {
            "requester": req.requester_id, "comment": comment or None,
            "approver_groups_held": sorted(getattr(approver, "groups", ())),
            "usable_until": format_ts(decided.usable_until) if verdict == "approved" else None})
        return decided

    def _get_locked(self, tx: SqlConnection, request_id: str) -> ApprovalRequest:
        row = tx.one(f"SELECT {_COLUMNS} FROM ordinance_approvals WHERE id = ?"
                     f"{self._FOR_UPDATE}", (request_id,))
        if row is None:
            raise ApprovalNotFound(f"no approval request {request_id!r}")
        return _row_to_request(row)

    # -- closing unanswered requests --------------------------------------------------------

    def withdraw(self, request_id: str, by: str, reason: str) -> ApprovalRequest:
        """Close a pending request whose statement nobody waits for any more (cancelled, the
        client gone): it becomes `withdrawn` and no verdict can be given on it. A request that
        is no longer pending is returned as it is. Audited as `approval.withdrawn`."""
        return self._close(request_id, "withdrawn", by, reason)

    def expire(self, request_id: str, reason: str) -> ApprovalRequest:
        """Store `expired` on a pending request whose holder stopped waiting (its timeout), so
        it can no longer be decided. A request that is no longer pending is returned as it
        is. Audited as `approval.expired`."""
        return self._close(request_id, "expired", None, reason)

    def _close(self, request_id: str, status: Status, by: str | None,
               reason: str) -> ApprovalRequest:
        now = self._now()
        try:
            with self._db.write() as tx:
                req = self._get_locked(tx, request_id)
                pending = req.stored_status == "pending"
                if pending:
                    tx.run("UPDATE ordinance_approvals SET status = ?, decided_by = ?, "
                           "decided_at = ?, comment = ? WHERE id = ?",
                           (status, by, format_ts(now), reason or None, request_id))
                    self._notify(tx, request_id)
        except self._errors as exc:
            raise ApprovalStoreError(f"request not closed: {exc}") from exc
        if not pending:
            return req
        self._wake_local()
        closed = replace(req, stored_status=status, decided_by=by, decided_at=now,
                         comment=reason or None)
        self._record(f"approval.{status}", closed, by or req.requester_id, {
            "reason": reason or None, "expires_at": format_ts(req.expires_at)})
        return closed

    # -- use --------------------------------------------------------------------------------

    def consume(self, ref: str | tuple[Identity | str, str]) -> bool:
        """Use an approval to run a command: by request id, or by (requester, command SHA-256).

        True when an approved, unexpired request covers it: a single-use approval becomes
        `consumed`; a windowed one stays approved and counts the use. False otherwise (nothing
        approved, expired, already used, unknown id). Both outcomes are audited.
        """
        now = self._now()
        chosen: ApprovalRequest | None = None
        try:
            with self._db.write() as tx:
                if isinstance(ref, str):
                    row = tx.one(f"SELECT {_COLUMNS} FROM ordinance_approvals WHERE id = ?"
                                 f"{self._FOR_UPDATE}", (ref,))
                    candidates = [_row_to_request(row)] if row else []
                    who, sha = (candidates[0].requester_id if candidates else None), None
                else:
                    requester, sha = ref
                    who = requester if isinstance(requester, str) else requester.id
                    candidates = [_row_to_request(r) for r in tx.all(
                        f"SELECT {_COLUMNS} FROM ordinance_approvals WHERE requester_key = ? "
                        f"AND command_sha256 = ? AND status = 'approved' ORDER BY decided_at"
                        f"{self._FOR_UPDATE}", (_key(who), sha))]
                usable = [c for c in candidates if c.status_at(now) == "approved"]
                if usable:
                    chosen = usable[0]
                    single = chosen.window is None
                    tx.run("UPDATE ordinance_approvals SET status = ?, uses = uses + 1, "
                           "last_used_at = ? WHERE id = ?",
                           ("consumed" if single else "approved", format_ts(now), chosen.id))
        except self._errors as exc:
            raise ApprovalStoreError(f"approval use not stored: {exc}") from exc
        if chosen is None:
            seen = ", ".join(f"{c.id} {c.status_at(now)}" for c in candidates) or "none"
            self.audit.append("approval.not_consumed", {
                "request_id": ref if isinstance(ref, str) else None, "command_sha256": sha,
                "requester": who, "requests_seen": seen}, subject=who)
            return False
        used = replace(chosen, uses=chosen.uses + 1, last_used_at=now,
                       stored_status="consumed" if chosen.window is None else "approved")
        self._record("approval.consumed", used, used.requester_id, {
            "uses": used.uses, "single_use": used.window is None,
            "usable_until": format_ts(used.usable_until)})
        return True

    # -- waiting ----------------------------------------------------------------------------

    def wait(self, request_id: str, timeout: float) -> Status:
        """Block until the request leaves `pending` (or expires) or `timeout` seconds pass;
        returns the status then."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._signal() as sleep:
            while True:
                req = self.get(request_id)
                now = self._now()
                status = req.status_at(now)
                remaining = deadline - time.monotonic()
                if status != "pending" or remaining <= 0:
                    return status
                until_expiry = (req.expires_at - now).total_seconds() + 0.001
                sleep(min(remaining, until_expiry))

    # -- helpers ----------------------------------------------------------------------------

    def _record(self, kind: str, req: ApprovalRequest, subject: str,
                extra: dict[str, Any]) -> None:
        payload = {"request_id": req.id, "requester": req.requester_id,
                   "command_sha256": req.command_sha256, **extra}
        self.audit.append(kind, payload, subject=subject, session_id=req.session_id)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ApprovalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _micros(window: timedelta | None) -> int | None:
    return None if window is None else window // timedelta(microseconds=1)


_WAKERS: dict[str, threading.Condition] = {}
_WAKERS_LOCK = threading.Lock()


class SqliteApprovalStore(ApprovalStore):
    """SQLite: `BEGIN IMMEDIATE` serializes writers; waiters wake on an in-process condition
    and poll every `POLL_INTERVAL_S` for verdicts given by other processes."""

    @property
    def _waker(self) -> threading.Condition:
        with _WAKERS_LOCK:
            return _WAKERS.setdefault(self.store.target, threading.Condition())

    def _wake_local(self) -> None:
        waker = self._waker
        with waker:
            waker.notify_all()

    @contextmanager
    def _signal(self) -> Iterator[Callable[[float], None]]:
        waker = self._waker

        def sleep(timeout: float) -> None:
            with waker:
                waker.wait(min(timeout, self.POLL_INTERVAL_S))

        yield sleep


NOTIFY_CHANNEL = "ordinance_approvals"


class PostgresApprovalStore(ApprovalStore):
    """PostgreSQL: request rows are locked `FOR UPDATE`; verdicts NOTIFY `ordinance_approvals`
    and each `wait()` LISTENs on its own connection."""

    _FOR_UPDATE = " FOR UPDATE"

    def _schema_lock(self, tx: SqlConnection) -> None:
        tx.one("SELECT pg_advisory_xact_lock(658197)")

    def _notify(self, tx: SqlConnection, request_id: str) -> None:
        tx.one(f"SELECT pg_notify('{NOTIFY_CHANNEL}', ?)", (request_id,))

    @contextmanager
    def _signal(self) -> Iterator[Callable[[float], None]]:
        try:
            listen = connect_postgres(self.store.target)
            listen.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except self._connect_errors:
            with super()._signal() as poll:  # cannot listen: fall back to a modest poll
                yield poll
            return

        def sleep(timeout: float) -> None:
            try:
                for _ in listen.notifies(timeout=timeout, stop_after=1):
                    pass
            except self._errors:  # listener lost: the caller's loop re-reads; poll meanwhile
                time.sleep(min(timeout, self.POLL_INTERVAL_S))

        try:
            yield sleep
        finally:
            with suppress(Exception):
                listen.close()
