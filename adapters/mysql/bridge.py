"""The MySQL proxy's policy bridge: each statement text -> a Decision -> a `Verdict`.

Owns: the input document of a statement (`command.protocol` "mysql", so the SQL facts use
sqlglot's mysql dialect), the Decision -> Verdict mapping (deny: ERR 1142 with the reasons;
review: a hold that files or finds an approval request and waits for it up to `hold`
seconds; masks: the method of each result column by its `org_table`/`org_name`), approvals per
execution (`single_execution`), and the audit records: `session.start` / `session.end`, one
`statement` record per result, durable before the result's end reaches the client, the
proxy's own refusals recorded as denials (policy `ordinance.proxy`).

Must not: evaluate policy or read the wire protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from adapters.mysql.hooks import Verdict
from adapters.mysql.messages import ColumnDefinition
from adapters.postgres.column_masks import MaskRules
from adapters.postgres.hooks import SessionContext, StatementOutcome
from adapters.postgres.review import ApprovalGate, parse_window
from adapters.row_budget import RowBudget, RowMeter, SessionRows, immediate_reviews, row_budgets
from engine.audit.recorder import AuditRecorder
from engine.decision import Decision, Reason
from engine.identity import Subject

log = logging.getLogger("ordinance.adapters.mysql.bridge")

PROXY_POLICY = "ordinance.proxy"
MAX_RECORDED_TEXT = 64 * 1024
_WORD = re.compile(r"[A-Za-z0-9_$\u0080-\uffff]+")  # what an unquoted or quoted name may be


@dataclass(frozen=True)
class Resource:
    """What policies see as `input.resource`."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    type: str = "mysql"

    def to_input(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "labels": dict(self.labels)}


@dataclass
class _Stats:
    started: float
    statements: int = 0
    denied: int = 0
    rows: SessionRows = field(default_factory=SessionRows)  # the row budgets' allowance


class _HeldRows(RowMeter):
    """A `RowMeter` whose hold asks for approval of the statement's text."""

    __slots__ = ("bridge", "statement")

    def __init__(self, bridge: MySQLBridge, statement: _Statement,
                 budgets: tuple[RowBudget, ...], allowance: SessionRows) -> None:
        super().__init__(budgets, allowance)
        self.bridge = bridge
        self.statement = statement

    async def hold(self) -> Verdict:
        return await self.bridge._hold_rows(self)


def _messages(decision: Decision, effect: str) -> list[str]:
    return [r.message for r in decision.reasons if r.effect == effect and r.message]


def _seconds(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


class _Statement:
    """One decided statement: what its audit records say."""

    def __init__(self, bridge: MySQLBridge, ctx: SessionContext, sql: str, decision_id: str,
                 decision: Decision) -> None:
        self.bridge = bridge
        self.ctx = ctx
        self.sql = sql
        self.decision_id = decision_id
        self.decision = decision
        self.approval: dict[str, Any] | None = None
        self.masked: set[str] = set()
        self.held_after_rows: int | None = None  # where a row budget held its results

    async def record(self, **outcome: Any) -> None:
        text = self.sql if len(self.sql) <= MAX_RECORDED_TEXT else (
            self.sql[:MAX_RECORDED_TEXT] + " …[truncated]")
        payload = {
            "text": text, "effect": self.decision.effect,
            "reasons": [r.to_dict() for r in self.decision.reasons],
            "masked": sorted(self.masked),
            "masks": [f"{m.column}:{m.method}" for m in self.decision.masks],
            "approval": self.approval, "policy_revision": self.decision.policy_revision,
            "resource": self.bridge.resource.name, "database": self.ctx.database,
            **({"held_after_rows": self.held_after_rows}
               if self.held_after_rows is not None else {}),
            **outcome,
        }
        await self.bridge.recorder.append("statement", payload, subject=self.ctx.user,
                                          session_id=self.ctx.session_id,
                                          decision_id=self.decision_id or None)
        stats = self.bridge._sessions.get(self.ctx.session_id)
        if stats is not None:
            stats.statements += 1

    async def denied(self, message: str, rows: int | None = None) -> Verdict:
        """Record the denial, then answer it (the record is durable first); `rows` the rows
        the client got before (a row budget's hold)."""
        await self.record(error=f"1142: permission denied by policy: {message}", rows=rows,
                          duration_ms=None, tag="")
        stats = self.bridge._sessions.get(self.ctx.session_id)
        if stats is not None:
            stats.denied += 1
        return Verdict("deny", message, self.decision_id)

    async def completed(self, outcome: StatementOutcome) -> None:
        error = (f"{outcome.error_code}: {outcome.error_message}" if outcome.error_code
                 else None)
        await self.record(tag=outcome.tag, rows=outcome.rows, error=error,
                          duration_ms=round(outcome.duration * 1000, 3))

    def column_method(self, rules: MaskRules) -> Any:
        """The masking method of each result column: a plain reference (the server names its
        `org_table`/`org_name`) by the rules; a computed column (no `org_name`) of a
        statement whose text names a masked column is redacted, since its origin is not
        traced here (fail closed); other computed columns get only the PAN backstop."""
        named = {w.lower() for w in _WORD.findall(self.sql)}
        computed = "redact" if named & rules.columns else None

        def method(column: ColumnDefinition) -> str | None:
            if column.org_name:
                found = rules.method(column.schema, column.org_table or column.table,
                                     column.org_name)
            else:
                found = computed
            if found is not None:
                table = column.org_table or column.table
                self.masked.add(f"{table}.{column.org_name or column.name}")
            return found

        return method


class MySQLBridge:
    """The MySQL proxy's decide hook and session hooks (`hooks()` gives them as ProxyConfig
    keyword arguments). `hold` bounds how long a session waits for an approval."""

    def __init__(self, client: Any, *, resource: Resource, recorder: AuditRecorder,
                 approvals: ApprovalGate | None = None) -> None:
        self.client = client
        self.resource = resource
        self.recorder = recorder
        self.approvals = approvals
        self._sessions: dict[str, _Stats] = {}

    def hooks(self) -> dict[str, Any]:
        return {"decide": self.decide, "session_started": self.session_started,
                "session_ended": self.session_ended, "refused": self.refused}

    async def session_started(self, ctx: SessionContext) -> None:
        await self.recorder.append("session.start", {
            "protocol": "mysql", "resource": self.resource.to_input(),
            "database": ctx.database, "user": ctx.user, "requested_user": ctx.requested_user,
            "groups": list(ctx.groups), "claims": dict(ctx.claims),
            "auth_method": ctx.auth_method, "tls": ctx.tls,
            "client_addr": ctx.client_addr, "application_name": ctx.application_name,
        }, subject=ctx.user, session_id=ctx.session_id)
        self._sessions[ctx.session_id] = _Stats(time.monotonic())

    async def session_ended(self, ctx: SessionContext, reason: str) -> None:
        stats = self._sessions.pop(ctx.session_id, None)
        payload: dict[str, Any] = {"reason": reason, "user": ctx.user}
        if stats is not None:
            payload.update(statements=stats.statements, denied=stats.denied,
                           duration_ms=round((time.monotonic() - stats.started) * 1000, 1))
        await self.recorder.append("session.end", payload, subject=ctx.user,
                                   session_id=ctx.session_id)

    def input_document(self, sql: str, ctx: SessionContext) -> dict[str, Any]:
        return {
            "subject": {"id": ctx.user, "groups": list(ctx.groups),
                        "claims": dict(ctx.claims)},
            "resource": self.resource.to_input(),
            "command": {"protocol": "mysql", "raw": sql},
            "session": {"id": ctx.session_id, "client_addr": ctx.client_addr, "tls": ctx.tls,
                        "application_name": ctx.application_name},
        }

    async def refused(self, text: str, reason: str, ctx: SessionContext) -> Verdict:
        decision = Decision("deny", (Reason(PROXY_POLICY, reason),))
        return await _Statement(self, ctx, text, "", decision).denied(reason)

    async def decide(self, sql: str, ctx: SessionContext) -> Verdict:
        decision_id, decision = await self.client.adecide(self.input_document(sql, ctx))
        statement = _Statement(self, ctx, sql, decision_id, decision)
        if decision.effect == "deny":
            return await statement.denied("; ".join(_messages(decision, "deny"))
                                          or "denied by policy")
        if decision.effect == "review" and immediate_reviews(decision):
            return await self._review(statement)
        return self._allow(statement, budgets=row_budgets(decision))

    def _allow(self, statement: _Statement, *, once: bool = False,
               budgets: tuple[RowBudget, ...] = ()) -> Verdict:
        masks = statement.decision.masks
        method = None
        if masks:
            rules = MaskRules.of(tuple((m.column, m.method) for m in masks))
            method = statement.column_method(rules)
        rows = None
        if budgets:
            stats = self._stats(statement.ctx)

            def rows() -> _HeldRows:
                return _HeldRows(self, statement, budgets, stats.rows)

        return Verdict("allow", decision_id=statement.decision_id, column_method=method,
                       on_complete=statement.completed, single_execution=once, rows=rows)

    def _stats(self, ctx: SessionContext) -> _Stats:
        stats = self._sessions.get(ctx.session_id)
        if stats is None:  # no session_started (a bare bridge in tests): count all the same
            stats = self._sessions[ctx.session_id] = _Stats(time.monotonic())
        return stats

    async def _hold_rows(self, meter: _HeldRows) -> Verdict:
        """The hold of a row budget: an approval already given for the text is used at once;
        else a request is filed and awaited as for a review. Allow: the rest flows."""
        statement = meter.statement
        statement.held_after_rows = meter.held_at = meter.sent
        exceeded = meter.exceeded() or meter.budgets
        reasons = list(dict.fromkeys(b.reason.message for b in exceeded)) or [
            "row budget exceeded"]
        verdict = await self._approval(statement, reasons, [b.reason for b in exceeded],
                                       rows=meter.sent)
        if verdict.effect == "allow":
            meter.release()
        return verdict

    async def _review(self, statement: _Statement) -> Verdict:
        """Held before it runs; an approval covers one execution."""
        decision = statement.decision
        review = list(immediate_reviews(decision))
        reasons = [r.message for r in review if r.message] or ["approval required"]
        if self.approvals is None:
            return await statement.denied("; ".join(reasons) + " (no approval store is "
                                          "configured, so it cannot be approved)")
        standing = await self._standing(statement)
        if isinstance(standing, Verdict):
            return standing
        if standing:
            return self._allow(statement, once=True)

        async def hold() -> Verdict:
            return await self._approval(statement, reasons, review)

        return Verdict("review", "; ".join(reasons), statement.decision_id, hold=hold)

    async def _standing(self, statement: _Statement) -> bool | Verdict:
        """Whether an approval already given for the text (a rule's window) was used now;
        a denial when the store fails."""
        assert self.approvals is not None
        who = Subject(statement.ctx.user, tuple(statement.ctx.groups))
        try:
            standing = await self.approvals.use_standing(who, statement.sql)
        except Exception as exc:
            log.error("approvals store failed: %s", exc)
            return await statement.denied("approval required (the approvals store is "
                                          f"unavailable: {exc})")
        if standing is None:
            return False
        statement.approval = {"id": standing.id, "approver": standing.decided_by,
                              "status": "approved", "standing": True}
        return True

    async def _approval(self, statement: _Statement, reasons: list[str],
                        review: list[Reason], rows: int | None = None) -> Verdict:
        """File (or find) the approval request for the statement's text, wait for it up to
        the gate's timeout, and answer allow (the approval used) or a recorded denial that
        names the request and how to approve it."""
        gate = self.approvals
        if gate is None:
            return await statement.denied("; ".join(reasons) + " (no approval store is "
                                          "configured, so it cannot be approved)", rows)
        if rows is not None:
            standing = await self._standing(statement)
            if isinstance(standing, Verdict):
                return standing
            if standing:
                return Verdict("allow", decision_id=statement.decision_id)
        who = Subject(statement.ctx.user, tuple(statement.ctx.groups))
        approvers = list(dict.fromkeys(a for r in review for a in r.approvers))
        windows = [w for w in (parse_window(r.window) for r in review) if w is not None]
        try:
            request = await asyncio.shield(gate.request(
                who, self.resource.to_input(), statement.sql, reasons, approvers,
                min(windows) if windows else None, statement.ctx.session_id))
        except asyncio.CancelledError:
            await asyncio.shield(statement.record(
                error="08006: the client disconnected while the statement awaited approval",
                rows=rows, duration_ms=None, tag=""))
            raise
        except Exception as exc:
            log.error("session %s: approval request not filed: %s", statement.ctx.session_id,
                      exc)
            return await statement.denied("; ".join(reasons) + f" (the approval request "
                                          f"could not be filed: {exc})", rows)
        statement.approval = {"id": request.id, "status": "pending"}
        log.info("session %s: statement held for approval %s", statement.ctx.session_id,
                 request.id)
        try:
            final = await gate.wait(request.id)
            status = final.status_at(datetime.now(UTC))
            if status in ("pending", "expired"):
                status = "expired"
                final = await gate.release(final, "expired",
                                           f"not approved within {_seconds(gate.timeout)}")
            else:
                final = await gate.release(final)
            statement.approval = {"id": final.id, "status": status,
                                  "approver": final.decided_by, "comment": final.comment}
            used = status == "approved" and await gate.consume(who, statement.sql)
        except asyncio.CancelledError as exc:
            why = str(exc.args[0]) if exc.args and exc.args[0] else "the session ended"
            with contextlib.suppress(Exception):
                await asyncio.shield(gate.release(request, "withdrawn", why))
                statement.approval = {"id": request.id, "status": "withdrawn"}
            await asyncio.shield(statement.record(
                error=f"08006: {why} while the statement awaited approval", rows=rows,
                duration_ms=None, tag=""))
            raise
        except Exception as exc:
            log.error("session %s: approval %s could not be awaited: %s",
                      statement.ctx.session_id, request.id, exc)
            with contextlib.suppress(Exception):
                await gate.release(request, "withdrawn", f"the hold failed: {exc}")
            return await statement.denied(f"approval {request.id} could not be awaited: {exc}",
                                          rows)
        if used:
            if rows is not None:
                return Verdict("allow", decision_id=statement.decision_id)
            return self._allow(statement, once=True)
        if status == "denied":
            comment = f": {final.comment}" if final.comment else ""
            return await statement.denied(f"approval {final.id} was denied by "
                                          f"{final.decided_by}{comment}", rows)
        if status == "approved":
            return await statement.denied(f"approval {final.id} could not be used", rows)
        return await statement.denied(
            f"statement held for approval: {'; '.join(reasons)}. Approval request "
            f"{request.id} (approvers: {', '.join(request.approver_groups)}) was not "
            f"given within {_seconds(gate.timeout)} and has expired; to approve the next "
            f"attempt: {gate.hint('<ID>')}", rows)
