"""Masking a MySQL statement: from a Decision's mask rules to the text to send and the method
of each plain result column.

Owns `plan_statement(sql, rules, catalog)`: the relations the statement names (its own parse,
the quoted statement of a `PREPARE … FROM '…'` included, plus the facts' tables), what the
catalog says of them and of what their views read, the checks that deny before it runs, and
the statement rewritten so that every use of a masked column outside the plain result columns
computes on its masked value (`adapters/postgres/mask_rewrite.py` with `dialect="mysql"`).
`MaskPlan.column_method(schema, org_table, org_name)` is what the proxy asks for each column
definition of a result set. Must not: evaluate policy, parse the wire protocol, mask values
(the proxy applies `engine.masking` to the columns the plan names, and the PAN backstop to
every value).

Semantics are the PostgreSQL proxy's (docs/postgres-proxy.md, Masking): a plain result column
(a column reference in the outermost select list of a statement whose rows go to the client)
keeps its reference and is masked by the proxy from its column definition (`org_table`,
`org_name`; a view's column by the base columns it reads, `redact` for one an expression
computes); every other use is rewritten. Denied, naming the column or relation: what the
rewrite denies (docs/mysql-proxy.md lists it), a statement sqlglot does not parse that names a
masked column or a relation with one, a view whose definition uses a masked column outside its
plain output columns (`WHERE pan LIKE …` inside the view answers a predicate on the clear
value), a call of a stored function defined in the database (its body reads tables unseen),
any masked statement while the server's global sql_mode has ANSI_QUOTES or NO_BACKSLASH_ESCAPES.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from adapters.enforcement.mask_rules import MaskRules, computed_method, strongest
from adapters.mysql.catalog import Catalog, Relation
from adapters.postgres.mask_rewrite import (
    MYSQL_PREPARE_QUERY,
    MaskedColumn,
    MaskedSchema,
    MaskUseDenied,
    SourceTable,
    rewrite_statement,
    unparsed_words,
)

MAX_VIEW_DEPTH = 16
MISREAD_MODES = frozenset({"ANSI_QUOTES", "NO_BACKSLASH_ESCAPES"})
"""Global sql_modes under which the server reads text otherwise than sqlglot's mysql dialect
(a session cannot set them: the pack's `mysql-sql-mode` rule)."""
_PREPARE_HEAD = re.compile(r"^\s*prepare\b", re.IGNORECASE)


@dataclass(frozen=True)
class MaskPlan:
    """`text`: the statement to send instead of the client's (None: as sent); `columns`: the
    masked columns whose uses were rewritten; `column_method` for result column definitions."""

    text: str | None = None
    columns: tuple[str, ...] = ()
    rules: MaskRules = field(default_factory=lambda: MaskRules(()))
    by_name: Mapping[str, str] = field(default_factory=dict)
    """Column name (lower case) -> the strongest method of a column so named in any relation
    the statement reads (a view's column by what it reads)."""

    def column_method(self, schema: str, table: str, column: str) -> str | None:
        """The method for a result column whose definition names `schema`, `org_table` and
        `org_name`. MariaDB gives a view's or derived table's alias as `org_table` (and an
        empty schema for a view's computed column), so the column is also matched by name in
        every relation the statement reads, the strongest method winning."""
        if not self.rules:
            return None
        return strongest((self.rules.method(schema, table, column),
                          self.by_name.get(column.lower())))


def _column_method(rules: MaskRules, relation: Relation, column: str,
                   relations: dict[str, Relation], depth: int = 0) -> tuple[str | None, bool]:
    """(the method masking this column, whether its origin could not be traced)."""
    own = rules.method(relation.schema, relation.name, column)
    if relation.view_columns is None:
        return own, False
    info = relation.view_columns.get(column.lower())
    if info is None or depth > MAX_VIEW_DEPTH:
        return own, True
    methods = [own]
    opaque = info.opaque
    for schema, table, name in info.sources:
        source = relations.get(f"{schema}.{table}")
        if source is None:
            methods.append(rules.method(schema, table, name))
            continue
        method, hidden = _column_method(rules, source, name, relations, depth + 1)
        methods.append(method if info.direct else computed_method(method))
        opaque = opaque or hidden
    return strongest(methods), opaque


def statement_tables(sql: str) -> set[str] | None:
    """The relation names (`t`, `db.t`, lower case) a statement's own parse finds, the quoted
    statement of a `PREPARE … FROM '…'` included; None when it cannot be parsed."""
    text = sql
    head = _PREPARE_HEAD.match(sql)
    if head is not None:
        match = MYSQL_PREPARE_QUERY.match(sql[head.end():])
        if match is None:
            return None
        text = match.group("query").replace("''", "'")
    try:
        trees = sqlglot.parse(text, dialect="mysql")
    except (SqlglotError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RecursionError):
        return None
    names: set[str] = set()
    for tree in trees:
        for table in tree.find_all(exp.Table) if tree is not None else ():
            if table.name:
                names.add(f"{table.db}.{table.name}".lower() if table.db else table.name.lower())
    return names


def _words(sql: str) -> frozenset[str]:
    """Every name-like word of a text that cannot be parsed (lower case, quotes stripped)."""
    return frozenset(w.strip('`"').lower() for w in re.findall(
        r'[A-Za-z_$][A-Za-z0-9_$]*|`(?:[^`]|``)+`|"(?:[^"]|"")+"', sql))


def _called(sql: str) -> set[str]:
    try:
        trees = sqlglot.parse(sql, dialect="mysql")
    except (SqlglotError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RecursionError):
        return set()
    out: set[str] = set()
    for tree in trees:
        for node in tree.find_all(exp.Func) if tree is not None else ():
            name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
            out.add(str(name).lower())
    return out


async def plan_statement(sql: str, rules: MaskRules, catalog: Catalog,
                         tables: Iterable[str] = (), *, client: bool = True) -> MaskPlan:
    """How to run `sql` with `rules` applied; raises `MaskUseDenied` (the reason names the
    column or relation) when its masks cannot be guaranteed. `tables`: the SQL facts' tables.
    `client`: its rows go to the client (else no result column is plain)."""
    if not rules:
        return MaskPlan()
    own = statement_tables(sql)
    words = unparsed_words(sql, "mysql") if own is not None else _words(sql)
    if words is not None:
        named = sorted(words & rules.columns)
        if named:
            raise MaskUseDenied(f"masked column {named[0]} is used in a statement that cannot "
                                "be parsed with certainty, so it cannot be rewritten to use "
                                "its masked value")
    defined = await catalog.user_functions()
    hit = sorted((_called(sql) if own is not None else set(words or ())) & defined)
    if hit:
        raise MaskUseDenied(f"function {hit[0]} is defined in the database, not built in: its "
                            "body may read masked columns unmasked, where the proxy cannot "
                            "rewrite them")
    names = set(own or ()) | {str(t).lower() for t in tables} | set(words or ())
    found = await catalog.relations_named(names)
    relations = await catalog.closure(r for rs in found.values() for r in rs)
    covered = sorted(r.name for r in relations.values()
                     if any(_column_method(rules, r, c.name, relations)[0] is not None
                            for c in r.columns))
    if not covered:
        return MaskPlan(rules=rules)
    misread = sorted(await catalog.sql_mode() & MISREAD_MODES)
    if misread:
        raise MaskUseDenied(f"the server's sql_mode has {misread[0]}, under which it reads "
                            "statements otherwise than the proxy, so masked columns cannot be "
                            "rewritten with certainty; remove it from the global sql_mode")
    if words is not None:
        raise MaskUseDenied(f"relation {covered[0]} has masked columns and is named in a "
                            "statement that cannot be parsed with certainty, so their uses "
                            "cannot be rewritten to their masked values")
    for relation in relations.values():
        for schema, table, column in sorted(relation.view_uses):
            base = relations.get(f"{schema}.{table}")
            method, opaque = (_column_method(rules, base, column, relations) if base is not None
                              else (rules.method(schema, table, column), False))
            if method is not None or opaque:
                raise MaskUseDenied(f"view {relation.name} uses masked column {column} outside "
                                    "its output columns (a predicate, join or grouping on the "
                                    "clear value), so reading it could reveal it")
    masks = masked_schema(relations, rules)
    rewrite = rewrite_statement(sql, masks, client=client, dialect="mysql")
    return MaskPlan(rewrite.text, rewrite.columns, rules,
                    {name: masked.method for name, masked in masks.columns.items()})


def masked_schema(relations: dict[str, Relation], rules: MaskRules) -> MaskedSchema:
    """What `mask_rewrite` needs of these relations: each column's mask (a view column by what
    it reads; one whose origin cannot be traced gets `null`) and whether it is text."""
    columns: dict[str, MaskedColumn] = {}
    tables: dict[str, list[SourceTable]] = {}
    names: set[str] = set()
    for relation in relations.values():
        entries: list[tuple[str, MaskedColumn | None]] = []
        for column in relation.columns:
            name = column.name.lower()
            names.add(name)
            method, opaque = _column_method(rules, relation, column.name, relations)
            masked = None
            if opaque or method is not None:
                masked = MaskedColumn("null" if opaque else str(method), column.text)
                known = columns.get(name)
                if known is not None:
                    masked = MaskedColumn(strongest((known.method, masked.method))
                                          or masked.method, known.text and masked.text)
                columns[name] = masked
            entries.append((name, masked))
        table = SourceTable(tuple(entries))
        for key in {relation.name.lower(), relation.key}:
            tables.setdefault(key, []).append(table)
    return MaskedSchema(columns, {k: tuple(v) for k, v in tables.items()}, frozenset(names))
