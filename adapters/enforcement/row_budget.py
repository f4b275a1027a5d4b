"""Row budgets: review decisions that hold a statement only once its results pass a row count.

A review `Reason` with `rows` (engine.decision) is a *row budget*: under that rule (its
`policy`) a session may receive `rows` rows without approval, counted over all its statements
(so paging with OFFSET, cursors or repeated statements adds up); the statement whose results
would go past it is held at that row, and only an approval lets the rest through. Adapters
that can count result rows use this module; the wire protocol is theirs.

Owns: reading a Decision's budgets and its other review reasons (`row_budgets`,
`immediate_reviews`), a session's allowance (`SessionRows`: rows delivered under each rule
without approval) and metering one result source against it (`RowMeter`: an execution, a
portal, a cursor; `admit` charges the rows that may go now, and the first row it cannot admit
is where the adapter stops relaying and asks for approval; `release` after an approval lets
the rest of that source through uncounted). Must not: read or write protocol bytes, file or
wait for approvals, or decide anything a policy decides (how many rows, which tables).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.decision import Decision, Reason


@dataclass(frozen=True)
class RowBudget:
    """`rows` rows per session under `rule` (the reason's policy) without approval."""

    rule: str
    rows: int
    reason: Reason


def row_budgets(decision: Decision) -> tuple[RowBudget, ...]:
    """The row budgets among a Decision's review reasons."""
    if decision.effect != "review":
        return ()
    return tuple(RowBudget(r.policy, r.rows, r) for r in decision.reasons
                 if r.effect == "review" and r.rows is not None)


def immediate_reviews(decision: Decision) -> tuple[Reason, ...]:
    """The review reasons that hold a statement before it runs (no row budget)."""
    return tuple(r for r in decision.reasons if r.effect == "review" and r.rows is None)


class SessionRows:
    """The rows one session received under each budget rule without approval."""

    __slots__ = ("_used",)

    def __init__(self) -> None:
        self._used: dict[str, int] = {}

    def used(self, rule: str) -> int:
        return self._used.get(rule, 0)

    def room(self, budgets: Sequence[RowBudget]) -> int:
        """How many more rows may go without approval under every one of `budgets`."""
        return max(0, min(b.rows - self._used.get(b.rule, 0) for b in budgets))

    def charge(self, budgets: Sequence[RowBudget], rows: int) -> None:
        for rule in {b.rule for b in budgets}:
            self._used[rule] = self._used.get(rule, 0) + rows


class RowMeter:
    """The rows of one result source (an execution, a portal, a cursor) against `budgets` and
    the session's `allowance`. Rows admitted before a hold are charged to the allowance; once
    `release`d (approved) the source's further rows are neither limited nor charged."""

    __slots__ = ("allowance", "budgets", "held_at", "released", "sent")

    def __init__(self, budgets: Sequence[RowBudget], allowance: SessionRows) -> None:
        if not budgets:
            raise ValueError("a RowMeter needs at least one budget")
        self.budgets = tuple(budgets)
        self.allowance = allowance
        self.sent = 0  # rows of this source that went to the client
        self.released = False
        self.held_at: int | None = None  # `sent` when it was last held

    def room(self) -> int:
        """Rows that may go now without a hold (unbounded once released: -1 never returned,
        callers check `released` first)."""
        return self.allowance.room(self.budgets)

    def admit(self, rows: int) -> int:
        """How many of the next `rows` rows may go to the client now; those are counted."""
        if self.released:
            self.sent += rows
            return rows
        admitted = min(rows, self.room())
        self.allowance.charge(self.budgets, admitted)
        self.sent += admitted
        return admitted

    def exceeded(self) -> tuple[RowBudget, ...]:
        """The budgets that leave no room (why a hold happens)."""
        return tuple(b for b in self.budgets if b.rows - self.allowance.used(b.rule) <= 0)

    def release(self) -> None:
        self.released = True
