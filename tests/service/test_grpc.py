"""DecisionService over a real gRPC server: Decide, DecideStream, status, health, reflection,
and the refusals (malformed, oversized, deadline)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engine.api import decision_pb2, decision_pb2_grpc
from engine.service.server import Service
from tests.service.conftest import read_log

PAN = "4111111111111111"


@pytest.fixture
def channel(service: Service) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> decision_pb2_grpc.DecisionServiceStub:
    return decision_pb2_grpc.DecisionServiceStub(channel)


def decide_request(raw: str, **extra: object) -> decision_pb2.DecideRequest:
    request = decision_pb2.DecideRequest()
    request.input.update({"subject": {"id": "alice"},
                          "command": {"protocol": "shell", "raw": raw}, **extra})
    return request


def test_decide_allow_deny_review(stub: decision_pb2_grpc.DecisionServiceStub,
                                  service: Service) -> None:
    revision = service.runtime.status.revision  # type: ignore[union-attr]
    allowed = stub.Decide(decide_request("ls")).decision
    denied = stub.Decide(decide_request("bad")).decision
    review = stub.Decide(decide_request("risky")).decision
    assert allowed.effect == decision_pb2.EFFECT_ALLOW
    assert denied.effect == decision_pb2.EFFECT_DENY
    assert [r.message for r in denied.reasons] == ["x"]
    assert review.effect == decision_pb2.EFFECT_REVIEW
    assert list(review.reasons[0].approvers) == ["dba"]
    for d in (allowed, denied, review):
        assert d.policy_revision == revision and revision
        assert len(d.decision_id) == 26
        assert d.command.fields["raw"].string_value in ("ls", "bad", "risky")
    assert allowed.decision_id < denied.decision_id < review.decision_id


def test_decide_stream_keeps_correlation_and_survives_a_bad_message(
        channel: grpc.Channel) -> None:
    def requests() -> Iterator[bytes]:
        for i, raw in enumerate(["ls", "bad"]):
            msg = decision_pb2.DecideStreamRequest(correlation_id=f"c{i}")
            msg.input.update({"command": {"protocol": "shell", "raw": raw}})
            yield msg.SerializeToString()
        yield decision_pb2.DecideStreamRequest(correlation_id="no-input").SerializeToString()
        yield b"\xff\xff\xff"  # not a protobuf message
        msg = decision_pb2.DecideStreamRequest(correlation_id="last")
        msg.input.update({"command": {"protocol": "shell", "raw": "bad"}})
        yield msg.SerializeToString()

    call = channel.stream_stream(
        "/ordinance.v1.DecisionService/DecideStream",
        request_serializer=None, response_deserializer=decision_pb2.DecideStreamResponse.FromString)
    responses = list(call(requests(), timeout=30))
    assert [r.correlation_id for r in responses] == ["c0", "c1", "no-input", "", "last"]
    assert responses[0].decision.effect == decision_pb2.EFFECT_ALLOW
    assert responses[1].decision.effect == decision_pb2.EFFECT_DENY
    assert responses[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert responses[3].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert responses[4].decision.effect == decision_pb2.EFFECT_DENY


def test_get_status(stub: decision_pb2_grpc.DecisionServiceStub, service: Service) -> None:
    status = stub.GetStatus(decision_pb2.GetStatusRequest())
    assert status.policy_revision == service.runtime.status.revision  # type: ignore[union-attr]
    assert status.reloads == 1 and status.reload_failures == 0
    assert not status.last_reload_errors


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "ordinance.v1.DecisionService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(reflect.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"ordinance.v1.DecisionService", "grpc.health.v1.Health"} <= names


def test_health_is_not_serving_until_policies_load(
        tmp_path: Path, service_factory: Callable[..., Service]) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "p.rego").write_text("package ordinance.test\nimport rego.v1\ndeny contains if {\n")
    svc = service_factory(broken)
    with grpc.insecure_channel(f"127.0.0.1:{svc.grpc_port}") as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            decision_pb2_grpc.DecisionServiceStub(ch).Decide(decide_request("ls"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_malformed_requests_are_invalid_argument(channel: grpc.Channel) -> None:
    raw_decide = channel.unary_unary("/ordinance.v1.DecisionService/Decide",
                                      request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as err:
        raw_decide(b"\x0a\xff\xff\xff", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed" in (err.value.details() or "")

    stub = decision_pb2_grpc.DecisionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Decide(decision_pb2.DecideRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no input" in (err.value.details() or "")

    nan = decide_request("ls")
    nan.input.fields["n"].number_value = float("nan")
    with pytest.raises(grpc.RpcError) as err:
        stub.Decide(nan, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_message_is_resource_exhausted(
        policy_dir: Path, service_factory: Callable[..., Service]) -> None:
    svc = service_factory(policy_dir, max_message_bytes=64 * 1024)
    with grpc.insecure_channel(f"127.0.0.1:{svc.grpc_port}") as ch:
        stub = decision_pb2_grpc.DecisionServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.Decide(decide_request("ls", blob="x" * 100_000), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # the server is fine afterwards
        assert stub.Decide(decide_request("ls"), timeout=10).decision.effect == \
            decision_pb2.EFFECT_ALLOW


def test_expired_deadline_is_deadline_exceeded_and_server_keeps_serving(
        stub: decision_pb2_grpc.DecisionServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Decide(decide_request("ls"), timeout=-1)  # already past (1 us may be rounded up)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stub.Decide(decide_request("ls"), timeout=10).decision.effect == \
        decision_pb2.EFFECT_ALLOW


def test_every_decision_is_logged_with_card_numbers_masked(
        stub: decision_pb2_grpc.DecisionServiceStub, service: Service) -> None:
    decision = stub.Decide(decide_request(f"echo {PAN}")).decision
    records = read_log(service.config.decision_log_path, 1)  # type: ignore[arg-type]
    record = records[0]
    assert record["decision_id"] == decision.decision_id
    assert record["kind"] == "decide" and record["transport"] == "grpc"
    assert record["policy_revision"] == decision.policy_revision
    assert record["result"]["effect"] == "allow"
    text = service.config.decision_log_path.read_text()  # type: ignore[union-attr]
    assert PAN not in text
    assert "1111" in record["input"]["command"]["raw"]
