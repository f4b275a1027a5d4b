"""Masks applied by the database: a masked SELECT is wrapped so PostgreSQL masks its columns.

Rewriting every DataRow of a large masked result costs microseconds of Python per row; the
database applies the same masks (`mask_sql`, equal to `engine.masking`'s methods) for next to
nothing. The statements of a masking plan (same policy revision, mask rules and literal
fingerprint, so the same columns) are therefore sent as

    SELECT o."c1" AS "id", <pan mask of o."c3"> AS "pan", ... FROM (<statement>) AS o("c1", ...)

once the plan's first result has shown, column by column, which methods apply
(`PushdownShape.learn`). The client still gets its original column descriptions
(`MaskPushdown.client_description`); the proxy still runs the card-number backstop on every
text value, so the rows come out exactly as if the proxy had masked them, and runs of rows in
which the backstop finds nothing are relayed without being decoded.

Only the plain case is pushed down (else the proxy masks as before): one top-level SELECT
without `*` in its select list, INTO, FOR UPDATE/SHARE or data-modifying parts; every masked
column of type text or varchar with a method of `PUSHDOWN_METHODS`; a UTF8 database; a text
whose end is not a comment (the wrapper must close after it). Statements held for approval
run exactly as sent (the bridge never pushes their masks down).

Owns: the decision from the first result, the wrapper, the description the client sees.
Must not: choose masks (the bridge's `ResultMasking` does), or touch the wire.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import sqlglot
from sqlglot import expressions as exp

from adapters.postgres.hooks import ColumnDescriptor
from adapters.postgres.mask_sql import PUSHDOWN_METHODS, mask_sql
from adapters.postgres.messages import FieldDescription, RowDescription

PUSHABLE_TYPES = frozenset({25, 1043})
"""text and varchar: a masked value is still a valid value of the type."""

_ALIAS = "ordinance_masked"
MAX_WRAPPED_TEXT = 64 * 1024
"""Longer statements are masked by the proxy: learning a shape parses the text once more, and
texts that long are not what a hot path repeats."""
_DML = (exp.Insert, exp.Update, exp.Delete, exp.Merge)
MAX_CACHED_DESCRIPTIONS = 64


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class PushdownShape:
    """How the statements of one masking plan are wrapped: `columns` result columns, and for
    each masked one its method and the field the server described before wrapping."""

    columns: int
    methods: Mapping[int, str]
    originals: Mapping[int, FieldDescription]
    names: tuple[str, ...]

    @classmethod
    def learn(cls, sql: str, columns: Sequence[ColumnDescriptor],
              methods: Mapping[int, str | None], server_encoding: str) -> PushdownShape | None:
        """The shape of `sql`'s plan from its first (unwrapped) result: its columns as the
        server described them and the masking method chosen for each; None when its masks
        cannot be pushed down."""
        masked = {i: m for i, m in methods.items() if m is not None}
        if not masked or server_encoding.upper() not in ("UTF8", "UTF-8"):
            return None
        if len(methods) != len(columns) or any(
                masked[i] not in PUSHDOWN_METHODS or columns[i].type_oid not in PUSHABLE_TYPES
                for i in masked):
            return None
        if wrapped_body(sql) is None or select_list_size(sql) != len(columns):
            return None
        originals = {i: FieldDescription(c.name, c.table_oid, c.attnum, c.type_oid, -1,
                                         c.type_modifier, c.format)
                     for i, c in enumerate(columns) if i in masked}
        return cls(len(columns), masked, originals, tuple(c.name for c in columns))

    def wrap(self, sql: str) -> tuple[str, int] | None:
        """`sql` wrapped so the database masks it, and where `sql` starts in it (0-based
        characters); None when its text cannot be wrapped."""
        body = wrapped_body(sql)
        if body is None:
            return None
        head, tail = self._wrapper
        return head + body + tail, len(head)

    @cached_property
    def _wrapper(self) -> tuple[str, str]:
        """What goes before and after a statement's text (the same for every statement)."""
        outputs = []
        for i, name in enumerate(self.names):
            value = f"{_ALIAS}.\"c{i + 1}\""
            method = self.methods.get(i)
            masked = mask_sql(method, value + "::pg_catalog.text") if method else value
            outputs.append(f"{masked} AS {_ident(name)}")
        aliases = ", ".join(f'"c{i + 1}"' for i in range(self.columns))
        return f"SELECT {', '.join(outputs)} FROM (\n", f"\n) AS {_ALIAS}({aliases})"


@dataclass
class MaskPushdown:
    """One statement sent wrapped (`sql`): what the session needs for its results."""

    sql: str
    shape: PushdownShape
    descriptions: dict[bytes, bytes] = field(default_factory=dict)
    offset: int = 0  # where the client's text starts in `sql`
    length: int = 0  # and how long it is there

    def position(self, server: int) -> int | None:
        """The position (1-based, in characters) of an error in the client's text for one in
        `sql`; None when it is in the wrapper."""
        if self.offset < server <= self.offset + self.length:
            return server - self.offset
        return None

    def client_description(self, raw: bytes, fields: Sequence[FieldDescription]) -> bytes:
        """The RowDescription the client gets for the server's `raw` one (`fields`): each
        masked column described as before wrapping (its table, column and type), in the
        format the server answers in."""
        cached = self.descriptions.get(raw)
        if cached is not None:
            return cached
        if len(fields) != self.shape.columns:  # not our wrapper's answer: relay it as it is
            return raw
        out = list(fields)
        for i, original in self.shape.originals.items():
            out[i] = FieldDescription(original.name, original.table_oid,
                                      original.column_attnum, original.type_oid,
                                      original.type_size, original.type_modifier,
                                      fields[i].format)
        encoded = RowDescription(tuple(out)).encode()
        if len(self.descriptions) < MAX_CACHED_DESCRIPTIONS:
            self.descriptions[raw] = encoded
        return encoded


def wrapped_body(sql: str) -> str | None:
    """`sql` without its trailing semicolons, when it can be put in parentheses as it is: no
    other semicolon, and no comment (a `--` at its end would swallow the closing one)."""
    if len(sql) > MAX_WRAPPED_TEXT:
        return None
    body = sql.rstrip()
    while body.endswith(";"):
        body = body[:-1].rstrip()
    if not body or ";" in body or "--" in body or "/*" in body or "\x00" in body:
        return None
    return body


def select_list_size(sql: str) -> int | None:
    """The number of columns of a plain SELECT's select list, or None when the statement is
    not one that can be wrapped (not a single SELECT; `*` in its select list; SELECT INTO;
    FOR UPDATE/SHARE; a data-modifying part, which PostgreSQL only allows at the top)."""
    try:
        statements = sqlglot.parse(sql, read="postgres")
    except Exception:  # sqlglot raises several error types; any means "do not wrap"
        return None
    if len(statements) != 1 or not isinstance(statements[0], exp.Select):
        return None
    select = statements[0]
    if select.args.get("into") or select.args.get("locks") or select.find(*_DML):
        return None
    if any(isinstance(e.unalias(), exp.Star)
           or (isinstance(e.unalias(), exp.Column) and e.unalias().is_star)
           for e in select.expressions):
        return None
    return len(select.expressions)

