"""The seams between the MySQL proxy and whoever decides: types only, no behaviour.

`Verdict` is what the decide hook answers for one statement text; the session context and
outcome types are the PostgreSQL proxy's (`adapters.postgres.hooks`), which are not tied to
its wire protocol. Must not: contain policy or import `engine`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from adapters.mysql.results import ColumnMethod
from adapters.postgres.hooks import CompletionHook, SessionContext

HoldHook = Callable[[], Awaitable["Verdict"]]
"""Holds a statement until it may go on (the protocol has no notices: the client just waits);
returns the final verdict (allow or deny). Cancelled when the client hangs up."""


class RowLimit(Protocol):
    """Meters the rows of one result source against a row budget (`adapters.row_budget`):
    the proxy relays a row only once `admit(1)` admits it; the first it does not is where it
    awaits `hold()`: allow means approved (`released`, the rest flows), deny ends the
    statement with that verdict's error."""

    released: bool

    def admit(self, rows: int) -> int: ...

    def hold(self) -> Awaitable[Verdict]: ...


@dataclass(frozen=True)
class Verdict:
    """What the decide hook answers for one statement text.

    - `allow`: the command goes upstream (`rewritten` instead of the text, when set);
      `column_method` masks result columns; `on_complete` is awaited with each result's
      outcome before its end reaches the client (the audit record);
    - `deny`: the client gets ERR `code`/`sqlstate` with `message` (1142 / 42000 by default);
    - `review`: held by awaiting `hold()`, which returns the final verdict.
    `single_execution`: the verdict covers one execution (an approval), so each further
    COM_STMT_EXECUTE of a prepared statement it was given for is decided again.
    `rows` (a row budget) gives the `RowLimit` of each execution (a COM_QUERY's results
    together, each COM_STMT_EXECUTE's).
    """

    effect: Literal["allow", "deny", "review"]
    message: str = ""
    decision_id: str = ""
    column_method: ColumnMethod | None = None
    on_complete: CompletionHook | None = None
    hold: HoldHook | None = None
    rewritten: str | None = None
    single_execution: bool = False
    rows: Callable[[], RowLimit] | None = None
    code: int = 1142
    sqlstate: str = "42000"


DecideHook = Callable[[str, SessionContext], Awaitable[Verdict]]
"""`async def decide(text, ctx) -> Verdict`, before any statement text reaches the server;
raising (or exceeding the decision timeout) denies it."""

RefusalHook = Callable[[str, str, SessionContext], Awaitable[Verdict]]
"""`async def refused(text, reason, ctx)`: a command the proxy refuses itself, recorded as a
denial before the client is told; returns the deny verdict."""
