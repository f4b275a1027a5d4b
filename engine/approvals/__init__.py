"""Just-in-time approvals (PCI DSS 12.3, 10.2.2): review requests, verdicts, single use.

`open_approval_store(url, audit=log)` on `sqlite:///…` or `postgresql://…` (it may be the audit
trail's own database) returns an `ApprovalStore`. Every request, verdict, refusal, use and
closing of an unanswered request (withdrawn, expired) is an audit event. This package owns
approvals; it must not evaluate policy (a Decision with effect `review` is what leads an
adapter to file a request).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from engine.approvals.model import (
    STATUSES,
    ApprovalError,
    ApprovalExpiredError,
    ApprovalNotFound,
    ApprovalRequest,
    ApprovalWithdrawnError,
    Identity,
    InvalidApprovalRequest,
    NotAnApproverError,
    SelfApprovalError,
    Status,
    VerdictFinalError,
    command_sha256,
)
from engine.approvals.store import (
    ApprovalStore,
    ApprovalStoreError,
    PostgresApprovalStore,
    SqliteApprovalStore,
)
from engine.audit import AuditLog
from engine.audit.stores import StoreUnavailable, parse_store_url

__all__ = [
    "STATUSES",
    "ApprovalError",
    "ApprovalExpiredError",
    "ApprovalNotFound",
    "ApprovalRequest",
    "ApprovalStore",
    "ApprovalStoreError",
    "ApprovalWithdrawnError",
    "Identity",
    "InvalidApprovalRequest",
    "NotAnApproverError",
    "SelfApprovalError",
    "Status",
    "VerdictFinalError",
    "command_sha256",
    "open_approval_store",
]


def open_approval_store(url: str, *, audit: AuditLog,
                        default_approver_groups: Sequence[str] = (),
                        create: bool = True,
                        clock: Callable[[], datetime] | None = None) -> ApprovalStore:
    """The approvals store at `url`; `default_approver_groups` decide requests whose rule named
    no approvers; `clock` (aware UTC datetimes) replaces the system clock, e.g. in tests.
    Raises `ApprovalStoreError` for a bad URL or an unusable database."""
    try:
        store = parse_store_url(url)
    except StoreUnavailable as exc:
        raise ApprovalStoreError(str(exc)) from exc
    cls = SqliteApprovalStore if store.dialect == "sqlite" else PostgresApprovalStore
    return cls(store, audit=audit, default_approver_groups=default_approver_groups,
               create=create, clock=clock)
