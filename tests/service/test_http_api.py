"""The OPA-compatible HTTP API against a real server, with raw HTTP and opa-python-client."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.service.server import Service
from tests.service.conftest import read_log


def call(port: int, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        content_type = response.getheader("Content-Type", "")
        parsed = json.loads(data) if "json" in content_type else data.decode()
        return response.status, parsed, dict(response.getheaders())
    finally:
        conn.close()


def post(port: int, path: str, doc: Any) -> tuple[int, Any]:
    status, body, _ = call(port, "POST", path, json.dumps(doc).encode(),
                           {"Content-Type": "application/json"})
    return status, body


def test_post_data_rule_with_input(service: Service) -> None:
    port = service.http_port
    assert port
    status, body = post(port, "/v1/data/ordinance/test/deny", {"input": {"command": {
        "raw": "bad"}}})
    assert status == 200
    assert body["result"] == ["x"]
    assert len(body["decision_id"]) == 26
    status, body = post(port, "/v1/data/ordinance/test/greeting",
                        {"input": {"subject": {"id": "alice"}}})
    assert (status, body["result"]) == (200, "hello alice")


def test_undefined_document_has_no_result(service: Service) -> None:
    assert service.http_port
    status, body = post(service.http_port, "/v1/data/ordinance/test/greeting", {"input": {}})
    assert status == 200 and "result" not in body and "decision_id" in body
    status, body = post(service.http_port, "/v1/data/no/such/doc", {"input": {}})
    assert status == 200 and "result" not in body


def test_root_data_and_get_forms(service: Service) -> None:
    port = service.http_port
    assert port
    status, body = post(port, "/v1/data", {"input": {"command": {"raw": "bad"}}})
    assert status == 200
    assert body["result"]["ordinance"]["test"]["deny"] == ["x"]
    status, body, _ = call(port, "GET", "/v1/data/ordinance/test/greeting?input="
                           + "%7B%22subject%22%3A%7B%22id%22%3A%22bob%22%7D%7D")
    assert (status, body["result"]) == (200, "hello bob")


def test_missing_input_gets_opa_warning(service: Service) -> None:
    assert service.http_port
    status, body = post(service.http_port, "/v1/data/ordinance/test/deny", {})
    assert status == 200
    assert body["warning"] == {"code": "api_usage_warning",
                               "message": "'input' key missing from the request"}


def test_malformed_json_is_400_invalid_parameter(service: Service) -> None:
    assert service.http_port
    status, body, _ = call(service.http_port, "POST", "/v1/data/x", b'{"input": @}')
    assert status == 400
    assert body["code"] == "invalid_parameter"
    assert body["message"].startswith("body contains malformed input document")
    status, body, _ = call(service.http_port, "POST", "/v1/data/x", b"[1, 2]")
    assert status == 400 and body["code"] == "invalid_parameter"
    status, body, _ = call(service.http_port, "GET", "/v1/data/x?input=%7Bnope")
    assert status == 400 and body["code"] == "invalid_parameter"


def test_oversized_body_is_413(policy_dir: Path,
                               service_factory: Callable[..., Service]) -> None:
    svc = service_factory(policy_dir, max_message_bytes=1024)
    assert svc.http_port
    status, body = post(svc.http_port, "/v1/data/ordinance", {"input": {"x": "y" * 5000}})
    assert status == 413
    assert body == {"code": "invalid_parameter", "message": "request body too large"}
    status, _ = post(svc.http_port, "/v1/data/ordinance", {"input": {"x": "small"}})
    assert status == 200


def test_chunked_body_is_accepted_and_limited(policy_dir: Path,
                                              service_factory: Callable[..., Service]) -> None:
    svc = service_factory(policy_dir, max_message_bytes=1024)
    assert svc.http_port
    conn = http.client.HTTPConnection("127.0.0.1", svc.http_port, timeout=30)
    body = json.dumps({"input": {"command": {"raw": "bad"}}}).encode()
    conn.request("POST", "/v1/data/ordinance/test/deny", body=iter([body[:10], body[10:]]),
                 encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["result"] == ["x"]
    conn.request("POST", "/v1/data/ordinance", body=iter([b"x" * 800, b"y" * 800]),
                 encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()


def test_unknown_route_is_404(service: Service) -> None:
    assert service.http_port
    status, body, _ = call(service.http_port, "GET", "/v2/nothing")
    assert status == 404 and body["code"] == "resource_not_found"


def test_health_and_metrics(service: Service) -> None:
    port = service.http_port
    assert port
    assert call(port, "GET", "/health")[:2] == (200, {})
    assert call(port, "GET", "/health?bundles")[:2] == (200, {})
    assert call(port, "GET", "/health?plugins")[:2] == (200, {})
    post(port, "/v1/data/ordinance/test/deny", {"input": {}})
    status, text, headers = call(port, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'ordinance_decisions_total{effect="query",transport="http"} 1.0' in text
    assert "ordinance_decision_duration_seconds_bucket" in text
    assert "ordinance_policy_reloads_total 1.0" in text
    assert "ordinance_policy_reload_failures_total 0.0" in text


def test_health_bundles_is_500_until_policies_load(
        tmp_path: Path, service_factory: Callable[..., Service]) -> None:
    svc = service_factory(tmp_path / "does-not-exist")
    assert svc.http_port
    assert call(svc.http_port, "GET", "/health")[0] == 200
    status, body, _ = call(svc.http_port, "GET", "/health?bundles")
    assert status == 500 and "error" in body
    status, body = post(svc.http_port, "/v1/data/ordinance", {"input": {}})
    assert status == 503 and body["code"] == "internal_error"


def test_queries_are_decision_logged(service: Service) -> None:
    assert service.http_port
    _, body = post(service.http_port, "/v1/data/ordinance/test/deny",
                   {"input": {"command": {"raw": "bad"}}})
    record = read_log(service.config.decision_log_path, 1)[0]  # type: ignore[arg-type]
    assert record["decision_id"] == body["decision_id"]
    assert record["kind"] == "query" and record["path"] == "ordinance/test/deny"
    assert record["result"] == ["x"]


def test_opa_python_client(service: Service) -> None:
    from opa_client.opa import OpaClient

    assert service.http_port
    with OpaClient(host="127.0.0.1", port=service.http_port, timeout=30) as client:
        assert client.check_health() is True
        assert client.check_health(query={"bundles": True}) is True
        result = client.query_rule(input_data={"command": {"raw": "bad"}},
                                   package_path="ordinance.test", rule_name="deny")
        assert result["result"] == ["x"]
        result = client.query_rule(input_data={"command": {"raw": "ls"}},
                                   package_path="ordinance.test", rule_name="deny")
        assert result["result"] == []
        data = client.get_data("ordinance/test/deny")
        assert data["result"] == []
        assert "ordinance_decisions_total" in client.get_metrics()


def test_queries_see_engine_parsed_facts_not_caller_supplied_ones(
        tmp_path: Path, service_factory: Callable[..., Service]) -> None:
    directory = tmp_path / "facts"
    directory.mkdir()
    (directory / "f.rego").write_text(
        "package ordinance.facts\nimport rego.v1\n"
        "kinds := {s.kind | some s in input.command.statements}\n")
    svc = service_factory(directory)
    assert svc.http_port
    status, body = post(svc.http_port, "/v1/data/ordinance/facts/kinds", {"input": {
        "resource": {"type": "postgres"},
        "command": {"protocol": "postgres", "raw": "DROP TABLE cards",
                    "statements": [{"kind": "select"}]}}})
    assert status == 200 and body["result"] == ["drop"]
