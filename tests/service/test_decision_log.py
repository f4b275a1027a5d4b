"""Decision ids, the decision log sinks, and fail-closed behaviour when the log cannot write."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from engine.api import decision_pb2, decision_pb2_grpc
from engine.service.decision_log import DecisionLog, JsonLinesSink, new_decision_id
from engine.service.server import Service
from tests.service.conftest import wait_for
from tests.service.test_http_api import call, post

PAN = "5500 0000 0000 0004"


def test_decision_ids_are_unique_and_sorted() -> None:
    ids = [new_decision_id() for _ in range(20_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 26 for i in ids)


def _decide(port: int | None, raw: str = "ls") -> decision_pb2.Decision:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = decision_pb2.DecideRequest()
        request.input.update({"command": {"protocol": "shell", "raw": raw}})
        return decision_pb2_grpc.DecisionServiceStub(channel).Decide(request, timeout=10
                                                                      ).decision


@pytest.mark.parametrize("mode", ["durable", "async"])
def test_broken_log_fails_closed(policy_dir: Path, service_factory: Callable[..., Service],
                                 mode: str) -> None:
    svc = service_factory(policy_dir, decision_log_path=Path("/dev/full"),
                          decision_log_mode=mode)
    assert svc.http_port and svc.decision_log is not None
    first = _decide(svc.grpc_port)  # the write fails with ENOSPC
    if mode == "durable":  # before the answer: never an allow without its record
        assert first.effect == decision_pb2.EFFECT_DENY
    wait_for(lambda: svc.decision_log.broken, what="decision log marked broken")  # type: ignore[union-attr]
    decision = _decide(svc.grpc_port)
    assert decision.effect == decision_pb2.EFFECT_DENY
    assert "decision log unavailable" in decision.reasons[-1].message
    status, body = post(svc.http_port, "/v1/data/ordinance/test/deny", {"input": {}})
    assert status == 500 and body["code"] == "internal_error"
    status, body, _ = call(svc.http_port, "GET", "/health?plugins")
    assert status == 500 and "decision log" in body["error"]
    assert call(svc.http_port, "GET", "/health?bundles")[0] == 200


class _GatedSink:
    """A real sink whose writes wait for a gate: lets the queue fill deterministically."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.records: list[dict[str, Any]] = []

    @staticmethod
    def prepare(record: dict[str, Any]) -> dict[str, Any]:
        return record

    def write(self, records: list[dict[str, Any]]) -> None:
        self.gate.wait(30)
        self.records.extend(records)

    def close(self) -> None:
        self.gate.set()


def test_full_queue_refuses_and_recovers() -> None:
    sink = _GatedSink()
    log = DecisionLog(sink, max_queue=2)
    base = {"timestamp": 0.0, "input": {}}
    assert log.submit({**base, "decision_id": "1"})
    wait_for(lambda: log.backlog == 0, what="writer took the first record")
    assert log.submit({**base, "decision_id": "2"})
    assert log.submit({**base, "decision_id": "3"})
    assert not log.submit({**base, "decision_id": "4"})  # full: the caller must deny
    sink.gate.set()
    log.close()
    assert [r["decision_id"] for r in sink.records] == ["1", "2", "3"]


def test_jsonl_sink_appends_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    log = DecisionLog(JsonLinesSink(path))
    for i in range(100):
        assert log.submit({"decision_id": str(i), "timestamp": 0.0,
                           "input": {"command": {"raw": f"echo {PAN}"}}})
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 100 and "0004" in lines[0] and PAN not in path.read_text()


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_jsonl_sink_syncs_each_write_only_with_fsync_durability(
        tmp_path: Path, durability: Any) -> None:
    """fsync: the descriptor is O_DSYNC, so `write_text` returns only once the data is durable
    (a write + fdatasync in one call); os: plain writes, synced later by DelayedSync."""
    import fcntl
    import os

    sink = JsonLinesSink(tmp_path / "d.jsonl", durability=durability)
    try:
        flags = fcntl.fcntl(sink._fd, fcntl.F_GETFL)
        assert bool(flags & os.O_DSYNC) == (durability == "fsync")
        assert flags & os.O_APPEND
        sink.write_text('{"decision_id":"1"}\n')
    finally:
        sink.close()
    assert (tmp_path / "d.jsonl").read_text() == '{"decision_id":"1"}\n'


def test_audit_store_sink(policy_dir: Path, tmp_path: Path,
                          service_factory: Callable[..., Service]) -> None:
    from engine.audit import open_audit_log

    url = f"sqlite:///{tmp_path / 'audit.db'}"  # tmp_path is absolute: sqlite:////tmp/...
    svc = service_factory(policy_dir, audit_url=url)
    decision = _decide(svc.grpc_port, f"echo {PAN}")
    svc.stop(grace=0.5)  # drains the queue
    with open_audit_log(url) as audit:
        records = audit.tail(10)
    assert [r.decision_id for r in records] == [decision.decision_id]
    assert records[0].kind == "decision"
    assert records[0].payload["result"]["effect"] == "allow"
    assert PAN not in str(records[0].payload)


def test_dev_null_log_is_not_a_failure(policy_dir: Path,
                                       service_factory: Callable[..., Service]) -> None:
    svc = service_factory(policy_dir, decision_log_path=Path("/dev/null"))
    for _ in range(3):
        assert _decide(svc.grpc_port, "bad").effect == decision_pb2.EFFECT_DENY
    assert svc.decision_log is not None and svc.runtime is not None
    registry = svc.runtime.metrics.registry
    wait_for(lambda: registry.get_sample_value("ordinance_decision_log_records_total",
                                               {"outcome": "written"}) == 3,
             what="3 records written")
    assert svc.decision_log.broken is None
    assert _decide(svc.grpc_port, "ls").effect == decision_pb2.EFFECT_ALLOW


def test_unwritable_audit_store_fails_closed_on_every_transport(
        policy_dir: Path, tmp_path: Path, service_factory: Callable[..., Service]) -> None:
    """The trail refuses writes (its table is gone): gRPC Decide denies, the Data API answers
    500, Envoy's Check denies; once the trail is back, decisions are allowed and recorded."""
    import sqlite3

    from adapters.envoy.service import EnvoyOptions
    from engine.audit import open_audit_log
    from tests.envoy.envoy_requests import EnvoyGrpc

    db = tmp_path / "audit.db"
    url = f"sqlite:///{db}"
    svc = service_factory(policy_dir, audit_url=url, extensions=(EnvoyOptions(query=None),))
    envoy = EnvoyGrpc(f"127.0.0.1:{svc.grpc_port}")
    try:
        assert _decide(svc.grpc_port).effect == decision_pb2.EFFECT_ALLOW
        assert envoy.check("GET", "/").allowed
        with sqlite3.connect(db) as raw:
            raw.execute("ALTER TABLE ordinance_audit RENAME TO moved")
        decision = _decide(svc.grpc_port)
        assert decision.effect == decision_pb2.EFFECT_DENY
        assert "decision log unavailable" in decision.reasons[-1].message
        status, body = post(svc.http_port, "/v1/data/ordinance/test/greeting",
                            {"input": {"subject": {"id": "a"}}})
        assert status == 500 and body["code"] == "internal_error", body
        answer = envoy.check("GET", "/")
        assert not answer.allowed and answer.status >= 500
        assert call(svc.http_port, "GET", "/health?plugins")[0] == 500
        with sqlite3.connect(db) as raw:
            raw.execute("ALTER TABLE moved RENAME TO ordinance_audit")
        recovered = _decide(svc.grpc_port)
        assert recovered.effect == decision_pb2.EFFECT_ALLOW
        assert call(svc.http_port, "GET", "/health?plugins")[0] == 200
    finally:
        envoy.channel.close()
    with open_audit_log(url) as audit:
        ids = [r.decision_id for r in audit.iter_records() if r.kind == "decision"]
        assert recovered.decision_id in ids and decision.decision_id not in ids
        assert audit.verify().ok
