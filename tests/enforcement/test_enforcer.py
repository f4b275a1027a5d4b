"""The shared enforcement core with a protocol other than PostgreSQL, on real parts: the
engine with a Rego policy set, a SQLite audit trail through the group-commit recorder, and the
approvals store. This is the API the MySQL proxy and the SSH gateway call (docs/architecture.md,
"A new adapter")."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.enforcement.bridge import Enforcer
from adapters.enforcement.hooks import (
    HOLD_CLIENT_GONE,
    SessionContext,
    StatementOutcome,
    StatementVerdict,
)
from adapters.enforcement.records import PROXY_POLICY, Resource
from engine.approvals import ApprovalStore
from engine.client import InProcessDecisionClient
from engine.engine import Engine
from engine.identity import Subject
from engine.policy import load_policy_set
from tests.enforcement.trail import Trail

POLICY = """
package ordinance.gateway

import rego.v1

deny contains "rm -rf is not allowed" if {
	input.command.protocol == "ssh"
	contains(input.command.raw, "rm -rf")
}

deny contains "sftp writes are not allowed" if {
	input.command.sftp.op == "open"
	input.command.sftp.mode == "write"
}

review contains {"msg": "sudo needs a second person", "approvers": ["leads"]} if {
	startswith(input.command.raw, "sudo ")
}

review contains {"msg": "bulk output", "approvers": ["leads"], "rule": "bulk", "rows": 3} if {
	input.command.raw == "cat big.csv"
}
"""

DANA = Subject("dana", ("leads",))


class Gateway(Trail):
    """An enforcer as an adapter holds it, with the trail to read back."""

    def __init__(self, tmp: Path, *, approvals: bool = True) -> None:
        super().__init__(tmp, approvals=approvals)
        (tmp / "policies").mkdir()
        (tmp / "policies" / "gateway.rego").write_text(POLICY)
        self.enforcer = Enforcer(
            InProcessDecisionClient(Engine(load_policy_set(str(tmp / "policies")))),
            resource=Resource("db1", {"env": "prod"}, type="ssh"), recorder=self.recorder,
            approvals=self.gate)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path)
    yield gateway
    gateway.close()


def ctx(session: str = "s1") -> SessionContext:
    return SessionContext(session, "alice", ("dev",), "root", "OpenSSH_9.2", "10.0.0.7", True,
                          "publickey", protocol="ssh")


def test_a_session_records_its_protocol_counts_and_the_input_document(gw: Gateway) -> None:
    async def scenario() -> tuple[StatementVerdict, StatementVerdict]:
        await gw.enforcer.session_started(ctx())
        allowed = await gw.enforcer.decide("uptime", ctx())
        assert allowed.on_complete is not None
        await allowed.on_complete(StatementOutcome("exit 0", None, 0.01,
                                                   details={"exit_status": 0,
                                                            "bytes_out": 42}))
        denied = await gw.enforcer.decide("rm -rf /var/lib/postgresql", ctx())
        await gw.enforcer.session_ended(ctx(), "client disconnected")
        return allowed, denied

    allowed, denied = asyncio.run(scenario())
    assert allowed.effect == "allow" and allowed.single_execution is False
    assert denied.effect == "deny" and denied.message == "rm -rf is not allowed"
    assert denied.decision_id  # the policies were asked
    start, = gw.records("session.start")
    assert start["protocol"] == "ssh" and start["resource"] == {
        "type": "ssh", "name": "db1", "labels": {"env": "prod"}}
    ran, refused = gw.records("statement")
    assert ran["text"] == "uptime" and ran["effect"] == "allow" and ran["tag"] == "exit 0"
    assert ran["exit_status"] == 0 and ran["bytes_out"] == 42 and ran["error"] is None
    assert refused["effect"] == "deny" and refused["error"].startswith("42501: ")
    end, = gw.records("session.end")
    assert end["statements"] == 2 and end["denied"] == 1
    document = gw.enforcer.input_document("ls", ctx(), {"raw": "forged", "protocol": "x"})
    assert document["command"] == {"protocol": "ssh", "raw": "ls"}  # never overridden


def test_outcome_details_cannot_replace_the_records_own_fields(gw: Gateway) -> None:
    async def scenario() -> None:
        verdict = await gw.enforcer.decide("uptime", ctx())
        assert verdict.on_complete is not None
        await verdict.on_complete(StatementOutcome("exit 1", None, 0.0, details={
            "effect": "deny-not", "tag": "forged", "exit_status": 1}))

    asyncio.run(scenario())
    record, = gw.records("statement")
    assert record["effect"] == "allow" and record["tag"] == "exit 1"
    assert record["exit_status"] == 1


def test_extra_command_fields_are_decided(gw: Gateway) -> None:
    async def scenario() -> list[StatementVerdict]:
        return [await gw.enforcer.decide(
            f"sftp open /etc/app.conf {mode}", ctx(),
            {"sftp": {"op": "open", "path": "/etc/app.conf", "mode": mode}})
            for mode in ("read", "write")]

    read, write = asyncio.run(scenario())
    assert read.effect == "allow"
    assert write.effect == "deny" and write.message == "sftp writes are not allowed"
    assert [r["text"] for r in gw.records("statement")] == ["sftp open /etc/app.conf write"]


def test_the_adapters_own_refusal_is_recorded_without_asking_policy(gw: Gateway) -> None:
    verdict = asyncio.run(gw.enforcer.refused("tcpip-forward 0.0.0.0:8080",
                                              "port forwarding is not allowed", ctx()))
    assert verdict.effect == "deny" and verdict.decision_id == ""
    record, = gw.records("statement")
    assert record["reasons"][0]["policy"] == PROXY_POLICY


def _approve_when_filed(store: ApprovalStore) -> threading.Thread:
    def approve() -> None:
        for _ in range(400):
            pending = store.list("pending")
            if pending:
                store.approve(pending[0].id, DANA)
                return
            threading.Event().wait(0.025)

    thread = threading.Thread(target=approve)
    thread.start()
    return thread


def test_a_review_holds_notifies_and_runs_once_per_approval(gw: Gateway) -> None:
    told: list[str] = []

    async def notify(text: str) -> None:
        told.append(text)

    async def scenario() -> tuple[StatementVerdict, StatementVerdict, StatementVerdict]:
        held = await gw.enforcer.decide("sudo systemctl restart app", ctx())
        assert held.effect == "review" and held.hold is not None
        approver = _approve_when_filed(gw.store)
        final = await held.hold(notify)
        await asyncio.to_thread(approver.join)
        again = await gw.enforcer.decide("sudo systemctl restart app", ctx())
        return held, final, again

    held, final, again = asyncio.run(scenario())
    assert held.message == "sudo needs a second person"
    assert final.effect == "allow" and final.single_execution  # approved for one execution
    assert len(told) == 1 and "Approval request" in told[0] and "leads" in told[0]
    assert again.effect == "review" and again.hold is not None  # the approval was used


def test_a_hold_the_client_abandons_withdraws_its_request_and_is_recorded(gw: Gateway) -> None:
    async def scenario() -> None:
        held = await gw.enforcer.decide("sudo reboot", ctx())
        assert held.hold is not None
        told = asyncio.Event()

        async def notify(text: str) -> None:
            told.set()

        task = asyncio.ensure_future(held.hold(notify))
        await asyncio.wait_for(told.wait(), 10)
        task.cancel(HOLD_CLIENT_GONE)
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    request, = gw.store.list()
    assert request.stored_status == "withdrawn"
    record, = gw.records("statement")
    assert record["error"].startswith("08006: the client disconnected")
    assert record["approval"]["status"] == "withdrawn"


def test_without_an_approval_store_a_review_is_denied_and_recorded(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, approvals=False)
    try:
        verdict = asyncio.run(gateway.enforcer.decide("sudo reboot", ctx()))
        assert verdict.effect == "deny" and "no approval store" in verdict.message
        assert gateway.records("statement")[0]["effect"] == "review"
    finally:
        gateway.close()


def test_a_row_budget_meters_the_session_and_holds_past_it(gw: Gateway) -> None:
    async def scenario() -> tuple[list[int], StatementVerdict, list[str]]:
        await gw.enforcer.session_started(ctx())
        verdict = await gw.enforcer.decide("cat big.csv", ctx())
        assert verdict.effect == "allow" and verdict.rows is not None
        meter = verdict.rows()
        admitted = [meter.admit(2), meter.admit(2)]  # 3 rows per session under "bulk"
        told: list[str] = []

        async def notify(text: str) -> None:
            told.append(text)
            store = gw.store
            await asyncio.to_thread(lambda: store.deny(store.list("pending")[0].id, DANA,
                                                       "not today"))

        final = await meter.hold(notify)
        return admitted, final, told

    admitted, final, told = asyncio.run(scenario())
    assert admitted == [2, 1]
    assert final.effect == "deny" and "denied by dana: not today" in final.message
    assert "after 3 rows" in told[0]
    record, = gw.records("statement")
    assert record["rows"] == 3 and record["held_after_rows"] == 3


def test_the_trail_replays_a_command_as_its_adapter_decided_it(gw: Gateway) -> None:
    from engine.replay.records import Sessions, statement_item

    async def scenario() -> dict[str, Any]:
        await gw.enforcer.session_started(ctx())
        fields = {"sftp": {"op": "open", "path": "/etc/app.conf", "mode": "write"}}
        await gw.enforcer.decide("sftp open /etc/app.conf write", ctx(), fields)
        return gw.enforcer.input_document("sftp open /etc/app.conf write", ctx(), fields)

    decided = asyncio.run(scenario())
    gw.recorder.close()
    record, = gw.audit.iter_records(kind="statement")
    item = statement_item(record, Sessions(gw.audit))
    assert item.skip is None
    assert item.input is not None and item.input["command"] == decided["command"]
    assert item.input["resource"] == decided["resource"]
