"""The approval gate on a real SQLite store: holds of one process share a request, and the last
to let go of a pending one closes it (withdrawn or expired)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.enforcement.review import ApprovalGate
from engine.approvals import ApprovalRequest, ApprovalStore, open_approval_store
from engine.audit import AuditLog, open_audit_log
from engine.identity import Subject

ALICE = Subject(id="alice", groups=("dev",))
DANA = Subject(id="dana", groups=("dba-leads",))
RESOURCE = {"type": "postgres", "name": "payments", "labels": {}}


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'audit.db'}"


@pytest.fixture
def audit(url: str) -> Iterator[AuditLog]:
    with open_audit_log(url) as log:
        yield log


@pytest.fixture
def store(url: str, audit: AuditLog) -> Iterator[ApprovalStore]:
    with open_approval_store(url, audit=audit) as approvals:
        yield approvals


def ask(gate: ApprovalGate, sql: str = "SELECT * FROM cards") -> Any:
    return gate.request(ALICE, RESOURCE, sql, ["bulk read"], ["dba-leads"], None, "s1")


def test_the_last_hold_to_let_go_closes_the_request(store: ApprovalStore,
                                                    audit: AuditLog) -> None:
    gate = ApprovalGate(store, timeout=60)

    async def scenario() -> list[ApprovalRequest]:
        first = await ask(gate)
        second = await ask(gate)  # the same text of the same user: the same request
        assert second.id == first.id
        kept = await gate.release(first, "withdrawn", "the client cancelled the statement")
        closed = await gate.release(second, "withdrawn", "the client disconnected")
        other = await ask(gate, "SELECT * FROM holders")
        timed_out = await gate.release(other, "expired", "not approved within 1m")
        return [kept, closed, timed_out]

    try:
        kept, closed, timed_out = asyncio.run(scenario())
    finally:
        gate.close()
    assert kept.stored_status == "pending"
    assert (closed.stored_status, closed.comment) == ("withdrawn", "the client disconnected")
    assert timed_out.stored_status == "expired"
    assert [r.kind for r in audit.iter_records()] == [
        "approval.requested", "approval.withdrawn", "approval.requested", "approval.expired"]


def test_release_of_a_decided_request_changes_nothing(store: ApprovalStore,
                                                      audit: AuditLog) -> None:
    gate = ApprovalGate(store, timeout=60)

    async def scenario() -> ApprovalRequest:
        request = await ask(gate)
        return await gate.release(store.approve(request.id, DANA), "expired", "late")

    try:
        assert asyncio.run(scenario()).stored_status == "approved"
    finally:
        gate.close()
    assert "approval.expired" not in [r.kind for r in audit.iter_records()]
