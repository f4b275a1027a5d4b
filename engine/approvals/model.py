"""Approval requests: the record, its statuses, the rules of a verdict and the errors.

Owns what a just-in-time approval is (PCI DSS 12.3 / 10.2.2): who asked to run which command
(kept as its SHA-256 and a card-scrubbed preview) on which resource, why review was required,
which groups may decide, until when, and what became of it. The rules that decide whether an
identity may give a verdict live here as pure functions, so both store backends apply the same
ones. It must not touch storage or the audit trail.

Lifetime: a request must be decided and, without a window, used once, before `expires_at`
(created + ttl). With a `window`, an approval lets the requester run any command with the same
hash until `decided_at + window`. A pending request nobody waits for any more (the statement
was cancelled, its client left) is `withdrawn`; one whose holder stopped waiting at its timeout
may be stored `expired`. Neither can be decided after that.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

Status = Literal["pending", "approved", "denied", "expired", "consumed", "withdrawn"]
STATUSES: tuple[Status, ...] = ("pending", "approved", "denied", "expired", "consumed",
                                "withdrawn")

COMMAND_PREVIEW_CHARS = 2000
MAX_TTL = timedelta(days=30)


class Identity(Protocol):
    """An authenticated principal (e.g. `engine.identity.Subject`)."""

    @property
    def id(self) -> str: ...

    @property
    def groups(self) -> Sequence[str]: ...


class ApprovalError(Exception):
    """Base of every refusal the approvals store raises; the message says why."""


class ApprovalNotFound(ApprovalError, LookupError):
    pass


class InvalidApprovalRequest(ApprovalError, ValueError):
    pass


class SelfApprovalError(ApprovalError):
    """Separation of duties: nobody decides their own request."""


class NotAnApproverError(ApprovalError):
    """The identity is in none of the request's approver groups."""


class ApprovalExpiredError(ApprovalError):
    pass


class VerdictFinalError(ApprovalError):
    """The request was already approved or denied; a verdict is never changed."""


class ApprovalWithdrawnError(VerdictFinalError):
    """The request was withdrawn: the statement it held is gone, nobody waits for a verdict."""


def command_sha256(command: str) -> str:
    return hashlib.sha256(command.encode("utf-8")).hexdigest()


def same_identity(a: str, b: str) -> bool:
    """Identity ids compare case-insensitively (e-mail style ids differ only in case)."""
    return a.strip().casefold() == b.strip().casefold()


@dataclass(frozen=True)
class ApprovalRequest:
    id: str
    requester_id: str
    requester_groups: tuple[str, ...]
    resource: dict[str, Any]
    command_sha256: str
    command_preview: str
    reasons: tuple[str, ...]
    approver_groups: tuple[str, ...]
    stored_status: Status
    created_at: datetime
    expires_at: datetime
    window: timedelta | None
    session_id: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    comment: str | None = None
    uses: int = 0
    last_used_at: datetime | None = None

    @property
    def usable_until(self) -> datetime:
        if self.window is not None and self.decided_at is not None:
            return self.decided_at + self.window
        return self.expires_at

    def status_at(self, now: datetime) -> Status:
        """The status as of `now`: pending and unused approvals turn `expired` with time."""
        if self.stored_status == "pending" and now >= self.expires_at:
            return "expired"
        if self.stored_status == "approved" and now >= self.usable_until:
            return "expired"
        return self.stored_status

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        def iso(ts: datetime | None) -> str | None:
            return ts.isoformat() if ts else None

        out = {
            "id": self.id, "requester": self.requester_id,
            "requester_groups": list(self.requester_groups), "resource": self.resource,
            "command_sha256": self.command_sha256, "command": self.command_preview,
            "reasons": list(self.reasons), "approver_groups": list(self.approver_groups),
            "status": self.status_at(now) if now else self.stored_status,
            "created_at": iso(self.created_at), "expires_at": iso(self.expires_at),
            "window_seconds": self.window.total_seconds() if self.window else None,
            "decided_by": self.decided_by, "decided_at": iso(self.decided_at),
            "comment": self.comment, "uses": self.uses, "last_used_at": iso(self.last_used_at),
            "session_id": self.session_id,
        }
        return out


def check_verdict_allowed(req: ApprovalRequest, approver: Identity, now: datetime) -> None:
    """Raise the precise `ApprovalError` if `approver` may not decide `req` now."""
    if req.stored_status == "withdrawn":
        when = req.decided_at.isoformat() if req.decided_at else "?"
        raise ApprovalWithdrawnError(
            f"request {req.id} was withdrawn at {when} ({req.comment or 'no reason given'}): "
            f"nobody waits for a verdict any more; running the statement again files a new "
            f"request")
    if req.stored_status == "expired":
        raise ApprovalExpiredError(f"request {req.id} expired unanswered (its holder stopped "
                                   f"waiting); running the statement again files a new request")
    if req.stored_status != "pending":
        raise VerdictFinalError(
            f"request {req.id} is already {req.stored_status} by {req.decided_by}; "
            f"a verdict is final")
    if now >= req.expires_at:
        raise ApprovalExpiredError(f"request {req.id} expired at {req.expires_at.isoformat()}")
    approver_id = getattr(approver, "id", None)
    if not isinstance(approver_id, str) or not approver_id.strip():
        raise NotAnApproverError("the approver has no authenticated identity")
    if same_identity(approver_id, req.requester_id):
        raise SelfApprovalError(
            f"{approver_id} requested {req.id} and cannot decide it (separation of duties)")
    groups = set(getattr(approver, "groups", ()) or ())
    if not groups & set(req.approver_groups):
        raise NotAnApproverError(
            f"{approver_id} is not in an approver group of request {req.id} "
            f"(needs one of: {', '.join(req.approver_groups)})")
