"""Masked values everywhere a statement uses them: the statement's text rewritten before it runs.

Owns `rewrite_statement(sql, schema)`: every reference to a masked column that is not a plain
result column is replaced, in the client's own text, by a SQL expression of its masked value
(`mask_sql`), so predicates, joins, grouping, ordering, function arguments, subqueries, CTEs,
copies (`CREATE TABLE … AS`, `SELECT … INTO`, `INSERT … SELECT`, `UPDATE … SET`), cursors and
prepared statements all compute on what the client would see. Plain result columns (a column
reference in the outermost select list or RETURNING of a statement whose rows go to the client)
are left as they are: the proxy masks them in its C loop, with the same result. What cannot be
rewritten with certainty raises `MaskUseDenied` naming the column. Must not: decide what is
masked (the caller's `MaskedSchema` says), do I/O, or change anything else in the text.

How: the text is parsed with sqlglot only to find *where* things are; the edits are spliced into
the original text at the identifiers' positions, each masked reference becoming
`(<mask of the reference as written>)`, so every other token reaches PostgreSQL exactly as sent
and a reference resolves exactly as PostgreSQL would have resolved it. A reference is masked
when its column name is masked in any relation the statement reads (over-masking a same-named
column is safe: every method but `hash` is idempotent, and `hash` has no SQL form, so it is
denied). `*` outside the plain result columns is expanded to the columns of the masked relations
it covers. Denied: whole-row references (`c::text`, `row_to_json(c)`, `row(c.*)`), column
aliases on a masked relation (`cards AS c(a, b)`), `USING`/`NATURAL` joins over masked columns,
`ON CONFLICT` on a masked column, writes of a masked column (INSERT, UPDATE, ON CONFLICT DO
UPDATE, MERGE: a session that may not see it may not write it), `EXPLAIN`, text sqlglot cannot
parse, and masked columns in any other statement (DDL, MERGE).

`dialect="mysql"` rewrites MySQL/MariaDB text the same way, with `adapters/mysql/mask_sql.py`'s
expressions and backquoted names (`mysql_unsafe_text` says what is refused before parsing);
there a `SET @v = (SELECT …)` is rewritten like a query whose rows do not go to the client, and
`PREPARE s FROM '…'` has its quoted statement rewritten.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from adapters.mysql import mask_sql as mysql_mask_sql
from adapters.postgres.mask_sql import SQL_METHODS, mask_sql
from engine.facts.pg_statements import pg_statement_count

DECLARE_QUERY = re.compile(r"\bcursor\b.*?\bfor\s+(?P<query>.*)$", re.IGNORECASE | re.DOTALL)
PREPARE_QUERY = re.compile(r"^\s*\w+\s*(?:\([^)]*\))?\s+as\s+(?P<query>.*)$",
                           re.IGNORECASE | re.DOTALL)
_HEAD = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*(?P<word>[A-Za-z]+)\b",
                   re.DOTALL)
_PARAMETER = re.compile(r"\$[0-9]+(?=[^\s])")  # as engine.facts.sql.sqlglot_text spaces them
_UNICODE_IDENTIFIER = re.compile(r'[uU]&"')  # sqlglot reads U&"p\0061n" as `U & "p\0061n"`
# Statements sqlglot does not parse that evaluate no expression over a relation's rows: let
# through unless their text names a masked column or has a `*`.
_INERT_COMMANDS = frozenset({"LOCK", "VACUUM", "ANALYZE", "REINDEX", "CLUSTER", "COMMENT",
                             "GRANT", "REVOKE", "REFRESH", "DISCARD", "RESET", "SHOW"})


MYSQL_PREPARE_QUERY = re.compile(
    r"^\s*(?:[A-Za-z_$][A-Za-z0-9_$]*|`(?:[^`]|``)+`)\s+from\s+'(?P<query>(?:[^'\\]|'')*)'\s*;?\s*$",
    re.IGNORECASE | re.DOTALL)
# MySQL reads `/*! … */` and `/*M! … */` (MariaDB) as SQL, sqlglot as a comment; whether a
# backslash escapes and whether `"…"` is a string or a name depend on the session's sql_mode.
_MYSQL_EXECUTABLE_COMMENT = re.compile(r"/\*[!M]")
_MYSQL_DOUBLE_QUOTED = re.compile(r'"((?:[^"\\]|""|\\.)*)"', re.DOTALL)


class MaskUseDenied(Exception):
    """A masked column is used where the statement cannot be rewritten with certainty."""


@dataclass(frozen=True)
class MaskedColumn:
    """How one masked column name is masked in SQL: `method`, and whether the column's values
    are text (`text`; else the client gets NULL, and so does the statement)."""

    method: str
    text: bool


@dataclass(frozen=True)
class SourceTable:
    """A relation a statement may name: its columns in order, each with its mask or None."""

    columns: tuple[tuple[str, MaskedColumn | None], ...]

    @property
    def masked(self) -> bool:
        return any(m is not None for _, m in self.columns)


@dataclass(frozen=True)
class MaskedSchema:
    """What the rewrite knows of the relations a statement reads (and those their views read).
    `columns`: masked column name (lower case) -> its mask, the strongest of those relations;
    `tables`: `name` and `schema.name` (lower case) -> the relations it may mean;
    `names`: every column name of those relations."""

    columns: Mapping[str, MaskedColumn]
    tables: Mapping[str, tuple[SourceTable, ...]]
    names: frozenset[str]


@dataclass(frozen=True)
class Rewrite:
    """`text`: the statement to send instead of the client's, None when it runs as sent;
    `literal_dependent`: another text with the same literal fingerprint may get another answer
    (an `ORDER BY` ordinal decides which result column is plain); `columns`: the masked
    columns whose uses were rewritten."""

    text: str | None
    literal_dependent: bool = False
    columns: tuple[str, ...] = ()


def rewrite_statement(sql: str, schema: MaskedSchema, *, client: bool = True,
                      dialect: str = "postgres") -> Rewrite:
    """The rewrite of `sql` (one or more statements) for `schema`; raises `MaskUseDenied`.
    `client`: the rows of its queries go to the client (false for `COPY (query) TO` a file),
    so their plain result columns are left to the proxy. `dialect`: postgres or mysql."""
    if not schema.columns:
        return Rewrite(None)
    if dialect == "mysql":
        return _rewrite_mysql(sql, schema, client)
    if _UNICODE_IDENTIFIER.search(sql):
        raise MaskUseDenied("the statement reads a relation with masked columns and writes an "
                            'identifier with Unicode escapes (U&"…"), which could name one '
                            "unseen")
    edits = _Edits(sql)
    head = _HEAD.match(sql)
    word = head.group("word").lower() if head else ""
    if word in ("declare", "prepare"):
        pattern = DECLARE_QUERY if word == "declare" else PREPARE_QUERY
        rest = head.end() if head else 0
        match = pattern.search(sql[rest:])
        if match is None:
            raise MaskUseDenied(f"the query of this {word.upper()} cannot be found, and it "
                                "reads a relation with masked columns")
        start = rest + match.start("query")
        trees = _parse(sql[start:], start)
        if len(trees) != 1 or (word == "declare" and not isinstance(trees[0][0], exp.Query)):
            raise MaskUseDenied(f"the query of this {word.upper()} cannot be read with "
                                "certainty, and it reads a relation with masked columns")
    else:
        trees = _parse(sql, 0)
    for tree, positions in trees:
        _Statement(tree, positions, schema, edits, client).rewrite()
    return edits.result()


def mysql_unsafe_text(sql: str, schema: MaskedSchema) -> str | None:
    """Why MySQL may read `sql` otherwise than sqlglot does, when it reads masked columns:
    an executable comment, a backslash (its meaning depends on NO_BACKSLASH_ESCAPES), or a
    double-quoted masked column or relation name (a name under ANSI_QUOTES). None if none."""
    if _MYSQL_EXECUTABLE_COMMENT.search(sql):
        return ("the statement reads a relation with masked columns and has an executable "
                "comment (/*! … */), which MySQL runs and the proxy cannot read with certainty")
    if "\\" in sql:
        return ("the statement reads a relation with masked columns and has a backslash, "
                "which MySQL reads by the session's sql_mode; write it without one")
    for match in _MYSQL_DOUBLE_QUOTED.finditer(sql):
        name = match.group(1).lower()
        if name in schema.columns or name in schema.tables:
            return (f'"{match.group(1)}" names a masked column or a relation with one under '
                    "sql_mode ANSI_QUOTES; quote names with backquotes")
    return None


def _rewrite_mysql(sql: str, schema: MaskedSchema, client: bool) -> Rewrite:
    unsafe = mysql_unsafe_text(sql, schema)
    if unsafe is not None:
        raise MaskUseDenied(unsafe)
    head = _HEAD.match(sql)
    if head is not None and head.group("word").lower() == "prepare":
        match = MYSQL_PREPARE_QUERY.match(sql[head.end():])
        if match is None:
            raise MaskUseDenied("the statement of this PREPARE is not a quoted string the proxy "
                                "can read, and it reads a relation with masked columns")
        query = match.group("query").replace("''", "'")
        inner = rewrite_statement(query, schema, client=client, dialect="mysql")
        if inner.text is None:
            return inner
        start, end = head.end() + match.start("query"), head.end() + match.end("query")
        return Rewrite(sql[:start] + inner.text.replace("'", "''") + sql[end:],
                       inner.literal_dependent, inner.columns)
    edits = _Edits(sql)
    for tree, positions in _parse(sql, 0, "mysql"):
        _Statement(tree, positions, schema, edits, client, "mysql").rewrite()
    return edits.result()


def unparsed_words(sql: str, dialect: str = "postgres") -> frozenset[str] | None:
    """The words (lower case) of `sql` when a statement of it is one sqlglot does not parse
    (other than DECLARE, PREPARE and EXPLAIN, whose queries the facts and the rewrite read):
    `CREATE POLICY … USING (…)` evaluates what the policies never see. None otherwise."""
    try:
        trees = sqlglot.parse(sql, dialect=dialect)
    except (SqlglotError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RecursionError):
        return None  # (the facts report a parse error, which the policies judge)
    if not any(isinstance(t, exp.Command) and str(t.this or "").upper() not in (
            "DECLARE", "PREPARE", "EXPLAIN") for t in trees):
        return None
    return frozenset(w.lower() for w in re.findall(
        r'[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+"|`(?:[^`]|``)+`', sql) for w in [w.strip('"`')])


def copies_prepared_statement(sql: str) -> bool:
    """Whether `sql` is a `CREATE TABLE … AS EXECUTE`: it stores the rows of a prepared
    statement, whose plain result columns are masked only on their way to a client."""
    lowered = sql.lower()
    if "execute" not in lowered or "create" not in lowered:
        return False
    try:
        trees = sqlglot.parse(sql, dialect="postgres")
    except (SqlglotError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RecursionError):
        return True  # (cannot tell: say it may)
    return any(t is not None and t.find(exp.ExecuteAsProperty) is not None for t in trees)


@dataclass
class _Edits:
    sql: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    columns: set[str] = field(default_factory=set)
    literal_dependent: bool = False

    def add(self, start: int, end: int, text: str) -> None:
        self.spans.append((start, end, text))

    def result(self) -> Rewrite:
        if not self.spans:
            return Rewrite(None, self.literal_dependent)
        out = self.sql
        last = len(out) + 1
        for start, end, text in sorted(self.spans, reverse=True):
            if end > last:
                raise MaskUseDenied("the statement's masked columns cannot be rewritten with "
                                    "certainty (overlapping uses)")
            out = out[:start] + text + out[end:]
            last = start
        return Rewrite(out, self.literal_dependent, tuple(sorted(self.columns)))


def _parse(text: str, offset: int, dialect: str = "postgres"
           ) -> list[tuple[exp.Expr, list[int]]]:
    """The statements of `text` with, for each, the map from positions in the text sqlglot read
    (`$n` followed by a space) to positions in the caller's text (`offset` added)."""
    positions: list[int] = []
    parts: list[str] = []
    pos = 0
    for match in _PARAMETER.finditer(text) if dialect == "postgres" else ():
        parts.append(text[pos:match.end()] + " ")
        positions.extend(range(pos, match.end()))
        positions.append(match.end())  # the added space maps to the next character
        pos = match.end()
    parts.append(text[pos:])
    positions.extend(range(pos, len(text) + 1))
    spaced = "".join(parts)
    try:
        trees = [t for t in sqlglot.parse(spaced, dialect=dialect) if t is not None]
    except (SqlglotError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RecursionError) as exc:
        raise MaskUseDenied("the statement reads a relation with masked columns and cannot be "
                            f"parsed with certainty ({type(exc).__name__})") from None
    expected = pg_statement_count(text) if dialect == "postgres" else None
    if expected is not None and expected != len(trees):
        raise MaskUseDenied("the statement reads a relation with masked columns and cannot be "
                            "split into statements with certainty")
    mapped = [p + offset for p in positions]
    return [(tree, mapped) for tree in trees]


def mask_expression(reference: str, column: MaskedColumn, dialect: str = "postgres") -> str:
    """SQL for the masked value of the column `reference` (as written in the statement)."""
    if column.method == "null" or not column.text:
        return f"(CASE WHEN false THEN {reference} END)"  # NULL of the column's own type
    if column.method not in SQL_METHODS:
        raise MaskUseDenied(f"masking method {column.method!r} has no SQL form")
    if dialect == "mysql":
        return mysql_mask_sql.mask_sql(column.method, reference)
    return mask_sql(column.method, f"({reference})::pg_catalog.text")


def _quote(name: str, dialect: str = "postgres") -> str:
    if dialect == "mysql":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def _output_name(identifier: exp.Expr, dialect: str = "postgres") -> str:
    """The result column name the server gives a column reference, quoted (MySQL keeps the
    name as written, PostgreSQL folds an unquoted one to lower case)."""
    name = identifier.name
    if dialect == "mysql":
        return _quote(name, dialect)
    return _quote(name if getattr(identifier, "quoted", False) else name.lower())


def _under(node: exp.Expr, kinds: tuple[type[exp.Expr], ...], stop: exp.Expr) -> bool:
    parent = node.parent
    while parent is not None and parent is not stop:
        if isinstance(parent, kinds):
            return True
        parent = parent.parent
    return False


class _Statement:
    """One parsed statement and its edits."""

    def __init__(self, tree: exp.Expr, positions: list[int], schema: MaskedSchema,
                 edits: _Edits, client: bool, dialect: str = "postgres") -> None:
        self.dialect = dialect
        self.tree = tree
        self.client = client
        self.positions = positions
        self.schema = schema
        self.edits = edits
        self.exempt: set[int] = set()  # ids of plain result columns (masked by the proxy)
        self.targets: set[int] = set()  # ids of assignment targets (not reads)
        self.handled: set[int] = set()  # ids of the column references seen by `_column`

    # -- where the statement may be rewritten -----------------------------------------------

    def rewrite(self) -> None:
        tree = self.tree
        if isinstance(tree, exp.Command):
            self._command(tree)
        elif isinstance(tree, exp.Query):
            self._plain_results(tree, client=self.client and tree.args.get("into") is None)
            self._nested_dml(tree)
            self._walk(tree)
        elif isinstance(tree, exp.Insert | exp.Update | exp.Delete):
            self._dml(tree)
            self._nested_dml(tree)
            self._walk(tree)
        elif isinstance(tree, exp.Set) and self.dialect == "mysql":
            self._walk(tree)  # `SET @v = (SELECT …)`: no result column reaches the client
        elif isinstance(tree, exp.Create) and isinstance(tree.expression, exp.Query):
            self._forbid(tree, skip=tree.expression, where="this CREATE statement")
            if str(tree.args.get("kind") or "").upper() == "VIEW":
                # a view's plain columns are traced to what they read when it is read
                self._plain_results(tree.expression, client=True)
            self._walk(tree.expression)
        else:
            if isinstance(tree, exp.Merge):
                for action in tree.find_all(exp.Insert):
                    if action.this is None:  # WHEN NOT MATCHED THEN INSERT VALUES (…)
                        self._written(tree.this, None)
            self._forbid(tree, skip=None, where=f"a {type(tree).__name__.upper()} statement")

    def _command(self, tree: exp.Command) -> None:
        """A statement sqlglot does not parse: EXPLAIN is denied (EXPLAIN ANALYZE's row counts
        answer its predicates), any other one when its text names a masked column or has *."""
        what = str(tree.this or "").upper()
        text = tree.expression.name if isinstance(tree.expression, exp.Literal) else ""
        if what == "EXPLAIN":
            raise MaskUseDenied("EXPLAIN of a statement that reads a relation with masked "
                                "columns is denied (its row counts would answer predicates on "
                                "them)")
        if what not in _INERT_COMMANDS:
            raise MaskUseDenied(f"a {what or 'statement'} statement that reads a relation with "
                                "masked columns cannot be rewritten with certainty (a DECLARE "
                                "or PREPARE must be sent on its own)")
        words = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", text)}
        named = sorted(words & self.schema.columns.keys())
        if named or "*" in text:
            raise MaskUseDenied(f"masked column {named[0] if named else '(through *)'} is used "
                                f"in a {what or 'statement'} statement, which cannot be "
                                "rewritten to use its masked value")

    def _nested_dml(self, tree: exp.Expr) -> None:
        """The data-modifying statements of a WITH (their RETURNING rows go to the query)."""
        for node in tree.find_all(exp.Insert, exp.Update, exp.Delete):
            if node is not tree and isinstance(node, exp.Insert | exp.Update | exp.Delete):
                self._dml(node, top=False)

    def _dml(self, tree: exp.Insert | exp.Update | exp.Delete, top: bool = True) -> None:
        returning = tree.args.get("returning")
        if returning is not None and self.client and top:
            for item in returning.expressions:
                self._exempt(item)
        written = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
        if isinstance(tree, exp.Update):
            for assignment in tree.expressions:
                if isinstance(assignment, exp.EQ):
                    self._assigned(written, list(assignment.this.find_all(exp.Column)))
        conflict = tree.args.get("conflict") if isinstance(tree, exp.Insert) else None
        if conflict is not None:
            for key in conflict.args.get("conflict_keys") or ():
                for column in key.find_all(exp.Column, exp.Identifier):
                    if column.name.lower() in self.schema.columns:
                        raise MaskUseDenied(f"ON CONFLICT on masked column {column.name} would "
                                            "tell whether a value is stored")
                self.targets.update(id(c) for c in key.find_all(exp.Column))
            for assignment in conflict.expressions:
                if isinstance(assignment, exp.EQ):
                    self._assigned(written, list(assignment.this.find_all(exp.Column)))
        if isinstance(tree, exp.Insert) and not tree.args.get("default"):
            listed = tree.this.expressions if isinstance(tree.this, exp.Schema) else None
            self._written(written, None if listed is None else [c.name for c in listed])

    def _assigned(self, table: exp.Expr, columns: list[exp.Column]) -> None:
        """Assignment targets (not reads) of an UPDATE or ON CONFLICT DO UPDATE."""
        self.targets.update(id(c) for c in columns)
        self._written(table, [c.name for c in columns])

    def _written(self, table: exp.Expr, names: list[str] | None) -> None:
        """Deny writing a masked column of the written relation (`names` None: all of them).
        A session that may not see a column's clear value may not write it either: a unique
        index, a constraint or a trigger would answer whether a value is stored, and what it
        wrote would replace a clear value it never saw."""
        if not isinstance(table, exp.Table):
            return
        masked = sorted({name for source in self._relations(table)
                         for name, mask in source.columns if mask is not None})
        if not masked:
            return
        hit = masked if names is None else sorted(set(masked) & {n.lower() for n in names})
        if hit:
            how = ("an INSERT without a column list writes every column" if names is None
                   else "it is assigned")
            raise MaskUseDenied(f"masked column {hit[0]} of {table.name} would be written "
                                f"({how}): a session that may not see its clear value may "
                                "not write it either (a unique index, a constraint or a "
                                "trigger would answer whether a value is stored)")

    def _plain_results(self, query: exp.Query, client: bool) -> None:
        """Mark the plain result columns of a query whose rows go to the client, unless the
        query compares them (DISTINCT, GROUP BY, set operations) or orders by them by name or
        position: those then get their masked value in SQL too."""
        if not client or not isinstance(query, exp.Select):
            return
        if query.args.get("distinct") is not None or query.args.get("group") is not None:
            return
        ordinals: set[int] = set()
        names: set[str] = set()
        order = query.args.get("order")
        for item in order.expressions if order is not None else ():
            body = item.this if isinstance(item, exp.Ordered) else item
            if isinstance(body, exp.Literal) and not body.is_string:
                self.edits.literal_dependent = True
                if body.name.isdigit():
                    ordinals.add(int(body.name))
            elif isinstance(body, exp.Column) and not body.table and (
                    body.name.lower() not in self.schema.columns):
                names.add(body.name.lower())  # (a masked name is rewritten where it stands)
        if self.dialect == "mysql":  # MySQL's ORDER BY and HAVING expressions read aliases
            for clause in (order, query.args.get("having")):
                names.update(c.name.lower() for c in (clause.find_all(exp.Column)
                                                      if clause is not None else ())
                             if not c.table)
        position: int | None = 0  # result columns before this item; None: not known
        for item in query.expressions:
            masked = self._result_masks(query, item)
            first = position
            position = None if position is None or masked is None else position + len(masked)
            if ordinals and (first is None or masked is None):
                continue  # which result column an ordinal names is not known
            if first is not None and any(masked[k - first - 1] for k in ordinals
                                         if masked is not None and first < k <= first + len(
                                             masked)):
                continue
            if item.alias_or_name.lower() in names:
                continue
            self._exempt(item)

    def _result_masks(self, query: exp.Select, item: exp.Expr) -> list[bool] | None:
        """Whether each result column of a select-list item is a masked column passed
        through; None when the columns a `*` gives are not known."""
        body = item.this if isinstance(item, exp.Alias) else item
        star = body if isinstance(body, exp.Star) or (
            isinstance(body, exp.Column) and isinstance(body.this, exp.Star)) else None
        if star is None:
            return [isinstance(body, exp.Column) and body.name.lower() in self.schema.columns]
        items = self._from_items(query)
        if isinstance(star, exp.Column):
            items = [i for i in items if i[0] == star.table.lower()]
        out: list[bool] = []
        for _, node in items:
            found = {s.columns for s in self._relations(node)} if isinstance(
                node, exp.Table) else set()
            if len(found) != 1:
                return None
            out.extend(m is not None for _, m in found.pop())
        return out

    def _exempt(self, item: exp.Expr) -> None:
        body = item.this if isinstance(item, exp.Alias) else item
        if isinstance(body, exp.Column | exp.Star):
            self.exempt.add(id(body))

    def _forbid(self, tree: exp.Expr, skip: exp.Expr | None, where: str) -> None:
        """Deny masked columns, stars and whole-row references outside `skip`."""
        inside = {id(n) for n in skip.walk()} if skip is not None else set()
        masked_tables = self._masked_tables(tree)
        for node in tree.walk():
            if id(node) in inside:
                continue
            if isinstance(node, exp.Column) and node.name.lower() in self.schema.columns:
                raise MaskUseDenied(f"masked column {node.name} is used in {where}, which "
                                    "cannot be rewritten to use its masked value")
            if isinstance(node, exp.Star | exp.TableColumn) and masked_tables:
                raise MaskUseDenied(f"{where} reads a relation with masked columns through "
                                    "* or a whole-row reference")

    # -- the walk ---------------------------------------------------------------------------

    def _walk(self, root: exp.Expr) -> None:
        aliases = self._masked_aliases(root)
        for node in root.walk():
            if isinstance(node, exp.Command):
                raise MaskUseDenied("the statement reads a relation with masked columns and "
                                    "part of it cannot be parsed with certainty")
            if isinstance(node, exp.TableColumn):
                raise MaskUseDenied("a whole-row reference to a relation with masked columns "
                                    "cannot be masked")
            if isinstance(node, exp.Join):
                self._join(node)
            elif isinstance(node, exp.Table):
                self._table(node)
            elif isinstance(node, exp.Column):
                if isinstance(node.this, exp.Star):
                    self._star(node, node.table.lower())
                else:
                    self._column(node, aliases)
            elif isinstance(node, exp.Star) and not isinstance(node.parent, exp.Column):
                self._star(node, None)
        self._unseen(root)

    def _unseen(self, root: exp.Expr) -> None:
        """Deny a masked column's name where the walk did not see a column reference (a
        construct it does not know), unless it only names something (an alias, a column of
        a column list or definition, a relation)."""
        for node in root.find_all(exp.Identifier, exp.Var):
            if node.name.lower() not in self.schema.columns:
                continue
            parent = node.parent
            if isinstance(parent, exp.Column) and id(parent) in self.handled:
                continue
            if isinstance(node, exp.Identifier) and isinstance(
                    parent, exp.Alias | exp.TableAlias | exp.Schema | exp.ColumnDef | exp.Table):
                continue
            raise MaskUseDenied(f"masked column {node.name} is used where it cannot be "
                                "rewritten with certainty")

    def _column(self, column: exp.Column, aliases: set[str]) -> None:
        self.handled.add(id(column))
        name = column.name.lower()
        if id(column) in self.targets or (column.table.lower() == "excluded" and isinstance(
                self.tree, exp.Insert)):
            return
        masked = self.schema.columns.get(name)
        if masked is None:
            if not column.table and name in aliases and name not in self.schema.names:
                raise MaskUseDenied(f"the whole-row reference {column.name} reads a relation "
                                    "with masked columns")
            return
        if id(column) in self.exempt:
            return
        start, end = self._span(column)
        try:
            value = f"({mask_expression(self.edits.sql[start:end], masked, self.dialect)})"
        except MaskUseDenied as exc:
            raise MaskUseDenied(f"masked column {column.name} is used outside the result "
                                f"columns and its {exc}") from None
        parent = column.parent
        if isinstance(parent, exp.Select | exp.Returning) and any(
                e is column for e in parent.expressions):
            value += f" AS {_output_name(column.this, self.dialect)}"  # keep its name
        self.edits.add(start, end, value)
        self.edits.columns.add(name)

    def _span(self, node: exp.Expr) -> tuple[int, int]:
        """Where `node` (a column reference or a star) is in the caller's text."""
        parts: list[exp.Expr] = [node] if isinstance(node, exp.Star) else []
        for key in ("catalog", "db", "table", "this"):
            part = node.args.get(key)
            if isinstance(part, exp.Identifier | exp.Star):
                parts.append(part)
        starts = [p.meta.get("start") for p in parts]
        ends = [p.meta.get("end") for p in parts]
        if not parts or None in starts or None in ends:
            raise MaskUseDenied("the position of a masked column in the statement is not "
                                "known, so it cannot be rewritten")
        start = min(s for s in starts if s is not None)
        end = max(e for e in ends if e is not None) + 1
        if end >= len(self.positions):
            raise MaskUseDenied("the statement's masked columns cannot be located")
        return self.positions[start], self.positions[end - 1] + 1

    # -- relations, joins, stars ------------------------------------------------------------

    def _relations(self, table: exp.Table) -> tuple[SourceTable, ...]:
        if not isinstance(table.this, exp.Identifier):
            return ()
        name = table.name.lower()
        key = f"{table.db.lower()}.{name}" if table.db else name
        return self.schema.tables.get(key, ())

    def _masked_tables(self, root: exp.Expr) -> bool:
        return any(any(s.masked for s in self._relations(t)) for t in root.find_all(exp.Table))

    def _masked_aliases(self, root: exp.Expr) -> set[str]:
        """The names (alias, else table name) under which relations with masked columns are
        read: a column reference with such a name and no such column is a whole-row read."""
        return {(t.alias or t.name).lower() for t in root.find_all(exp.Table)
                if any(s.masked for s in self._relations(t))}

    def _table(self, table: exp.Table) -> None:
        alias = table.args.get("alias")
        if alias is not None and alias.columns and any(s.masked for s in self._relations(table)):
            raise MaskUseDenied(f"relation {table.name} has masked columns and is given column "
                                "aliases, which would hide which column is which")

    def _join(self, join: exp.Join) -> None:
        using = join.args.get("using") or ()
        for name in using:
            if name.name.lower() in self.schema.columns:
                raise MaskUseDenied(f"JOIN … USING ({name.name}) compares a masked column "
                                    "unmasked; write the condition with ON")
        if str(join.args.get("method") or "").upper() == "NATURAL":
            select = join.parent
            if select is not None and self._masked_tables(select):
                raise MaskUseDenied("a NATURAL JOIN with a relation with masked columns may "
                                    "compare them unmasked; write the condition with ON")

    def _star(self, star: exp.Expr, table: str | None) -> None:
        if isinstance(star.parent, exp.Count) or id(star) in self.exempt:
            return
        select = star.parent
        if not isinstance(select, exp.Select) or not any(e is star for e in select.expressions):
            scope = star.find_ancestor(exp.Select)
            if scope is not None and self._covered_masked(scope, table):
                raise MaskUseDenied("* or a whole-row reference over a relation with masked "
                                    "columns is used inside an expression, where it cannot be "
                                    "masked")
            return
        items = self._from_items(select)
        if table is not None:
            items = [i for i in items if i[0] == table]
            if not items:
                outer = select.find_ancestor(exp.Select)
                if outer is not None and self._covered_masked(outer, table):
                    raise MaskUseDenied(f"{table}.* of an enclosing query reads masked columns")
                return
        if not any(self._item_masked(node) for _, node in items):
            return
        if table is None and any(j.args.get("using") or j.args.get("method")
                                 for j in select.args.get("joins") or ()):
            raise MaskUseDenied("* over a join with USING or NATURAL and a relation with masked "
                                "columns cannot be expanded with certainty")
        parts = [self._expand(name, node) for name, node in items]
        start, end = self._span(star)
        self.edits.add(start, end, ", ".join(parts))

    def _from_items(self, select: exp.Select) -> list[tuple[str, exp.Expr]]:
        """(reference name, node) of each FROM item of `select`, in order."""
        nodes: list[exp.Expr] = []
        source = select.args.get("from_") or select.args.get("from")
        if source is not None:
            nodes.append(source.this)
        nodes.extend(j.this for j in select.args.get("joins") or ())
        out = []
        for node in nodes:
            name = node.alias_or_name if isinstance(node, exp.Table) else node.alias
            out.append((name.lower(), node))
        return out

    def _item_masked(self, node: exp.Expr) -> bool:
        if isinstance(node, exp.Table):
            return any(s.masked for s in self._relations(node))
        if isinstance(node, exp.Subquery | exp.Lateral) and isinstance(
                node.this, exp.Query | exp.Subquery):
            return False  # a derived table: its own references are masked inside it
        return self._masked_tables(node)

    def _covered_masked(self, select: exp.Select, table: str | None) -> bool:
        items = self._from_items(select)
        if table is not None:
            items = [i for i in items if i[0] == table]
            if not items:
                outer = select.find_ancestor(exp.Select)
                return outer is not None and self._covered_masked(outer, table)
        return any(self._item_masked(node) for _, node in items)

    def _expand(self, name: str, node: exp.Expr) -> str:
        """The columns of one FROM item for `*`: masked ones as their masked values."""
        if not name:
            raise MaskUseDenied("* covers a FROM item without a name next to a relation with "
                                "masked columns")
        reference = self._reference(node)
        if not (isinstance(node, exp.Table) and self._item_masked(node)):
            if self._item_masked(node):
                raise MaskUseDenied("* over a parenthesised join with a relation with masked "
                                    "columns cannot be expanded with certainty")
            return f"{reference}.*"
        candidates = {s.columns for s in self._relations(node)}
        if len(candidates) != 1:
            raise MaskUseDenied(f"{node.name} may mean relations with different columns (the "
                                "search_path decides), so * over it cannot be expanded")
        columns = next(iter(candidates))
        out = []
        for column, masked in columns:
            ref = f"{reference}.{_quote(column, self.dialect)}"
            if masked is None:
                out.append(ref)
            else:
                out.append(f"({mask_expression(ref, masked, self.dialect)}) AS "
                           f"{_quote(column, self.dialect)}")
                self.edits.columns.add(column)
        return ", ".join(out)

    def _reference(self, node: exp.Expr) -> str:
        """The FROM item's reference name as written (its alias, else its table name)."""
        alias = node.args.get("alias")
        identifier = alias.this if alias is not None else node.this
        if not isinstance(identifier, exp.Identifier):
            raise MaskUseDenied("a FROM item next to masked columns has no usable name")
        start, end = identifier.meta.get("start"), identifier.meta.get("end")
        if start is None or end is None:
            raise MaskUseDenied("the position of a FROM item is not known")
        return self.edits.sql[self.positions[start]:self.positions[end] + 1]
