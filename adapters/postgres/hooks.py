"""The seams between the PostgreSQL proxy and whoever decides: types only, no behaviour.

Owns: `SessionContext` (who is connected, handed to every decision), `StatementVerdict` (what
the decide hook answers), `ColumnDescriptor` / `ValueTransform` / `ColumnMasker` (how a verdict
rewrites result values) and `CopyLayout`, plus the `DecideHook` signature. Must not: contain
policy, call the engine, or import anything from `engine/`; the bridge from a `Decision` to a
`StatementVerdict` lives with the caller (the CLI wiring).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Effect = Literal["allow", "deny", "review"]


@dataclass(frozen=True)
class SessionContext:
    """One authenticated client session, as the decide hook sees it.

    `user` is the authenticated identity: the directory user's name, or the token subject's
    `id` (then `requested_user` is the name the client typed). `tls` says whether the client
    connection is encrypted; `auth_method` is "scram-sha-256" or "token".
    """

    session_id: str
    user: str
    groups: tuple[str, ...]
    database: str
    application_name: str
    client_addr: str
    tls: bool
    auth_method: str
    requested_user: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict)


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


ValueTransform = Callable[[bytes], bytes | None]
"""Rewrites one non-NULL text-format value; returning None makes it NULL."""

ColumnMasker = Callable[[ColumnDescriptor], ValueTransform | None]
"""Chooses the transform of a column, or None to leave it alone. A binary-format column for
which a transform is chosen is delivered as NULL (the proxy never rewrites binary values)."""


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


@dataclass(frozen=True)
class StatementVerdict:
    """What the decide hook answers for one statement text.

    - `allow`: the statement goes to the server; `masker` (if any) rewrites its results.
    - `deny`: the client gets ErrorResponse 42501 with `message` (the reasons) and
      `decision id: <decision_id>` plus `detail` in DETAIL; nothing reaches the server.
    - `review`: held for approval. Not supported yet by the proxy: answered like `deny`
      (fail closed) with the message saying approval is required.

    `copy_layout` must be set when `masker` may apply to a `COPY ... TO STDOUT` in text
    format; without it the proxy refuses to deliver masked COPY text (fails closed).
    """

    effect: Effect
    message: str = ""
    detail: str = ""
    decision_id: str = ""
    masker: ColumnMasker | None = None
    copy_layout: CopyLayout | None = None

    @classmethod
    def allow(cls, masker: ColumnMasker | None = None, *, decision_id: str = "",
              copy_layout: CopyLayout | None = None) -> StatementVerdict:
        return cls("allow", decision_id=decision_id, masker=masker, copy_layout=copy_layout)

    @classmethod
    def deny(cls, message: str, *, decision_id: str = "", detail: str = "") -> StatementVerdict:
        return cls("deny", message=message, detail=detail, decision_id=decision_id)


DecideHook = Callable[[str, SessionContext], Awaitable[StatementVerdict]]
"""`async def decide(sql, ctx) -> StatementVerdict`, called before any statement text reaches
the server. Raising (or exceeding the configured timeout) denies the statement."""
