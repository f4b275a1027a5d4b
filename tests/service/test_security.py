"""TLS, mutual TLS, bearer tokens and the non-loopback listen refusal."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.api import decision_pb2, decision_pb2_grpc
from engine.client import ClientTLS, GrpcDecisionClient
from engine.service.server import Service, ServiceConfig
from engine.service.tls import InsecureListenError, TLSConfig, is_loopback
from tests.service.conftest import Certs, serve_command

INPUT = {"command": {"protocol": "shell", "raw": "bad"}}


def _mtls(certs: Certs) -> TLSConfig:
    return TLSConfig(certs.server_cert, certs.server_key, certs.ca)


def _https(port: int, certs: Certs, client: tuple[Path, Path] | None) -> tuple[int, dict]:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    if client:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    try:
        conn.request("POST", "/v1/data/ordinance/test/deny",
                     body=json.dumps({"input": INPUT}).encode())
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_mtls_grpc_requires_a_client_certificate_from_the_ca(
        policy_dir: Path, certs: Certs, service_factory: Callable[..., Service]) -> None:
    svc = service_factory(policy_dir, tls=_mtls(certs))
    target = f"127.0.0.1:{svc.grpc_port}"
    good = ClientTLS(ca=certs.ca, cert=certs.client_cert, key=certs.client_key)
    with GrpcDecisionClient(target, tls=good, deadline=10) as client:
        _, decision = client.decide(INPUT)
        assert decision.effect == "deny" and decision.reasons[0].message == "x"
    for tls in (ClientTLS(ca=certs.ca),
                ClientTLS(ca=certs.ca, cert=certs.other_client_cert,
                          key=certs.other_client_key)):
        with GrpcDecisionClient(target, tls=tls, deadline=5, retries=0) as client:
            _, decision = client.decide(INPUT)
            assert decision.effect == "deny"
            assert decision.reasons[0].policy == "ordinance.client"
            assert "UNAVAILABLE" in decision.reasons[0].message
    # plaintext against a TLS port fails too
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


def test_mtls_http_requires_a_client_certificate(
        policy_dir: Path, certs: Certs, service_factory: Callable[..., Service]) -> None:
    svc = service_factory(policy_dir, tls=_mtls(certs))
    assert svc.http_port
    status, body = _https(svc.http_port, certs, (certs.client_cert, certs.client_key))
    assert status == 200 and body["result"] == ["x"]
    for client in (None, (certs.other_client_cert, certs.other_client_key)):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _https(svc.http_port, certs, client)
    # the server is unaffected by failed handshakes
    assert _https(svc.http_port, certs, (certs.client_cert, certs.client_key))[0] == 200


def test_server_tls_without_client_auth(policy_dir: Path, certs: Certs,
                                        service_factory: Callable[..., Service]) -> None:
    svc = service_factory(policy_dir, tls=TLSConfig(certs.server_cert, certs.server_key))
    assert svc.http_port
    assert _https(svc.http_port, certs, None)[0] == 200
    with GrpcDecisionClient(f"127.0.0.1:{svc.grpc_port}", tls=ClientTLS(ca=certs.ca),
                            deadline=10) as client:
        assert client.decide(INPUT)[1].reasons[0].message == "x"


def test_bearer_token_grpc_and_http(policy_dir: Path, tmp_path: Path,
                                    service_factory: Callable[..., Service]) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    svc = service_factory(policy_dir, token_file=token_file)
    target = f"127.0.0.1:{svc.grpc_port}"
    with GrpcDecisionClient(target, token="s3cret-token", deadline=10) as client:
        assert client.decide(INPUT)[1].reasons[0].message == "x"
    with GrpcDecisionClient(target, token="wrong", deadline=10) as client:
        reason = client.decide(INPUT)[1].reasons[0]
        assert reason.policy == "ordinance.client" and "UNAUTHENTICATED" in reason.message
    with grpc.insecure_channel(target) as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetStatus(decision_pb2.GetStatusRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # health checks stay open for probes
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    from tests.service.test_http_api import call

    assert svc.http_port
    body = json.dumps({"input": INPUT}).encode()
    status, error, _ = call(svc.http_port, "POST", "/v1/data/ordinance/test/deny", body)
    assert status == 401 and error["code"] == "unauthorized"
    status, _, _ = call(svc.http_port, "POST", "/v1/data/ordinance/test/deny", body,
                        {"Authorization": "Bearer wrong"})
    assert status == 401
    status, ok, _ = call(svc.http_port, "POST", "/v1/data/ordinance/test/deny", body,
                         {"Authorization": "Bearer s3cret-token"})
    assert status == 200 and ok["result"] == ["x"]
    assert call(svc.http_port, "GET", "/health")[0] == 200
    assert call(svc.http_port, "GET", "/metrics")[0] == 401


def test_non_loopback_listen_is_refused_without_tls_or_token(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("10.1.2.3")
    config = ServiceConfig(policies=tmp_path, grpc_address="0.0.0.0:9191",
                           http_address="127.0.0.1:8181")
    with pytest.raises(InsecureListenError, match="gRPC"):
        config.check_security()
    config = ServiceConfig(policies=tmp_path, grpc_address="off", http_address=":8181")
    with pytest.raises(InsecureListenError, match="HTTP"):
        config.check_security()
    ServiceConfig(policies=tmp_path, grpc_address="0.0.0.0:1", insecure_listen=True
                  ).check_security()
    token = tmp_path / "t"
    token.write_text("x")
    ServiceConfig(policies=tmp_path, grpc_address="0.0.0.0:1", token_file=token
                  ).check_security()

    result = subprocess.run(
        serve_command("--policies", str(tmp_path), "--grpc", "0.0.0.0:0", "--http", "off"),
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert "refusing to listen on non-loopback address 0.0.0.0" in result.stderr
    assert "--insecure-listen" in result.stderr
