"""Which masking method a Decision's masks give a column: protocol-agnostic rule matching.

Owns: `MaskRule` / `MaskRules` (`pan` is any table's `pan`, `cards.pan` that table in any
schema, `public.cards.pan` exactly that one; names compared case-insensitively), the order of
methods when several apply (`strongest`: `null` > `redact` > `hash` > `pan` > `last4` >
`email`), and the method of a value *computed* from masked columns (`computed_method`). Used
by every adapter that masks result columns by their origin (PostgreSQL's catalog-based masking
in `adapters.postgres.column_masks`, MySQL's column definitions' `org_table`/`org_name`).
Must not: evaluate policy, know a protocol or a catalog.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

STRENGTH = {"null": 6, "redact": 5, "hash": 4, "pan": 3, "last4": 2, "email": 1}
# Methods that keep part of the value and its shape. On a value computed from a masked column
# they would show what the expression made of it (`translate(pan, '0123456789', 'abcdefghij')`
# has no digit for `pan` to hide, `repeat('x', substr(pan, 1, 1)::int)` a length), so such a
# value gets `redact` instead.
SHAPE_KEEPING = frozenset({"pan", "last4", "email"})


def computed_method(method: str | None) -> str | None:
    """The method for a value computed from columns whose strongest method is `method`."""
    return "redact" if method in SHAPE_KEEPING else method


def strongest(methods: Iterable[str | None]) -> str | None:
    """The strongest of these methods (None ignored); an unknown method is the strongest."""
    best = None
    for method in methods:
        if method is not None and (best is None or STRENGTH.get(method, 99) > STRENGTH.get(
                best, 99)):
            best = method
    return best


@dataclass(frozen=True)
class MaskRule:
    schema: str | None
    table: str | None
    column: str
    method: str

    @classmethod
    def parse(cls, column: str, method: str) -> MaskRule:
        parts = [p.strip().strip('"').strip("`").lower() for p in column.split(".")]
        if len(parts) == 1:
            return cls(None, None, parts[0], method)
        if len(parts) == 2:
            return cls(None, parts[0], parts[1], method)
        return cls(parts[-3], parts[-2], parts[-1], method)

    def matches(self, schema: str, table: str, column: str) -> bool:
        return column == self.column and (self.table is None or table == self.table) and (
            self.schema is None or schema == self.schema)


class NamedColumn(Protocol):
    @property
    def name(self) -> str: ...


class NamedRelation(Protocol):
    """A table as `MaskRules.covers` needs it (PostgreSQL's `catalog.Relation`, ...)."""

    @property
    def schema(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def columns(self) -> Sequence[NamedColumn]: ...


class MaskRules:
    """The masks of one Decision."""

    def __init__(self, masks: Iterable[tuple[str, str]]) -> None:
        self.rules = tuple(MaskRule.parse(c, m) for c, m in masks)
        self.columns = frozenset(r.column for r in self.rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    @staticmethod
    @lru_cache(maxsize=1024)
    def of(masks: tuple[tuple[str, str], ...]) -> MaskRules:
        """The rules of these (column, method) pairs, shared: decisions repeat their masks."""
        return MaskRules(masks)

    def method(self, schema: str, table: str, column: str) -> str | None:
        """The method masking `schema.table.column`, or None."""
        column = column.lower()
        if column not in self.columns:
            return None
        schema, table = schema.lower(), table.lower()
        return strongest(r.method for r in self.rules if r.matches(schema, table, column))

    def covers(self, relation: NamedRelation) -> bool:
        """Whether some rule masks one of the relation's own columns."""
        return any(self.method(relation.schema, relation.name, c.name) is not None
                   for c in relation.columns)
