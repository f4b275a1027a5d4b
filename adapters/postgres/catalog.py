"""What the upstream database's catalog says about relations and types, for masking.

Owns: one psycopg async connection of the proxy's own (the upstream URL's credentials), and
caches of relations (by OID and by name: schema, name, kind, columns in attnum order, a view's
definition), of type categories, and of each view's column lineage (which base columns every
view column reads, traced with `engine.lineage` through `pg_get_viewdef`, views in views
included). Entries expire after `ttl` seconds; `invalidate()` drops everything (the bridge calls
it for every statement whose kinds include create, alter or drop); a miss is always fetched.
Must not: decide what is masked (the bridge applies the Decision's rules), or talk to the
database from anything but its own connection.

Names are matched case-insensitively and, when unqualified, in every schema: the proxy cannot
know a session's `search_path`, so "could this statement read a masked column" is answered for
every relation the name may mean (conservative). Where one relation must be chosen (the schema
given to lineage), the one visible on the catalog connection's search path wins.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from engine.lineage import OutputColumn, trace_output_columns

log = logging.getLogger("ordinance.adapters.postgres.catalog")

VIEW_KINDS = frozenset({"v", "m"})
MAX_VIEW_DEPTH = 16


class CatalogError(Exception):
    """The catalog could not be read (connection lost, query failed)."""


@dataclass(frozen=True)
class Column:
    attnum: int
    name: str
    type_oid: int


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str
    kind: str  # pg_class.relkind: r table, v view, m materialized view, p partitioned, f foreign
    columns: tuple[Column, ...]
    definition: str | None = None  # a view's pg_get_viewdef
    visible: bool = True  # on the catalog connection's search path

    @property
    def is_view(self) -> bool:
        return self.kind in VIEW_KINDS

    def column(self, attnum: int) -> Column | None:
        for column in self.columns:
            if column.attnum == attnum:
                return column
        return None

    def column_named(self, name: str) -> Column | None:
        lowered = name.lower()
        for column in self.columns:
            if column.name.lower() == lowered:
                return column
        return None


@dataclass(frozen=True)
class TypeInfo:
    oid: int
    category: str  # pg_type.typcategory: S string, N numeric, A array, U user (json), ...
    element_category: str = ""  # for arrays


@dataclass(frozen=True)
class ViewColumn:
    """Where one view column comes from: base (relation OID, column name) pairs, whether
    something it reads could not be traced (then `opaque`), and whether it is one of them
    passed through unchanged (`direct`; else it is computed from them)."""

    sources: tuple[tuple[int, str], ...]
    opaque: bool
    direct: bool = False


_RELATIONS_SQL = """
SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text,
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END,
       pg_catalog.pg_table_is_visible(c.oid),
       coalesce(array_agg(a.attnum::int4 ORDER BY a.attnum)
                FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped), '{}'),
       coalesce(array_agg(a.attname::text ORDER BY a.attnum)
                FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped), '{}'),
       coalesce(array_agg(a.atttypid::int8 ORDER BY a.attnum)
                FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped), '{}')
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') AND $CONDITION
GROUP BY c.oid, n.nspname, c.relname, c.relkind
"""
_TYPES_SQL = """
SELECT t.oid::int8, t.typcategory::text, coalesce(e.typcategory::text, '')
FROM pg_catalog.pg_type t
LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
"""


class Catalog:
    """Cached catalog lookups over one async connection. Coroutines are safe to call from
    many sessions at once (queries are serialised on the connection)."""

    def __init__(self, conninfo: str, *, ttl: float = 60.0, connect_timeout: float = 10.0,
                 clock: Any = time.monotonic) -> None:
        self.conninfo = conninfo
        self.ttl = ttl
        self.connect_timeout = connect_timeout
        self._clock = clock
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._relations: dict[int, tuple[float, Relation]] = {}
        self._names: dict[str, tuple[float, tuple[int, ...]]] = {}
        self._views: dict[int, dict[str, ViewColumn]] = {}
        self._types: dict[int, TypeInfo] = {}
        self._types_loaded = False
        self._user_functions: tuple[float, frozenset[str]] | None = None
        self._view_calls: dict[int, frozenset[str]] = {}
        self.generation = 0
        self.queries = 0  # catalog round trips, for tests and the curious

    # -- connection -------------------------------------------------------------------------

    async def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, connect_timeout=int(self.connect_timeout),
                    application_name="ordinance-proxy-catalog")
            except psycopg.Error as exc:
                raise CatalogError(f"cannot connect to read the catalog: "
                                   f"{_first_line(exc)}") from exc
        return self._conn

    async def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        async with self._lock:
            conn = await self._connection()
            self.queries += 1
            try:
                cursor = await conn.execute(sql, tuple(params))
                return [tuple(row) for row in await cursor.fetchall()]
            except psycopg.Error as exc:
                raise CatalogError(f"catalog query failed: {_first_line(exc)}") from exc

    async def upstream_role(self) -> tuple[str, bool]:
        """The role this connection (the proxy's upstream login) is, and whether it is a
        superuser."""
        rows = await self._query("SELECT current_user::text, rolsuper FROM pg_catalog.pg_roles "
                                 "WHERE rolname = current_user")
        if not rows:
            raise CatalogError("the upstream role is not in pg_roles")
        return str(rows[0][0]), bool(rows[0][1])

    async def user_functions(self) -> frozenset[str]:
        """Names (lower case) of the functions and procedures defined in the database, outside
        `pg_catalog` and `information_schema`: their bodies run SQL no policy sees. Cached for
        the catalog's ttl."""
        now = self._clock()
        if self._user_functions is not None and now - self._user_functions[0] < self.ttl:
            return self._user_functions[1]
        rows = await self._query(
            "SELECT DISTINCT lower(p.proname) FROM pg_catalog.pg_proc p "
            "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')")
        names = frozenset(str(row[0]) for row in rows)
        self._user_functions = (now, names)
        return names

    def view_calls(self, oid: int) -> frozenset[str]:
        """The names a traced view's definition calls (`called_names`), empty if unknown."""
        return self._view_calls.get(oid, frozenset())

    async def close(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.close()
            except Exception:  # closing a broken connection
                log.debug("catalog connection close failed", exc_info=True)
            self._conn = None

    # -- cache ------------------------------------------------------------------------------

    def invalidate(self) -> None:
        """Forget every relation, name, view and defined function (types stay: they are never
        altered in place)."""
        self._relations.clear()
        self._names.clear()
        self._views.clear()
        self._view_calls.clear()
        self._user_functions = None
        self.generation += 1

    def _fresh(self, stamp: float) -> bool:
        return self._clock() - stamp < self.ttl

    def fresh_until(self, seen: Iterable[float]) -> float:
        """Until when something derived from cached entries fetched at the times `seen` (and
        entries fetched now) stays as fresh as the entries themselves: compare with
        `still_fresh`. `invalidate()` also ends it (check `generation`)."""
        return min(seen, default=self._clock()) + self.ttl

    def still_fresh(self, until: float) -> bool:
        return self._clock() < until

    def cached(self, oid: int) -> Relation | None:
        entry = self._relations.get(oid)
        return entry[1] if entry is not None else None

    def type_info(self, oid: int) -> TypeInfo | None:
        return self._types.get(oid)

    def view_columns(self, oid: int) -> dict[str, ViewColumn] | None:
        return self._views.get(oid)

    def _store(self, rows: list[tuple[Any, ...]]) -> list[Relation]:
        now = self._clock()
        found = []
        for oid, schema, name, kind, definition, visible, attnums, attnames, types in rows:
            relation = Relation(
                int(oid), schema, name, kind,
                tuple(Column(int(a), n, int(t)) for a, n, t in zip(attnums, attnames, types,
                                                                     strict=True)),
                definition, bool(visible))
            self._relations[relation.oid] = (now, relation)
            found.append(relation)
        return found

    # -- lookups ----------------------------------------------------------------------------

    async def relations(self, oids: Iterable[int], seen: list[float] | None = None
                        ) -> dict[int, Relation]:
        """The relations with these OIDs (unknown ones are absent), fetching misses. When
        `seen` is given, the fetch times of the cached entries used are added to it (see
        `fresh_until`)."""
        wanted = {int(o) for o in oids if o}
        out: dict[int, Relation] = {}
        missing = []
        for oid in wanted:
            entry = self._relations.get(oid)
            if entry is not None and self._fresh(entry[0]):
                out[oid] = entry[1]
                if seen is not None:
                    seen.append(entry[0])
            else:
                missing.append(oid)
        if missing:
            rows = await self._query(_RELATIONS_SQL.replace("$CONDITION", "c.oid = ANY(%s)"),
                                     (missing,))
            for relation in self._store(rows):
                out[relation.oid] = relation
        return out

    async def relations_named(self, names: Iterable[str], seen: list[float] | None = None
                              ) -> dict[str, list[Relation]]:
        """Every relation each name may mean: `schema.table` names that one, `table` any
        schema's (case-insensitive). Names that match nothing map to []. `seen`: as for
        `relations`."""
        wanted = {n.lower() for n in names if n}
        out: dict[str, list[Relation]] = {}
        missing = []
        oids: dict[str, tuple[int, ...]] = {}
        for name in wanted:
            entry = self._names.get(name)
            if entry is not None and self._fresh(entry[0]):
                oids[name] = entry[1]
                if seen is not None:
                    seen.append(entry[0])
            else:
                missing.append(name)
        if missing:
            bare = sorted({_split_name(n)[1] for n in missing})
            rows = await self._query(
                _RELATIONS_SQL.replace("$CONDITION", "lower(c.relname) = ANY(%s)"), (bare,))
            stored = self._store(rows)
            now = self._clock()
            for name in missing:
                schema, table = _split_name(name)
                matching = tuple(r.oid for r in stored if r.name.lower() == table and (
                    schema is None or r.schema.lower() == schema))
                self._names[name] = (now, matching)
                oids[name] = matching
        every = await self.relations({o for found in oids.values() for o in found}, seen)
        for name, found in oids.items():
            out[name] = [every[o] for o in found if o in every]
        return out

    async def types(self, oids: Iterable[int]) -> dict[int, TypeInfo]:
        """Type categories; all types are loaded on first use, later misses fetched."""
        if not self._types_loaded:
            for oid, category, element in await self._query(_TYPES_SQL):
                self._types[int(oid)] = TypeInfo(int(oid), category, element)
            self._types_loaded = True
        wanted = {int(o) for o in oids if o}
        missing = [o for o in wanted if o not in self._types]
        if missing:
            for oid, category, element in await self._query(
                    _TYPES_SQL + " WHERE t.oid = ANY(%s)", (missing,)):
                self._types[int(oid)] = TypeInfo(int(oid), category, element)
        return {o: self._types[o] for o in wanted if o in self._types}

    async def expand(self, relations: Iterable[Relation], seen: list[float] | None = None
                     ) -> dict[int, Relation]:
        """These relations and, for views, every relation their definitions read (to any
        depth), with each view's column lineage cached (`view_columns`). `seen`: as for
        `relations`."""
        closure: dict[int, Relation] = {}
        pending = list(relations)
        depth = 0
        while pending:
            depth += 1
            if depth > MAX_VIEW_DEPTH:
                raise CatalogError(f"views nested deeper than {MAX_VIEW_DEPTH} levels")
            next_round: list[Relation] = []
            for relation in pending:
                if relation.oid in closure:
                    continue
                closure[relation.oid] = relation
                if relation.is_view:
                    read = await self._trace_view(relation, seen)
                    next_round.extend(r for r in read if r.oid not in closure)
            pending = next_round
        return closure

    async def _trace_view(self, view: Relation, seen: list[float] | None = None
                          ) -> list[Relation]:
        """Trace a view's columns through its definition; returns the relations it reads."""
        from engine.facts import enrich_command
        from engine.facts.sql import called_names

        definition = (view.definition or "").strip().rstrip(";")
        facts = enrich_command({"protocol": "postgres", "raw": definition},
                               {"type": "postgres"})
        self._view_calls[view.oid] = called_names(definition) or frozenset()
        names = [str(t) for t in facts.get("tables") or []]
        named = await self.relations_named(names, seen)
        read = [r for found in named.values() for r in found]
        if view.oid in self._views:
            return read
        chosen = choose_relations(named)
        schema = {r.name.lower(): {c.name.lower(): "text" for c in r.columns}
                  for r in chosen.values()}
        traced = trace_output_columns(definition, "postgres", schema) if definition else None
        columns: dict[str, ViewColumn] = {}
        for index, column in enumerate(view.columns):
            if traced is None or index >= len(traced):
                columns[column.name.lower()] = ViewColumn((), True)
                continue
            columns[column.name.lower()] = source_columns(traced[index], chosen)
        self._views[view.oid] = columns
        return read


def choose_relations(named: dict[str, list[Relation]]) -> dict[str, Relation]:
    """One relation per written name, for a lineage schema: the visible one if any."""
    chosen: dict[str, Relation] = {}
    for name, found in named.items():
        if not found:
            continue
        best = sorted(found, key=lambda r: (not r.visible, r.schema, r.oid))[0]
        chosen[name] = best
        chosen.setdefault(best.name.lower(), best)
        chosen.setdefault(f"{best.schema.lower()}.{best.name.lower()}", best)
    return chosen


def source_columns(column: OutputColumn, relations: dict[str, Relation]) -> ViewColumn:
    """Map a traced output column's `table.column` sources to (relation OID, column)."""
    sources: list[tuple[int, str]] = []
    opaque = column.opaque
    for source in sorted(column.sources):
        table, _, name = source.rpartition(".")
        relation = relations.get(table) or relations.get(table.rpartition(".")[2])
        if relation is None or name == "*":
            opaque = True
            continue
        sources.append((relation.oid, name))
    return ViewColumn(tuple(sources), opaque, column.direct)


def _split_name(name: str) -> tuple[str | None, str]:
    parts = name.lower().split(".")
    if len(parts) >= 2:
        return parts[-2], parts[-1]
    return None, parts[0]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
