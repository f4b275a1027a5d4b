"""Applying a Decision's masks to PostgreSQL result columns, with the card-number backstop.

Owns: matching mask rules (`adapters.enforcement.mask_rules`) to the columns the server
describes by table OID and type OID (through the `Catalog`), following view columns to the
base columns they read, tracing a statement's output columns (`trace_statement`, through
`engine.lineage`), the checks that deny a statement before it runs (`check_outputs`), and
`ResultMasking`: the per-statement `masker` and `resolve_columns` the proxy calls for every
RowDescription or COPY. Must not: evaluate policy (the Decision says what is masked and how),
do I/O other than through the `Catalog`.

What a column gets (values in text format unless said otherwise):

- masked, string type (text, varchar, ...): the masking method's output;
- masked, other type (date, numeric, json, arrays, ...): NULL, with a notice;
- masked, binary format: NULL, with a notice;
- not masked, string type: card numbers in it masked (`scrub_pans`, the backstop);
- not masked, other type: NULL with a notice when it holds a card number;
- not masked, binary format: string types scanned as text, other types passed unread.

Computed columns (no table OID in the RowDescription) that pass a masked column through (a
subquery, CTE or UNION output) are masked by its rule, as traced from the statement; the
strongest method wins (`null` > `redact` > `hash` > `pan` > `last4` > `email`). A value an
expression computes needs no mask of its own: the statement was rewritten to compute it from
masked values (`mask_rewrite`, `masked_schema` here says what it masks). A generated column
computed from a masked column, and a view's computed one (reading such a view is denied before
it runs, `mask_unseen`), gets `redact` where the method would be `pan`, `last4` or `email`:
those keep part of what the expression made of the value. A column whose values hold a field
of a masked name (a composite type, a table's row type, an array of one) gets `null`.

COPY data is text, so masked COPY columns always get the method's output; binary COPY columns
with a mask become NULL, and in a binary COPY of a table its string columns are scanned by the
backstop (their binary form is their text).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from adapters.enforcement.hooks import ValueTransform
from adapters.enforcement.mask_rules import MaskRules, computed_method, strongest
from adapters.enforcement.transforms import (
    SCRUB_JSON,
    SCRUB_TEXT,
    SCRUB_TEXT_BINARY,
    mask_transform,
    withheld,
    withhold_pans,
)
from adapters.postgres.catalog import (
    Catalog,
    CatalogError,
    Relation,
    ViewColumn,
    choose_relations,
)
from adapters.postgres.descriptors import ColumnDescriptor
from adapters.postgres.mask_rewrite import (
    DECLARE_QUERY,
    PREPARE_QUERY,
    MaskedColumn,
    MaskedSchema,
    SourceTable,
)
from engine.facts.fingerprint import literal_fingerprint
from engine.facts.sql import sql_text, sqlglot_text
from engine.lineage import OutputColumn, trace_output_columns

log = logging.getLogger("ordinance.adapters.postgres.masks")

JSON_TYPES = frozenset({114, 3802})
BINARY_TEXT_TYPES = frozenset({25, 1043, 1042, 19, 705})  # binary form == UTF-8 text
OPAQUE = "opaque"
MAX_CACHED_TRANSFORMS = 256


class MaskingDenied(Exception):
    """The statement cannot be run with its masks guaranteed; the message says why."""


@dataclass
class CatalogView:
    """The relations and view lineage one statement's masking relies on, copied from the
    catalog cache (so a concurrent invalidation cannot change them half-way)."""

    relations: dict[int, Relation] = field(default_factory=dict)
    views: dict[int, dict[str, ViewColumn]] = field(default_factory=dict)
    reads: dict[int, frozenset[int]] = field(default_factory=dict)  # view -> what it names
    fields: dict[int, frozenset[str]] = field(default_factory=dict)  # type -> field names

    def add(self, catalog: Catalog, closure: dict[int, Relation]) -> None:
        for oid, relation in closure.items():
            self.relations[oid] = relation
            for column in relation.columns:
                held = catalog.type_fields(column.type_oid)
                if held:
                    self.fields[column.type_oid] = held
            if relation.is_view:
                columns = catalog.view_columns(oid)
                if columns is not None:
                    self.views[oid] = columns
                self.reads[oid] = catalog.view_reads(oid)

    def column_method(self, rules: MaskRules, relation: Relation, column: str,
                      depth: int = 0) -> tuple[str | None, bool]:
        """(the method masking this column, whether its origin could not be traced). A
        generated column computed from masked columns is masked as a view's computed column;
        a column whose values hold a field of a masked name (a composite type, a table's row
        type, an array of one) is `null`."""
        own = rules.method(relation.schema, relation.name, column)
        if self.holds_masked_field(rules, relation, column):
            own = "null"
        if not relation.is_view:
            return strongest([own, *(computed_method(rules.method(relation.schema,
                                                                  relation.name, source))
                                     for source in relation.generated_from(column))]), False
        if depth > 16:
            return own, True
        info = self.views.get(relation.oid, {}).get(column.lower())
        if info is None:
            return own, True
        methods = [own]
        opaque = info.opaque
        for oid, name in info.sources:
            source = self.relations.get(oid)
            if source is None:
                opaque = True
                continue
            method, hidden = self.column_method(rules, source, name, depth + 1)
            methods.append(method if info.direct else computed_method(method))
            opaque = opaque or hidden
        return strongest(methods), opaque

    def holds_masked_field(self, rules: MaskRules, relation: Relation, column: str) -> bool:
        if not self.fields:
            return False
        found = relation.column_named(column)
        return found is not None and bool(self.fields.get(found.type_oid, frozenset())
                                          & rules.columns)

    def copy(self) -> CatalogView:
        return CatalogView(dict(self.relations), dict(self.views), dict(self.reads),
                           dict(self.fields))

    def read_by(self, oid: int) -> CatalogView:
        """The part of this view that the relation `oid` reads (itself, and for a view every
        relation under it)."""
        out = CatalogView()
        pending = [oid]
        while pending:
            current = pending.pop()
            relation = self.relations.get(current)
            if relation is None or current in out.relations:
                continue
            out.relations[current] = relation
            if current in self.views:
                out.views[current] = self.views[current]
            if current in self.reads:
                out.reads[current] = self.reads[current]
                pending.extend(self.reads[current])
        out.fields = dict(self.fields)
        return out

    def could_mask(self, rules: MaskRules) -> bool:
        """Whether any relation here has a column a rule masks (views: by name or source), or
        one holding a field of a masked name."""
        if not rules:
            return False
        if any(rules.covers(r) for r in self.relations.values()):
            return True
        return bool(self.fields) and any(self.fields.get(c.type_oid, frozenset()) & rules.columns
                                         for r in self.relations.values() for c in r.columns)


# --------------------------------------------------------------------------------------------
# Tracing a statement's output columns


@dataclass(frozen=True)
class TracedQuery:
    """One query of a statement whose rows some client will read."""

    outputs: tuple[OutputColumn, ...] | None  # None: could not be traced
    direct: bool  # its rows come back in this statement's own results (not via EXECUTE/FETCH)
    set_operation: bool  # UNION / INTERSECT / EXCEPT anywhere (no table OIDs come back)


def trace_statement(sql: str, schema: dict[str, dict[str, str]]) -> list[TracedQuery] | None:
    """The row-returning queries of `sql` (SELECT, RETURNING clauses, the queries of DECLARE
    and PREPARE), traced; None when `sql` cannot be parsed. Cached by literal fingerprint:
    literals are never sources."""
    frozen = tuple(sorted((t, tuple(c.items())) for t, c in schema.items()))
    fingerprint = literal_fingerprint(sql)
    if fingerprint is not None:
        traced = _trace_statement(fingerprint, frozen)
        if traced is not None:
            return traced
    return _trace_statement(sql, frozen)


@lru_cache(maxsize=4096)
def _trace_statement(sql: str, frozen: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
                     ) -> list[TracedQuery] | None:
    schema = {t: dict(c) for t, c in frozen}
    try:
        trees = [t for t in sqlglot.parse(sqlglot_text(sql, "postgres"), dialect="postgres")
                 if t is not None]
    except (SqlglotError, ValueError, TypeError, RecursionError):
        return None
    out: list[TracedQuery] = []
    for tree in trees:
        found, direct = _row_query(tree)
        if found is None:
            continue
        query: exp.Expr
        if isinstance(found, str):
            try:
                inner = [t for t in sqlglot.parse(found, dialect="postgres") if t is not None]
            except (SqlglotError, ValueError, TypeError, RecursionError):
                return None
            if len(inner) != 1:
                return None
            nested, _ = _row_query(inner[0])
            if nested is None or isinstance(nested, str):
                return None
            query = nested
        else:
            query = found
        outputs = trace_output_columns(sql_text(query, "postgres"), "postgres", schema)
        out.append(TracedQuery(None if outputs is None else tuple(outputs), direct,
                               query.find(exp.SetOperation) is not None))
    return out


def _row_query(tree: exp.Expr) -> tuple[exp.Expr | str | None, bool]:
    """(the query whose rows this statement returns, or the text of one it stores for later;
    whether they come back directly)."""
    if isinstance(tree, exp.Query):
        return tree, True
    if isinstance(tree, exp.Insert | exp.Update | exp.Delete | exp.Merge):
        returning = tree.args.get("returning")
        if returning is None:
            return None, True
        select = exp.select(*[e.copy() for e in returning.expressions])
        target = tree.this
        if isinstance(target, exp.Schema):
            target = target.this
        tables: list[exp.Expr] = [target.copy()] if target is not None else []
        extra = tree.args.get("from_") or tree.args.get("from")
        if extra is not None and extra.this is not None:
            tables.append(extra.this.copy())
        for used in tree.args.get("using") or []:
            tables.append(used.copy())
        if not tables:
            return None, True
        select = select.from_(tables[0])
        for table in tables[1:]:
            select = select.join(table, join_type="cross")
        return select, True
    if isinstance(tree, exp.Command):
        keyword = str(tree.this or "").lower()
        text = tree.expression.name if isinstance(tree.expression, exp.Literal) else ""
        pattern = {"declare": DECLARE_QUERY, "prepare": PREPARE_QUERY}.get(keyword)
        if pattern is not None:
            match = pattern.search(text)
            return (match.group("query") if match else ""), False
    return None, True


@dataclass(frozen=True)
class OutputMask:
    method: str | None
    opaque: bool


def output_masks(query: TracedQuery, relations: dict[str, Relation], view: CatalogView,
                 rules: MaskRules) -> list[OutputMask] | None:
    """What each output column of a traced query must get; None if it was not traced."""
    if query.outputs is None:
        return None
    masks = []
    for column in query.outputs:
        methods = []
        opaque = column.opaque
        for source in column.sources:
            table, _, name = source.rpartition(".")
            relation = relations.get(table) or relations.get(table.rpartition(".")[2])
            if relation is None or name == "*":
                opaque = True
                continue
            method, hidden = view.column_method(rules, relation, name)
            methods.append(method)
            opaque = opaque or hidden
        # A computed column was computed from masked values (`mask_rewrite` replaced every
        # masked column it reads), so only a column passed through unchanged is masked here.
        masks.append(OutputMask(strongest(methods) if column.direct else None, opaque))
    return masks


def check_outputs(traced: list[TracedQuery] | None, relations: dict[str, Relation],
                  view: CatalogView, rules: MaskRules) -> list[OutputMask] | None:
    """Deny (raise `MaskingDenied`) what cannot be masked with certainty, for a statement
    that reads masked columns; returns the output masks of its one direct query when the
    proxy must map computed columns by position, else None."""
    if traced is None:
        raise MaskingDenied("the statement reads columns that policy masks and its result "
                            "columns cannot be traced")
    per_query = []
    for query in traced:
        masks = output_masks(query, relations, view, rules)
        if masks is None:
            raise MaskingDenied("the statement reads columns that policy masks and its result "
                                "columns cannot be traced")
        for index, mask in enumerate(masks):
            if mask.opaque:
                name = query.outputs[index].name if query.outputs else str(index)
                raise MaskingDenied(
                    f"result column {index + 1} ({name}) cannot be traced to table columns "
                    "(a whole-row reference or an untraceable expression) and the statement "
                    "reads columns that policy masks: denied rather than risk leaking them")
        per_query.append(masks)
    # Elsewhere (a string of several statements, DECLARE, PREPARE) computed columns cannot be
    # mapped by position; the statement's rewrite (`mask_rewrite`) computed them from masked
    # values already, and plain ones are masked by their table OIDs.
    positional = len(traced) == 1 and traced[0].direct
    return per_query[0] if positional else None


# --------------------------------------------------------------------------------------------
# The masker of one statement


class TransformCache(dict[ColumnDescriptor, tuple[ValueTransform | None, str | None]]):
    """Column -> (transform, masked label), shared by the statements of one masking plan;
    `by_id` finds the same entries by the descriptor's identity (descriptors of one
    description are shared), `resolved` the descriptions already resolved."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[int, tuple[ColumnDescriptor, ValueTransform | None, str | None]] = {}
        self.resolved: dict[int, Sequence[ColumnDescriptor]] = {}


class ResultMasking:
    """Chooses the transform of every result column of one statement.

    `computed` are the output masks of the statement's one query by position (None when
    computed columns carry no masked data, as `check_outputs` established); `copy_methods`
    the method of each COPY column. `resolve_columns` must have seen a RowDescription before
    `masker` is asked about its columns (the proxy guarantees it)."""

    def __init__(self, catalog: Catalog, rules: MaskRules, view: CatalogView, *,
                 computed: Sequence[OutputMask] | None = None,
                 copy_methods: Sequence[str | None] | None = None,
                 copy_types: Sequence[int] | None = None,
                 transforms: TransformCache | None = None) -> None:
        self.catalog = catalog
        self.rules = rules
        self.view = view
        self._shared_view = view
        self._transforms = transforms
        self.computed = list(computed) if computed is not None else None
        self.copy_methods = list(copy_methods) if copy_methods is not None else None
        self.copy_types = list(copy_types) if copy_types is not None else []
        self.masked: set[str] = set()  # "table.column -> method" seen, for the record

    async def resolve_columns(self, columns: Sequence[ColumnDescriptor]) -> None:
        cache = self._transforms
        if cache is not None and self.view is self._shared_view:
            # The same description (the proxy decodes each distinct one once) resolved
            # before against this plan: nothing to look up, nothing to check again.
            seen = cache.resolved.get(id(columns))
            if seen is not None and seen is columns:
                return
        oids = {c.table_oid for c in columns if c.table_oid} if self.rules else set()
        unknown = oids - self.view.relations.keys()
        if unknown:
            found = await self.catalog.relations(unknown)
            missing = unknown - found.keys()
            if missing:
                raise LookupError(f"relations {sorted(missing)} are not in the catalog")
            expanded = await self.catalog.expand(found.values())
            self.view = self.view.copy()  # it may be shared by the statements of one plan
            self.view.add(self.catalog, expanded)
        try:
            await self.catalog.types(c.type_oid for c in columns)
        except CatalogError as exc:  # types only refine the backstop; unknown ones are safe
            log.warning("type categories unavailable: %s", exc)
        computed = [c for c in columns if not c.table_oid]
        if computed and self.computed is not None and len(self.computed) != len(columns):
            raise LookupError(f"the result has {len(columns)} columns but the statement was "
                              f"traced to {len(self.computed)}")
        if (cache is not None and self.view is self._shared_view and isinstance(columns, tuple)
                and len(cache.resolved) < MAX_CACHED_TRANSFORMS
                and all(self.catalog.type_info(c.type_oid) is not None for c in columns)):
            cache.resolved[id(columns)] = columns  # (kept alive by the entry: ids stay unique)

    def masker(self, column: ColumnDescriptor) -> ValueTransform | None:
        cache = self._transforms
        if cache is not None and not column.copy and self.view is self._shared_view:
            same = cache.by_id.get(id(column))  # descriptors of a cached description
            if same is not None and same[0] is column:
                hit: tuple[ValueTransform | None, str | None] | None = same[1:]
            else:
                hit = cache.get(column)
            if hit is not None:
                transform, masked = hit
                if masked is not None:
                    self.masked.add(masked)
                return transform
        transform, masked = self._choose(column)
        if masked is not None:
            self.masked.add(masked)
        # What `_choose` found depends only on the plan (rules, its relations and lineage,
        # the traced outputs) and the column's type category, which never changes once
        # known: the statements of the plan can share it.
        if (cache is not None and not column.copy and self.view is self._shared_view
                and self.catalog.type_info(column.type_oid) is not None
                and len(cache) < MAX_CACHED_TRANSFORMS):
            cache[column] = (transform, masked)
            cache.by_id[id(column)] = (column, transform, masked)  # (keeps it alive)
        return transform

    def _choose(self, column: ColumnDescriptor) -> tuple[ValueTransform | None, str | None]:
        """The transform of a column, and what the record lists as masked ("name:method")."""
        method = self._method(column)
        name = column.name or f"#{column.index + 1}"
        masked = f"{name}:{method}" if method is not None else None
        if column.copy:
            if method is None:
                if column.format == 0:
                    return SCRUB_TEXT, None
                type_oid = (self.copy_types[column.index]
                            if column.index < len(self.copy_types) else 0)
                return (SCRUB_TEXT_BINARY if type_oid in BINARY_TEXT_TYPES else None), None
            return mask_transform(method), masked
        info = self.catalog.type_info(column.type_oid)
        category = info.category if info is not None else (
            "S" if column.type_oid in BINARY_TEXT_TYPES else "")
        if method is not None:
            if method == "null":
                return mask_transform(method), masked
            if column.format != 0 or category == "S":
                # binary: the proxy sends NULL with a notice
                return mask_transform(method), masked
            return withheld(name, method), masked
        if column.format != 0:
            return (SCRUB_TEXT_BINARY if column.type_oid in BINARY_TEXT_TYPES else None), None
        if category == "S" or (category == "A" and info is not None
                               and info.element_category == "S"):
            return SCRUB_TEXT, None
        if column.type_oid in JSON_TYPES:
            return SCRUB_JSON, None
        return withhold_pans(name), None

    def _method(self, column: ColumnDescriptor) -> str | None:
        if column.copy:
            if self.copy_methods is None or column.index >= len(self.copy_methods):
                return None
            method = self.copy_methods[column.index]
            if method == OPAQUE:
                raise LookupError(f"COPY column #{column.index + 1} cannot be traced")
            return method
        if not self.rules:
            return None
        if column.table_oid:
            relation = self.view.relations.get(column.table_oid)
            if relation is None:
                raise LookupError(f"relation {column.table_oid} of column {column.name!r} "
                                  "was not resolved")
            attribute = relation.column(column.attnum)
            if attribute is None:
                raise LookupError(f"column {column.attnum} of {relation.schema}."
                                  f"{relation.name} is not in the catalog")
            method, opaque = self.view.column_method(self.rules, relation, attribute.name)
            if opaque and self.view.could_mask(self.rules):
                raise LookupError(f"column {column.name!r} of view {relation.name} cannot be "
                                  "traced to table columns")
            return method
        if self.computed is None:
            return None
        mask = self.computed[column.index]
        return mask.method


async def statement_relations(catalog: Catalog, names: Iterable[str],
                              seen: list[float] | None = None
                              ) -> tuple[dict[str, Relation], CatalogView]:
    """The relations a statement names (one per name, for lineage) and everything they read.
    `seen` collects the fetch times of the catalog entries used (`Catalog.fresh_until`)."""
    named = await catalog.relations_named(names, seen)
    view = CatalogView()
    everything = [r for found in named.values() for r in found]
    view.add(catalog, await catalog.expand(everything, seen))
    return choose_relations(named), view


def masked_schema(view: CatalogView, rules: MaskRules, catalog: Catalog) -> MaskedSchema:
    """What `mask_rewrite` needs of the relations one statement reads (`view`): each column's
    mask (a view column by what it reads; one whose origin cannot be traced gets `null`), its
    type (text or not: `Catalog.types` must have been loaded for them)."""
    columns: dict[str, MaskedColumn] = {}
    tables: dict[str, list[SourceTable]] = {}
    names: set[str] = set()
    for relation in view.relations.values():
        entries: list[tuple[str, MaskedColumn | None]] = []
        for column in relation.columns:
            name = column.name.lower()
            names.add(name)
            method, opaque = view.column_method(rules, relation, column.name)
            if opaque:
                method = "null"
            masked = None
            if method is not None:
                info = catalog.type_info(column.type_oid)
                masked = MaskedColumn(method, info is not None and info.category == "S")
                known = columns.get(name)
                if known is not None:
                    masked = MaskedColumn(strongest((known.method, method)) or method,
                                          known.text and masked.text)
                columns[name] = masked
            entries.append((name, masked))
        table = SourceTable(tuple(entries))
        for key in {relation.name.lower(), f"{relation.schema.lower()}.{relation.name.lower()}"}:
            tables.setdefault(key, []).append(table)
    return MaskedSchema(columns, {k: tuple(v) for k, v in tables.items()}, frozenset(names))


def lineage_schema(relations: dict[str, Relation]) -> dict[str, dict[str, str]]:
    """`engine.lineage`'s schema for these relations: table -> columns in attnum order."""
    schema: dict[str, dict[str, str]] = {}
    for relation in relations.values():
        schema.setdefault(relation.name.lower(),
                          {c.name.lower(): "text" for c in relation.columns})
    return schema
