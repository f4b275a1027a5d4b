"""Masking MySQL result rows: per-column transforms on text and binary rows, and the PAN
backstop on every string value.

Owns: `ResultMasker`, built per result set from its column definitions and the verdict's
column methods (a column definition's `org_table`/`org_name` name the base column of a plain
reference; what the method of a computed column is, is the verdict's business); rewriting one
row payload (string types are text in both protocols; a masked column of another type becomes
NULL, in both, and counts a warning); the column definitions a
masked column is delivered with (NOT NULL cleared, as its value may now be NULL); scrubbing
card numbers out of server error messages. Must not: decide which columns are masked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from adapters.mysql.messages import (
    STRING_TYPES,
    BinaryRow,
    ColumnDefinition,
    decode_binary_row,
    decode_text_row,
    encode_binary_row,
    encode_text_row,
)
from engine.masking import mask_value, may_hold_pan_bytes, scrub_pans

NOT_NULL_FLAG = 1
ColumnMethod = Callable[[ColumnDefinition], "str | None"]
"""The masking method of a result column (a name of engine.masking's methods), or None."""


def scrub_text(value: bytes) -> bytes:
    """The PAN backstop on one value (text as UTF-8; other bytes are scrubbed as Latin-1,
    which keeps every byte and its digits where they are)."""
    if not may_hold_pan_bytes(value):
        return value
    try:
        return scrub_pans(value.decode("utf-8")).encode("utf-8")
    except UnicodeDecodeError:
        return scrub_pans(value.decode("latin-1")).encode("latin-1")


def _masked(method: str, value: bytes) -> bytes | None:
    out = mask_value(method, value.decode("utf-8", "replace"))
    return None if out is None else out.encode("utf-8")


@dataclass
class ResultMasker:
    """The transforms of one result set. `methods[i]` is column i's method or None."""

    columns: list[ColumnDefinition]
    methods: list[str | None]
    binary: bool
    withheld: int = 0  # binary values of masked non-string columns delivered as NULL

    @classmethod
    def build(cls, columns: list[ColumnDefinition], method: ColumnMethod | None,
              binary: bool) -> ResultMasker:
        methods = [method(c) if method is not None else None for c in columns]
        return cls(columns, methods, binary)

    @property
    def masks(self) -> bool:
        return any(m is not None for m in self.methods)

    def column(self, i: int) -> ColumnDefinition:
        """Column i as the client gets it: a masked one may be NULL now."""
        col = self.columns[i]
        if self.methods[i] is not None and col.flags & NOT_NULL_FLAG:
            return replace(col, flags=col.flags & ~NOT_NULL_FLAG)
        return col

    def row(self, payload: bytes) -> bytes:
        """One row payload with its masked columns masked and card numbers scrubbed."""
        if not self.masks and not may_hold_pan_bytes(payload):
            return payload
        if self.binary:
            types = [c.type for c in self.columns]
            row = decode_binary_row(payload, types)
            row = BinaryRow([self._binary_value(i, v) for i, v in enumerate(row.values)])
            return encode_binary_row(row, types)
        values = decode_text_row(payload, len(self.columns))
        return encode_text_row([self._text_value(i, v) for i, v in enumerate(values)])

    def _text_value(self, i: int, value: bytes | None) -> bytes | None:
        if value is None:
            return None
        method = self.methods[i]
        if method is not None and self.columns[i].type not in STRING_TYPES:
            self.withheld += 1  # no valid masked value of a number or a date: NULL
            return None
        if method is not None:
            masked = _masked(method, value)
            return None if masked is None else scrub_text(masked)
        return scrub_text(value)

    def _binary_value(self, i: int, value: bytes | None) -> bytes | None:
        if value is None:
            return None
        if self.columns[i].type in STRING_TYPES or self.methods[i] is not None:
            return self._text_value(i, value)
        return value
