"""The PostgreSQL proxy's policy bridge: the shared `Enforcer` plus what is PostgreSQL's.

`adapters.enforcement.bridge.Enforcer` owns the input document, the Decision -> verdict step
(deny, review hold, allow), holds, row budgets and the session and statement records. This
subclass adds what needs PostgreSQL's catalog and SQL:

- masks: a `ResultMasking` for the statement's results (`column_masks`), after the checks that
  deny what cannot be masked with certainty (`mask_unseen`: views, statistics, code attached
  to tables), and the statement's text with its other uses of masked columns replaced by
  their masked values (`mask_rewrite`); the card-number backstop runs on every result; a
  COPY's layout and its columns' methods (`copy_statement`);
- a view read as the tables under it: decided again with them in `command.view_tables`;
- a session's SQL-prepared statements (an EXECUTE of a reviewed one asks again, for its
  PREPARE's text) and cursors (`sql_names`): a row budget's hold asks approval for the text
  that made the rows (a FETCH's cursor's DECLARE, an EXECUTE's PREPARE);
- DDL invalidates the catalog cache (when decided, and again once it ran).

Must not: evaluate policy, or parse the wire protocol (the proxy does). Failing closed: a
decision, catalog or audit failure denies the statement or, once it ran, withholds its result
(see the proxy).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from adapters.enforcement.bridge import Enforcer, RowSource, deny_messages
from adapters.enforcement.holds import HeldRows
from adapters.enforcement.hooks import SessionContext, StatementOutcome, StatementVerdict
from adapters.enforcement.mask_rules import MaskRules
from adapters.enforcement.records import Resource, Statement
from adapters.enforcement.review import ApprovalGate
from adapters.enforcement.row_budget import (
    RowBudget,
    SessionRows,
    immediate_reviews,
    row_budgets,
)
from adapters.postgres.catalog import Catalog, CatalogError
from adapters.postgres.column_masks import (
    OPAQUE,
    CatalogView,
    MaskingDenied,
    OutputMask,
    ResultMasking,
    TransformCache,
    check_outputs,
    lineage_schema,
    masked_schema,
    statement_relations,
    trace_statement,
)
from adapters.postgres.copy_statement import CopyStatement, CopySyntaxError, parse_copy
from adapters.postgres.descriptors import CopyLayout
from adapters.postgres.mask_rewrite import (
    MaskedSchema,
    MaskUseDenied,
    copies_prepared_statement,
    rewrite_statement,
    unparsed_words,
)
from adapters.postgres.mask_unseen import check_unseen
from adapters.postgres.sql_names import name_actions
from engine.audit.recorder import AuditRecorder
from engine.decision import Decision
from engine.facts.fingerprint import literal_fingerprint
from engine.facts.sql import UNKNOWN_SETTING, called_names, sqlglot_text

log = logging.getLogger("ordinance.adapters.postgres.bridge")

DDL_KINDS = frozenset({"create", "alter", "drop"})
_STARTS_WITH_COPY = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*copy\b",
                               re.IGNORECASE | re.DOTALL)
# Words without which a statement sqlglot does not parse evaluates no expression over rows
_EVALUATING_WORDS = frozenset({"select", "where", "using", "check", "when", "values", "with",
                               "returning", "default", "execute", "do", "generated"})
MAX_CACHED_PLANS = 4096
MAX_SESSION_NAMES = 1024  # cursors and SQL-prepared statements tracked per session
# Settings that change how PostgreSQL reads string literals (off, a backslash escapes a quote);
# the proxy's facts, fingerprints and rewrites read every text with them as they start ("*":
# a setting whose name the statement computes could be one of them).
LEXICAL_SETTINGS = frozenset({"standard_conforming_strings", "backslash_quote", UNKNOWN_SETTING})


class _TooManyNames(Exception):
    """A session defines more cursors / prepared statements than the proxy tracks."""


@dataclass
class _Prepared:
    """An SQL-PREPAREd statement of a session: the text that prepared it, and whether that
    text needed approval (then each EXECUTE needs one: `free` executions are covered by the
    approval the PREPARE itself got)."""

    text: str
    reviewed: bool
    free: int = 0


@dataclass
class _SqlSession:
    """A session's SQL-level names: its SQL-prepared statements and its cursors."""

    prepared: dict[str, _Prepared] = field(default_factory=dict)  # by name, once prepared
    # cursors and SQL-prepared statements -> what made them: (kind, name) -> _Source
    names: dict[tuple[str, str], _Source] = field(default_factory=dict)


class _Source:
    """What a cursor or SQL-prepared statement was made by: its text (what a row hold asks
    approval for) and its row budgets; a cursor keeps one meter over all its FETCHes."""

    def __init__(self, sql: str, budgets: tuple[RowBudget, ...], cursor: bool) -> None:
        self.sql = sql
        self.budgets = budgets
        self.cursor = cursor
        self.meter: HeldRows | None = None
        self.approved = False  # its statement was approved before it ran


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



@dataclass(frozen=True, slots=True)
class _Reuse:
    """What the allowed statements of one shape in one session share (kept in the session's
    verdict cache entry): the masking plan (None: the decision masks nothing) and whether
    server errors quote values to withhold, and its row budgets."""

    plan: _MaskingPlan | None
    withhold: bool
    budgets: tuple[RowBudget, ...]


class _SqlStatement(Statement):
    """A decided SQL statement: DDL invalidates the catalog once it ran; a PREPARE that ran
    is noted with its session (an EXECUTE of it is checked against it)."""

    def __init__(self, bridge: PolicyBridge, ctx: SessionContext, sql: str, decision_id: str,
                 decision: Decision, command: Mapping[str, Any] | None = None) -> None:
        super().__init__(bridge, ctx, sql, decision_id, decision, command)
        self.bridge = bridge
        self.plan: _MaskingPlan | None = None  # the masking plan its masking came from

    @cached_property
    def ddl(self) -> bool:
        return bool(DDL_KINDS & set(self.decision.command.get("kinds") or ()))

    @cached_property
    def prepares(self) -> list[str]:
        """The names its SQL PREPAREs define, in the order they run (popped as they do)."""
        return [str(st["prepared_name"]) for st in self.decision.command.get("statements")
                or () if st.get("prepared_name") is not None and not st["nested"]]

    async def completed(self, outcome: StatementOutcome) -> None:
        if self.ddl:
            self.bridge.catalog.invalidate()  # the DDL has run now
        if outcome.tag == "PREPARE" and self.prepares:  # in the order they run
            session = self.bridge._sql_sessions.get(self.ctx.session_id)
            reviewed = bool(immediate_reviews(self.decision))
            if session is not None:
                session.prepared[self.prepares.pop(0)] = _Prepared(self.sql, reviewed,
                                                                   free=int(reviewed))
        await super().completed(outcome)


class PolicyBridge(Enforcer):
    """The PostgreSQL proxy's decide hook and session hooks (`hooks()` gives them as
    ProxyConfig keyword arguments)."""

    def __init__(self, client: Any, *, resource: Resource, catalog: Catalog,
                 recorder: AuditRecorder, approvals: ApprovalGate | None = None) -> None:
        super().__init__(client, resource=resource, recorder=recorder, approvals=approvals)
        self.catalog = catalog
        self._sql_sessions: dict[str, _SqlSession] = {}
        self._plans: dict[tuple[Any, ...], _MaskingPlan] = {}

    def statement(self, ctx: SessionContext, text: str, decision_id: str, decision: Decision,
                  command: Mapping[str, Any] | None = None) -> _SqlStatement:
        return _SqlStatement(self, ctx, text, decision_id, decision, command)

    async def session_started(self, ctx: SessionContext) -> None:
        await super().session_started(ctx)
        self._sql_sessions[ctx.session_id] = _SqlSession()

    async def session_ended(self, ctx: SessionContext, reason: str) -> None:
        self._sql_sessions.pop(ctx.session_id, None)
        await super().session_ended(ctx, reason)

    def _sql_session(self, ctx: SessionContext) -> _SqlSession:
        session = self._sql_sessions.get(ctx.session_id)
        if session is None:
            session = self._sql_sessions[ctx.session_id] = _SqlSession()
        return session

    # -- statements -------------------------------------------------------------------------

    async def _ask(self, sql: str, ctx: SessionContext,
                   command: Mapping[str, Any] | None) -> _SqlStatement:
        statement = await self.ask(sql, ctx, command)
        assert isinstance(statement, _SqlStatement)  # (made by `statement` below)
        return statement

    async def decide(self, sql: str, ctx: SessionContext,
                     command: Mapping[str, Any] | None = None) -> StatementVerdict:
        asked = await self._ask(sql, ctx, command)
        reuse = asked.cached.plan if asked.cached is not None else None
        if isinstance(reuse, _Reuse):
            verdict = await self._reused(asked, reuse)
            if verdict is not None:
                return verdict
        decided = await self._prepared(asked)
        if isinstance(decided, StatementVerdict):
            return decided
        statement, layout = decided
        through = _through_views(statement)
        if through:
            # A view is read as the tables under it: decided again with them in
            # `command.view_tables` (what a row budget on those tables needs to see).
            again = await self._ask(sql, ctx, {**(command or {}), "view_tables": through})
            decided = await self._prepared(again)
            if isinstance(decided, StatementVerdict):
                return decided
            statement, layout = decided
        try:
            rows = self._row_sources(statement)
        except _TooManyNames as exc:
            return await statement.denied(str(exc))
        decision = statement.decision  # (an EXECUTE may have become a review: _executes)
        if decision.effect == "review" and immediate_reviews(decision):
            def approved() -> StatementVerdict:
                # its approval covers its row budgets (it runs unmetered), and the cursors
                # and prepared statements it makes
                self._approved_sources(statement)
                return self._allow(statement, layout)

            return await self.holds.review(statement, approved)
        verdict = self._allow(statement, layout, rows)
        if statement.cached is not None and not through:
            self._keep(statement, verdict)
        return verdict

    def _keep(self, statement: _SqlStatement, verdict: StatementVerdict) -> None:
        """Keep what statements of this one's shape can reuse in this session (`_Reuse`),
        when nothing of its verdict is particular to this text or execution: allowed (no
        review but row budgets, which meter each statement anew), no COPY, no DDL, no cursor
        or prepared statement made or used (their session state changes), masked through a
        shared masking plan (or nothing to mask)."""
        decision = statement.decision
        if statement.ddl or statement.cached is None or decision.effect == "deny" or (
                decision.effect == "review" and immediate_reviews(decision)):
            return
        if statement.plan is None and self.rules(decision.masks):
            return
        command = decision.command
        if _STARTS_WITH_COPY.match(statement.sql) or "copy" in (command.get("kinds") or ()):
            return
        if any(st.get("executed_name") is not None or st.get("prepared_name") is not None
               for st in command.get("statements") or ()) or name_actions(statement.sql):
            return
        statement.cached.plan = _Reuse(statement.plan, verdict.withhold_error_values,
                                       row_budgets(decision))

    async def _reused(self, statement: _SqlStatement, reuse: _Reuse
                      ) -> StatementVerdict | None:
        """The verdict of a statement whose shape's verdict this session keeps: its masking
        from the kept plan while the catalog entries it was made from are fresh (else None:
        the full path decides, and reports what goes wrong)."""
        plan = reuse.plan
        catalog = self.catalog
        rules = self.rules(statement.decision.masks)
        if plan is None:
            statement.masking = ResultMasking(catalog, rules, CatalogView())
        else:
            if plan.generation != catalog.generation or not catalog.still_fresh(
                    plan.fresh_until):
                return None
            try:
                if plan.rewrites is not None:
                    statement.rewritten = rewrite_statement(statement.sql, plan.rewrites).text
            except Exception:  # (the full path denies with the reason)
                return None
            statement.masking = ResultMasking(catalog, rules, plan.view,
                                              computed=plan.computed,
                                              transforms=plan.transforms)
        if not reuse.budgets:
            return self._allow(statement, None, None, withhold=reuse.withhold)
        allowance = self.allowance(statement.ctx).rows
        budgets = reuse.budgets

        def rows() -> HeldRows:  # (as `_row_sources` makes it for a text that names nothing)
            return HeldRows(self.holds, statement, statement.sql, budgets, allowance)

        return self._allow(statement, None, rows, withhold=reuse.withhold)

    async def _prepared(self, statement: _SqlStatement
                        ) -> StatementVerdict | tuple[_SqlStatement, CopyLayout | None]:
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
            return await statement.denied(deny_messages(decision))
        lexical = _lexical_settings(decision.command)
        if lexical:
            return await statement.denied(
                f"setting {lexical[0]} is not allowed through the proxy: it changes how "
                "PostgreSQL reads string literals, and the proxy reads every statement (its "
                "policy facts, masking rewrites) with standard_conforming_strings on")
        try:
            statement.masking, layout, statement.rewritten, statement.plan = \
                await self._masking(sql, decision)
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

    async def _executes(self, statement: _SqlStatement, names: list[str]) -> str | None:
        """An EXECUTE of SQL-prepared statements: each must have been prepared in this
        session; one whose PREPARE needed approval needs one for each execution (the first
        is covered by the PREPARE's own), asked for its PREPARE's text, decided anew. Makes
        `statement` a review for that text when so; returns why it is denied, or None."""
        session = self._sql_sessions.get(statement.ctx.session_id)
        prepared = [session.prepared.get(name) if session is not None else None
                    for name in names]
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
            return deny_messages(again)
        if again.effect == "review":
            own = statement.decision
            statement.decision = Decision(
                "review", own.reasons + tuple(r for r in again.reasons if r.effect == "review"),
                own.masks, own.policy_revision, own.command)
            statement.approval_text = entry.text
        return None

    def _allow(self, statement: _SqlStatement, layout: CopyLayout | None,
               rows: RowSource | None = None, *, withhold: bool | None = None
               ) -> StatementVerdict:
        masking = statement.masking
        assert isinstance(masking, ResultMasking)
        if withhold is None:
            withhold = masking.view.could_mask(masking.rules)
        return self.allow(
            statement, rows, masker=masking.masker, copy_layout=layout,
            resolve_columns=masking.resolve_columns, withhold_error_values=withhold,
            rewritten=statement.rewritten)

    # -- row budgets ------------------------------------------------------------------------

    def _row_sources(self, statement: _SqlStatement) -> RowSource | None:
        """The meter factory of a statement's results: its own row budgets and those of the
        cursors it FETCHes / statements it EXECUTEs. Also notes the cursors and prepared
        statements it defines (and forgets those it drops), with its budgets."""
        sql = statement.sql
        budgets = row_budgets(statement.decision)
        actions = name_actions(sql)
        if not budgets and not actions:
            return None
        names = self._sql_session(statement.ctx).names
        allowance = self.allowance(statement.ctx).rows
        cursor: _Source | None = None
        inherited: list[RowBudget] = []
        origin = sql  # what a hold asks approval for: the text that made the rows
        for action in actions:
            kinds = ("cursor", "statement") if action.kind is None else (action.kind,)
            if action.action == "drop_all":
                for key in [k for k in names if k[0] in kinds]:
                    del names[key]
            elif action.action == "drop":
                names.pop((kinds[0], action.name), None)
            elif action.action == "define":
                key = (kinds[0], action.name)
                if key not in names and len(names) >= MAX_SESSION_NAMES:
                    if budgets:  # forgetting another's budget would let its FETCHes free
                        raise _TooManyNames(
                            f"this session holds {MAX_SESSION_NAMES} cursors and prepared "
                            "statements the proxy tracks; CLOSE or DEALLOCATE some first")
                    continue  # no budget: an older name's is kept (stricter)
                names[key] = _Source(action.statement, budgets, kinds[0] == "cursor")
            else:
                source = names.get((kinds[0], action.name))
                if source is not None and source.budgets and not source.approved:
                    if not inherited:
                        origin = source.sql
                    inherited.extend(source.budgets)
                    if source.cursor and len(actions) == 1:
                        cursor = source  # one FETCH: the cursor's own meter goes on
        if cursor is not None and not budgets:
            return lambda: self._cursor_meter(cursor, statement, allowance)
        every = tuple(dict.fromkeys((*budgets, *inherited)))
        if not every:
            return None
        return lambda: HeldRows(self.holds, statement, origin if not budgets else sql, every,
                                allowance)

    def _cursor_meter(self, cursor: _Source, statement: _SqlStatement,
                      allowance: SessionRows) -> HeldRows:
        if cursor.meter is None:
            cursor.meter = HeldRows(self.holds, statement, cursor.sql, cursor.budgets,
                                    allowance)
        cursor.meter.statement = statement
        return cursor.meter

    def _approved_sources(self, statement: _SqlStatement) -> None:
        """A statement approved before it ran: the cursors and prepared statements it
        defines are covered by that approval (their FETCHes / EXECUTEs are not metered)."""
        session = self._sql_sessions.get(statement.ctx.session_id)
        if session is None:
            return
        for action in name_actions(statement.sql):
            if action.action == "define" and action.kind is not None:
                source = session.names.get((action.kind, action.name))
                if source is not None:
                    source.approved = True


    async def _masking(self, sql: str, decision: Decision
                       ) -> tuple[ResultMasking, CopyLayout | None, str | None,
                                  _MaskingPlan | None]:
        """The statement's result masking, COPY layout, the text to send instead of `sql`
        when masked columns are used outside its plain result columns, and the masking plan
        it was made from (statements of its shape share it; None for a COPY or without
        masks)."""
        command = decision.command or {}
        rules = self.rules(decision.masks)
        copy = self._copy(sql, command)
        layout = copy.layout if copy is not None else None
        binary_table_copy = copy is not None and copy.binary and copy.table is not None
        if not rules and not binary_table_copy:
            return ResultMasking(self.catalog, rules, CatalogView()), layout, None, None
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
                                     transforms=plan.transforms), None, again, plan
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
            await check_unseen(catalog, sql, command.get("statements") or (), view, rules,
                               copy)
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
                                 transforms=plan.transforms), layout, rewritten, plan
        masking = ResultMasking(catalog, rules, view, computed=computed,
                                copy_methods=copy_methods, copy_types=copy_types)
        return masking, layout, rewritten, None

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



def _lexical_settings(command: Mapping[str, Any]) -> list[str]:
    """The settings among `LEXICAL_SETTINGS` the statements of a text change (SET, SET LOCAL,
    set_config, UPDATE pg_settings; RESET goes back to the server's default, which the proxy
    assumes is on, PostgreSQL's own since 9.1)."""
    found = {str(n) for st in command.get("statements") or () for n in st.get("settings") or ()
             if str(n).lower() in LEXICAL_SETTINGS}
    return sorted(found)


def _through_views(statement: _SqlStatement) -> list[str]:
    """The tables (`schema.name`) a statement reads only through the views it names, as the
    catalog traced them for masking (nothing when no masking needed the catalog)."""
    masking = statement.masking
    relations = masking.view.relations.values() if isinstance(masking, ResultMasking) else ()
    if not any(r.is_view for r in relations):
        return []
    named = {str(t).lower() for t in statement.decision.command.get("tables") or ()}
    return sorted({f"{r.schema}.{r.name}" for r in relations if not r.is_view
                   and r.name.lower() not in named
                   and f"{r.schema}.{r.name}".lower() not in named})


