"""What an enforcement point writes to the audit trail, and what a decided statement is.

Owns: `Resource` (`input.resource`, and the resource of every record), the `session.start` /
`session.end` records and a session's counters (`SessionStats`), and `Statement`: one decided
statement or command, its `statement` records (text, decision id, effect, reasons, masks,
approval, duration, rows, error: one per execution, durable before the client sees its end)
and its denial (recorded before the client is told). Every record goes through the shared
group-commit `AuditRecorder`. Must not: decide, hold, or know a protocol's wire.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from adapters.enforcement.hooks import SessionContext, StatementOutcome, StatementVerdict
from adapters.enforcement.row_budget import SessionRows, immediate_reviews
from adapters.enforcement.verdict_cache import CachedDecision, SessionDecisions
from engine.decision import Decision

if TYPE_CHECKING:
    from adapters.enforcement.bridge import Enforcer

PROXY_POLICY = "ordinance.proxy"  # the `policy` of the reasons of an adapter's own denials
MAX_RECORDED_TEXT = 64 * 1024


@dataclass(frozen=True)
class Resource:
    """What policies see as `input.resource`. `type` is the protocol's kind of resource
    (`postgres`, `mysql`: the SQL dialect of its statements; `ssh`)."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    type: str = field(kw_only=True)

    def to_input(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "labels": dict(self.labels)}


@dataclass
class SessionStats:
    """One session's counters (for `session.end`), its row budgets' allowance and its
    verdict cache."""

    started: float = field(default_factory=time.monotonic)
    statements: int = 0
    denied: int = 0
    rows: SessionRows = field(default_factory=SessionRows)
    decisions: SessionDecisions = field(default_factory=SessionDecisions)


class Masked(Protocol):
    """What a statement's result masking tells its record: the columns it masked, as
    "name:method"."""

    masked: set[str]


class Statement:
    """One decided statement (or command): what its audit records say.

    `approval_text` is what an approval is for (an SQL EXECUTE's: its PREPARE's text); `once`
    says the verdict covers one execution (a review; a prepared statement decided again at
    each execution); `rewritten` is the text sent instead of `text`, `held_after_rows` where a
    row budget held its results; `command` the fields the adapter added to `input.command`
    besides `protocol` and `raw` (recorded, so the trail can be replayed); `cached` the
    session's verdict-cache entry of its shape (its Decision; None when it is not cached)."""

    def __init__(self, enforcer: Enforcer, ctx: SessionContext, text: str, decision_id: str,
                 decision: Decision, command: Mapping[str, Any] | None = None) -> None:
        self.enforcer = enforcer
        self.command = dict(command) if command else None
        self.ctx = ctx
        self.sql = text
        self.decision_id = decision_id
        self.decision = decision
        self.masking: Masked | None = None
        self.rewritten: str | None = None
        self.approval: dict[str, Any] | None = None
        self.held_after_rows: int | None = None
        self.approval_text = text
        self.once = bool(immediate_reviews(decision))  # (a row budget alone is no approval)
        self.cached: CachedDecision | None = None

    def payload(self, details: Mapping[str, Any] | None = None,
                **outcome: Any) -> dict[str, Any]:
        """The record of the statement; `details` (the protocol's fields of an outcome) never
        replace its own."""
        text = self.sql if len(self.sql) <= MAX_RECORDED_TEXT else (
            self.sql[:MAX_RECORDED_TEXT] + " …[truncated]")
        return {
            **(details or {}),
            "text": text, "effect": self.decision.effect,
            "reasons": [r.to_dict() for r in self.decision.reasons],
            "masked": sorted(self.masking.masked) if self.masking is not None else [],
            "masks": [f"{m.column}:{m.method}" for m in self.decision.masks],
            "approval": self.approval, "policy_revision": self.decision.policy_revision,
            "resource": self.enforcer.resource.name, "database": self.ctx.database,
            **({"held_after_rows": self.held_after_rows}
               if self.held_after_rows is not None else {}),
            **({"rewritten": True} if self.rewritten is not None else {}),
            **({"prepared": self.approval_text} if self.approval_text != self.sql else {}),
            **({"command": self.command} if self.command else {}),
            **outcome,
        }

    async def record(self, details: Mapping[str, Any] | None = None, **outcome: Any) -> None:
        await self.enforcer.recorder.append(
            "statement", self.payload(details, **outcome), subject=self.ctx.user,
            session_id=self.ctx.session_id, decision_id=self.decision_id or None)
        stats = self.enforcer.session_stats(self.ctx)
        if stats is not None:
            stats.statements += 1

    async def denied(self, message: str, rows: int | None = None) -> StatementVerdict:
        """Record the denial, then answer it (so the record is durable first); `rows` the
        rows the client got before (a row budget's hold)."""
        await self.record(error=f"42501: permission denied by policy: {message}", rows=rows,
                          duration_ms=None, tag="")
        stats = self.enforcer.session_stats(self.ctx)
        if stats is not None:
            stats.denied += 1
        return StatementVerdict.deny(message, decision_id=self.decision_id)

    async def completed(self, outcome: StatementOutcome) -> None:
        """The record of one execution (the verdict's `on_complete`)."""
        error = (f"{outcome.error_code}: {outcome.error_message}" if outcome.error_code
                 else None)
        await self.record(outcome.details, tag=outcome.tag, rows=outcome.rows, error=error,
                          duration_ms=round(outcome.duration * 1000, 3),
                          suspended=outcome.suspended or None)
        self.held_after_rows = None


def session_start_payload(protocol: str, resource: Resource,
                          ctx: SessionContext) -> dict[str, Any]:
    return {
        "protocol": protocol, "resource": resource.to_input(),
        "database": ctx.database, "user": ctx.user, "requested_user": ctx.requested_user,
        "groups": list(ctx.groups), "claims": dict(ctx.claims),
        "auth_method": ctx.auth_method, "tls": ctx.tls,
        "client_addr": ctx.client_addr, "application_name": ctx.application_name,
    }
