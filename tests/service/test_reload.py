"""Live reload: a broken change is rejected while the old set keeps serving; a fix is
picked up and the revision changes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.api import decision_pb2, decision_pb2_grpc
from engine.service.server import Service
from tests.service.conftest import ALLOW_DENY_REGO, BROKEN_REGO, wait_for
from tests.service.test_http_api import call


def _touch_later(path: Path, text: str) -> None:
    """Write `text`, making sure the mtime moves even on coarse-grained filesystems."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def _decide(stub: decision_pb2_grpc.DecisionServiceStub, raw: str) -> decision_pb2.Decision:
    request = decision_pb2.DecideRequest()
    request.input.update({"command": {"protocol": "shell", "raw": raw}})
    return stub.Decide(request, timeout=10).decision


def test_broken_change_keeps_old_set_then_fix_is_picked_up(
        policy_dir: Path, service: Service) -> None:
    runtime = service.runtime
    assert runtime is not None and service.http_port
    old_revision = runtime.status.revision
    policy_file = policy_dir / "test.rego"
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        assert _decide(stub, "bad").effect == decision_pb2.EFFECT_DENY

        _touch_later(policy_file, BROKEN_REGO)
        wait_for(lambda: runtime.status.failures >= 1, what="broken change rejected")
        # the old set keeps serving
        denied = _decide(stub, "bad")
        assert denied.effect == decision_pb2.EFFECT_DENY
        assert denied.policy_revision == old_revision
        # the error is visible: gRPC status, HTTP status detail, metrics; health stays OK
        status = stub.GetStatus(decision_pb2.GetStatusRequest(), timeout=10)
        assert status.reload_failures == 1 and status.policy_revision == old_revision
        assert any("test.rego:" in e for e in status.last_reload_errors), \
            status.last_reload_errors
        code, body, _ = call(service.http_port, "GET", "/v1/status")
        errors = body["result"]["policy"]["last_reload_errors"]
        assert code == 200 and any("test.rego:" in e for e in errors)
        assert call(service.http_port, "GET", "/health?bundles")[0] == 200
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        metrics = call(service.http_port, "GET", "/metrics")[1]
        assert "ordinance_policy_reload_failures_total 1.0" in metrics

        fixed = ALLOW_DENY_REGO.replace('input.command.raw == "bad"',
                                        'input.command.raw in {"bad", "worse"}')
        _touch_later(policy_file, fixed)
        wait_for(lambda: runtime.status.revision != old_revision, what="fixed set swapped in")
        decision = _decide(stub, "worse")
        assert decision.effect == decision_pb2.EFFECT_DENY
        assert decision.policy_revision == runtime.status.revision != old_revision
        assert not stub.GetStatus(decision_pb2.GetStatusRequest()).last_reload_errors
        assert "ordinance_policy_reloads_total 2.0" in call(service.http_port, "GET",
                                                           "/metrics")[1]


def test_initially_broken_dir_starts_serving_once_fixed(
        tmp_path: Path, service_factory: Callable[..., Service]) -> None:
    directory = tmp_path / "later"
    directory.mkdir()
    (directory / "test.rego").write_text(BROKEN_REGO)
    svc = service_factory(directory)
    assert svc.runtime is not None and svc.http_port
    assert call(svc.http_port, "GET", "/health?bundles")[0] == 500
    _touch_later(directory / "test.rego", ALLOW_DENY_REGO)
    wait_for(lambda: svc.runtime.ready, what="first policy set loaded")  # type: ignore[union-attr]
    assert call(svc.http_port, "GET", "/health?bundles")[0] == 200
    with grpc.insecure_channel(f"127.0.0.1:{svc.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="ordinance.v1.DecisionService"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_touch_without_change_does_not_swap(policy_dir: Path, service: Service) -> None:
    runtime = service.runtime
    assert runtime is not None
    _touch_later(policy_dir / "test.rego", ALLOW_DENY_REGO)
    (policy_dir / "unrelated.txt").write_text("not a policy")
    # the watcher notices (fingerprint changed), recompiles, and finds the same revision
    assert service.watcher is not None
    service.watcher.poll_once()
    assert runtime.status.reloads == 1 and runtime.status.failures == 0
