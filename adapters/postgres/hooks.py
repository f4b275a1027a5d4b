"""The seams between the PostgreSQL proxy and whoever decides: types only, no behaviour.

Owns: `SessionContext` (who is connected, handed to every decision), `StatementVerdict` (what
the decide hook answers), `RowLimit` (a row budget's meter and hold), `ColumnDescriptor` /
`ValueTransform` / `ColumnMasker` (how a verdict rewrites result values), `MaskTransform` (a
named masking method), `ScrubTransform` and `WithheldValue` (content scrubbing and NULL with a
notice), `StatementOutcome` (how an allowed statement ended, for the recording hook) and
`CopyLayout`, plus the `DecideHook` and session hook signatures. Must not: contain policy, call
the engine, or import anything from `engine/`; the bridge from a `Decision` to a
`StatementVerdict` is `adapters.postgres.bridge`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

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
"""Rewrites one non-NULL text-format value; returning None makes it NULL; raising
`WithheldValue` makes it NULL and tells the client why."""

ColumnMasker = Callable[[ColumnDescriptor], ValueTransform | None]
"""Chooses the transform of a column, or None to leave it alone. A binary-format column for
which a transform is chosen is delivered as NULL, with a notice (the proxy never rewrites
binary values), unless the transform is a `ScrubTransform` marked `binary_safe`."""


class WithheldValue(Exception):
    """Raised by a `ValueTransform` to deliver NULL instead of the value; `notice` is sent to
    the client as a NoticeResponse (once per distinct text and result set)."""

    def __init__(self, notice: str) -> None:
        super().__init__(notice)
        self.notice = notice


@dataclass(frozen=True, slots=True)
class MaskTransform:
    """A transform that applies the masking method `method` (a name of engine.masking's
    `MASK_METHODS`) to text values. Naming the method lets the proxy mask a whole run of rows
    at once in C (`adapters.postgres.rowscan`) for the methods the C loop knows; `function`
    is the reference, and does every value the C loop leaves to it."""

    method: str
    function: ValueTransform

    def __call__(self, value: bytes) -> bytes | None:
        return self.function(value)


@dataclass(frozen=True, slots=True)
class ScrubTransform:
    """A transform that only rewrites values in which a content detector finds something (a
    card number). `may_match(data)` is a cheap, conservative test over any bytes that contain
    whole values (a run of DataRow messages, a chunk of COPY records): False means no value in
    them needs rewriting, so the proxy relays them unchanged without decoding a row.
    `binary_safe` says the transform is also right for the column's binary format (string
    types, whose binary form is their text)."""

    scrub: ValueTransform
    may_match: Callable[[bytes], bool]
    binary_safe: bool = False

    def __call__(self, value: bytes) -> bytes | None:
        return self.scrub(value)


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
class StatementOutcome:
    """How one execution of an allowed statement ended, as the server said: `tag` is the
    CommandComplete tag (`SELECT 3`, `INSERT 0 1`; "" for an empty query or an error), `rows`
    the count in the tag (None when it has none), `error_code` / `error_message` the server's
    error, `duration` the seconds from sending it upstream to this answer, `suspended` true when
    a portal stopped at its row limit (PortalSuspended) and may be executed again."""

    tag: str
    rows: int | None
    duration: float
    error_code: str | None = None
    error_message: str | None = None
    suspended: bool = False


Notify = Callable[[str], Awaitable[None]]
"""Sends one NoticeResponse (severity NOTICE) with this text to the client at once."""

HoldHook = Callable[[Notify], Awaitable["StatementVerdict"]]
"""Holds a statement until it may go on: returns the final verdict (allow or deny). The proxy
runs it as a task and cancels it when nobody waits any more, with the cancel message
`HOLD_CANCELLED` (the client sent a CancelRequest; it then gets 57014), `HOLD_CLIENT_GONE` (the
client hung up) or another text saying why the session ended."""

HOLD_CANCELLED = "the client cancelled the statement"
HOLD_CLIENT_GONE = "the client disconnected"
CANCELED_BY_USER = "canceling statement due to user request"
"""PostgreSQL's message for SQLSTATE 57014 after a CancelRequest."""

CompletionHook = Callable[[StatementOutcome], Awaitable[None]]
"""Awaited before the end of a statement's result (CommandComplete, ErrorResponse, ...) is
relayed to the client; raising withholds the result and ends the session (fail closed)."""

ColumnResolver = Callable[[Sequence[ColumnDescriptor]], Awaitable[None]]
"""Awaited with every RowDescription of a statement before its `masker` sees the columns, so
the masker can look up what it needs (table OIDs in the catalog); raising ends the session."""


class RowLimit(Protocol):
    """Meters the result rows of one source (a Query, a portal, a cursor) against a row
    budget (`adapters.row_budget.RowMeter` plus the hold). The proxy relays at most `room()`
    rows, charging them with `admit`; when one more row has arrived it stops relaying and
    reading upstream and awaits `hold(notify)`: an allow verdict means approved (`released`
    is then true and the rest flows), any other ends the statement with that verdict's error
    (the proxy cancels it upstream and drops what the server still sends for it)."""

    released: bool

    def room(self) -> int: ...

    def admit(self, rows: int) -> int: ...

    def hold(self, notify: Notify) -> Awaitable[StatementVerdict]: ...


@dataclass(frozen=True)
class StatementVerdict:
    """What the decide hook answers for one statement text.

    - `allow`: the statement goes to the server; `masker` (if any) rewrites its results.
    - `deny`: the client gets ErrorResponse 42501 with `message` (the reasons) and
      `decision id: <decision_id>` plus `detail` in DETAIL; nothing reaches the server.
    - `review`: held for approval when `hold` is set: the proxy awaits `hold(notify)` (no
      decision timeout applies; the hook bounds its own wait) while other sessions go on, and
      applies the verdict it returns (which must be allow or deny). Without `hold` a review
      is answered like `deny` (fail closed) with the message saying approval is required.

    `sqlstate` is the code of the error a denied statement gets: 42501 prefixes `message` with
    "permission denied by policy" (or "statement requires approval"); any other code (57014
    for a held statement the client cancelled) sends `message` as it is.
    `copy_layout` must be set when `masker` may apply to a `COPY ... TO STDOUT` in text
    format; without it the proxy refuses to deliver masked COPY text (fails closed).
    `on_complete` is awaited with the outcome of every execution before its end reaches the
    client (the audit record); `resolve_columns` before the masker sees a RowDescription.
    `withhold_error_values` (the statement reads or writes masked columns): the values a
    server error quotes are withheld from the client and the record (data exceptions, class
    22: quoted text in the message and the DETAIL; integrity violations, class 23: the DETAIL,
    which quotes keys and failing rows; other classes: quoted text in the message and the
    DETAIL).
    `rewritten`: the text sent upstream instead of the client's (masked columns used outside
    the plain result columns replaced by their masked values); None sends it as it is.
    `single_execution`: the verdict covers one execution (it was approved for one), so every
    further execution of an extended-protocol prepared statement it was given for is decided
    again, at its Bind.
    `rows` (a row budget) gives the `RowLimit` of each result source: called once per Query
    and per portal bound to the statement.
    """

    effect: Effect
    message: str = ""
    detail: str = ""
    decision_id: str = ""
    masker: ColumnMasker | None = None
    copy_layout: CopyLayout | None = None
    hold: HoldHook | None = None
    on_complete: CompletionHook | None = None
    resolve_columns: ColumnResolver | None = None
    sqlstate: str = "42501"
    withhold_error_values: bool = False
    rewritten: str | None = None
    single_execution: bool = False
    rows: Callable[[], RowLimit] | None = None

    @classmethod
    def allow(cls, masker: ColumnMasker | None = None, *, decision_id: str = "",
              copy_layout: CopyLayout | None = None, on_complete: CompletionHook | None = None,
              resolve_columns: ColumnResolver | None = None,
              withhold_error_values: bool = False,
              rewritten: str | None = None,
              single_execution: bool = False,
              rows: Callable[[], RowLimit] | None = None) -> StatementVerdict:
        return cls("allow", decision_id=decision_id, masker=masker, copy_layout=copy_layout,
                   on_complete=on_complete, resolve_columns=resolve_columns,
                   withhold_error_values=withhold_error_values, rewritten=rewritten,
                   single_execution=single_execution, rows=rows)

    @classmethod
    def deny(cls, message: str, *, decision_id: str = "", detail: str = "") -> StatementVerdict:
        return cls("deny", message=message, detail=detail, decision_id=decision_id)

    @classmethod
    def cancelled(cls, *, decision_id: str = "", detail: str = "") -> StatementVerdict:
        """A held statement the client cancelled: 57014, as PostgreSQL answers a cancelled
        query."""
        return cls("deny", message=CANCELED_BY_USER, detail=detail, decision_id=decision_id,
                   sqlstate="57014")


DecideHook = Callable[[str, SessionContext], Awaitable[StatementVerdict]]
"""`async def decide(sql, ctx) -> StatementVerdict`, called before any statement text reaches
the server. Raising (or exceeding the configured timeout) denies the statement."""

RefusalHook = Callable[[str, str, SessionContext], Awaitable[StatementVerdict]]
"""`async def refused(text, reason, ctx) -> StatementVerdict`: a message the proxy denies
itself (a FunctionCall, a Bind of a statement it never saw prepared, a decision that failed),
awaited before the client is told; it records the denial and returns the deny verdict."""

SessionStartHook = Callable[[SessionContext], Awaitable[None]]
"""Awaited once a client is authenticated and the upstream connection is up, before the client
is told it is logged in; raising refuses the session (fail closed: e.g. no audit trail)."""

SessionEndHook = Callable[[SessionContext, str], Awaitable[None]]
"""Awaited when a session ends, with the reason (`client terminated`, `client disconnected`,
`upstream closed`, `proxy shutdown`, or the error that ended it)."""
