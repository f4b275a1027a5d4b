"""Where each output column of a query comes from, traced through the parsed statement.

The PostgreSQL proxy learns the source of plain column references from RowDescription (table
OID and attribute number). Columns computed by expressions (`substr(pan, 1, 6)`,
`pan || ''`, `lower(pan)`) have no such source; this module traces them with sqlglot: it
qualifies the statement (expanding `*` when a schema is given), then follows every column an
output expression reads through subqueries, CTEs and set operations down to base tables.

An output column is `opaque` when something it reads cannot be resolved to table columns
(a whole-row reference such as `row_to_json(c)` or `c::text`, an unknown table's `*`). The
caller decides what opaque means; the proxy denies when a masked column could be behind it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope

from engine.facts.sql import sqlglot_text

Schema = Mapping[str, Mapping[str, str]]  # table -> column -> type, columns in table order
FrozenSchema = tuple[tuple[str, tuple[tuple[str, str], ...]], ...]


@dataclass(frozen=True)
class OutputColumn:
    name: str
    sources: frozenset[str]  # "table.column" (schema-qualified when written so), lower case
    direct: bool  # the value is a source column passed through unchanged
    opaque: bool  # reads something that could not be resolved to table columns


def trace_output_columns(sql: str, dialect: str | None,
                         schema: Schema | None = None) -> list[OutputColumn] | None:
    """Output columns of a single query, in order; None when `sql` is not one query or
    cannot be parsed."""
    # Tables are sorted for a stable cache key; columns keep their order, which is the order
    # `*` expands to (PostgreSQL's attnum order when the schema comes from the catalog).
    frozen = tuple(sorted((t, tuple(cols.items())) for t, cols in (schema or {}).items()))
    return _trace(sql, dialect, frozen)


@lru_cache(maxsize=2048)
def _trace(sql: str, dialect: str | None, frozen: FrozenSchema) -> list[OutputColumn] | None:
    schema: dict[str, object] = {table: dict(cols) for table, cols in frozen}
    try:
        trees = [t for t in sqlglot.parse(sqlglot_text(sql, dialect), dialect=dialect)
                 if t is not None]
        if len(trees) != 1 or not isinstance(trees[0], exp.Query):
            return None
        tree = qualify(trees[0], schema=schema or None, dialect=dialect,
                       validate_qualify_columns=False, quote_identifiers=False)
        scope = build_scope(tree)
    except (SqlglotError, ValueError, KeyError, AttributeError, TypeError, RecursionError):
        return None
    if scope is None:
        return None
    return [_output(scope, i) for i in range(len(_projections(scope)))]


def _projections(scope: Scope) -> list[exp.Expression]:
    expression = scope.expression
    if isinstance(expression, exp.SetOperation):
        return _projections(scope.set_operation_scopes[0]) if scope.set_operation_scopes else []
    return list(getattr(expression, "selects", []))


def _output(scope: Scope, index: int) -> OutputColumn:
    expression = scope.expression
    if isinstance(expression, exp.SetOperation):
        parts = [_output(s, index) for s in scope.set_operation_scopes]
        name = parts[0].name if parts else f"_col_{index}"
        return OutputColumn(
            name=name, sources=frozenset().union(*(p.sources for p in parts)),
            direct=all(p.direct for p in parts), opaque=any(p.opaque for p in parts))
    projections = _projections(scope)
    if index >= len(projections):
        return OutputColumn(name=f"_col_{index}", sources=frozenset(), direct=False, opaque=True)
    projection = projections[index]
    body = projection.this if isinstance(projection, exp.Alias) else projection
    sources: set[str] = set()
    # A whole-row read (`row_to_json(c)`, `c::text`) or an unexpanded `*` cannot be traced.
    opaque = body.find(exp.TableColumn) is not None or isinstance(body, exp.Star) or (
        isinstance(body, exp.Column) and isinstance(body.this, exp.Star))
    for column in body.find_all(exp.Column):
        found, ok = _resolve(scope, column)
        sources |= found
        opaque = opaque or not ok
    if body.find(exp.Star) is not None and not isinstance(body, exp.Count | exp.Star) and \
            not _only_count_stars(body):
        opaque = True
    direct = isinstance(body, exp.Column) and not opaque and _direct_inner(scope, body)
    return OutputColumn(name=projection.alias_or_name.lower(), sources=frozenset(sources),
                        direct=direct, opaque=opaque)


def _only_count_stars(body: exp.Expr) -> bool:
    return all(isinstance(star.parent, exp.Count) for star in body.find_all(exp.Star))


def _resolve(scope: Scope, column: exp.Column) -> tuple[set[str], bool]:
    """Base-table columns behind one column reference, and whether it fully resolved."""
    table_alias = column.table
    if not table_alias and column.name in scope.sources:
        return set(), False  # `c` naming the row of `FROM cards c`: a whole-row read
    if not table_alias and len(scope.sources) == 1:
        table_alias = next(iter(scope.sources))  # qualify() needs a schema even for this
    if not table_alias:
        return set(), False  # ambiguous without a schema
    source = scope.sources.get(table_alias)
    if isinstance(source, exp.Table):
        return {f"{_table_name(source)}.{column.name.lower()}"}, True
    if isinstance(source, Scope):
        names = [p.alias_or_name.lower() for p in _projections(source)]
        name = column.name.lower()
        if name not in names:
            return set(), False
        inner = _output(source, names.index(name))
        return set(inner.sources), not inner.opaque
    return set(), False


def _direct_inner(scope: Scope, column: exp.Column) -> bool:
    alias = column.table or (next(iter(scope.sources)) if len(scope.sources) == 1 else "")
    source = scope.sources.get(alias)
    if isinstance(source, exp.Table):
        return True
    if isinstance(source, Scope):
        names = [p.alias_or_name.lower() for p in _projections(source)]
        if column.name.lower() in names:
            return _output(source, names.index(column.name.lower())).direct
    return False


def _table_name(table: exp.Table) -> str:
    return ".".join(p for p in (table.catalog, table.db, table.name) if p).lower()
