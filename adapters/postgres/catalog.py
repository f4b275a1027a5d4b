"""What the upstream database's catalog says about relations and types, for masking.

Owns: one psycopg async connection of the proxy's own (the upstream URL's credentials), and
caches of relations (by OID and by name: schema, name, kind, columns in attnum order, a view's
definition, the code the server attaches to it: `AttachedCode`), of type categories, and of
each view's column lineage (which base columns every
view column reads, traced with `engine.lineage` through `pg_get_viewdef`, views in views
included). Entries expire after `ttl` seconds (a name that matches nothing is not cached);
`invalidate()` drops everything (the bridge calls
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.lineage import OutputColumn, trace_output_columns

log = logging.getLogger("ordinance.adapters.postgres.catalog")

VIEW_KINDS = frozenset({"v", "m"})
FIELD_CATEGORIES = frozenset({"C", "A"})  # types whose values may hold fields (domains: as
# their base type)
MAX_VIEW_DEPTH = 16


class CatalogError(Exception):
    """The catalog could not be read (connection lost, query failed)."""


@dataclass(frozen=True)
class Column:
    attnum: int
    name: str
    type_oid: int


@dataclass(frozen=True)
class AttachedCode:
    """Code the server runs with a relation's rows, which no policy and no rewrite sees: a
    trigger, a rule (other than a view's `_RETURN`), a row security policy, a CHECK or
    FOREIGN KEY constraint, a column DEFAULT or generation expression, a CHECK of a column's
    domain, an index; those of its inheritance descendants and partitions, and of the tables
    whose foreign keys to it cascade, too (named `table.name`). `active`: for a policy,
    whether row security applies to the catalog connection's role (the proxy's); for a
    constraint, whether it is validated; for an index, whether it is unique or an exclusion
    constraint; else true. `columns`: the relation's own columns it is about (a constraint's
    or an index's key, a default's column). `events`: what fires a trigger or a rule
    (insert, update, delete, truncate; select for a rule). `reads`: the (schema, relation,
    column) its expression reads, as `pg_depend` records them (a whole-relation reference
    lists every column). `calls`: the functions defined in the database (outside
    `pg_catalog` and `information_schema`) it calls, a trigger's function included."""

    kind: str  # trigger, rule, policy, check, fkey, default, generated, domain, index
    name: str
    active: bool
    columns: tuple[str, ...]
    events: tuple[str, ...]
    reads: tuple[tuple[str, str, str], ...]
    calls: tuple[str, ...]


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str
    kind: str  # pg_class.relkind: r table, v view, m materialized view, p partitioned, f foreign
    columns: tuple[Column, ...]
    definition: str | None = None  # a view's pg_get_viewdef
    visible: bool = True  # on the catalog connection's search path
    attached: tuple[AttachedCode, ...] = ()

    def generated_from(self, column: str) -> tuple[str, ...]:
        """The columns of this relation a generated column is computed from (else ())."""
        lowered = column.lower()
        return tuple(sorted({c for code in self.attached if code.kind == "generated"
                             and code.columns == (lowered,)
                             for _, _, c in code.reads if c and c != lowered}))

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
# What else a write of each relation writes, to any depth: its inheritance descendants and
# partitions, and the tables whose foreign keys to it cascade (ON DELETE/UPDATE CASCADE, SET
# NULL, SET DEFAULT: their triggers fire too).
_DESCENDANTS_SQL = """
WITH RECURSIVE family(root, rel) AS (
  SELECT c.oid, c.oid FROM pg_catalog.pg_class c WHERE c.oid = ANY(%s::pg_catalog.oid[])
  UNION
  SELECT f.root, x.rel FROM family f CROSS JOIN LATERAL (
    SELECT i.inhrelid AS rel FROM pg_catalog.pg_inherits i WHERE i.inhparent = f.rel
    UNION ALL
    SELECT con.conrelid FROM pg_catalog.pg_constraint con
    WHERE con.confrelid = f.rel AND con.contype = 'f'
      AND (con.confdeltype IN ('c', 'n', 'd') OR con.confupdtype IN ('c', 'n', 'd'))
  ) x
)
SELECT root::int8, rel::int8, rel::pg_catalog.regclass::text FROM family WHERE rel <> root
"""
# What the server runs with a relation's rows (`AttachedCode`), one row per thing it reads or
# calls (pg_depend).
_ATTACHED_SQL = """
SELECT o.rel::int8, o.kind, o.name, o.active, o.own, o.events,
       coalesce(rn.nspname::text, ''), coalesce(rc.relname::text, ''),
       coalesce(ra.attname::text, ''), coalesce(p.proname::text, '')
FROM (
  SELECT t.tgrelid AS rel, 'trigger'::text AS kind, t.tgname::text AS name,
         true AS active, '{}'::text[] AS own,
         ARRAY(SELECT v.event FROM (VALUES (4, 'insert'), (8, 'delete'), (16, 'update'),
                                           (32, 'truncate')) AS v(bit, event)
               WHERE t.tgtype::int4 & v.bit <> 0) AS events,
         'pg_catalog.pg_trigger'::pg_catalog.regclass AS classid, t.oid AS objid
  FROM pg_catalog.pg_trigger t
  WHERE t.tgrelid = ANY(%(oids)s) AND NOT t.tgisinternal AND t.tgenabled <> 'D'
  UNION ALL
  SELECT r.ev_class, 'rule', r.rulename::text, true, '{}',
         ARRAY[CASE r.ev_type WHEN '2' THEN 'update' WHEN '3' THEN 'insert'
                              WHEN '4' THEN 'delete' ELSE 'select' END],
         'pg_catalog.pg_rewrite'::pg_catalog.regclass, r.oid
  FROM pg_catalog.pg_rewrite r
  WHERE r.ev_class = ANY(%(oids)s) AND r.rulename <> '_RETURN' AND r.ev_enabled <> 'D'
  UNION ALL
  SELECT pol.polrelid, 'policy', pol.polname::text,
         pg_catalog.row_security_active(pol.polrelid), '{}', '{}',
         'pg_catalog.pg_policy'::pg_catalog.regclass, pol.oid
  FROM pg_catalog.pg_policy pol WHERE pol.polrelid = ANY(%(oids)s)
  UNION ALL
  SELECT con.conrelid, CASE con.contype WHEN 'c' THEN 'check' ELSE 'fkey' END,
         con.conname::text, con.convalidated,
         ARRAY(SELECT lower(a.attname::text) FROM pg_catalog.pg_attribute a
               WHERE a.attrelid = con.conrelid AND a.attnum = ANY(con.conkey)), '{}',
         'pg_catalog.pg_constraint'::pg_catalog.regclass, con.oid
  FROM pg_catalog.pg_constraint con
  WHERE con.conrelid = ANY(%(oids)s) AND con.contype IN ('c', 'f')
  UNION ALL
  SELECT ad.adrelid,
         CASE WHEN a.attgenerated <> '' THEN 'generated' ELSE 'default' END,
         a.attname::text, true, ARRAY[lower(a.attname::text)], '{}',
         'pg_catalog.pg_attrdef'::pg_catalog.regclass, ad.oid
  FROM pg_catalog.pg_attrdef ad
  JOIN pg_catalog.pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
  WHERE ad.adrelid = ANY(%(oids)s)
  UNION ALL
  SELECT a.attrelid, 'domain', con.conname::text, con.convalidated,
         ARRAY[lower(a.attname::text)], '{}',
         'pg_catalog.pg_constraint'::pg_catalog.regclass, con.oid
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_constraint con ON con.contypid = a.atttypid AND con.contypid <> 0
  WHERE a.attrelid = ANY(%(oids)s) AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT i.indrelid, 'index', ic.relname::text, i.indisunique OR i.indisexclusion,
         ARRAY(SELECT lower(a.attname::text) FROM pg_catalog.pg_attribute a
               WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])), '{}',
         'pg_catalog.pg_class'::pg_catalog.regclass, i.indexrelid
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
  WHERE i.indrelid = ANY(%(oids)s)
) o
LEFT JOIN pg_catalog.pg_depend d ON d.classid = o.classid AND d.objid = o.objid
     AND d.refclassid IN ('pg_catalog.pg_class'::pg_catalog.regclass,
                          'pg_catalog.pg_proc'::pg_catalog.regclass)
     AND NOT (d.refobjid = o.rel AND d.refobjsubid = 0)
LEFT JOIN pg_catalog.pg_class rc
     ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND rc.oid = d.refobjid
LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
LEFT JOIN pg_catalog.pg_attribute ra ON ra.attrelid = rc.oid AND ra.attnum > 0
     AND NOT ra.attisdropped AND (ra.attnum = d.refobjsubid OR d.refobjsubid = 0)
LEFT JOIN pg_catalog.pg_proc p
     ON d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND p.oid = d.refobjid
     AND p.pronamespace NOT IN ('pg_catalog'::pg_catalog.regnamespace,
                                'information_schema'::pg_catalog.regnamespace)
"""
# The field names held by values of each type, to any depth (composite types, row types,
# arrays and domains of them).
_FIELDS_SQL = """
WITH RECURSIVE walk(root, typ) AS (
  SELECT t.oid, t.oid FROM pg_catalog.pg_type t WHERE t.oid = ANY(%s)
  UNION
  SELECT w.root, x.next FROM walk w
  JOIN pg_catalog.pg_type t ON t.oid = w.typ
  CROSS JOIN LATERAL (
    SELECT t.typelem AS next WHERE t.typelem <> 0 AND t.typcategory = 'A'
    UNION ALL SELECT t.typbasetype WHERE t.typtype = 'd'
    UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute a
      WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
  ) x
)
SELECT w.root::int8, array_agg(DISTINCT lower(a.attname::text))
FROM walk w
JOIN pg_catalog.pg_type t ON t.oid = w.typ AND t.typrelid <> 0
JOIN pg_catalog.pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
GROUP BY w.root
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
        self._fields: dict[int, frozenset[str]] = {}
        self._user_functions: tuple[float, frozenset[str]] | None = None
        self._view_calls: dict[int, frozenset[str]] = {}
        self._view_reads: dict[int, frozenset[int]] = {}
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

    async def _query(self, sql: str, params: Iterable[Any] | Mapping[str, Any] = ()
                     ) -> list[tuple[Any, ...]]:
        import psycopg

        bound = dict(params) if isinstance(params, Mapping) else tuple(params)
        async with self._lock:
            conn = await self._connection()
            self.queries += 1
            try:
                cursor = await conn.execute(sql, bound)
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

    def view_reads(self, oid: int) -> frozenset[int]:
        """The OIDs of the relations a traced view's definition names, empty if unknown."""
        return self._view_reads.get(oid, frozenset())

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
        self._view_reads.clear()
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

    async def _fetch(self, condition: str, params: tuple[Any, ...]) -> list[Relation]:
        """Fetch and cache the relations matching `condition`, with their attached code."""
        rows = await self._query(_RELATIONS_SQL.replace("$CONDITION", condition), params)
        attached = await self._attached([int(row[0]) for row in rows]) if rows else {}
        return self._store(rows, attached)

    async def _attached(self, oids: list[int]) -> dict[int, tuple[AttachedCode, ...]]:
        """The code attached to these relations and to what writing them writes too (their
        descendants, the tables their foreign keys cascade to: named `table.name`)."""
        found: dict[tuple[int, str, str],
                    tuple[bool, tuple[str, ...], tuple[str, ...], set[tuple[str, str, str]],
                          set[str]]] = {}
        family: dict[int, list[tuple[int, str]]] = {oid: [(oid, "")] for oid in oids}
        for root, rel, name in await self._query(_DESCENDANTS_SQL, (oids,)):
            family.setdefault(int(rel), []).append((int(root), f"{name}."))
        for (rel, kind, name, active, own, events, schema, table, column,
             function) in await self._query(_ATTACHED_SQL, {"oids": sorted(family)}):
            for root, prefix in family.get(int(rel), ()):
                entry = found.setdefault((root, str(kind), prefix + str(name)), (
                    bool(active), tuple(own or ()), tuple(events or ()), set(), set()))
                if table:
                    entry[3].add((str(schema).lower(), str(table).lower(),
                                  str(column).lower()))
                if function:
                    entry[4].add(str(function).lower())
        out: dict[int, list[AttachedCode]] = {}
        for (rel, kind, name), (active, own, events, reads, calls) in sorted(found.items()):
            out.setdefault(rel, []).append(AttachedCode(kind, name, active, own, events,
                                                        tuple(sorted(reads)),
                                                        tuple(sorted(calls))))
        return {rel: tuple(codes) for rel, codes in out.items()}

    def _store(self, rows: list[tuple[Any, ...]],
               attached: Mapping[int, tuple[AttachedCode, ...]] | None = None
               ) -> list[Relation]:
        attached = attached or {}
        now = self._clock()
        found = []
        for oid, schema, name, kind, definition, visible, attnums, attnames, types in rows:
            relation = Relation(
                int(oid), schema, name, kind,
                tuple(Column(int(a), n, int(t)) for a, n, t in zip(attnums, attnames, types,
                                                                     strict=True)),
                definition, bool(visible), attached.get(int(oid), ()))
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
            for relation in await self._fetch("c.oid = ANY(%s)", (missing,)):
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
            stored = await self._fetch("lower(c.relname) = ANY(%s)", (bare,))
            now = self._clock()
            for name in missing:
                schema, table = _split_name(name)
                matching = tuple(r.oid for r in stored if r.name.lower() == table and (
                    schema is None or r.schema.lower() == schema))
                if matching:  # (a name that means nothing yet is asked again: it may be
                    self._names[name] = (now, matching)  # created outside the proxy)
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
        await self._load_fields(c.type_oid for r in closure.values() for c in r.columns)
        return closure

    async def _load_fields(self, oids: Iterable[int]) -> None:
        wanted = {int(o) for o in oids if o} - self._fields.keys()
        if not wanted:
            return
        known = await self.types(wanted)
        for oid in wanted - {o for o, t in known.items() if t.category in FIELD_CATEGORIES}:
            self._fields[oid] = frozenset()  # (no composite, array or unknown type)
        missing = sorted(wanted - self._fields.keys())
        if not missing:
            return
        found = {int(root): frozenset(str(n) for n in names)
                 for root, names in await self._query(_FIELDS_SQL, (missing,))}
        for oid in missing:
            self._fields[oid] = found.get(oid, frozenset())

    def type_fields(self, oid: int) -> frozenset[str]:
        """The field names (lower case) a value of this type holds, to any depth (of a
        composite type, a table's row type, an array or a domain of one), as loaded by
        `expand` for the columns of what it returned; empty for other types."""
        return self._fields.get(oid, frozenset())

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
        self._view_reads[view.oid] = frozenset(r.oid for r in read)
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
