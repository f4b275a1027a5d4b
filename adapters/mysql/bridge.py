"""The MySQL proxy's policy bridge: the shared `Enforcer` plus MySQL's result masking.

Owns: the MySQL side of a Decision's masks: the statement planned with `masking.plan_statement`
(its denials, the text rewritten so masked columns are masked wherever the statement uses
them, the catalog read through the proxy's own connection), and the masker of result columns
(`ColumnMasks`: a column definition's `schema`/`org_table`/`org_name` -> the method's
transform; the proxy runs the PAN backstop on every value). Deciding, holds, approvals per
execution, row budgets and records are `adapters.enforcement`'s (`command.protocol` is
"mysql", so SQL facts use sqlglot's mysql dialect). Must not: evaluate policy or read the wire.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from adapters.enforcement.bridge import Enforcer, deny_messages
from adapters.enforcement.hooks import SessionContext, StatementVerdict, ValueTransform
from adapters.enforcement.records import Resource, Statement
from adapters.enforcement.review import ApprovalGate
from adapters.enforcement.row_budget import immediate_reviews
from adapters.enforcement.transforms import mask_transform
from adapters.mysql.catalog import Catalog, CatalogError
from adapters.mysql.masking import MaskPlan, plan_statement
from adapters.mysql.messages import UNSAFE_CHARSETS, ColumnDefinition
from adapters.postgres.mask_rewrite import MYSQL_PREPARE_QUERY, MaskUseDenied
from engine.audit.recorder import AuditRecorder

log = logging.getLogger("ordinance.adapters.mysql.bridge")

DDL_KINDS = frozenset({"create", "alter", "drop", "rename"})
MAX_SQL_PREPARED = 1024  # SQL-level prepared statements tracked per session
_CHARSET_SETTINGS = frozenset({"names", "character_set", "charset", "character_set_client",
                               "character_set_connection", "collation_connection"})
_UNSAFE_CHARSET = re.compile(r"(?:big5|gbk|sjis|cp932|gb18030)", re.IGNORECASE)


class ColumnMasks:
    """The masker of one statement's result columns (`StatementVerdict.masker`), and what its
    record says it masked (`masked`, "table.column:method")."""

    def __init__(self, plan: MaskPlan) -> None:
        self.plan = plan
        self.masked: set[str] = set()

    def __call__(self, column: ColumnDefinition) -> ValueTransform | None:
        method = self.plan.column_method(column.schema, column.org_table or column.table,
                                         column.org_name or column.name)
        if method is None:
            return None
        self.masked.add(f"{column.org_table or column.table}.{column.org_name or column.name}"
                        f":{method}")
        return mask_transform(method)


class MySQLBridge(Enforcer):
    """`Enforcer` for `protocol` "mysql" with MySQL masking (`catalog`: information_schema
    through the proxy's own upstream login)."""

    def __init__(self, client: Any, *, resource: Resource, recorder: AuditRecorder,
                 catalog: Catalog, approvals: ApprovalGate | None = None) -> None:
        super().__init__(client, resource=resource, recorder=recorder, approvals=approvals)
        self.catalog = catalog
        # per session: SQL `PREPARE name FROM '…'` -> the text it prepared (None: from a
        # variable, not known)
        self._prepared: dict[str, dict[str, str | None]] = {}

    async def session_ended(self, ctx: SessionContext, reason: str) -> None:
        self._prepared.pop(ctx.session_id, None)
        await super().session_ended(ctx, reason)

    async def decide(self, text: str, ctx: SessionContext,
                     command: Mapping[str, Any] | None = None) -> StatementVerdict:
        statement = await self.ask(text, ctx, command)
        decision = statement.decision
        if DDL_KINDS & set(decision.command.get("kinds") or ()):
            self.catalog.invalidate()
        if decision.effect == "deny":
            return await statement.denied(deny_messages(decision))
        refusal = _unsafe_charset(statement) or await self._sql_prepared(statement)
        if refusal is not None:
            return await statement.denied(refusal)
        decision = statement.decision
        if decision.effect == "deny":
            return await statement.denied(deny_messages(decision))
        masker: ColumnMasks | None = None
        if decision.masks:
            # an SQL EXECUTE's results are its PREPARE's (which ran rewritten): planned on
            # that text for the methods of its result columns, sent as it is
            planned = statement.approval_text
            try:
                plan = await plan_statement(planned, self.rules(decision.masks), self.catalog,
                                            decision.command.get("tables") or ())
            except MaskUseDenied as exc:
                return await statement.denied(str(exc))
            except CatalogError as exc:
                log.error("session %s: catalog unavailable: %s", ctx.session_id, exc)
                return await statement.denied(f"masks cannot be applied: {exc}")
            except Exception:
                log.exception("session %s: masking could not be planned", ctx.session_id)
                return await statement.denied("masks cannot be applied: internal error (see "
                                              "the proxy log)")
            masker = ColumnMasks(plan)
            statement.masking = masker
            statement.rewritten = plan.text if planned == text else None
        return await self.verdict(statement, lambda rows: self._allow(statement, rows, masker))

    async def _sql_prepared(self, statement: Statement) -> str | None:
        """SQL `PREPARE`/`EXECUTE`: remember what each PREPARE prepared; an EXECUTE is decided
        as that text, again at every execution (its review, row budgets and approvals are
        the prepared statement's: `EXECUTE s` names no table). Why it is refused, or None."""
        names = self._prepared.setdefault(statement.ctx.session_id, {})
        top = [st for st in statement.decision.command.get("statements") or ()
               if not st.get("nested")]
        for st in top:
            name = st.get("prepared_name")
            if name is not None:
                if str(name).lower() not in names and len(names) >= MAX_SQL_PREPARED:
                    return (f"this session holds {MAX_SQL_PREPARED} prepared statements; "
                            "DEALLOCATE some first")
                inner = [n for n in statement.decision.command.get("statements") or ()
                         if n.get("nested")]
                names[str(name).lower()] = _prepared_text(statement.sql) if inner else None
        executed = [str(st["executed_name"]).lower() for st in top
                    if st.get("executed_name") is not None]
        if not executed:
            return None
        if len(top) > 1:
            return "EXECUTE of a prepared statement must be a statement of its own"
        name = executed[0]
        if name not in names:
            return f"prepared statement {name!r} was not prepared through this proxy session"
        prepared = names[name]
        if prepared is None:
            return (f"prepared statement {name!r} was prepared from a variable: the proxy "
                    "cannot tell what it runs")
        again = await self.ask(prepared, statement.ctx)
        statement.decision = again.decision
        statement.approval_text = prepared
        statement.once = bool(immediate_reviews(again.decision))
        return None

    def _allow(self, statement: Statement, rows: Any, masker: ColumnMasks | None
               ) -> StatementVerdict:
        withhold = masker is not None and bool(masker.plan.columns)
        local = any(st.get("local") for st in statement.decision.command.get("statements") or ()
                    if not st.get("nested"))  # LOAD DATA LOCAL INFILE, and it was allowed
        return self.allow(statement, rows, masker=masker, rewritten=statement.rewritten,
                          withhold_error_values=withhold, local_files=local)


def _prepared_text(sql: str) -> str | None:
    """The statement of `PREPARE name FROM '…'` (quotes undone), or None when it is not a
    string literal."""
    head = sql.lstrip()
    match = MYSQL_PREPARE_QUERY.match(head[len("prepare"):]) if head[:7].lower() == \
        "prepare" else None
    if match is None:
        return None
    return match.group("query").replace("''", "'")


def _unsafe_charset(statement: Statement) -> str | None:
    """Why a statement that switches the connection to a character set whose multibyte
    characters can end in a quote or backslash is refused (see `UNSAFE_CHARSETS`); None."""
    settings = {str(name).lower() for st in statement.decision.command.get("statements") or ()
                for name in st.get("settings") or ()}
    if settings & _CHARSET_SETTINGS and _UNSAFE_CHARSET.search(statement.sql):
        return (f"the character sets {', '.join(UNSAFE_CHARSETS)} are refused by the proxy: "
                "a multibyte character can hide a quote or backslash from the policies' SQL "
                "parser")
    return None
