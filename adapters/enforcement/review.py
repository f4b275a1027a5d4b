"""Review decisions on statements and commands -> just-in-time approvals that hold them.

Owns an enforcement point's use of an `ApprovalStore`: finding an approval that already covers
a statement (the same requester, the exact same text; single use, or any number of times
within the rule's `window`), filing a request (or finding the pending one for the same
text), waiting for the verdict without blocking the event loop (each wait runs in a thread of
its own pool, in chunks so an abandoned wait ends soon), using the approval, and closing a
request nobody waits for any more: each hold claims its request, and when the last hold of
this process lets go of a still-pending one it is withdrawn (the statement was cancelled, the
client left) or stored expired (the hold timed out). The store enforces separation of duties,
approver groups, expiry and single use; this module must not decide any of that. Durations
(`parse_duration`, `parse_window`) are read here too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Literal, TypeVar

from engine.approvals import ApprovalRequest, ApprovalStore, command_sha256
from engine.identity import Subject

log = logging.getLogger("ordinance.adapters.enforcement.review")

T = TypeVar("T")
WAIT_CHUNK_S = 10.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> timedelta:
    """`90s`, `5m`, `1h`, `1d`, `250ms`, or plain seconds."""
    match = _DURATION.match(text or "")
    if match is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 30s, 5m, 1h)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_window(text: str | None) -> timedelta | None:
    """A review rule's `window`; None when absent or unreadable (single use, the strict
    reading)."""
    if not text:
        return None
    try:
        window = parse_duration(text)
    except ValueError:
        return None
    return window if window > timedelta(0) else None


def _same(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


class ApprovalGate:
    """Approvals for held statements. `timeout` bounds every hold (seconds)."""

    def __init__(self, store: ApprovalStore, *, timeout: float,
                 approve_hint: str = "ordinance approvals approve {id} --as APPROVER "
                                     "--users USERS_FILE --audit AUDIT_URL",
                 max_waiters: int = 64) -> None:
        self.store = store
        self.timeout = timeout
        self.approve_hint = approve_hint
        self._pool = ThreadPoolExecutor(max_workers=max_waiters,
                                        thread_name_prefix="approval-wait")
        self._claims: Counter[str] = Counter()  # request id -> holds of this process on it

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def use_standing(self, requester: Subject, command: str) -> ApprovalRequest | None:
        """An approved request of `requester` for exactly `command`, used now; else None."""
        digest = command_sha256(command)
        approved = [r for r in await self._call(self.store.list, "approved")
                    if r.command_sha256 == digest and _same(r.requester_id, requester.id)]
        if not approved:
            return None
        if not await self._call(self.store.consume, (requester, digest)):
            return None
        approved.sort(key=lambda r: (r.decided_at is None, r.decided_at))
        return approved[0]

    async def request(self, requester: Subject, resource: dict[str, Any], command: str,
                      reasons: Sequence[str], approvers: Sequence[str],
                      window: timedelta | None, session_id: str) -> ApprovalRequest:
        """The pending request of `requester` for `command`, filing one if there is none;
        claimed for the caller, who must `release` it. Cancelling the call does not stop a
        filing under way (it runs in a thread): shield it and release what it returns."""
        digest = command_sha256(command)
        for pending in await self._call(self.store.list, "pending"):
            if pending.command_sha256 == digest and _same(pending.requester_id, requester.id):
                self._claims[pending.id] += 1
                return pending

        def file() -> ApprovalRequest:
            return self.store.request(requester, resource, command, list(reasons),
                                      list(approvers), timedelta(seconds=self.timeout),
                                      window, session_id=session_id)

        filed = await self._call(file)
        self._claims[filed.id] += 1
        return filed

    async def wait(self, request_id: str) -> ApprovalRequest:
        """The request once decided, expired, or `timeout` seconds from now have passed."""
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            status = await self._call(self.store.wait, request_id,
                                      min(remaining, WAIT_CHUNK_S))
            if status != "pending":
                break
        return await self._call(self.store.get, request_id)

    async def release(self, request: ApprovalRequest,
                      closing: Literal["withdrawn", "expired"] | None = None,
                      reason: str = "") -> ApprovalRequest:
        """End one hold's claim on `request` (call it once per `request()`). When no other hold
        of this process waits for it and it is still pending, close it as `closing` (store
        `withdraw` / `expire`) with `reason`. Returns the request as it then is."""
        self._claims[request.id] -= 1
        if self._claims[request.id] > 0:
            return request
        del self._claims[request.id]
        if closing is None or request.stored_status != "pending":
            return request
        if closing == "withdrawn":
            return await self._call(self.store.withdraw, request.id, request.requester_id,
                                    reason)
        return await self._call(self.store.expire, request.id, reason)

    async def consume(self, requester: Subject, command: str) -> bool:
        return await self._call(self.store.consume, (requester, command_sha256(command)))

    def hint(self, request_id: str) -> str:
        return self.approve_hint.format(id=request_id)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
