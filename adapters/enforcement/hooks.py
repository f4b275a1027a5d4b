"""The seams between a protocol adapter and whoever decides: types only, no behaviour.

Shared by every enforcement point (the PostgreSQL and MySQL proxies, the SSH gateway).
Owns: `SessionContext` (who is connected, over which protocol, handed to every decision),
`StatementVerdict` (what the decide hook answers for one statement or command), `RowLimit` (a
row budget's meter and hold), `ValueTransform` / `ColumnMasker` / `ColumnResolver` (how a
verdict rewrites result values; the column type is the adapter's own description of a result
column), `MaskTransform` (a named masking method), `ScrubTransform` and `WithheldValue`
(content scrubbing and NULL with a notice), `StatementOutcome` (how an allowed statement ended,
for the recording hook), plus the `DecideHook`, `Notify`/`HoldHook` and session hook
signatures. Must not: contain policy, call the engine, or import anything from `engine/`; the
bridge from a `Decision` to a `StatementVerdict` is `adapters.enforcement.bridge` (PostgreSQL's
`adapters.postgres.bridge` adds its catalog-based masking).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

Effect = Literal["allow", "deny", "review"]
ColumnT = TypeVar("ColumnT")


@dataclass(frozen=True)
class SessionContext:
    """One authenticated client session, as the decide hook sees it.

    `protocol` is the adapter's (`postgres`, `mysql`, `ssh`): the input document's
    `command.protocol` and the `protocol` of the `session.start` record. `user` is the
    authenticated identity: the directory user's name, or the token subject's `id` (then
    `requested_user` is the name the client typed). `tls` says whether the client connection
    is encrypted; `auth_method` names how the client logged in ("scram-sha-256", "token",
    "caching_sha2_password", "publickey", ...). `database` is the SQL database (for SSH: the
    target's login user, or ""); `application_name` what the client calls itself, if it
    says.
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
    protocol: str = field(kw_only=True)


ValueTransform = Callable[[bytes], bytes | None]
"""Rewrites one non-NULL text-format value; returning None makes it NULL; raising
`WithheldValue` makes it NULL and tells the client why."""

ColumnMasker = Callable[[ColumnT], ValueTransform | None]
"""Chooses the transform of a result column (the adapter's description of it: PostgreSQL's
`adapters.postgres.descriptors.ColumnDescriptor`, MySQL's column definition), or None to leave
it alone."""

ColumnResolver = Callable[[Sequence[ColumnT]], Awaitable[None]]
"""Awaited with every description of a result's columns before the `masker` sees them, so the
masker can look up what it needs (PostgreSQL: table OIDs in the catalog); raising ends the
session."""


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
    at once in C (PostgreSQL: `adapters.postgres.rowscan`) for the methods the C loop knows;
    `function` is the reference, and does every value the C loop leaves to it."""

    method: str
    function: ValueTransform

    def __call__(self, value: bytes) -> bytes | None:
        return self.function(value)


@dataclass(frozen=True, slots=True)
class ScrubTransform:
    """A transform that only rewrites values in which a content detector finds something (a
    card number). `may_match(data)` is a cheap, conservative test over any bytes that contain
    whole values (a run of result rows, a chunk of COPY records, a block of command output):
    False means no value in them needs rewriting, so the adapter relays them unchanged without
    decoding a row.
    `binary_safe` says the transform is also right for the column's binary format (string
    types, whose binary form is their text)."""

    scrub: ValueTransform
    may_match: Callable[[bytes], bool]
    binary_safe: bool = False

    def __call__(self, value: bytes) -> bytes | None:
        return self.scrub(value)


@dataclass(frozen=True)
class StatementOutcome:
    """How one execution of an allowed statement or command ended, as the server said: `tag`
    is the completion tag (PostgreSQL's CommandComplete `SELECT 3`, `INSERT 0 1`; MySQL's OK
    or result-set summary; SSH `exit 0`; "" for an empty query or an error), `rows` the row
    count (None when there is none), `error_code` / `error_message` the server's error,
    `duration` the seconds from sending it upstream to this answer, `suspended` true when a
    portal stopped at its row limit (PortalSuspended) and may be executed again. `details`
    are further fields of the statement record the protocol has (SSH: `exit_status`,
    `bytes_in`, `bytes_out`); they must be JSON values and must not replace the record's
    own fields."""

    tag: str
    rows: int | None
    duration: float
    error_code: str | None = None
    error_message: str | None = None
    suspended: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)


Notify = Callable[[str], Awaitable[None]]
"""Tells the client this text at once, in its protocol's way: PostgreSQL a NoticeResponse
(severity NOTICE), SSH a line on the channel's stderr; a protocol without notices (MySQL)
keeps it for the error it answers if the client cannot wait. Raising ends the hold with a
denial (the client cannot be told)."""

HoldHook = Callable[[Notify], Awaitable["StatementVerdict"]]
"""Holds a statement until it may go on: returns the final verdict (allow or deny). The adapter
runs it as a task and cancels it when nobody waits any more, with the cancel message
`HOLD_CANCELLED` (the client cancelled the statement; PostgreSQL then answers 57014),
`HOLD_CLIENT_GONE` (the client hung up) or another text saying why the session ended; the
cancelled hold withdraws its approval request and records the statement."""

HOLD_CANCELLED = "the client cancelled the statement"
HOLD_CLIENT_GONE = "the client disconnected"
CANCELED_BY_USER = "canceling statement due to user request"
"""The message of SQLSTATE 57014 (PostgreSQL's after a CancelRequest): what a held statement
the client cancelled is recorded with."""

CompletionHook = Callable[[StatementOutcome], Awaitable[None]]
"""Awaited before the end of a statement's result (CommandComplete, ErrorResponse, ...) is
relayed to the client; raising withholds the result and ends the session (fail closed)."""


class RowLimit(Protocol):
    """Meters the result rows of one source (a Query, a portal, a cursor) against a row
    budget (`adapters.enforcement.row_budget.RowMeter` plus the hold). The adapter relays at
    most `room()` rows, charging them with `admit`; when one more row has arrived it stops
    relaying and reading upstream and awaits `hold(notify)`: an allow verdict means approved
    (`released` is then true and the rest flows), any other ends the statement with that
    verdict's error (the adapter cancels it upstream and drops what the server still sends
    for it)."""

    released: bool

    def room(self) -> int: ...

    def admit(self, rows: int) -> int: ...

    def hold(self, notify: Notify) -> Awaitable[StatementVerdict]: ...


@dataclass(frozen=True)
class StatementVerdict:
    """What the decide hook answers for one statement text (or command line).

    - `allow`: the statement goes to the server; `masker` (if any) rewrites its results.
    - `deny`: the client gets its protocol's error (PostgreSQL: ErrorResponse 42501; MySQL:
      ERR 1142; SSH: stderr and exit status 126) with `message` (the reasons) and
      `decision id: <decision_id>` plus `detail`; nothing reaches the server.
    - `review`: held for approval when `hold` is set: the adapter awaits `hold(notify)` (no
      decision timeout applies; the hook bounds its own wait) while other sessions go on, and
      applies the verdict it returns (which must be allow or deny). Without `hold` a review
      is answered like `deny` (fail closed) with the message saying approval is required.

    `sqlstate` is the code of the error a denied statement gets: 42501 prefixes `message` with
    "permission denied by policy" (or "statement requires approval"); any other code (57014
    for a held statement the client cancelled) sends `message` as it is.
    `copy_layout` (PostgreSQL: an `adapters.postgres.descriptors.CopyLayout`) must be set when
    `masker` may apply to a `COPY ... TO STDOUT` in text format; without it the proxy refuses
    to deliver masked COPY text (fails closed). Other adapters leave it None.
    `on_complete` is awaited with the outcome of every execution before its end reaches the
    client (the audit record: not awaiting it loses the record); `resolve_columns` before the
    masker sees a description of result columns.
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
    `local_files` (MySQL: a LOAD DATA LOCAL INFILE the policies allowed): the server may ask
    the client for the file the statement names; otherwise the proxy refuses any such ask.
    """

    effect: Effect
    message: str = ""
    detail: str = ""
    decision_id: str = ""
    masker: ColumnMasker[Any] | None = None
    copy_layout: Any = None
    hold: HoldHook | None = None
    on_complete: CompletionHook | None = None
    resolve_columns: ColumnResolver[Any] | None = None
    sqlstate: str = "42501"
    withhold_error_values: bool = False
    rewritten: str | None = None
    single_execution: bool = False
    rows: Callable[[], RowLimit] | None = None
    local_files: bool = False

    @classmethod
    def allow(cls, masker: ColumnMasker[Any] | None = None, *, decision_id: str = "",
              copy_layout: Any = None, on_complete: CompletionHook | None = None,
              resolve_columns: ColumnResolver[Any] | None = None,
              withhold_error_values: bool = False,
              rewritten: str | None = None,
              single_execution: bool = False,
              rows: Callable[[], RowLimit] | None = None,
              local_files: bool = False) -> StatementVerdict:
        return cls("allow", decision_id=decision_id, masker=masker, copy_layout=copy_layout,
                   on_complete=on_complete, resolve_columns=resolve_columns,
                   withhold_error_values=withhold_error_values, rewritten=rewritten,
                   single_execution=single_execution, rows=rows, local_files=local_files)

    @classmethod
    def deny(cls, message: str, *, decision_id: str = "", detail: str = "") -> StatementVerdict:
        return cls("deny", message=message, detail=detail, decision_id=decision_id)

    @classmethod
    def cancelled(cls, *, decision_id: str = "", detail: str = "") -> StatementVerdict:
        """A held statement the client cancelled: 57014, as PostgreSQL answers a cancelled
        query (other adapters map it to their own: MySQL 1317)."""
        return cls("deny", message=CANCELED_BY_USER, detail=detail, decision_id=decision_id,
                   sqlstate="57014")


DecideHook = Callable[[str, SessionContext], Awaitable[StatementVerdict]]
"""`async def decide(text, ctx) -> StatementVerdict`, called before any statement text (or
command line) reaches the server. Raising (or exceeding the configured timeout) denies it."""

RefusalHook = Callable[[str, str, SessionContext], Awaitable[StatementVerdict]]
"""`async def refused(text, reason, ctx) -> StatementVerdict`: a message the adapter denies
itself (a FunctionCall, a Bind of a statement it never saw prepared, a decision that failed),
awaited before the client is told; it records the denial and returns the deny verdict."""

SessionStartHook = Callable[[SessionContext], Awaitable[None]]
"""Awaited once a client is authenticated and the upstream connection is up, before the client
is told it is logged in; raising refuses the session (fail closed: e.g. no audit trail)."""

SessionEndHook = Callable[[SessionContext, str], Awaitable[None]]
"""Awaited when a session ends, with the reason (`client terminated`, `client disconnected`,
`upstream closed`, `proxy shutdown`, or the error that ended it)."""
