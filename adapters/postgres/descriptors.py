"""What the PostgreSQL wire says about result data, as the proxy's masking sees it.

Owns: `ColumnDescriptor` (one RowDescription field or COPY column), `CopyLayout` (how a text
`COPY ... TO STDOUT` lays out its rows), and `PgColumnMasker`, the shared core's
`ColumnMasker` (`adapters.enforcement.hooks`) over these descriptors. Types only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from adapters.enforcement.hooks import ColumnMasker


@dataclass(frozen=True)
class ColumnDescriptor:
    """One result column as the server described it (RowDescription), or one column of a
    `COPY ... TO STDOUT` (then only `index` and `format` are known; the other fields are 0/"").
    `format` is 0 for text and 1 for binary."""

    index: int
    name: str
    table_oid: int
    attnum: int
    type_oid: int
    type_modifier: int
    format: int
    copy: bool = False


PgColumnMasker = ColumnMasker[ColumnDescriptor]
"""A binary-format column for which a transform is chosen is delivered as NULL, with a notice
(the proxy never rewrites binary values), unless the transform is a `ScrubTransform` marked
`binary_safe`."""


@dataclass(frozen=True)
class CopyLayout:
    """How the rows of a `COPY ... TO STDOUT` are laid out, as the statement's options say
    (FORMAT, DELIMITER, NULL, QUOTE, ESCAPE, HEADER). Only the caller, who parsed the
    statement, knows this: the wire does not tell text from CSV. `None` means PostgreSQL's
    default for the format (text: tab and `\\N`; csv: comma and the empty string). Binary
    COPY is recognised on the wire and needs no layout."""

    format: Literal["text", "csv"] = "text"
    delimiter: bytes | None = None
    null: bytes | None = None
    quote: bytes = b'"'
    escape: bytes | None = None
    header: bool = False
