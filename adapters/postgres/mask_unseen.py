"""Where a session with masks could reach masked values that no rewrite and no result mask sees.

Owns `check_unseen(...)`, run for every statement of a session with masks once the catalog has
named the relations it reads (and those under its views), before it runs. It denies, naming
what and why (`MaskingDenied`):

- the server's statistics and activity: `pg_stats`, `pg_statistic`, `pg_stats_ext`,
  `pg_stats_ext_exprs`, `pg_statistic_ext_data` (most common values and histogram bounds are
  column values), `pg_stat_activity`, `pg_stat_statements` and the functions behind them
  (other sessions' statement texts, which quote the values they write or look for),
  `pg_largeobject` and `lo_get`/`loread` (stored data no mask covers); read directly or
  through a view;
- a view (or materialized view) whose definition uses a masked column anywhere but as a plain
  result column (a WHERE, a join, a grouping, an ordering, a function argument, a computed
  result column: all computed by the server on the clear value); found by running the rewrite
  (`mask_rewrite`) on the definition: what it would change is what the view computes on;
- code the server attaches to a relation (`catalog.AttachedCode`): a write (INSERT, UPDATE,
  DELETE, MERGE, COPY FROM, TRUNCATE) to a relation with a trigger or a rule for that event
  (their code runs unseen: a trigger may copy the clear row anywhere), with a DEFAULT, a
  generation expression, a CHECK (of the table or of a column's domain) or an index that
  calls a function defined in the database, with a FOREIGN KEY to a masked column (its error
  answers whether a value is stored), or an UPDATE with a CHECK or a generation expression
  that reads a masked column (an error oracle on the clear value) or of a column that shares
  a unique index with one; inheritance children's and partitions' code counts as the
  parent's; any statement on a relation with a row security policy in force that reads a
  masked column or calls a defined function (which rows come back answers it);
- COPY … FROM into masked columns (the rewrite denies INSERT and UPDATE of them).

Must not: decide what is masked (the Decision's rules say), do I/O other than through the
`Catalog`, or rewrite statements.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from adapters.enforcement.mask_rules import MaskRules
from adapters.postgres.catalog import AttachedCode, Catalog, Relation
from adapters.postgres.column_masks import CatalogView, MaskingDenied, masked_schema
from adapters.postgres.copy_statement import CopyStatement
from adapters.postgres.mask_rewrite import MaskUseDenied, rewrite_statement
from engine.facts.sql import called_names, sqlglot_text

# Relations (in any schema: pg_stat_statements lives in its extension's) and functions whose
# rows are other relations' column values or other sessions' statement texts.
VALUE_RELATIONS: Mapping[str, str] = {
    "pg_stats": "holds most common values and histogram bounds, which are column values",
    "pg_statistic": "holds most common values and histogram bounds, which are column values",
    "pg_stats_ext": "holds most common values, which are column values",
    "pg_stats_ext_exprs": "holds most common values, which are column values",
    "pg_statistic_ext_data": "holds most common values, which are column values",
    "pg_stat_activity": "shows other sessions' statement texts",
    "pg_stat_statements": "shows statement texts of every session",
    "pg_largeobject": "holds large objects' data, which no mask covers",
}
VALUE_FUNCTIONS: Mapping[str, str] = {
    "pg_stat_get_activity": "it returns other sessions' statement texts",
    "pg_stat_get_backend_activity": "it returns other sessions' statement texts",
    "pg_stat_statements": "it returns statement texts of every session",
    "pg_mcv_list_items": "it returns extended statistics' most common values",
    "lo_get": "it returns large objects' data, which no mask covers",
    "loread": "it returns large objects' data, which no mask covers",
}
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})  # their views show what
# their columns say: pg_stat_ssl calls pg_stat_get_activity but shows no statement text
_UPSERT = re.compile(r"\bdo\s+update\b", re.IGNORECASE)  # (also in a literal: fail closed)
WRITE_KINDS = frozenset({"insert", "update", "delete", "merge", "truncate"})
# The events each statement kind fires triggers and rules for.
_EVENTS = {"insert": {"insert"}, "update": {"update"}, "delete": {"delete"},
           "merge": {"insert", "update", "delete"}, "truncate": {"truncate"},
           "copy": {"insert"}}


async def check_unseen(catalog: Catalog, sql: str, statements: Sequence[Mapping[str, Any]],
                       view: CatalogView, rules: MaskRules, copy: CopyStatement | None
                       ) -> None:
    """Deny (raise `MaskingDenied`) what the statement `sql` could learn of masked values
    where neither the rewrite nor the result masks reach. `statements`: the SQL facts'
    statements; `view`: the relations it reads and those under its views."""
    called = called_names(sqlglot_text(sql, "postgres"))
    if called is None:
        raise MaskingDenied("the statement cannot be read to find the functions it calls")
    calls = set(called)
    for oid, relation in view.relations.items():
        if relation.is_view and relation.schema not in SYSTEM_SCHEMAS:
            calls |= catalog.view_calls(oid)  # (pg_stat_ssl calls pg_stat_get_activity too)
    _check_value_sources(view, calls)
    await _check_views(catalog, view, rules)
    _check_attached(statements, view, rules, copy, upsert=_UPSERT.search(sql) is not None)


def _check_value_sources(view: CatalogView, calls: set[str]) -> None:
    found = sorted({f"{r.schema}.{r.name}": VALUE_RELATIONS[r.name.lower()]
                    for r in view.relations.values() if r.name.lower() in VALUE_RELATIONS
                    }.items())
    if found:
        names = ", ".join(name for name, _ in found)
        raise MaskingDenied(f"{'relations' if len(found) > 1 else 'relation'} {names} "
                            f"cannot be read by a session with masks: {found[0][0]} "
                            f"{found[0][1]}")
    for name in sorted(calls & VALUE_FUNCTIONS.keys()):
        raise MaskingDenied(f"function {name} cannot be called by a session with masks: "
                            f"{VALUE_FUNCTIONS[name]}")


async def _check_views(catalog: Catalog, view: CatalogView, rules: MaskRules) -> None:
    """Deny reading a view whose definition computes on a masked column's clear value."""
    for oid, relation in sorted(view.relations.items()):
        if not relation.is_view or not relation.definition:
            continue
        under = view.read_by(oid)
        del under.relations[oid]  # (its definition reads what is under it)
        if not under.could_mask(rules):
            continue
        await catalog.types(c.type_oid for r in under.relations.values() for c in r.columns)
        kind = "materialized view" if relation.kind == "m" else "view"
        definition = relation.definition.strip().rstrip(";")
        try:
            rewrite = rewrite_statement(definition, masked_schema(under, rules, catalog))
        except MaskUseDenied as exc:
            raise MaskingDenied(f"{kind} {relation.schema}.{relation.name} cannot be read by a "
                                f"session with masks: its definition {exc}") from None
        if rewrite.text is not None:
            columns = ", ".join(rewrite.columns) or "a masked column"
            raise MaskingDenied(
                f"{kind} {relation.schema}.{relation.name} cannot be read by a session with "
                f"masks: its definition uses masked column {columns} other than as a plain "
                "result column (in a condition, a join, a grouping, an ordering or a computed "
                "column), which the server computes on the clear value")


def _check_attached(statements: Sequence[Mapping[str, Any]], view: CatalogView,
                    rules: MaskRules, copy: CopyStatement | None, upsert: bool) -> None:
    """`upsert`: an INSERT may update (ON CONFLICT … DO UPDATE fires UPDATE triggers)."""
    # (kind, columns it names or None for all) of each write of each relation; a write of a
    # view writes what is under it
    writes: dict[int, list[tuple[str, tuple[str, ...] | None]]] = {}
    for name, kind, columns in _written(statements, copy):
        kinds = [kind, "update"] if kind == "insert" and upsert else [kind]
        for oid, relation in view.relations.items():
            if not _names(relation, name):
                continue
            writes.setdefault(oid, []).extend((k, columns) for k in kinds)
            if kind == "copy":
                _check_copy_columns(relation, columns, rules)
            if relation.is_view:
                for under in view.read_by(oid).relations:
                    if under != oid:
                        writes.setdefault(under, []).extend((k, None) for k in kinds)
    for relation in sorted(view.relations.values(), key=lambda r: r.oid):
        for code in relation.attached:
            reason = _attached_reason(relation, code, writes.get(relation.oid, []), rules)
            if reason is not None:
                raise MaskingDenied(f"{_describe(code)} on {relation.schema}.{relation.name} "
                                    f"{reason}: denied to a session with masks")


def _written(statements: Sequence[Mapping[str, Any]], copy: CopyStatement | None
             ) -> list[tuple[str, str, tuple[str, ...] | None]]:
    """(relation name, statement kind, columns it names or None for all) of each write."""
    out: list[tuple[str, str, tuple[str, ...] | None]] = []
    for statement in statements:
        kind = str(statement.get("kind") or "")
        if kind not in WRITE_KINDS:
            continue
        columns = tuple(str(c).lower() for c in statement.get("columns") or ())
        for target in statement.get("targets") or ():
            out.append((str(target).lower(), kind, None if "*" in columns else columns))
    if copy is not None and copy.direction == "from" and copy.table is not None:
        out.append((copy.table.lower(), "copy",
                    None if copy.columns is None else tuple(c.lower() for c in copy.columns)))
    return out


def _names(relation: Relation, name: str) -> bool:
    """Whether a written name (`table` or `schema.table`) may mean this relation."""
    schema, _, table = name.rpartition(".")
    return table.strip('"') == relation.name.lower() and (
        not schema or schema.strip('"') == relation.schema.lower())


def _check_copy_columns(relation: Relation, columns: tuple[str, ...] | None,
                        rules: MaskRules) -> None:
    masked = [c.name for c in relation.columns
              if rules.method(relation.schema, relation.name, c.name) is not None
              and (columns is None or c.name.lower() in columns)]
    if masked:
        raise MaskingDenied(f"masked column {masked[0]} of {relation.name} would be written "
                            "(COPY … FROM): a session that may not see its clear value may not "
                            "write it either (a unique index, a constraint or a trigger would "
                            "answer whether a value is stored)")


def _attached_reason(relation: Relation, code: AttachedCode,
                     writes: list[tuple[str, tuple[str, ...] | None]],
                     rules: MaskRules) -> str | None:
    """Why the statement may not run because of `code` (`writes`: the relation's), or None."""
    kinds = {kind for kind, _ in writes}
    events = set().union(*(_EVENTS.get(k, set()) for k in kinds)) if kinds else set()
    masked_reads = [f"{t}.{c}" for s, t, c in code.reads if rules.method(s, t, c) is not None]
    calls = f"calls function {code.calls[0]}, defined in the database" if code.calls else None
    if code.kind == "policy":
        if not code.active:
            return None
        if masked_reads:
            return (f"is in force and reads masked column {masked_reads[0]} (which rows come "
                    "back would answer it)")
        return f"is in force and {calls}" if calls else None
    if not kinds:
        return None  # the rest runs only when the relation is written
    if code.kind in ("trigger", "rule"):
        fired = sorted(events & set(code.events))
        if fired:
            return (f"runs on {fired[0].upper()} with the clear values of the rows, unseen by "
                    "the policies and the masks, and the statement writes it")
        return None
    if code.kind == "fkey":
        if masked_reads and (kinds & {"insert", "merge", "copy"} or (
                "update" in kinds and _mentions(code.columns, writes))):
            return (f"references masked column {masked_reads[0]}: writing it would answer "
                    "whether a value is stored there")
        return None
    if kinds & {"delete", "truncate"} and not kinds & {"insert", "update", "merge", "copy"}:
        return None
    if calls:
        return f"{calls}, whose body runs unseen when the statement writes it"
    if "update" in kinds or "merge" in kinds:
        own = [c for s, t, c in code.reads
               if (s, t) == (relation.schema.lower(), relation.name.lower())]
        if code.kind == "generated" and masked_reads:
            return (f"computes from masked column {masked_reads[0]} on every UPDATE (an error "
                    "would answer on its clear value)")
        if code.kind == "check" and masked_reads and (not code.active or any(
                rules.method(relation.schema, relation.name, c) is None for c in own)):
            return (f"reads masked column {masked_reads[0]} with other columns (or is not "
                    "validated): an UPDATE's error would answer on its clear value")
        keys = [c for c in code.columns
                if rules.method(relation.schema, relation.name, c) is not None] + masked_reads
        others = [c for c in code.columns
                  if rules.method(relation.schema, relation.name, c) is None]
        if code.kind == "index" and code.active and keys and others and _mentions(
                tuple(others), writes):
            return (f"is unique over masked column {keys[0]} with column {others[0]}: an "
                    "UPDATE of it would answer whether another row holds the same value")
    return None


def _mentions(columns: tuple[str, ...],
              writes: list[tuple[str, tuple[str, ...] | None]]) -> bool:
    return any(named is None or set(columns) & set(named) for _, named in writes)


def _describe(code: AttachedCode) -> str:
    return {"trigger": "trigger", "rule": "rule", "policy": "row security policy",
            "check": "CHECK constraint", "fkey": "foreign key",
            "default": "the DEFAULT of column", "generated": "generated column",
            "domain": "domain CHECK constraint", "index": "index",
            }[code.kind] + f" {code.name}"
