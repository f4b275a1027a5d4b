"""Holds: a review decision (or a row budget's overflow) -> an approval request, awaited.

Owns: the hold of a statement before it runs (`Holds.review`: an approval that already covers
the text, a rule's `window`, is used at once; else a hold that files or finds the request,
tells the client its id and how to approve it through the adapter's `Notify`, waits until
`ApprovalGate.timeout` and answers the approved verdict or a recorded denial), the hold of a
row budget at its first row past the allowance (`HeldRows`, a `RowLimit`), and what happens
to a request nobody waits for any more (withdrawn when the client cancels or leaves, expired
when the hold times out; the statement is recorded either way). Approvals are per execution:
every hold consumes the single-use approval it was given. Must not: decide (the Decision
is the answer), or know a protocol's messages (the adapter's `Notify` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Literal

from adapters.enforcement.hooks import (
    CANCELED_BY_USER,
    HOLD_CANCELLED,
    Notify,
    StatementVerdict,
)
from adapters.enforcement.records import Resource, Statement
from adapters.enforcement.review import ApprovalGate, parse_window
from adapters.enforcement.row_budget import RowBudget, RowMeter, SessionRows, immediate_reviews
from engine.approvals import ApprovalRequest
from engine.decision import Reason
from engine.identity import Subject

log = logging.getLogger("ordinance.adapters.enforcement.holds")


class HeldRows(RowMeter):
    """A `RowMeter` whose hold asks for approval (`hooks.RowLimit`). `statement` is the one
    whose results it meters now (a cursor's meter moves from FETCH to FETCH); `sql` is the
    text approval is asked for."""

    __slots__ = ("holds", "sql", "statement")

    def __init__(self, holds: Holds, statement: Statement, sql: str,
                 budgets: tuple[RowBudget, ...], allowance: SessionRows) -> None:
        super().__init__(budgets, allowance)
        self.holds = holds
        self.statement = statement
        self.sql = sql

    async def hold(self, notify: Notify) -> StatementVerdict:
        return await self.holds.hold_rows(self, notify)


class Holds:
    """The holds of one enforcement point: `approvals` None means nothing can be approved
    (a review is denied, saying so)."""

    def __init__(self, approvals: ApprovalGate | None, resource: Resource) -> None:
        self.approvals = approvals
        self.resource = resource

    async def review(self, statement: Statement,
                     approved: Callable[[], StatementVerdict]) -> StatementVerdict:
        """A hold before the statement runs: the verdict `approved()` once approved (at once
        with a standing approval), a review verdict with the `hold`, or a recorded denial."""
        decision = statement.decision
        reasons = [r.message for r in immediate_reviews(decision) if r.message] or [
            "approval required"]
        standing = await self._standing(statement, statement.approval_text, reasons)
        if isinstance(standing, StatementVerdict):
            return standing
        if standing is not None:
            return approved()
        who = Subject(statement.ctx.user, tuple(statement.ctx.groups))

        async def hold(notify: Notify) -> StatementVerdict:
            return await self.hold(statement, who, reasons, notify, approved)

        return StatementVerdict("review", message="; ".join(reasons),
                                decision_id=statement.decision_id, hold=hold)

    async def hold_rows(self, meter: HeldRows, notify: Notify) -> StatementVerdict:
        """The hold of a row budget (`RowLimit.hold`): an approval already given for the
        text is used at once; else a request is filed and awaited as for a review."""
        statement = meter.statement
        statement.held_after_rows = meter.sent
        meter.held_at = meter.sent
        exceeded = meter.exceeded() or meter.budgets
        reasons = list(dict.fromkeys(b.reason.message for b in exceeded)) or [
            "row budget exceeded"]
        rules = ", ".join(f"{b.rows} rows per session under {b.rule}" for b in exceeded)
        def approved() -> StatementVerdict:
            meter.release()
            return StatementVerdict.allow(decision_id=statement.decision_id)

        standing = await self._standing(statement, meter.sql, reasons, meter.sent)
        if isinstance(standing, StatementVerdict):
            return standing
        if standing is not None:
            return approved()
        who = Subject(statement.ctx.user, tuple(statement.ctx.groups))
        return await self.hold(
            statement, who, reasons, notify, approved, text=meter.sql, rows=meter.sent,
            review=[b.reason for b in exceeded],
            held=f"statement held for approval after {meter.sent} rows ({rules})")

    async def _standing(self, statement: Statement, text: str, reasons: list[str],
                        rows: int | None = None) -> StatementVerdict | ApprovalRequest | None:
        """The approval that already covers `text` (a `window`), used now (and noted on the
        statement); None when there is none; a recorded denial when nothing can be approved
        (no store, or it failed; `rows`: what the client got before)."""
        if self.approvals is None:
            return await statement.denied("; ".join(reasons) + " (no approval store is "
                                          "configured, so it cannot be approved)", rows)
        who = Subject(statement.ctx.user, tuple(statement.ctx.groups))
        try:
            standing = await self.approvals.use_standing(who, text)
        except Exception as exc:
            log.error("approvals store failed: %s", exc)
            return await statement.denied("; ".join(reasons) + " (the approvals store is "
                                          "unavailable)", rows)
        if standing is not None:
            statement.approval = {"id": standing.id, "approver": standing.decided_by,
                                  "status": "approved", "standing": True}
        return standing

    async def hold(self, statement: Statement, who: Subject, reasons: list[str],
                   notify: Notify, approved: Callable[[], StatementVerdict], *,
                   text: str | None = None, rows: int | None = None,
                   review: Sequence[Reason] | None = None,
                   held: str = "statement held for approval") -> StatementVerdict:
        """File (or find) the approval request for `text` (the statement's own by default)
        under the approvers and windows of `review` (its decision's review reasons by
        default), tell the client (`held`: ...), wait, and answer `approved()` or a recorded
        denial (`rows`: what the client got before)."""
        gate = self.approvals
        assert gate is not None
        text = statement.approval_text if text is None else text
        if review is None:
            review = [r for r in statement.decision.reasons if r.effect == "review"]
        approvers = list(dict.fromkeys(a for r in review for a in r.approvers))
        windows = [w for w in (parse_window(r.window) for r in review) if w is not None]
        filing = asyncio.ensure_future(gate.request(
            who, self.resource.to_input(), text, reasons, approvers,
            min(windows) if windows else None, statement.ctx.session_id))
        try:
            request = await asyncio.shield(filing)
        except asyncio.CancelledError as exc:  # what is being filed is filed all the same
            await asyncio.shield(self._abandon_filing(statement, filing, exc))
            raise
        except Exception as exc:
            log.error("session %s: approval request not filed: %s", statement.ctx.session_id,
                      exc)
            return await statement.denied("; ".join(reasons) + f" (the approval request "
                                          f"could not be filed: {exc})", rows)
        statement.approval = {"id": request.id, "status": "pending"}
        claim = _Claim(gate, request)
        try:
            await notify(
                f"{held}: {'; '.join(reasons)}. Approval request "
                f"{request.id} (approvers: {', '.join(request.approver_groups)}). To release "
                f"it: {gate.hint(request.id)} -- waiting up to {_seconds(gate.timeout)}.")
            final = await gate.wait(request.id)
            status = final.status_at(datetime.now(UTC))
            if status in ("pending", "expired"):
                status = "expired"
                why = f"not approved within {_seconds(gate.timeout)}"
                final = await claim.release("expired", why, final) or final
            else:
                await claim.release(None, "", final)
            statement.approval = {"id": final.id, "status": status,
                                  "approver": final.decided_by, "comment": final.comment}
            used = status == "approved" and await gate.consume(who, text)
        except asyncio.CancelledError as exc:
            await asyncio.shield(self._abandon(statement, claim, exc))
            raise
        except Exception as exc:  # the client cannot be told, or the store failed
            log.error("session %s: approval %s could not be awaited: %s",
                      statement.ctx.session_id, request.id, exc)
            with contextlib.suppress(Exception):
                await claim.release("withdrawn", f"the hold failed: {exc}")
            return await statement.denied(f"approval {request.id} could not be awaited: {exc}",
                                          rows)
        if used:
            return approved()
        if status == "approved":
            return await statement.denied(f"approval {final.id} could not be used", rows)
        if status == "denied":
            comment = f": {final.comment}" if final.comment else ""
            return await statement.denied(f"approval {final.id} was denied by "
                                          f"{final.decided_by}{comment}", rows)
        if status == "withdrawn":  # by a hold elsewhere that shared the request
            return await statement.denied(f"approval {final.id} was withdrawn before a verdict "
                                          f"({final.comment or 'no reason given'})", rows)
        return await statement.denied(f"approval {final.id} was not given within "
                                      f"{_seconds(gate.timeout)}", rows)

    async def _abandon_filing(self, statement: Statement,
                              filing: asyncio.Future[ApprovalRequest],
                              cancel: asyncio.CancelledError) -> None:
        """Cancelled while its request was being filed: wait for the filing, then withdraw
        what it filed (or only record the statement when nothing was)."""
        try:
            request = await filing
        except Exception:
            await _record_abandoned(statement, cancel)
            return
        assert self.approvals is not None
        statement.approval = {"id": request.id, "status": "pending"}
        await self._abandon(statement, _Claim(self.approvals, request), cancel)

    async def _abandon(self, statement: Statement, claim: _Claim,
                       cancel: asyncio.CancelledError) -> None:
        """Nobody waits for the held statement any more: withdraw its approval request (unless
        another hold waits for it, or a verdict came first), then record the statement."""
        why = _cancel_reason(cancel)
        try:
            closed = await claim.release("withdrawn", why)
        except Exception as exc:
            log.error("session %s: approval %s not withdrawn: %s", statement.ctx.session_id,
                      claim.request.id, exc)
        else:
            if closed is not None and statement.approval is not None:
                statement.approval["status"] = closed.stored_status
        await _record_abandoned(statement, cancel)


async def _record_abandoned(statement: Statement, cancel: asyncio.CancelledError) -> None:
    why = _cancel_reason(cancel)
    if why == HOLD_CANCELLED:  # what the client gets too (PostgreSQL: 57014)
        error = f"57014: {CANCELED_BY_USER}"
    else:
        error = f"08006: {why} while the statement awaited approval"
    try:
        await statement.record(error=error, rows=None, duration_ms=None, tag="")
    except Exception as exc:
        log.error("session %s: abandoned statement not recorded: %s",
                  statement.ctx.session_id, exc)


class _Claim:
    """One hold's claim on its approval request (`ApprovalGate.request`), released once."""

    def __init__(self, gate: ApprovalGate, request: ApprovalRequest) -> None:
        self.gate = gate
        self.request = request
        self.held = True

    async def release(self, closing: Literal["withdrawn", "expired"] | None, reason: str,
                      current: ApprovalRequest | None = None) -> ApprovalRequest | None:
        """The request as it then is; None when it was released before."""
        if not self.held:
            return None
        self.held = False
        return await self.gate.release(current or self.request, closing, reason)


def _cancel_reason(cancel: asyncio.CancelledError) -> str:
    """Why the adapter cancelled a hold (`HOLD_CANCELLED`, `HOLD_CLIENT_GONE`, ...)."""
    return str(cancel.args[0]) if cancel.args and cancel.args[0] else "the session ended"


def _seconds(value: float) -> str:
    """`90s`, `5m`: a timeout as the client is told it."""
    if value >= 60 and value % 60 == 0:
        return f"{int(value // 60)}m"
    return f"{value:g}s"
