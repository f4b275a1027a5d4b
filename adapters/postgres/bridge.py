"""The policy bridge: each statement the proxy sees -> a Decision -> a `StatementVerdict`.

Owns: the input document of a statement (`{subject, resource, command, session}`), asking the
`DecisionClient`, and turning the Decision into what the proxy applies:

- deny: 42501 with the deny reasons (the proxy adds the decision id in DETAIL);
- review: a hold that files (or finds) an approval request, tells the client its id and how to
  approve it in a NOTICE, waits for the verdict (other sessions are not affected) until
  `ApprovalGate.timeout`, and then runs the statement exactly as sent (the approval is used,
  bound to the requester and the text's SHA-256) or denies it; an approval that already covers
  the text (a rule's `window`) is used at once. A request nobody waits for any more is closed:
  withdrawn when the client cancels (57014) or leaves, expired when the hold times out;
- masks: a `ResultMasking` for the statement's results (`column_masks`), after the checks that
  deny what cannot be masked with certainty (`mask_unseen`: views, statistics, code attached
  to tables), and the statement's text with its other uses of masked columns replaced by
  their masked values (`mask_rewrite`); the card-number backstop runs on every result;
- row budgets (review reasons with `rows`, `adapters.row_budget`): when they are the only
  review reasons the statement runs with a `RowLimit` per result source, charged to the
  session's allowance; the proxy holds it at the first row past it, and the hold files an
  approval request like a review (same NOTICE, timeout, withdrawal) for the text that made the
  rows (a FETCH's cursor's DECLARE, an EXECUTE's PREPARE: `sql_names`), whose approval lets
  the rest of that source through;
- recording: `session.start` / `session.end` and one `statement` record per result (text, decision
  id, effect, reasons, approval, duration, rows, error), durable before the client sees the end
  of the result (the proxy awaits `on_complete`); denials are recorded before the error is sent.

Must not: evaluate policy (the Decision is the answer), or parse the wire protocol (the proxy
does). Failing closed: a decision, catalog or audit failure denies the statement or, once it
ran, withholds its result (see the proxy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from adapters.postgres.catalog import Catalog, CatalogError
from adapters.postgres.column_masks import (
    OPAQUE,
    CatalogView,
    MaskingDenied,
    MaskRules,
    OutputMask,
    ResultMasking,
    TransformCache,
    check_outputs,
    lineage_schema,
    masked_schema,
    scrub_server_text,
    statement_relations,
    trace_statement,
)
from adapters.postgres.copy_statement import CopyStatement, CopySyntaxError, parse_copy
from adapters.postgres.hooks import (
    CANCELED_BY_USER,
    HOLD_CANCELLED,
    CopyLayout,
    Notify,
    RowLimit,
    SessionContext,
    StatementOutcome,
    StatementVerdict,
)
from adapters.postgres.mask_rewrite import (
    MaskedSchema,
    MaskUseDenied,
    copies_prepared_statement,
    rewrite_statement,
    unparsed_words,
)
from adapters.postgres.mask_unseen import check_unseen
from adapters.postgres.review import ApprovalGate, parse_window
from adapters.postgres.sql_names import name_actions
from adapters.row_budget import (
    RowBudget,
    RowMeter,
    SessionRows,
    immediate_reviews,
    row_budgets,
)
from engine.approvals import ApprovalRequest
from engine.audit.recorder import AuditRecorder
from engine.decision import Decision, Mask, Reason
from engine.facts.fingerprint import literal_fingerprint
from engine.facts.sql import called_names, sqlglot_text
from engine.identity import Subject

log = logging.getLogger("ordinance.adapters.postgres.bridge")

DDL_KINDS = frozenset({"create", "alter", "drop"})
PROXY_POLICY = "ordinance.proxy"  # the `policy` of the reasons of the proxy's own denials
_STARTS_WITH_COPY = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*copy\b",
                               re.IGNORECASE | re.DOTALL)
MAX_RECORDED_TEXT = 64 * 1024
# Words without which a statement sqlglot does not parse evaluates no expression over rows
_EVALUATING_WORDS = frozenset({"select", "where", "using", "check", "when", "values", "with",
                               "returning", "default", "execute", "do", "generated"})
MAX_CACHED_PLANS = 4096
MAX_SESSION_NAMES = 1024  # cursors and SQL-prepared statements tracked per session


class _TooManyNames(Exception):
    """A session defines more cursors / prepared statements than the proxy tracks."""


@dataclass(frozen=True)
class Resource:
    """What policies see as `input.resource`."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    type: str = "postgres"

    def to_input(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "labels": dict(self.labels)}


@dataclass
class _Prepared:
    """An SQL-PREPAREd statement of a session: the text that prepared it, and whether that
    text needed approval (then each EXECUTE needs one: `free` executions are covered by the
    approval the PREPARE itself got)."""

    text: str
    reviewed: bool
    free: int = 0


@dataclass
class _SessionStats:
    started: float
    statements: int = 0
    denied: int = 0
    prepared: dict[str, _Prepared] = field(default_factory=dict)  # by name, once prepared
    rows: SessionRows = field(default_factory=SessionRows)  # the row budgets' allowance
    # cursors and SQL-prepared statements -> what made them: (kind, name) -> _Source
    names: dict[tuple[str, str], _Source] = field(default_factory=dict)


class _Source:
    """What a cursor or SQL-prepared statement was made by: its text (what a row hold asks
    approval for) and its row budgets; a cursor keeps one meter over all its FETCHes."""

    def __init__(self, sql: str, budgets: tuple[RowBudget, ...], cursor: bool) -> None:
        self.sql = sql
        self.budgets = budgets
        self.cursor = cursor
        self.meter: _HeldRows | None = None
        self.approved = False  # its statement was approved before it ran


class _HeldRows(RowMeter):
    """A `RowMeter` whose hold asks for approval (`hooks.RowLimit`). `statement` is the one
    whose results it meters now (a cursor's meter moves from FETCH to FETCH); `sql` is the
    text approval is asked for."""

    __slots__ = ("bridge", "sql", "statement")

    def __init__(self, bridge: PolicyBridge, statement: _Statement, sql: str,
                 budgets: tuple[RowBudget, ...], allowance: SessionRows) -> None:
        super().__init__(budgets, allowance)
        self.bridge = bridge
        self.statement = statement
        self.sql = sql

    async def hold(self, notify: Notify) -> StatementVerdict:
        return await self.bridge._hold_rows(self, notify)


@dataclass(frozen=True)
class _MaskingPlan:
    """What `_masking` found for a statement that is not a COPY: reused for the statements
    with the same policy revision, mask rules and literal fingerprint (their facts, relations
    and lineage are the same) while the catalog entries it was made from are fresh and the
    catalog was not invalidated (DDL)."""

    view: CatalogView  # shared: ResultMasking copies it before adding to it
    computed: list[OutputMask] | None
    generation: int
    fresh_until: float
    transforms: TransformCache  # what ResultMasking chose per column, shared
    # the masks of the statement's relations, when its text is rewritten (each text anew: the
    # edits are at its own positions) or another text of the shape may be (ORDER BY ordinals)
    rewrites: MaskedSchema | None = None


def _messages(decision: Decision, effect: str) -> list[str]:
    return [r.message for r in decision.reasons if r.effect == effect and r.message]


class _Statement:
    """One decided statement: what its audit records say."""

    def __init__(self, bridge: PolicyBridge, ctx: SessionContext, sql: str, decision_id: str,
                 decision: Decision) -> None:
        self.bridge = bridge
        self.ctx = ctx
        self.sql = sql
        self.decision_id = decision_id
        self.decision = decision
        self.masking: ResultMasking | None = None
        self.rewritten: str | None = None  # what is sent instead of `sql` (mask_rewrite)
        self.approval: dict[str, Any] | None = None
        self.held_after_rows: int | None = None  # where a row budget held its results
        self.ddl = bool(DDL_KINDS & set(decision.command.get("kinds") or ()))
        self.approval_text = sql  # what an approval is for (an EXECUTE's: its PREPARE's text)
        # what runs needs an approval per execution (a review, or an EXECUTE of a statement
        # whose PREPARE was one): an extended-protocol statement is decided again at each Bind
        self.once = bool(immediate_reviews(decision))  # (a row budget alone is no approval)
        self.prepares = [str(st["prepared_name"]) for st in decision.command.get(
            "statements") or () if st.get("prepared_name") is not None and not st["nested"]]

    def payload(self, **outcome: Any) -> dict[str, Any]:
        text = self.sql if len(self.sql) <= MAX_RECORDED_TEXT else (
            self.sql[:MAX_RECORDED_TEXT] + " …[truncated]")
        return {
            "text": text, "effect": self.decision.effect,
            "reasons": [r.to_dict() for r in self.decision.reasons],
            "masked": sorted(self.masking.masked) if self.masking is not None else [],
            "masks": [f"{m.column}:{m.method}" for m in self.decision.masks],
            "approval": self.approval, "policy_revision": self.decision.policy_revision,
            "resource": self.bridge.resource.name, "database": self.ctx.database,
            **({"held_after_rows": self.held_after_rows}
               if self.held_after_rows is not None else {}),
            **({"rewritten": True} if self.rewritten is not None else {}),
            **({"prepared": self.approval_text} if self.approval_text != self.sql else {}),
            **outcome,
        }

    async def record(self, **outcome: Any) -> None:
        await self.bridge.recorder.append(
            "statement", self.payload(**outcome), subject=self.ctx.user,
            session_id=self.ctx.session_id, decision_id=self.decision_id or None)
        stats = self.bridge._sessions.get(self.ctx.session_id)
        if stats is not None:
            stats.statements += 1

    async def denied(self, message: str, rows: int | None = None) -> StatementVerdict:
        """Record the denial, then answer it (so the record is durable first); `rows` the
        rows the client got before (a row budget's hold)."""
        await self.record(error=f"42501: permission denied by policy: {message}", rows=rows,
                          duration_ms=None, tag="")
        stats = self.bridge._sessions.get(self.ctx.session_id)
        if stats is not None:
            stats.denied += 1
        return StatementVerdict.deny(message, decision_id=self.decision_id)

    async def completed(self, outcome: StatementOutcome) -> None:
        if self.ddl:
            self.bridge.catalog.invalidate()  # the DDL has run now
        if outcome.tag == "PREPARE" and self.prepares:  # in the order they run
            stats = self.bridge._sessions.get(self.ctx.session_id)
            reviewed = bool(immediate_reviews(self.decision))
            if stats is not None:
                stats.prepared[self.prepares.pop(0)] = _Prepared(self.sql, reviewed,
                                                                 free=int(reviewed))
        error = (f"{outcome.error_code}: {outcome.error_message}" if outcome.error_code
                 else None)
        await self.record(tag=outcome.tag, rows=outcome.rows, error=error,
                          duration_ms=round(outcome.duration * 1000, 3),
                          suspended=outcome.suspended or None)
        self.held_after_rows = None


class PolicyBridge:
    """The proxy's decide hook and session hooks (`hooks()` gives them as ProxyConfig
    keyword arguments)."""

    def __init__(self, client: Any, *, resource: Resource, catalog: Catalog,
                 recorder: AuditRecorder, approvals: ApprovalGate | None = None) -> None:
        self.client = client
        self.resource = resource
        self.catalog = catalog
        self.recorder = recorder
        self.approvals = approvals
        self._sessions: dict[str, _SessionStats] = {}
        self._plans: dict[tuple[Any, ...], _MaskingPlan] = {}
        self._rules_by_masks: dict[int, tuple[tuple[Mask, ...], MaskRules]] = {}

    def hooks(self) -> dict[str, Any]:
        return {"decide": self.decide, "session_started": self.session_started,
                "session_ended": self.session_ended, "refused": self.refused,
                "scrub_server_text": scrub_server_text}

    # -- sessions ---------------------------------------------------------------------------

    async def session_started(self, ctx: SessionContext) -> None:
        await self.recorder.append("session.start", {
            "protocol": "postgres", "resource": self.resource.to_input(),
            "database": ctx.database, "user": ctx.user, "requested_user": ctx.requested_user,
            "groups": list(ctx.groups), "claims": dict(ctx.claims),
            "auth_method": ctx.auth_method, "tls": ctx.tls,
            "client_addr": ctx.client_addr, "application_name": ctx.application_name,
        }, subject=ctx.user, session_id=ctx.session_id)
        self._sessions[ctx.session_id] = _SessionStats(time.monotonic())

    async def session_ended(self, ctx: SessionContext, reason: str) -> None:
        stats = self._sessions.pop(ctx.session_id, None)
        payload: dict[str, Any] = {"reason": reason, "user": ctx.user}
        if stats is not None:
            payload.update(statements=stats.statements, denied=stats.denied,
                           duration_ms=round((time.monotonic() - stats.started) * 1000, 1))
        await self.recorder.append("session.end", payload, subject=ctx.user,
                                   session_id=ctx.session_id)

    # -- statements -------------------------------------------------------------------------

    def input_document(self, sql: str, ctx: SessionContext) -> dict[str, Any]:
        return {
            "subject": {"id": ctx.user, "groups": list(ctx.groups),
                        "claims": dict(ctx.claims)},
            "resource": self.resource.to_input(),
            "command": {"protocol": "postgres", "raw": sql},
            "session": {"id": ctx.session_id, "client_addr": ctx.client_addr, "tls": ctx.tls,
                        "application_name": ctx.application_name},
        }

    async def refused(self, text: str, reason: str, ctx: SessionContext) -> StatementVerdict:
        """A message the proxy denied itself (no policy was asked): recorded as a denial."""
        decision = Decision("deny", (Reason(PROXY_POLICY, reason),))
        return await _Statement(self, ctx, text, "", decision).denied(reason)

    async def decide(self, sql: str, ctx: SessionContext) -> StatementVerdict:
        document = self.input_document(sql, ctx)
        decision_id, decision = await self.client.adecide(document)
        decided = await self._prepared(_Statement(self, ctx, sql, decision_id, decision))
        if isinstance(decided, StatementVerdict):
            return decided
        statement, layout = decided
        through = _through_views(statement)
        if through:
            # A view is read as the tables under it: decided again with them in
            # `command.view_tables` (what a row budget on those tables needs to see).
            document["command"]["view_tables"] = through
            decision_id, decision = await self.client.adecide(document)
            decided = await self._prepared(_Statement(self, ctx, sql, decision_id, decision))
            if isinstance(decided, StatementVerdict):
                return decided
            statement, layout = decided
        try:
            rows = self._row_sources(statement)
        except _TooManyNames as exc:
            return await statement.denied(str(exc))
        decision = statement.decision  # (an EXECUTE may have become a review: _executes)
        if decision.effect == "review" and immediate_reviews(decision):
            return await self._review(statement, layout)
        return self._allow(statement, layout, rows)

    async def _prepared(self, statement: _Statement
                        ) -> StatementVerdict | tuple[_Statement, CopyLayout | None]:
        """The denial of a decided statement, or it with its masking prepared (and the
        layout of a COPY)."""
        decision, ctx, sql = statement.decision, statement.ctx, statement.sql
        if statement.ddl:
            self.catalog.invalidate()
        executed = [str(st["executed_name"]) for st in decision.command.get("statements") or ()
                    if st.get("executed_name") is not None]
        if executed and decision.effect != "deny":
            refusal = await self._executes(statement, executed)
            if refusal is not None:
                return await statement.denied(refusal)
            decision = statement.decision
        if decision.effect == "deny":
            return await statement.denied("; ".join(_messages(decision, "deny"))
                                          or "denied by policy")
        try:
            statement.masking, layout, statement.rewritten = await self._masking(sql, decision)
        except (MaskingDenied, MaskUseDenied) as exc:
            return await statement.denied(str(exc))
        except CatalogError as exc:
            log.error("session %s: catalog unavailable: %s", ctx.session_id, exc)
            return await statement.denied(f"masks cannot be applied: {exc}")
        except Exception:
            log.exception("session %s: masking could not be prepared", ctx.session_id)
            return await statement.denied("masks cannot be applied: internal error (see the "
                                          "proxy log)")
        return statement, layout

    async def _executes(self, statement: _Statement, names: list[str]) -> str | None:
        """An EXECUTE of SQL-prepared statements: each must have been prepared in this
        session; one whose PREPARE needed approval needs one for each execution (the first
        is covered by the PREPARE's own), asked for its PREPARE's text, decided anew. Makes
        `statement` a review for that text when so; returns why it is denied, or None."""
        stats = self._sessions.get(statement.ctx.session_id)
        prepared = [stats.prepared.get(name) if stats is not None else None for name in names]
        for name, entry in zip(names, prepared, strict=True):
            if entry is None:
                return (f"prepared statement {name!r} was not prepared through this proxy "
                        "session")
        asking = [entry for entry in prepared if entry is not None and entry.reviewed]
        if not asking:
            return None
        if len(asking) > 1 or len([s for s in statement.decision.command.get("statements")
                                   or () if not s["nested"]]) > 1:
            return ("a prepared statement that needs approval must be executed once, in a "
                    "statement of its own")
        entry = asking[0]
        statement.once = True
        if entry.free:
            entry.free -= 1
            return None
        _, again = await self.client.adecide(self.input_document(entry.text,
                                                                 statement.ctx))
        if again.effect == "deny":
            return "; ".join(_messages(again, "deny")) or "denied by policy"
        if again.effect == "review":
            own = statement.decision
            statement.decision = Decision(
                "review", own.reasons + tuple(r for r in again.reasons if r.effect == "review"),
                own.masks, own.policy_revision, own.command)
            statement.approval_text = entry.text
        return None

    def _allow(self, statement: _Statement, layout: CopyLayout | None,
               rows: Callable[[], RowLimit] | None = None) -> StatementVerdict:
        masking = statement.masking
        assert masking is not None
        return StatementVerdict.allow(
            masking.masker, decision_id=statement.decision_id, copy_layout=layout,
            on_complete=statement.completed, resolve_columns=masking.resolve_columns,
            withhold_error_values=masking.view.could_mask(masking.rules),
            rewritten=statement.rewritten, single_execution=statement.once, rows=rows)

    # -- row budgets ------------------------------------------------------------------------

    def _stats(self, ctx: SessionContext) -> _SessionStats:
        stats = self._sessions.get(ctx.session_id)
        if stats is None:  # no session_started (a bare bridge in tests): count all the same
            stats = self._sessions[ctx.session_id] = _SessionStats(time.monotonic())
        return stats

    def _row_sources(self, statement: _Statement) -> Callable[[], RowLimit] | None:
        """The meter factory of a statement's results: its own row budgets and those of the
        cursors it FETCHes / statements it EXECUTEs. Also notes the cursors and prepared
        statements it defines (and forgets those it drops), with its budgets."""
        sql = statement.sql
        budgets = row_budgets(statement.decision)
        actions = name_actions(sql)
        if not budgets and not actions:
            return None
        stats = self._stats(statement.ctx)
        cursor: _Source | None = None
        inherited: list[RowBudget] = []
        origin = sql  # what a hold asks approval for: the text that made the rows
        for action in actions:
            kinds = ("cursor", "statement") if action.kind is None else (action.kind,)
            if action.action == "drop_all":
                for key in [k for k in stats.names if k[0] in kinds]:
                    del stats.names[key]
            elif action.action == "drop":
                stats.names.pop((kinds[0], action.name), None)
            elif action.action == "define":
                key = (kinds[0], action.name)
                if key not in stats.names and len(stats.names) >= MAX_SESSION_NAMES:
                    if budgets:  # forgetting another's budget would let its FETCHes free
                        raise _TooManyNames(
                            f"this session holds {MAX_SESSION_NAMES} cursors and prepared "
                            "statements the proxy tracks; CLOSE or DEALLOCATE some first")
                    continue  # no budget: an older name's is kept (stricter)
                stats.names[key] = _Source(action.statement, budgets, kinds[0] == "cursor")
            else:
                source = stats.names.get((kinds[0], action.name))
                if source is not None and source.budgets and not source.approved:
                    if not inherited:
                        origin = source.sql
                    inherited.extend(source.budgets)
                    if source.cursor and len(actions) == 1:
                        cursor = source  # one FETCH: the cursor's own meter goes on
        if cursor is not None and not budgets:
            return lambda: self._cursor_meter(cursor, statement, stats.rows)
        every = tuple(dict.fromkeys((*budgets, *inherited)))
        if not every:
            return None
        return lambda: _HeldRows(self, statement, origin if not budgets else sql, every,
                                 stats.rows)

    def _cursor_meter(self, cursor: _Source, statement: _Statement,
                      allowance: SessionRows) -> RowLimit:
        if cursor.meter is None:
            cursor.meter = _HeldRows(self, statement, cursor.sql, cursor.budgets, allowance)
        cursor.meter.statement = statement
        return cursor.meter

    def _approved_sources(self, statement: _Statement) -> None:
        """A statement approved before it ran: the cursors and prepared statements it
        defines are covered by that approval (their FETCHes / EXECUTEs are not metered)."""
        stats = self._sessions.get(statement.ctx.session_id)
        if stats is None:
            return
        for action in name_actions(statement.sql):
            if action.action == "define" and action.kind is not None:
                source = stats.names.get((action.kind, action.name))
                if source is not None:
                    source.approved = True

    async def _hold_rows(self, meter: _HeldRows, notify: Notify) -> StatementVerdict:
        """The hold of a row budget (`RowLimit.hold`): an approval already given for the
        text is used at once; else a request is filed and awaited as for a review."""
        statement = meter.statement
        statement.held_after_rows = meter.sent
        meter.held_at = meter.sent
        exceeded = meter.exceeded() or meter.budgets
        reasons = list(dict.fromkeys(b.reason.message for b in exceeded)) or [
            "row budget exceeded"]
        rules = ", ".join(f"{b.rows} rows per session under {b.rule}" for b in exceeded)
        if self.approvals is None:
            return await statement.denied("; ".join(reasons) + " (no approval store is "
                                          "configured, so it cannot be approved)", meter.sent)
        who = Subject(statement.ctx.user, tuple(statement.ctx.groups))
        try:
            standing = await self.approvals.use_standing(who, meter.sql)
        except Exception as exc:
            log.error("approvals store failed: %s", exc)
            return await statement.denied("; ".join(reasons) + " (the approvals store is "
                                          "unavailable)", meter.sent)
        if standing is not None:
            statement.approval = {"id": standing.id, "approver": standing.decided_by,
                                  "status": "approved", "standing": True}
            meter.release()
            return StatementVerdict.allow(decision_id=statement.decision_id)

        def approved() -> StatementVerdict:
            meter.release()
            return StatementVerdict.allow(decision_id=statement.decision_id)

        return await self._hold(
            statement, who, reasons, notify, approved, text=meter.sql, rows=meter.sent,
            review=[b.reason for b in exceeded],
            held=f"statement held for approval after {meter.sent} rows ({rules})")

    def _rules(self, masks: tuple[Mask, ...]) -> MaskRules:
        """The MaskRules of a Decision's masks. Decisions from the engine's cache share their
        masks tuple, so it is looked up by identity first (the entry keeps it alive)."""
        entry = self._rules_by_masks.get(id(masks))
        if entry is not None and entry[0] is masks:
            return entry[1]
        rules = MaskRules.of(tuple((m.column, m.method) for m in masks))
        if len(self._rules_by_masks) >= MAX_CACHED_PLANS:
            self._rules_by_masks.clear()
        self._rules_by_masks[id(masks)] = (masks, rules)
        return rules

    async def _masking(self, sql: str, decision: Decision
                       ) -> tuple[ResultMasking, CopyLayout | None, str | None]:
        """The statement's result masking, COPY layout, and the text to send instead of
        `sql` when masked columns are used outside its plain result columns."""
        command = decision.command or {}
        rules = self._rules(decision.masks)
        copy = self._copy(sql, command)
        layout = copy.layout if copy is not None else None
        binary_table_copy = copy is not None and copy.binary and copy.table is not None
        if not rules and not binary_table_copy:
            return ResultMasking(self.catalog, rules, CatalogView()), layout, None
        catalog = self.catalog
        key: tuple[Any, ...] | None = None
        if copy is None:  # (a COPY's layout is in its literals)
            fingerprint = literal_fingerprint(sql)
            key = (decision.policy_revision, rules,
                   "?" + fingerprint if fingerprint is not None else "=" + sql)
            plan = self._plans.get(key)
            if plan is not None and plan.generation == catalog.generation \
                    and catalog.still_fresh(plan.fresh_until):
                again = (rewrite_statement(sql, plan.rewrites).text
                         if plan.rewrites is not None else None)
                return ResultMasking(catalog, rules, plan.view, computed=plan.computed,
                                     transforms=plan.transforms), None, again
            if rules:
                await self._check_unseen_reads(sql, rules)
        generation = catalog.generation
        seen: list[float] = []
        names = [str(t) for t in command.get("tables") or ()]
        if copy is not None:  # also when the facts could not parse it
            if copy.table is not None:
                names.append(copy.table)
            if copy.query is not None:
                from engine.facts import enrich_command

                names.extend(str(t) for t in enrich_command(
                    {"protocol": "postgres", "raw": copy.query}, {"type": "postgres"}
                ).get("tables") or ())
        relations, view = await statement_relations(catalog, names, seen)
        if rules:
            await self._check_defined_functions(sql, view)
            await check_unseen(catalog, command.get("statements") or (),
                               called_names(sqlglot_text(sql, "postgres")), view, rules, copy)
        computed = None
        copy_methods: list[str | None] | None = None
        rewrites: MaskedSchema | None = None
        rewritten: str | None = None
        if view.could_mask(rules):
            await catalog.types(c.type_oid for r in view.relations.values() for c in r.columns)
            masked = masked_schema(view, rules, catalog)
            schema = lineage_schema(relations)
            if copy is not None and copy.direction == "to":
                if copy.query is not None:
                    rewritten = self._copy_rewrite(sql, copy, masked)
                    masks = check_outputs(trace_statement(copy.query, schema), relations,
                                          view, rules)
                    copy_methods = [m.method for m in masks] if masks is not None else None
                elif copy.table is not None:
                    copy_methods = self._copy_table_methods(copy, relations, view, rules)
            elif copy is None:
                rewrite = rewrite_statement(sql, masked)
                rewritten = rewrite.text
                if rewritten is not None or rewrite.literal_dependent:
                    rewrites = masked
                computed = check_outputs(trace_statement(sql, schema), relations, view, rules)
        copy_types = self._copy_table_types(copy, relations) if binary_table_copy else None
        if key is not None:
            if len(self._plans) >= MAX_CACHED_PLANS:
                self._plans.clear()
            plan = _MaskingPlan(view, computed, generation, catalog.fresh_until(seen),
                                TransformCache(), rewrites)
            self._plans[key] = plan
            return ResultMasking(catalog, rules, view, computed=computed,
                                 transforms=plan.transforms), layout, rewritten
        masking = ResultMasking(catalog, rules, view, computed=computed,
                                copy_methods=copy_methods, copy_types=copy_types)
        return masking, layout, rewritten

    async def _check_unseen_reads(self, sql: str, rules: MaskRules) -> None:
        """Deny what would read masked columns where the rewrite cannot see it: a CREATE TABLE
        … AS EXECUTE (a prepared statement's plain result columns, unmasked), a statement
        sqlglot does not parse that names a masked column or a relation that has one."""
        if copies_prepared_statement(sql):
            raise MaskUseDenied("CREATE TABLE … AS EXECUTE would store a prepared statement's "
                                "rows with their masked columns unmasked; use CREATE TABLE … "
                                "AS SELECT")
        words = unparsed_words(sql)
        if words is None:
            return
        named = sorted(words & rules.columns)
        if named:
            raise MaskUseDenied(f"masked column {named[0]} is used in a statement that cannot "
                                "be parsed with certainty, so it cannot be rewritten to use "
                                "its masked value")
        if not words & _EVALUATING_WORDS:
            return  # (`ALTER TABLE cards DISABLE ROW LEVEL SECURITY`, `LOCK TABLE cards`)
        _, view = await statement_relations(self.catalog, words)
        read = sorted(r.name for r in view.relations.values() if rules.covers(r))
        if read:
            raise MaskUseDenied(f"relation {read[0]} has masked columns and is named in a "
                                "statement that cannot be parsed with certainty, so their "
                                "uses cannot be rewritten to their masked values")

    async def _check_defined_functions(self, sql: str, view: CatalogView) -> None:
        """Deny a call, in the statement or in a view it reads, of a function defined in the
        database: its body reads tables where no rewrite reaches, so `WHERE get_pan(id) LIKE
        '4111%'` would answer on the clear value (built-in functions only see what the
        rewritten statement passes them)."""
        defined = await self.catalog.user_functions()
        if not defined:
            return
        called = called_names(sqlglot_text(sql, "postgres"))
        if called is None:
            raise MaskUseDenied("the statement cannot be read to find the functions it calls")
        for oid in view.views:
            called |= self.catalog.view_calls(oid)
        hit = sorted(called & defined)
        if hit:
            raise MaskUseDenied(f"function {hit[0]} is defined in the database, not built in: "
                                "its body may read masked columns unmasked, where the proxy "
                                "cannot rewrite them")

    @staticmethod
    def _copy_rewrite(sql: str, copy: CopyStatement, masked: MaskedSchema) -> str | None:
        """The COPY with its query rewritten (`mask_rewrite`); rows copied to STDOUT are
        masked by the proxy, to a file or program they are not, so none of them is plain."""
        assert copy.query is not None
        start = copy.query_start
        if sql[start:start + len(copy.query)] != copy.query:
            raise MaskUseDenied("the query of this COPY cannot be located in its text")
        inner = rewrite_statement(copy.query, masked, client=copy.target == "stdout").text
        if inner is None:
            return None
        return sql[:start] + inner + sql[start + len(copy.query):]

    @staticmethod
    def _copy_relation(copy: CopyStatement, relations: dict[str, Any]) -> Any:
        assert copy.table is not None
        name = copy.table.lower()
        return relations.get(name) or relations.get(name.rpartition(".")[2])

    @classmethod
    def _copy_table_types(cls, copy: CopyStatement | None, relations: dict[str, Any]
                          ) -> list[int] | None:
        """The type OIDs of a table COPY's columns (so binary string values can be scanned)."""
        if copy is None or copy.table is None:
            return None
        relation = cls._copy_relation(copy, relations)
        if relation is None:
            return None
        if not copy.columns:
            return [c.type_oid for c in relation.columns]
        found = [relation.column_named(name) for name in copy.columns]
        return [c.type_oid if c is not None else 0 for c in found]

    @staticmethod
    def _copy(sql: str, command: Mapping[str, Any]) -> CopyStatement | None:
        """The COPY statement `sql` is, read here whatever the facts say (sqlglot cannot parse
        every COPY, and a policy set need not deny what it cannot parse)."""
        if "copy" not in (command.get("kinds") or ()) and not _STARTS_WITH_COPY.match(sql):
            return None
        try:
            copy = parse_copy(sql)
        except CopySyntaxError as exc:
            raise MaskingDenied(f"the COPY statement's options cannot be read with certainty "
                                f"({exc}), so its data cannot be masked") from exc
        if copy is None and any(s.get("kind") == "copy" and s.get("direction") == "to"
                                for s in command.get("statements") or ()):
            raise MaskingDenied("a COPY TO must be sent as a statement of its own, so its "
                                "data can be masked")
        return copy

    @classmethod
    def _copy_table_methods(cls, copy: CopyStatement, relations: dict[str, Any],
                            view: CatalogView, rules: MaskRules) -> list[str | None] | None:
        relation = cls._copy_relation(copy, relations)
        if relation is None:
            return None  # no such table: the server will say so
        names = list(copy.columns) if copy.columns else [c.name for c in relation.columns]
        methods: list[str | None] = []
        for column in names:
            method, opaque = view.column_method(rules, relation, column)
            methods.append(OPAQUE if opaque else method)
        return methods

    # -- review -----------------------------------------------------------------------------

    async def _review(self, statement: _Statement, layout: CopyLayout | None
                      ) -> StatementVerdict:
        """A hold before the statement runs. Its approval covers the statement's row budgets
        too (it runs unmetered), and the cursors and prepared statements it makes."""
        decision = statement.decision
        reasons = [r.message for r in immediate_reviews(decision) if r.message] or [
            "approval required"]
        if self.approvals is None:
            return await statement.denied("; ".join(reasons) + " (no approval store is "
                                          "configured, so it cannot be approved)")
        who = Subject(statement.ctx.user, tuple(statement.ctx.groups))
        try:
            standing = await self.approvals.use_standing(who, statement.approval_text)
        except Exception as exc:
            log.error("approvals store failed: %s", exc)
            return await statement.denied("; ".join(reasons) + " (the approvals store is "
                                          "unavailable)")
        def approved() -> StatementVerdict:
            self._approved_sources(statement)
            return self._allow(statement, layout)

        if standing is not None:
            statement.approval = {"id": standing.id, "approver": standing.decided_by,
                                  "status": "approved", "standing": True}
            return approved()

        async def hold(notify: Notify) -> StatementVerdict:
            return await self._hold(statement, who, reasons, notify, approved)

        return StatementVerdict("review", message="; ".join(reasons),
                                decision_id=statement.decision_id, hold=hold)

    async def _hold(self, statement: _Statement, who: Subject, reasons: list[str],
                    notify: Notify, approved: Callable[[], StatementVerdict], *,
                    text: str | None = None, rows: int | None = None,
                    review: Sequence[Reason] | None = None,
                    held: str = "statement held for approval") -> StatementVerdict:
        """File (or find) the approval request for `text` (the statement's own by default)
        under the approvers and windows of `review` (its decision's review reasons by
        default), tell the client (`held`: ...), wait, and answer `approved()` or a recorded
        denial (`rows`: what the client got before)."""
        gate = self.approvals
        assert gate is not None
        text = statement.approval_text if text is None else text
        if review is None:
            review = [r for r in statement.decision.reasons if r.effect == "review"]
        approvers = list(dict.fromkeys(a for r in review for a in r.approvers))
        windows = [w for w in (parse_window(r.window) for r in review) if w is not None]
        filing = asyncio.ensure_future(gate.request(
            who, self.resource.to_input(), text, reasons, approvers,
            min(windows) if windows else None, statement.ctx.session_id))
        try:
            request = await asyncio.shield(filing)
        except asyncio.CancelledError as exc:  # what is being filed is filed all the same
            await asyncio.shield(self._abandon_filing(statement, filing, exc))
            raise
        except Exception as exc:
            log.error("session %s: approval request not filed: %s", statement.ctx.session_id,
                      exc)
            return await statement.denied("; ".join(reasons) + f" (the approval request "
                                          f"could not be filed: {exc})", rows)
        statement.approval = {"id": request.id, "status": "pending"}
        claim = _Claim(gate, request)
        try:
            await notify(
                f"{held}: {'; '.join(reasons)}. Approval request "
                f"{request.id} (approvers: {', '.join(request.approver_groups)}). To release "
                f"it: {gate.hint(request.id)} -- waiting up to {_seconds(gate.timeout)}.")
            final = await gate.wait(request.id)
            status = final.status_at(datetime.now(UTC))
            if status in ("pending", "expired"):
                status = "expired"
                why = f"not approved within {_seconds(gate.timeout)}"
                final = await claim.release("expired", why, final) or final
            else:
                await claim.release(None, "", final)
            statement.approval = {"id": final.id, "status": status,
                                  "approver": final.decided_by, "comment": final.comment}
            used = status == "approved" and await gate.consume(who, text)
        except asyncio.CancelledError as exc:
            await asyncio.shield(self._abandon(statement, claim, exc))
            raise
        except Exception as exc:  # the client cannot be told, or the store failed
            log.error("session %s: approval %s could not be awaited: %s",
                      statement.ctx.session_id, request.id, exc)
            with contextlib.suppress(Exception):
                await claim.release("withdrawn", f"the hold failed: {exc}")
            return await statement.denied(f"approval {request.id} could not be awaited: {exc}",
                                          rows)
        if used:
            return approved()
        if status == "approved":
            return await statement.denied(f"approval {final.id} could not be used", rows)
        if status == "denied":
            comment = f": {final.comment}" if final.comment else ""
            return await statement.denied(f"approval {final.id} was denied by "
                                          f"{final.decided_by}{comment}", rows)
        if status == "withdrawn":  # by a hold elsewhere that shared the request
            return await statement.denied(f"approval {final.id} was withdrawn before a verdict "
                                          f"({final.comment or 'no reason given'})", rows)
        return await statement.denied(f"approval {final.id} was not given within "
                                      f"{_seconds(gate.timeout)}", rows)

    async def _abandon_filing(self, statement: _Statement,
                              filing: asyncio.Future[ApprovalRequest],
                              cancel: asyncio.CancelledError) -> None:
        """Cancelled while its request was being filed: wait for the filing, then withdraw
        what it filed (or only record the statement when nothing was)."""
        try:
            request = await filing
        except Exception:
            await self._record_abandoned(statement, cancel)
            return
        assert self.approvals is not None
        statement.approval = {"id": request.id, "status": "pending"}
        await self._abandon(statement, _Claim(self.approvals, request), cancel)

    async def _abandon(self, statement: _Statement, claim: _Claim,
                       cancel: asyncio.CancelledError) -> None:
        """Nobody waits for the held statement any more: withdraw its approval request (unless
        another hold waits for it, or a verdict came first), then record the statement."""
        why = _cancel_reason(cancel)
        try:
            closed = await claim.release("withdrawn", why)
        except Exception as exc:
            log.error("session %s: approval %s not withdrawn: %s", statement.ctx.session_id,
                      claim.request.id, exc)
        else:
            if closed is not None and statement.approval is not None:
                statement.approval["status"] = closed.stored_status
        await self._record_abandoned(statement, cancel)

    async def _record_abandoned(self, statement: _Statement,
                                cancel: asyncio.CancelledError) -> None:
        why = _cancel_reason(cancel)
        if why == HOLD_CANCELLED:  # what the client gets too (the proxy answers 57014)
            error = f"57014: {CANCELED_BY_USER}"
        else:
            error = f"08006: {why} while the statement awaited approval"
        try:
            await statement.record(error=error, rows=None, duration_ms=None, tag="")
        except Exception as exc:
            log.error("session %s: abandoned statement not recorded: %s",
                      statement.ctx.session_id, exc)


class _Claim:
    """One hold's claim on its approval request (`ApprovalGate.request`), released once."""

    def __init__(self, gate: ApprovalGate, request: ApprovalRequest) -> None:
        self.gate = gate
        self.request = request
        self.held = True

    async def release(self, closing: Literal["withdrawn", "expired"] | None, reason: str,
                      current: ApprovalRequest | None = None) -> ApprovalRequest | None:
        """The request as it then is; None when it was released before."""
        if not self.held:
            return None
        self.held = False
        return await self.gate.release(current or self.request, closing, reason)


def _through_views(statement: _Statement) -> list[str]:
    """The tables (`schema.name`) a statement reads only through the views it names, as the
    catalog traced them for masking (nothing when no masking needed the catalog)."""
    masking = statement.masking
    relations = masking.view.relations.values() if masking is not None else ()
    if not any(r.is_view for r in relations):
        return []
    named = {str(t).lower() for t in statement.decision.command.get("tables") or ()}
    return sorted({f"{r.schema}.{r.name}" for r in relations if not r.is_view
                   and r.name.lower() not in named
                   and f"{r.schema}.{r.name}".lower() not in named})


def _cancel_reason(cancel: asyncio.CancelledError) -> str:
    """Why the proxy cancelled a hold (`HOLD_CANCELLED`, `HOLD_CLIENT_GONE`, ...)."""
    return str(cancel.args[0]) if cancel.args and cancel.args[0] else "the session ended"


def _seconds(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"
