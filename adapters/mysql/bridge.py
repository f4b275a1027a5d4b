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
from collections.abc import Mapping
from typing import Any

from adapters.enforcement.bridge import Enforcer, deny_messages
from adapters.enforcement.hooks import SessionContext, StatementVerdict, ValueTransform
from adapters.enforcement.records import Resource, Statement
from adapters.enforcement.review import ApprovalGate
from adapters.enforcement.transforms import mask_transform
from adapters.mysql.catalog import Catalog, CatalogError
from adapters.mysql.masking import MaskPlan, plan_statement
from adapters.mysql.messages import ColumnDefinition
from adapters.postgres.mask_rewrite import MaskUseDenied
from engine.audit.recorder import AuditRecorder

log = logging.getLogger("ordinance.adapters.mysql.bridge")

DDL_KINDS = frozenset({"create", "alter", "drop", "rename"})


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

    async def decide(self, text: str, ctx: SessionContext,
                     command: Mapping[str, Any] | None = None) -> StatementVerdict:
        statement = await self.ask(text, ctx, command)
        decision = statement.decision
        if DDL_KINDS & set(decision.command.get("kinds") or ()):
            self.catalog.invalidate()
        if decision.effect == "deny":
            return await statement.denied(deny_messages(decision))
        masker: ColumnMasks | None = None
        if decision.masks:
            try:
                plan = await plan_statement(text, self.rules(decision.masks), self.catalog,
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
            statement.rewritten = plan.text
        return await self.verdict(statement, lambda rows: self._allow(statement, rows, masker))

    def _allow(self, statement: Statement, rows: Any, masker: ColumnMasks | None
               ) -> StatementVerdict:
        withhold = masker is not None and bool(masker.plan.columns)
        return self.allow(statement, rows, masker=masker, rewritten=statement.rewritten,
                          withhold_error_values=withhold)
