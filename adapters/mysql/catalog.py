"""What the upstream MySQL/MariaDB server's information_schema says about tables and views.

Owns: one PyMySQL connection of the proxy's own (the upstream URL's credentials), used from a
worker thread (`asyncio.to_thread`, one query at a time under a lock; PyMySQL because it is
already a dependency of the tests and is pure Python, no asyncio driver is in the
dependencies), and a cache of relations by `schema.name`: their columns in ordinal order with
their data types, and for a view each column's lineage (which base columns it reads, traced
with `engine.lineage` through `information_schema.VIEWS.VIEW_DEFINITION`, views in views
included) and the base columns its definition uses anywhere else (WHERE, JOIN, GROUP BY, …).
Entries expire after `ttl` seconds; `invalidate()` drops everything (to be called for every
statement whose kinds include create, alter or drop); a miss is always fetched. Must not:
decide what is masked (adapters/mysql/masking.py applies the Decision's rules).

Names are matched case-insensitively and, when unqualified, in every schema: the proxy does not
track a session's current database with certainty, so "could this statement read a masked
column" is answered for every relation the name may mean (conservative).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from engine.lineage import trace_output_columns

MAX_VIEW_DEPTH = 16
STRING_TYPES = frozenset({"char", "varchar", "tinytext", "text", "mediumtext", "longtext",
                          "enum", "set", "json"})
"""information_schema DATA_TYPEs whose values are text (a masked one gets the method's output;
any other type of masked column becomes NULL)."""


class CatalogError(Exception):
    """The catalog could not be read (connection lost, query failed)."""


@dataclass(frozen=True)
class Column:
    name: str  # as the server spells it
    data_type: str  # information_schema.COLUMNS.DATA_TYPE, lower case

    @property
    def text(self) -> bool:
        return self.data_type in STRING_TYPES


@dataclass(frozen=True)
class ViewColumn:
    """Where one view column comes from: base columns `sources` as (schema, table, column),
    lower case; `direct` when it passes one through unchanged; `opaque` when not traceable."""

    sources: tuple[tuple[str, str, str], ...]
    direct: bool
    opaque: bool


@dataclass(frozen=True)
class Relation:
    schema: str
    name: str
    columns: tuple[Column, ...]
    view_columns: dict[str, ViewColumn] | None = None  # a view's, by lower-case column name
    view_uses: frozenset[tuple[str, str, str]] = frozenset()
    """The base columns a view's definition reads outside its plain output columns."""

    @property
    def is_view(self) -> bool:
        return self.view_columns is not None

    @property
    def key(self) -> str:
        return f"{self.schema.lower()}.{self.name.lower()}"


def connect_url(url: str) -> Callable[[], pymysql.connections.Connection[Any]]:
    """A connection factory for a `mysql://USER:PASS@HOST:PORT/DB` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("mysql", "mariadb"):
        raise ValueError(f"not a mysql:// URL: {parts.scheme}://…")

    def connect() -> pymysql.connections.Connection[Any]:
        return pymysql.connect(
            host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
            user=unquote(parts.username or ""), password=unquote(parts.password or ""),
            database=unquote(parts.path.lstrip("/")) or None, autocommit=True,
            charset="utf8mb4", connect_timeout=10, read_timeout=30)

    return connect


class Catalog:
    """Relations by name, from information_schema, cached for `ttl` seconds."""

    def __init__(self, connect: Callable[[], pymysql.connections.Connection[Any]],
                 ttl: float = 60.0) -> None:
        self._connect = connect
        self._conn: pymysql.connections.Connection[Any] | None = None
        self._lock = threading.Lock()
        self.ttl = ttl
        self._by_name: dict[str, tuple[float, list[Relation]]] = {}  # name or schema.name
        self._functions: tuple[float, frozenset[str]] | None = None
        self._sql_mode: tuple[float, frozenset[str]] | None = None
        self.generation = 0

    def invalidate(self) -> None:
        self._by_name.clear()
        self._functions = None
        self._sql_mode = None
        self.generation += 1

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- lookups ----------------------------------------------------------------------------

    async def relations_named(self, names: Iterable[str]) -> dict[str, list[Relation]]:
        """Each name (`t`, `db.t`, any case, quotes stripped) -> the relations it may mean."""
        wanted = {_normal(n) for n in names if n}
        now = time.monotonic()
        missing = [n for n in wanted if not self._fresh(n, now)]
        if missing:
            found = await asyncio.to_thread(self._fetch, missing)
            for name in missing:
                self._by_name[name] = (now + self.ttl, found.get(name, []))
        return {n: list(self._by_name[n][1]) for n in wanted}

    async def closure(self, relations: Iterable[Relation]) -> dict[str, Relation]:
        """These relations and, transitively, every relation their views read."""
        out: dict[str, Relation] = {}
        todo = list(relations)
        depth = 0
        while todo and depth <= MAX_VIEW_DEPTH:
            names: set[str] = set()
            for relation in todo:
                if relation.key in out:
                    continue
                out[relation.key] = relation
                if relation.view_columns is not None:
                    for column in relation.view_columns.values():
                        names.update(f"{s}.{t}" for s, t, _ in column.sources)
                    names.update(f"{s}.{t}" for s, t, _ in relation.view_uses)
            names -= out.keys()
            found = await self.relations_named(names) if names else {}
            todo = [r for rs in found.values() for r in rs]
            depth += 1
        return out

    async def user_functions(self) -> frozenset[str]:
        """The names (lower case) of the stored functions defined in the database."""
        now = time.monotonic()
        if self._functions is None or self._functions[0] <= now:
            rows = await asyncio.to_thread(
                self._query, "SELECT DISTINCT LOWER(ROUTINE_NAME) FROM information_schema."
                "ROUTINES WHERE ROUTINE_TYPE = 'FUNCTION'", ())
            self._functions = (now + self.ttl, frozenset(str(r[0]) for r in rows))
        return self._functions[1]

    async def sql_mode(self) -> frozenset[str]:
        """The modes of the server's global `sql_mode` (what a new session starts with)."""
        now = time.monotonic()
        if self._sql_mode is None or self._sql_mode[0] <= now:
            rows = await asyncio.to_thread(self._query, "SELECT @@GLOBAL.sql_mode", ())
            modes = str(rows[0][0] or "") if rows else ""
            self._sql_mode = (now + self.ttl, frozenset(
                m.strip().upper() for m in modes.split(",") if m.strip()))
        return self._sql_mode[1]

    def _fresh(self, name: str, now: float) -> bool:
        entry = self._by_name.get(name)
        return entry is not None and entry[0] > now

    # -- fetching (in a worker thread) ------------------------------------------------------

    def _query(self, sql: str, args: Iterable[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None:
                        self._conn = self._connect()
                    with self._conn.cursor() as cur:
                        cur.execute(sql, tuple(args))
                        return list(cur.fetchall())
                except pymysql.err.OperationalError as exc:
                    self._conn = None  # reconnect once: the server may have closed it
                    if attempt == 2:
                        raise CatalogError(f"the catalog could not be read: {exc}") from exc
                except pymysql.err.MySQLError as exc:
                    raise CatalogError(f"the catalog could not be read: {exc}") from exc
        raise AssertionError("unreachable")

    def _fetch(self, names: list[str]) -> dict[str, list[Relation]]:
        bare = sorted({n.rpartition(".")[2] for n in names})
        marks = ", ".join(["%s"] * len(bare))
        rows = self._query(
            "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, LOWER(c.DATA_TYPE), "
            "v.VIEW_DEFINITION FROM information_schema.COLUMNS c "
            "LEFT JOIN information_schema.VIEWS v ON v.TABLE_SCHEMA = c.TABLE_SCHEMA "
            "AND v.TABLE_NAME = c.TABLE_NAME "
            f"WHERE LOWER(c.TABLE_NAME) IN ({marks}) "
            "ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION", bare)
        grouped: dict[tuple[str, str], tuple[list[Column], str | None]] = {}
        for schema, table, column, data_type, definition in rows:
            columns, _ = grouped.setdefault((schema, table), ([], definition))
            columns.append(Column(column, data_type))
        relations = [_relation(schema, table, tuple(columns), definition)
                     for (schema, table), (columns, definition) in grouped.items()]
        out: dict[str, list[Relation]] = {}
        for name in names:
            schema, _, table = name.rpartition(".")
            out[name] = [r for r in relations if r.name.lower() == table and (
                not schema or r.schema.lower() == schema)]
        return out


def _normal(name: str) -> str:
    return ".".join(p.strip().strip("`\"").lower() for p in name.split("."))


def _relation(schema: str, table: str, columns: tuple[Column, ...],
              definition: str | None) -> Relation:
    if definition is None:
        return Relation(schema, table, columns)
    view_columns, uses = _view_lineage(schema, definition, columns)
    return Relation(schema, table, columns, view_columns, uses)


def _source(name: str, default_schema: str) -> tuple[str, str, str] | None:
    parts = name.lower().split(".")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return default_schema.lower(), parts[0], parts[1]
    return None


def _view_lineage(schema: str, definition: str, columns: tuple[Column, ...]
                  ) -> tuple[dict[str, ViewColumn], frozenset[tuple[str, str, str]]]:
    """Each view column's sources, and the base columns used outside plain output columns.
    What cannot be traced is opaque (the masking then treats it as the strongest mask)."""
    traced = trace_output_columns(definition, "mysql")
    opaque_all = {c.name.lower(): ViewColumn((), False, True) for c in columns}
    if traced is None or len(traced) != len(columns):
        return opaque_all, frozenset()
    out: dict[str, ViewColumn] = {}
    for column, output in zip(columns, traced, strict=True):
        sources = [_source(s, schema) for s in sorted(output.sources)]
        known = tuple(s for s in sources if s is not None)
        out[column.name.lower()] = ViewColumn(known, output.direct, output.opaque or len(
            known) != len(sources))
    try:
        tree = sqlglot.parse_one(definition, dialect="mysql")
    except (SqlglotError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return opaque_all, frozenset()
    aliases = {t.alias_or_name.lower(): ((t.db or schema).lower(), t.name.lower())
               for t in tree.find_all(exp.Table)}
    uses: set[tuple[str, str, str]] = set()
    # (a column in an output expression is that output's lineage: computed ones are redacted)
    plain = {id(n) for e in (tree.expressions if isinstance(tree, exp.Select) else ())
             for n in e.walk()}
    for node in tree.find_all(exp.Column):
        if id(node) in plain or isinstance(node.this, exp.Star):
            continue
        if node.db:
            uses.add((node.db.lower(), node.table.lower(), node.name.lower()))
        elif node.table and node.table.lower() in aliases:
            uses.add((*aliases[node.table.lower()], node.name.lower()))
        else:  # (MariaDB qualifies every column of a view's definition)
            return opaque_all, frozenset()
    return out, frozenset(uses)
