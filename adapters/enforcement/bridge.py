"""The policy bridge every adapter shares: a statement or command -> a Decision -> a verdict.

Owns: the input document (`{subject, resource, command{protocol, raw, ...}, session}`; the
protocol is the session's), asking the `DecisionClient`, the session records (`session.start`
/ `session.end` with the counters), the adapter's own denials (`refused`: recorded, no policy
asked), and the Decision -> `StatementVerdict` step: deny (recorded, then answered), review (a
hold through `holds.Holds`; approvals are per execution), allow (with the statement's record
as `on_complete`, its row budgets as `rows`, and `single_execution` after an approval), and
a session's verdict cache (`verdict_cache`: a statement shape decided before is not asked
about again). The mask rules of a Decision are shared per masks tuple (`mask_rules`).
Subclasses add a protocol's masking of results (PostgreSQL:
`adapters.postgres.bridge.PolicyBridge`).

Using it from an adapter (see docs/architecture.md, "A new adapter"):

    enforcer = Enforcer(client, resource=Resource(name, labels, type="ssh"),
                        recorder=recorder, approvals=gate)
    await enforcer.session_started(ctx)            # ctx.protocol = "ssh"; raising: refuse
    verdict = await enforcer.decide(text, ctx)      # per statement / command line
    if verdict.effect == "review" and verdict.hold:  # held: notify(text) tells the client
        verdict = await verdict.hold(notify)        # cancel with HOLD_CANCELLED / _GONE
    ...run it if allow...; await verdict.on_complete(StatementOutcome(...))  # the record
    await enforcer.session_ended(ctx, reason)

Must not: evaluate policy (the Decision is the answer), or parse a wire protocol. Failing
closed: a decision or audit failure denies the statement, or once it ran withholds its result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from adapters.enforcement.holds import HeldRows, Holds
from adapters.enforcement.hooks import RowLimit, SessionContext, StatementVerdict
from adapters.enforcement.mask_rules import MaskRules
from adapters.enforcement.records import (
    PROXY_POLICY,
    Resource,
    SessionStats,
    Statement,
    session_start_payload,
)
from adapters.enforcement.review import ApprovalGate
from adapters.enforcement.row_budget import immediate_reviews, row_budgets
from adapters.enforcement.transforms import scrub_server_text
from adapters.enforcement.verdict_cache import decision_key
from engine.audit.recorder import AuditRecorder
from engine.decision import Decision, Mask, Reason
from engine.service.decision_log import new_decision_id

log = logging.getLogger("ordinance.adapters.enforcement.bridge")

MAX_CACHED_RULES = 4096
RowSource = Callable[[], RowLimit]
"""Makes the `RowLimit` of one result source (`StatementVerdict.rows`)."""


def deny_messages(decision: Decision) -> str:
    """The deny reasons of a Decision, as a denial's message."""
    return "; ".join(r.message for r in decision.reasons
                     if r.effect == "deny" and r.message) or "denied by policy"


class Enforcer:
    """The decide hook and session hooks of one enforcement point (`hooks()` gives them as
    keyword arguments of the adapter's config)."""

    def __init__(self, client: Any, *, resource: Resource, recorder: AuditRecorder,
                 approvals: ApprovalGate | None = None) -> None:
        self.client = client
        self.resource = resource
        self.recorder = recorder
        self.approvals = approvals
        self.holds = Holds(approvals, resource)
        self._sessions: dict[str, SessionStats] = {}
        self._rules_by_masks: dict[int, tuple[tuple[Mask, ...], MaskRules]] = {}

    def hooks(self) -> dict[str, Any]:
        return {"decide": self.decide, "session_started": self.session_started,
                "session_ended": self.session_ended, "refused": self.refused,
                "scrub_server_text": scrub_server_text}

    # -- sessions ---------------------------------------------------------------------------

    async def session_started(self, ctx: SessionContext) -> None:
        """The `session.start` record (durable before the client is told it is in)."""
        await self.recorder.append("session.start", session_start_payload(
            ctx.protocol, self.resource, ctx), subject=ctx.user, session_id=ctx.session_id)
        self._sessions[ctx.session_id] = SessionStats()

    async def session_ended(self, ctx: SessionContext, reason: str) -> None:
        stats = self._sessions.pop(ctx.session_id, None)
        payload: dict[str, Any] = {"reason": reason, "user": ctx.user}
        if stats is not None:
            payload.update(statements=stats.statements, denied=stats.denied,
                           duration_ms=round((time.monotonic() - stats.started) * 1000, 1))
        await self.recorder.append("session.end", payload, subject=ctx.user,
                                   session_id=ctx.session_id)

    def session_stats(self, ctx: SessionContext) -> SessionStats | None:
        """The counters of a started session (None before `session_started` / after end)."""
        return self._sessions.get(ctx.session_id)

    def allowance(self, ctx: SessionContext) -> SessionStats:
        """The session's counters, made if the session was never started (a bare enforcer in
        tests: its row budgets count all the same)."""
        stats = self._sessions.get(ctx.session_id)
        if stats is None:
            stats = self._sessions[ctx.session_id] = SessionStats()
        return stats

    # -- statements -------------------------------------------------------------------------

    def input_document(self, text: str, ctx: SessionContext,
                       command: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The input document of `text` in this session; `command` adds protocol fields to
        `input.command` (SSH: `sftp`), never replacing `protocol` or `raw`."""
        return {
            "subject": {"id": ctx.user, "groups": list(ctx.groups),
                        "claims": dict(ctx.claims)},
            "resource": self.resource.to_input(),
            "command": {**(command or {}), "protocol": ctx.protocol, "raw": text},
            "session": {"id": ctx.session_id, "client_addr": ctx.client_addr, "tls": ctx.tls,
                        "application_name": ctx.application_name},
        }

    def statement(self, ctx: SessionContext, text: str, decision_id: str, decision: Decision,
                  command: Mapping[str, Any] | None = None) -> Statement:
        """A decided statement (subclasses make their own kind)."""
        return Statement(self, ctx, text, decision_id, decision, command)

    async def ask(self, text: str, ctx: SessionContext,
                  command: Mapping[str, Any] | None = None) -> Statement:
        """Ask the policies about `text`: the decided statement. A statement of a shape the
        session had decided under the active policy revision gets that Decision again, with
        a decision id of its own (`verdict_cache`), when the client allows reuse."""
        stats = self._sessions.get(ctx.session_id)
        reuse = self._reuse() if stats is not None else None
        key = None
        if reuse is not None:
            assert stats is not None
            key = decision_key(text, ctx.protocol, reuse[1], command)
            entry = stats.decisions.get(key, reuse[0]) if key is not None else None
            if entry is not None:
                hit = entry.decision
                decision = Decision(hit.effect, hit.reasons, hit.masks, hit.policy_revision,
                                    {**hit.command, "raw": text}, cached=True)
                statement = self.statement(ctx, text, new_decision_id(), decision, command)
                statement.cached = entry
                return statement
        decision_id, decision = await self.client.adecide(
            self.input_document(text, ctx, command))
        statement = self.statement(ctx, text, decision_id, decision, command)
        if key is not None:
            assert stats is not None and reuse is not None
            statement.cached = stats.decisions.put(key, decision, reuse[0])
        return statement

    def _reuse(self) -> tuple[str, bool] | None:
        """The client's `reuse()`: (revision, literal-insensitive), or None (ask every
        time; a client without the method, as the gRPC one)."""
        reuse = getattr(self.client, "reuse", None)
        return reuse() if reuse is not None else None

    async def refused(self, text: str, reason: str, ctx: SessionContext) -> StatementVerdict:
        """A message the adapter denied itself (no policy was asked): recorded as a denial."""
        decision = Decision("deny", (Reason(PROXY_POLICY, reason),))
        return await self.statement(ctx, text, "", decision).denied(reason)

    async def decide(self, text: str, ctx: SessionContext,
                     command: Mapping[str, Any] | None = None) -> StatementVerdict:
        """The verdict of one statement or command line (`command`: extra `input.command`
        fields). A Decision's masks are not applied here: an adapter that masks results
        subclasses and builds its masker from `rules(decision.masks)`."""
        statement = await self.ask(text, ctx, command)
        if statement.decision.effect == "deny":
            return await statement.denied(deny_messages(statement.decision))
        return await self.verdict(statement, lambda rows: self.allow(statement, rows))

    async def verdict(self, statement: Statement, allow: Callable[[RowSource | None],
                                                                  StatementVerdict]
                      ) -> StatementVerdict:
        """A not-denied statement's verdict: a hold when a review reason holds it before it
        runs (then `allow(None)` once approved: the approval covers its row budgets too),
        else `allow(rows)` with the meters of its row budgets."""
        if statement.decision.effect == "review" and immediate_reviews(statement.decision):
            return await self.holds.review(statement, lambda: allow(None))
        return allow(self.row_limit(statement))

    def allow(self, statement: Statement, rows: RowSource | None = None,
              **masking: Any) -> StatementVerdict:
        """The allow verdict of a statement: recorded at completion (`on_complete`), metered
        by `rows`, once per execution after an approval; `masking` are the adapter's
        `StatementVerdict.allow` masking arguments (masker, resolve_columns, ...)."""
        return StatementVerdict.allow(
            decision_id=statement.decision_id, on_complete=statement.completed,
            single_execution=statement.once, rows=rows, **masking)

    def row_limit(self, statement: Statement) -> RowSource | None:
        """The meter factory of a statement's results under its own row budgets."""
        budgets = row_budgets(statement.decision)
        if not budgets:
            return None
        allowance = self.allowance(statement.ctx).rows
        return lambda: HeldRows(self.holds, statement, statement.sql, budgets, allowance)

    def rules(self, masks: tuple[Mask, ...]) -> MaskRules:
        """The MaskRules of a Decision's masks. Decisions from the engine's cache share their
        masks tuple, so it is looked up by identity first (the entry keeps it alive)."""
        entry = self._rules_by_masks.get(id(masks))
        if entry is not None and entry[0] is masks:
            return entry[1]
        rules = MaskRules.of(tuple((m.column, m.method) for m in masks))
        if len(self._rules_by_masks) >= MAX_CACHED_RULES:
            self._rules_by_masks.clear()
        self._rules_by_masks[id(masks)] = (masks, rules)
        return rules
