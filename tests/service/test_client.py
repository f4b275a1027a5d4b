"""DecisionClient: the in-process and gRPC implementations are interchangeable and fail closed."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from engine.client import DecisionClient, GrpcDecisionClient, InProcessDecisionClient
from engine.decision import Decision
from engine.service.server import Service

CORPUS: list[dict[str, Any]] = [
    {"subject": {"id": "alice"}, "command": {"protocol": "shell", "raw": "ls -l"}},
    {"subject": {"id": "alice"}, "command": {"protocol": "shell", "raw": "bad"}},
    {"subject": {"id": "bob"}, "command": {"protocol": "shell", "raw": "risky"}},
    {"subject": {"id": "bob"}, "command": {"protocol": "postgres",
                                           "raw": "SELECT pan FROM cards LIMIT 10"}},
    {"command": {"protocol": "shell", "raw": "bad"}, "limit": 10, "ratio": 0.5,
     "flags": [True, None, "x"]},
]


def _comparable(decision: Decision) -> tuple[Any, ...]:
    return (decision.effect, decision.reasons, decision.masks, decision.policy_revision,
            decision.command)


@pytest.fixture
def grpc_client(service: Service) -> Any:
    with GrpcDecisionClient(f"127.0.0.1:{service.grpc_port}", deadline=10) as client:
        yield client


def test_in_process_and_grpc_clients_agree(service: Service,
                                           grpc_client: GrpcDecisionClient) -> None:
    local = InProcessDecisionClient(service.runtime.engine)  # type: ignore[union-attr]
    assert isinstance(local, DecisionClient) and isinstance(grpc_client, DecisionClient)
    for doc in CORPUS:
        local_id, local_decision = local.decide(doc)
        remote_id, remote_decision = grpc_client.decide(doc)
        assert len(local_id) == len(remote_id) == 26 and local_id != remote_id
        assert _comparable(local_decision) == _comparable(remote_decision), doc


def test_async_variants(service: Service, grpc_client: GrpcDecisionClient) -> None:
    local = InProcessDecisionClient(service.runtime.engine)  # type: ignore[union-attr]

    async def both() -> list[tuple[str, Decision]]:
        results = await asyncio.gather(*(c.adecide(CORPUS[1])
                                         for c in (local, grpc_client, grpc_client)))
        await grpc_client.aclose()
        return list(results)

    results = asyncio.run(both())
    assert [d.effect for _, d in results] == ["deny"] * 3
    assert len({i for i, _ in results}) == 3


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_service_is_a_deny() -> None:
    with GrpcDecisionClient(f"127.0.0.1:{_closed_port()}", deadline=5, retries=2) as client:
        decision_id, decision = client.decide(CORPUS[0])
        assert decision.effect == "deny" and len(decision_id) == 26
        assert decision.reasons[0].policy == "ordinance.client"
        assert "UNAVAILABLE" in decision.reasons[0].message
        _, adecision = asyncio.run(client.adecide(CORPUS[0]))
        assert adecision.effect == "deny"


def test_deadline_exceeded_is_a_deny() -> None:
    """A service that accepts the connection and never answers (gRPC rounds a tiny deadline
    up, so a fast real service can beat one of a microsecond)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with GrpcDecisionClient(f"127.0.0.1:{port}", deadline=0.3) as client:
            _, decision = client.decide(CORPUS[0])
    assert decision.effect == "deny"
    assert "DEADLINE_EXCEEDED" in decision.reasons[0].message


def test_unsendable_input_is_a_deny(grpc_client: GrpcDecisionClient) -> None:
    _, decision = grpc_client.decide({"command": {"raw": object()}})
    assert decision.effect == "deny" and "not sendable" in decision.reasons[0].message


def test_in_process_client_records_into_a_decision_log(service: Service, tmp_path: Path
                                                       ) -> None:
    from engine.service.decision_log import DecisionLog, JsonLinesSink
    from tests.service.conftest import read_log

    log = DecisionLog(JsonLinesSink(tmp_path / "inproc.jsonl"))
    client = InProcessDecisionClient(service.runtime.engine,  # type: ignore[union-attr]
                                     decision_log=log)
    decision_id, _ = client.decide(CORPUS[1])
    assert read_log(tmp_path / "inproc.jsonl", 1)[0]["decision_id"] == decision_id
    log.close()
