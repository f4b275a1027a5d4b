"""Approvals on both backends: separation of duties, groups, expiry, single use, windows,
waiting across processes, and an audit event for every step."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.approvals import (
    ApprovalExpiredError,
    ApprovalNotFound,
    ApprovalRequest,
    ApprovalStore,
    ApprovalWithdrawnError,
    InvalidApprovalRequest,
    NotAnApproverError,
    SelfApprovalError,
    VerdictFinalError,
    command_sha256,
    open_approval_store,
)
from engine.audit import AuditLog, open_audit_log
from engine.identity import Subject

REPO = Path(__file__).resolve().parents[2]
ALICE = Subject(id="alice@example.com", groups=("dev", "dba"))
DANA = Subject(id="dana@example.com", groups=("dba-leads",))
EVE = Subject(id="eve@example.com", groups=("dev",))
RESOURCE = {"type": "postgres", "name": "payments", "labels": {"env": "prod"}}
DDL = "DROP TABLE cards"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def audit(store_url: str) -> Iterator[AuditLog]:
    with open_audit_log(store_url) as log:
        yield log


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(store_url: str, audit: AuditLog, clock: Clock) -> Iterator[ApprovalStore]:
    with open_approval_store(store_url, audit=audit, clock=clock,
                             default_approver_groups=("security",)) as approvals:
        yield approvals


def ask(store: ApprovalStore, command: str = DDL, window: timedelta | None = None,
        groups: tuple[str, ...] = ("dba-leads",),
        ttl: timedelta = timedelta(hours=1)) -> ApprovalRequest:
    return store.request(ALICE, RESOURCE, command, ["DDL on a PCI database needs review"],
                         list(groups), ttl, window, session_id="sess-1")


def kinds(audit: AuditLog) -> list[str]:
    return [r.kind for r in audit.iter_records()]


def test_request_is_stored_pending_with_hash_and_scrubbed_preview(store: ApprovalStore,
                                                                  audit: AuditLog) -> None:
    command = "UPDATE cards SET pan = '4111 1111 1111 1111' WHERE id = 7"
    req = ask(store, command)
    got = store.get(req.id)
    assert got == req and got.stored_status == "pending"
    assert got.command_sha256 == command_sha256(command)
    assert "4111 1111 1111 1111" not in got.command_preview and "1111" in got.command_preview
    assert [r.id for r in store.list("pending")] == [req.id]
    [event] = list(audit.iter_records(kind="approval.requested"))
    assert event.payload["request_id"] == req.id and event.subject == ALICE.id
    assert event.session_id == "sess-1" and "4111 1111" not in str(event.payload)
    with pytest.raises(ApprovalNotFound):
        store.get("nope")


def test_self_approval_is_refused(store: ApprovalStore, audit: AuditLog) -> None:
    req = ask(store)
    alice_as_lead = Subject(id="Alice@Example.com", groups=("dba-leads",))
    with pytest.raises(SelfApprovalError, match="separation of duties"):
        store.approve(req.id, alice_as_lead)
    with pytest.raises(SelfApprovalError):
        store.deny(req.id, alice_as_lead)
    assert store.get(req.id).stored_status == "pending"
    refused = list(audit.iter_records(kind="approval.refused"))
    assert len(refused) == 2 and refused[0].payload["refusal"] == "SelfApprovalError"


def test_wrong_group_is_refused(store: ApprovalStore, audit: AuditLog) -> None:
    req = ask(store)
    with pytest.raises(NotAnApproverError, match="dba-leads"):
        store.approve(req.id, EVE)
    with pytest.raises(NotAnApproverError, match="no authenticated identity"):
        store.approve(req.id, Subject(id="", groups=("dba-leads",)))
    assert store.get(req.id).stored_status == "pending"
    assert kinds(audit).count("approval.refused") == 2


def test_default_group_when_rule_names_none(store: ApprovalStore, store_url: str,
                                            audit: AuditLog) -> None:
    req = ask(store, groups=())
    assert req.approver_groups == ("security",)
    with pytest.raises(NotAnApproverError):
        store.approve(req.id, DANA)
    assert store.approve(req.id, Subject(id="sec@example.com", groups=("security",)))
    with open_approval_store(store_url, audit=audit) as bare, \
            pytest.raises(InvalidApprovalRequest, match="no approver group"):
        ask(bare, groups=())


def test_verdict_is_final(store: ApprovalStore, audit: AuditLog) -> None:
    req = ask(store)
    approved = store.approve(req.id, DANA, "change ticket CHG-42")
    assert (approved.stored_status, approved.decided_by) == ("approved", DANA.id)
    assert store.get(req.id) == approved
    other_lead = Subject(id="lee@example.com", groups=("dba-leads",))
    with pytest.raises(VerdictFinalError, match="already approved"):
        store.deny(req.id, other_lead)
    with pytest.raises(VerdictFinalError):
        store.approve(req.id, other_lead)
    assert store.get(req.id).stored_status == "approved"
    denied = ask(store, "TRUNCATE cards")
    store.deny(denied.id, DANA, "no ticket")
    assert store.consume(denied.id) is False
    with pytest.raises(VerdictFinalError):
        store.approve(denied.id, DANA)
    assert audit.verify().ok


def test_expired_request_cannot_be_approved_or_consumed(store: ApprovalStore,
                                                        clock: Clock) -> None:
    late = ask(store, ttl=timedelta(minutes=10))
    clock.advance(minutes=11)
    assert store.get(late.id).status_at(clock()) == "expired"
    assert [r.id for r in store.list("expired")] == [late.id]
    assert store.list("pending") == []
    with pytest.raises(ApprovalExpiredError):
        store.approve(late.id, DANA)
    unused = ask(store, "ALTER TABLE cards ADD c int", ttl=timedelta(minutes=10))
    store.approve(unused.id, DANA)
    clock.advance(minutes=10)
    assert store.consume(unused.id) is False
    assert store.get(unused.id).status_at(clock()) == "expired"


def test_single_use(store: ApprovalStore, audit: AuditLog) -> None:
    req = ask(store)
    assert store.consume(req.id) is False  # not approved yet
    store.approve(req.id, DANA)
    assert store.consume(req.id) is True
    assert store.consume(req.id) is False
    assert store.get(req.id).stored_status == "consumed"
    by_hash = ask(store)
    store.approve(by_hash.id, DANA)
    key = (ALICE, command_sha256(DDL))
    assert store.consume((EVE, command_sha256(DDL))) is False  # someone else's approval
    assert store.consume((ALICE, command_sha256("DROP TABLE other"))) is False
    assert store.consume(key) is True
    assert store.consume(("ALICE@example.com", command_sha256(DDL))) is False
    assert kinds(audit).count("approval.consumed") == 2
    assert kinds(audit).count("approval.not_consumed") == 5


def test_window_allows_repeats_until_it_closes(store: ApprovalStore, clock: Clock) -> None:
    req = ask(store, "SELECT pan FROM cards", window=timedelta(minutes=30),
              ttl=timedelta(minutes=5))
    store.approve(req.id, DANA)
    key = (ALICE.id, command_sha256("SELECT pan FROM cards"))
    assert [store.consume(key) for _ in range(3)] == [True, True, True]
    clock.advance(minutes=20)  # past the request's ttl, inside the window
    assert store.consume(key) is True
    got = store.get(req.id)
    assert (got.stored_status, got.uses) == ("approved", 4)
    clock.advance(minutes=11)
    assert store.consume(key) is False
    assert store.get(req.id).status_at(clock()) == "expired"


def test_one_single_use_approval_serves_one_of_many_racers(store_url: str, audit: AuditLog,
                                                           store: ApprovalStore) -> None:
    req = ask(store)
    store.approve(req.id, DANA)
    stores = [open_approval_store(store_url, audit=audit) for _ in range(4)]
    results: list[bool] = []
    barrier = threading.Barrier(len(stores))

    def race(s: ApprovalStore) -> None:
        barrier.wait()
        results.append(s.consume((ALICE, command_sha256(DDL))))

    threads = [threading.Thread(target=race, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert sorted(results) == [False, False, False, True]


def test_invalid_requests(store: ApprovalStore) -> None:
    with pytest.raises(InvalidApprovalRequest, match="ttl"):
        ask(store, ttl=timedelta(0))
    with pytest.raises(InvalidApprovalRequest, match="ttl"):
        ask(store, ttl=timedelta(days=31))
    with pytest.raises(InvalidApprovalRequest, match="window"):
        ask(store, window=timedelta(seconds=-1))
    with pytest.raises(InvalidApprovalRequest, match="empty"):
        ask(store, command="")
    with pytest.raises(InvalidApprovalRequest, match="identity"):
        store.request(Subject(id=" "), RESOURCE, DDL, [], ["x"], timedelta(hours=1))


def test_wait_times_out_pending_and_wakes_in_process(store_url: str, audit: AuditLog) -> None:
    with open_approval_store(store_url, audit=audit) as store:
        req = ask(store)
        start = time.monotonic()
        assert store.wait(req.id, 0.2) == "pending"
        assert 0.19 < time.monotonic() - start < 1.0
        timer = threading.Timer(0.2, lambda: store.deny(req.id, DANA))
        start = time.monotonic()
        timer.start()
        assert store.wait(req.id, 10) == "denied"
        timer.join()
        assert time.monotonic() - start < 0.45  # woken, not polled


def test_wait_is_woken_by_an_approval_from_another_process(store_url: str,
                                                           audit: AuditLog) -> None:
    with open_approval_store(store_url, audit=audit) as store:
        req = ask(store)
        approver = subprocess.Popen(
            [sys.executable, "-m", "tests.audit.approver", store_url, req.id, DANA.id,
             "dba-leads", "0.3"], cwd=REPO, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        start = time.monotonic()
        status = store.wait(req.id, 15)
        elapsed = time.monotonic() - start
        out, err = approver.communicate(timeout=15)
        assert approver.returncode == 0, err
        assert status == "approved" and out.strip() == "approved"
        assert elapsed < 3.0
        assert store.consume(req.id) is True
    assert kinds(audit)[-2:] == ["approval.approved", "approval.consumed"]
    assert audit.verify().ok


def test_wait_returns_expired_at_expiry(store_url: str, audit: AuditLog) -> None:
    with open_approval_store(store_url, audit=audit) as real_clock:
        req = ask(real_clock, ttl=timedelta(milliseconds=300))
        start = time.monotonic()
        assert real_clock.wait(req.id, 10) == "expired"
        assert time.monotonic() - start < 1.5


def test_a_withdrawn_request_cannot_be_decided_and_is_listed(store: ApprovalStore,
                                                            audit: AuditLog) -> None:
    req = ask(store)
    gone = store.withdraw(req.id, ALICE.id, "the client cancelled the statement")
    assert (gone.stored_status, gone.decided_by) == ("withdrawn", ALICE.id)
    assert store.get(req.id) == gone and gone.status_at(datetime.now(UTC)) == "withdrawn"
    assert [r.id for r in store.list("withdrawn")] == [req.id] and store.list("pending") == []
    with pytest.raises(ApprovalWithdrawnError, match=r"withdrawn .*the client cancelled the "
                                                     r"statement.*nobody waits"):
        store.approve(req.id, DANA)
    with pytest.raises(VerdictFinalError):  # the same class family as any final state
        store.deny(req.id, DANA)
    assert store.consume(req.id) is False
    assert store.consume((ALICE, command_sha256(DDL))) is False
    assert store.withdraw(req.id, ALICE.id, "again") == gone  # already closed: unchanged
    [event] = list(audit.iter_records(kind="approval.withdrawn"))
    assert (event.subject, event.session_id) == (ALICE.id, "sess-1")
    assert event.payload["reason"] == "the client cancelled the statement"
    refused = list(audit.iter_records(kind="approval.refused"))
    assert [r.payload["refusal"] for r in refused] == ["ApprovalWithdrawnError"] * 2
    assert audit.verify().ok


def test_only_pending_requests_are_closed(store: ApprovalStore, audit: AuditLog) -> None:
    req = ask(store)
    approved = store.approve(req.id, DANA)
    assert store.withdraw(req.id, ALICE.id, "late") == approved
    assert store.expire(req.id, "late") == approved
    assert kinds(audit).count("approval.withdrawn") == kinds(audit).count(
        "approval.expired") == 0


def test_expire_closes_a_pending_request(store: ApprovalStore, audit: AuditLog) -> None:
    req = ask(store)
    closed = store.expire(req.id, "not approved within 5m")
    assert closed.stored_status == "expired" and store.get(req.id).stored_status == "expired"
    assert [r.id for r in store.list("expired")] == [req.id]
    with pytest.raises(ApprovalExpiredError, match="expired unanswered"):
        store.approve(req.id, DANA)
    [event] = list(audit.iter_records(kind="approval.expired"))
    assert event.payload["reason"] == "not approved within 5m"


def test_withdrawing_wakes_waiters(store_url: str, audit: AuditLog) -> None:
    with open_approval_store(store_url, audit=audit) as store:
        req = ask(store)
        timer = threading.Timer(0.2, lambda: store.withdraw(req.id, ALICE.id, "gone"))
        start = time.monotonic()
        timer.start()
        assert store.wait(req.id, 10) == "withdrawn"
        timer.join()
        assert time.monotonic() - start < 0.45
