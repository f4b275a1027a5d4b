"""ext_authz end to end: a gRPC client playing Envoy (official xds protos) and an HTTP client
playing Envoy's HTTP-service mode, against real `ordinance serve`, `ordinance envoy` and
in-process services.

The opa-envoy-plugin tutorial policies give the answers the plugin documents; Ordinance's own
rules answer deny/review with reasons and approval requests; failures are explicit denies.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.rpc import code_pb2

from engine.approvals import open_approval_store
from engine.audit import open_audit_log
from engine.identity import Subject
from tests.envoy.conftest import Oidc, Process, wait_for, write_policies
from tests.envoy.envoy_requests import (
    EnvoyGrpc,
    EnvoyHttp,
    answer_from_check_response,
    envoy_check_request,
)
from tests.envoy.policies import (
    NATIVE,
    TUTORIAL_CONTROLS,
    TUTORIAL_OBJECT,
    TUTORIAL_STANDALONE,
    tutorial_token,
)

ALICE = tutorial_token("guest", "alice")  # the tutorial's guest
BOB = tutorial_token("admin", "bob")  # the tutorial's admin
MALLORY = tutorial_token("admin", "mallory", secret="not-the-secret")


@pytest.fixture
def clients() -> Iterator[list[Any]]:
    opened: list[Any] = []
    yield opened
    for client in opened:
        client.close()


def grpc_client(clients: list[Any], target: str) -> EnvoyGrpc:
    client = EnvoyGrpc(target)
    clients.append(client)
    return client


def http_client(clients: list[Any], address: str, prefix: str = "") -> EnvoyHttp:
    client = EnvoyHttp(address, prefix)
    clients.append(client)
    return client


# --- ordinance envoy: the opa-envoy-plugin tutorial, both modes -----------------------------

@pytest.fixture
def sidecar(tmp_path: Path, run_ordinance: Any) -> Process:
    policies = write_policies(tmp_path / "policies", {"policy.rego": TUTORIAL_STANDALONE})
    return run_ordinance("envoy", "--policies", str(policies), "--grpc", "127.0.0.1:0",
                         "--http", "127.0.0.1:0", "--decision-log-file",
                         str(tmp_path / "decisions.jsonl"))


def test_sidecar_standalone_tutorial_over_grpc(sidecar: Process, clients: list[Any],
                                               tmp_path: Path) -> None:
    envoy = grpc_client(clients, sidecar.ready["grpc"])
    assert envoy.serving() and envoy.serving("envoy.service.auth.v3.Authorization")
    alice, bob = {"authorization": f"Bearer {ALICE}"}, {"authorization": f"Bearer {BOB}"}
    json_type = {"content-type": "application/json"}
    # The tutorial's answers: guests and admins read /people; only admins create, and
    # nobody creates themselves; a boolean deny is a bare PERMISSION_DENIED (Envoy: 403).
    assert envoy.check("GET", "/people", headers=alice).allowed
    assert envoy.check("GET", "/people", headers=bob).allowed
    denied = envoy.check("POST", "/people", headers={**alice, **json_type},
                         body='{"firstname": "Charlie", "lastname": "Opa"}')
    assert (denied.allowed, denied.status, denied.grpc_code, denied.body) == (
        False, 403, code_pb2.PERMISSION_DENIED, "")
    assert envoy.check("POST", "/people", headers={**bob, **json_type},
                       body='{"firstname": "Charlie", "lastname": "Opa"}').allowed
    assert not envoy.check("POST", "/people", headers={**bob, **json_type},
                           body='{"firstname": "Bob", "lastname": "Opa"}').allowed
    assert not envoy.check("GET", "/people", headers={"authorization": f"Bearer {MALLORY}"}
                           ).allowed
    assert not envoy.check("GET", "/people").allowed
    # The plugin's decision id travels in the dynamic metadata; the decision log has it,
    # with the bearer token redacted.
    answer = envoy.check("GET", "/people", headers=alice)
    decision_id = answer.metadata["decision_id"]
    log_file = tmp_path / "decisions.jsonl"

    def logged() -> dict[str, Any] | None:
        if not log_file.exists():
            return None
        records = [json.loads(line) for line in log_file.read_text().splitlines()]
        return next((r for r in records if r["decision_id"] == decision_id), None)

    record = wait_for(logged, what="the decision record")
    assert record["kind"] == "query" and record["path"] == "data.envoy.authz.allow"
    assert record["result"] is True and record["transport"] == "envoy-grpc"
    headers = record["input"]["attributes"]["request"]["http"]["headers"]
    assert headers["authorization"] == "[redacted]"
    assert ALICE not in json.dumps(record)


def test_sidecar_http_service_mode(sidecar: Process, clients: list[Any]) -> None:
    envoy = http_client(clients, sidecar.ready["envoy_http"])
    status, headers, _ = envoy.check("GET", "/people",
                                     headers={"authorization": f"Bearer {ALICE}"})
    assert status == 200 and len(headers["x-ordinance-decision-id"]) == 26
    status, _, body = envoy.check("POST", "/people", headers={
        "authorization": f"Bearer {BOB}", "content-type": "application/json"},
        body=b'{"firstname": "Bob", "lastname": "Opa"}')
    assert (status, body) == (403, b"")
    status, _, _ = envoy.check("POST", "/people", headers={
        "authorization": f"Bearer {BOB}", "content-type": "application/json"},
        body=b'{"firstname": "Charlie", "lastname": "Opa"}')
    assert status == 200
    # Any method is forwarded and decided (the tutorial allows none of these).
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        assert envoy.check(method, "/people", headers={
            "authorization": f"Bearer {BOB}"})[0] == 403


# --- in-process: the primer's structured results --------------------------------------------

def test_primer_additional_controls(tmp_path: Path, envoy_service: Any,
                                    clients: list[Any]) -> None:
    policies = write_policies(tmp_path / "p", {"envoy/authz.rego": TUTORIAL_CONTROLS})
    service = envoy_service(policies, query="data.envoy.authz.result")
    envoy = grpc_client(clients, f"127.0.0.1:{service.grpc_port}")
    ok = envoy.check("GET", "/people/1", headers={"authorization": f"Bearer {ALICE}"})
    assert ok.allowed
    assert {k: ok.headers[k] for k in ("x-ext-auth-allow", "x-validated-by")} == {
        "x-ext-auth-allow": "yes", "x-validated-by": "security-checkpoint"}
    assert ok.response_headers == {"x-foo": "bar"}
    assert ok.headers_to_remove == ["one-auth-header", "another-auth-header"]
    assert ok.metadata["foo"] == "bar"
    unauthenticated = envoy.check("GET", "/people/1",
                                  headers={"authorization": f"Bearer {MALLORY}"})
    assert (unauthenticated.status, unauthenticated.body) == (401, "Authentication Failed")
    assert unauthenticated.headers["x-ext-auth-allow"] == "yes"  # as the primer's policy says
    forbidden = envoy.check("POST", "/people/1", headers={"authorization": f"Bearer {ALICE}"})
    assert (forbidden.status, forbidden.body) == (403, "Unauthorized Request")
    # The same answers in HTTP-service mode, mounted under /envoy on the HTTP API.
    http = http_client(clients, f"127.0.0.1:{service.http_port}", "/envoy")
    status, headers, body = http.check("GET", "/people/1",
                                       headers={"authorization": f"Bearer {ALICE}"})
    assert (status, headers["x-ext-auth-allow"], headers["x-foo"]) == (200, "yes", "bar")
    assert headers["x-envoy-auth-headers-to-remove"] == "one-auth-header, another-auth-header"
    status, headers, body = http.check("GET", "/people/1",
                                       headers={"authorization": f"Bearer {MALLORY}"})
    assert (status, body) == (401, b"Authentication Failed")
    # The Data API next to it is unchanged.
    http.conn.request("POST", "/v1/data/envoy/authz/status_code", body=json.dumps(
        {"input": {"attributes": {"request": {"http": {"headers": {}}}}}}))
    assert json.loads(http.conn.getresponse().read())["result"] == 401


def test_plugin_readme_object_decision(tmp_path: Path, envoy_service: Any,
                                       clients: list[Any]) -> None:
    policies = write_policies(tmp_path / "p", {"policy.rego": TUTORIAL_OBJECT})
    service = envoy_service(policies)
    envoy = grpc_client(clients, f"127.0.0.1:{service.grpc_port}")
    allowed = envoy.check("GET", "/anything")
    assert allowed.allowed and allowed.headers["x-ext-auth-allow"] == "yes"
    denied = envoy.check("POST", "/anything")
    assert (denied.status, denied.body, denied.headers["x-ext-auth-allow"]) == (
        301, "Unauthorized Request", "no")
    http = http_client(clients, f"127.0.0.1:{service.http_port}", "/envoy")
    status, headers, body = http.check("DELETE", "/anything")
    assert (status, body, headers["x-ext-auth-allow"]) == (301, b"Unauthorized Request", "no")


# --- ordinance serve: Ordinance's own decisions, identity, approvals, failures ---------------

@pytest.fixture
def served(tmp_path: Path, run_ordinance: Any, oidc: Oidc) -> tuple[Process, str]:
    policies = write_policies(tmp_path / "policies", {"http.rego": NATIVE})
    audit_url = f"sqlite:///{tmp_path / 'audit.db'}"
    process = run_ordinance("serve", "--policies", str(policies), "--grpc", "127.0.0.1:0",
                            "--http", "127.0.0.1:0", "--audit", audit_url, *oidc.flags())
    return process, audit_url


def test_serve_native_decisions(served: tuple[Process, str], oidc: Oidc,
                                clients: list[Any]) -> None:
    process, _ = served
    envoy = grpc_client(clients, process.ready["grpc"])
    alice = {"authorization": f"Bearer {oidc.token('alice@example.com', ['dev'])}"}
    payer = {"authorization": f"Bearer {oidc.token('pat@example.com', ['payments'])}"}
    allowed = envoy.check("GET", "/cards", headers=alice)
    assert allowed.allowed and allowed.metadata["effect"] == "allow"
    assert allowed.headers["x-ordinance-decision-id"] == allowed.metadata["decision_id"]
    denied = envoy.check("DELETE", "/cards/1", headers=alice)
    assert (denied.status, denied.grpc_code) == (403, code_pb2.PERMISSION_DENIED)
    assert denied.json()["reasons"] == [{"message": "DELETE is not allowed", "effect": "deny"}]
    # Route data from context extensions, the verified subject's groups, mesh principals and
    # filter metadata all reach the policy.
    team = {"resource_name": "payments-api", "label.team": "payments"}
    assert not envoy.check("GET", "/pay", headers=alice, context_extensions=team).allowed
    assert envoy.check("GET", "/pay", headers=payer, context_extensions=team).allowed
    assert not envoy.check("GET", "/internal/x").allowed
    assert envoy.check("GET", "/internal/x",
                       source_principal="spiffe://cluster.local/ns/default/sa/frontend").allowed
    tenant = {"tenant": {"id": "t1"}}
    assert envoy.check("GET", "/tenants/t1", filter_metadata=tenant).allowed
    assert not envoy.check("GET", "/tenants/t2", filter_metadata=tenant).allowed
    # The body is parsed for policies.
    json_type = {"content-type": "application/json"}
    assert not envoy.check("POST", "/transfers", headers=json_type,
                           body='{"amount": 5000}').allowed
    assert envoy.check("POST", "/transfers", headers=json_type, body='{"amount": 50}').allowed


def test_serve_malformed_and_invalid_tokens_are_401(served: tuple[Process, str], oidc: Oidc,
                                                   clients: list[Any]) -> None:
    process, _ = served
    envoy = grpc_client(clients, process.ready["grpc"])
    for token in ("not-a-jwt", "a.b.c", tutorial_token("admin", "bob"),
                  oidc.token("alice@example.com", [], exp=int(time.time()) - 3600)):
        answer = envoy.check("GET", "/cards", headers={"authorization": f"Bearer {token}"})
        assert (answer.allowed, answer.status, answer.grpc_code) == (
            False, 401, code_pb2.UNAUTHENTICATED), token
        assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert answer.json()["error"] == "unauthenticated"


def test_serve_oversized_body_is_truncated(served: tuple[Process, str],
                                           clients: list[Any]) -> None:
    process, _ = served
    envoy = grpc_client(clients, process.ready["grpc"])
    json_type = {"content-type": "application/json"}
    big = json.dumps({"amount": 1, "pad": "x" * (1 << 20)})  # over the 1 MiB parse limit
    answer = envoy.check("POST", "/upload", headers=json_type, body=big)
    assert answer.json()["reasons"][0]["message"] == "body too large to inspect"
    # Envoy's max_request_bytes with allow_partial_message: a cut body, flagged.
    partial = envoy.check("POST", "/upload", headers=json_type, body='{"amount": 1, "pa',
                          content_length=9000, partial_body=True)
    assert partial.json()["reasons"][0]["message"] == "body too large to inspect"
    assert envoy.check("POST", "/upload", headers=json_type, body='{"amount": 1}').allowed


def test_serve_policy_runtime_error_is_a_500_deny(served: tuple[Process, str],
                                                  clients: list[Any]) -> None:
    process, _ = served
    envoy = grpc_client(clients, process.ready["grpc"])
    raw = envoy.raw(envoy_check_request("GET", "/boom"))  # the gRPC call itself is OK
    answer = answer_from_check_response(raw)
    assert (answer.allowed, answer.status, answer.grpc_code) == (False, 500,
                                                                 code_pb2.INTERNAL)
    assert answer.json() == {"error": "policy error",
                             "decision_id": answer.metadata["decision_id"]}
    assert "divide by zero" in answer.metadata["error"]


def test_serve_review_files_and_uses_an_approval(served: tuple[Process, str], oidc: Oidc,
                                                 clients: list[Any]) -> None:
    process, audit_url = served
    envoy = grpc_client(clients, process.ready["grpc"])
    alice = {"authorization": f"Bearer {oidc.token('alice@example.com', ['dev'])}"}
    first = envoy.check("GET", "/export/cards?format=csv", headers=alice)
    approval_id = first.headers["x-ordinance-approval-id"]
    assert (first.status, first.json()["effect"], first.json()["approval_id"]) == (
        403, "review", approval_id)
    assert first.json()["reasons"][0]["approvers"] == ["leads"]
    again = envoy.check("GET", "/export/cards?format=csv", headers=alice)
    assert again.headers["x-ordinance-approval-id"] == approval_id  # no duplicate request
    anonymous = envoy.check("GET", "/export/cards?format=csv")
    assert anonymous.status == 403 and anonymous.json()["approval_id"] is None

    with open_audit_log(audit_url) as audit, open_approval_store(audit_url,
                                                                 audit=audit) as store:
        pending = store.get(approval_id)
        assert (pending.requester_id, pending.command_preview) == (
            "alice@example.com", "GET /export/cards?format=csv")
        store.approve(approval_id, Subject("lead@example.com", ("leads",)))
    used = envoy.check("GET", "/export/cards?format=csv", headers=alice)
    assert used.allowed and used.headers["x-ordinance-approval-used"] == "true"
    # Single use: the next identical request needs a new approval.
    after = envoy.check("GET", "/export/cards?format=csv", headers=alice)
    assert after.status == 403 and after.headers["x-ordinance-approval-id"] != approval_id
    with open_audit_log(audit_url) as audit, open_approval_store(audit_url,
                                                                 audit=audit) as store:
        assert store.get(approval_id).status_at(datetime.now(UTC)) == "consumed"


def test_serve_http_service_mode_under_envoy_prefix(served: tuple[Process, str], oidc: Oidc,
                                                    clients: list[Any]) -> None:
    process, _ = served
    envoy = http_client(clients, process.ready["http"], "/envoy")
    alice = {"authorization": f"Bearer {oidc.token('alice@example.com', ['dev'])}"}
    status, headers, _ = envoy.check("GET", "/cards", headers=alice)
    assert status == 200 and headers["x-ordinance-decision-id"]
    status, headers, body = envoy.check("DELETE", "/cards/1", headers=alice)
    assert status == 403 and json.loads(body)["reasons"][0]["message"] == \
        "DELETE is not allowed"
    status, headers, body = envoy.check("GET", "/export/all", headers=alice)
    assert status == 403 and headers["x-ordinance-approval-id"] == \
        json.loads(body)["approval_id"]
    status, headers, body = envoy.check("GET", "/cards",
                                        headers={"authorization": "Bearer not-a-jwt"})
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    status, _, _ = envoy.check("POST", "/boom", body=b"{}",
                               headers={"content-type": "application/json"})
    assert status == 500


# --- failure mode and live reload -------------------------------------------------------------

def test_failure_mode_allow(tmp_path: Path, envoy_service: Any, clients: list[Any]) -> None:
    policies = write_policies(tmp_path / "p", {"http.rego": NATIVE})
    service = envoy_service(policies, failure_mode_allow=True)
    envoy = grpc_client(clients, f"127.0.0.1:{service.grpc_port}")
    answer = envoy.check("GET", "/boom")
    assert answer.allowed and answer.headers["x-ordinance-failure-mode-allowed"] == "true"
    assert "divide by zero" in answer.metadata["error"]
    assert not envoy.check("DELETE", "/cards").allowed  # a policy's deny is still a deny
    http = http_client(clients, f"127.0.0.1:{service.http_port}", "/envoy")
    status, headers, _ = http.check("GET", "/boom")
    assert status == 200 and headers["x-ordinance-failure-mode-allowed"] == "true"


def test_live_reload_switches_policies(tmp_path: Path, envoy_service: Any,
                                       clients: list[Any]) -> None:
    policies = write_policies(tmp_path / "p", {"http.rego": NATIVE})
    service = envoy_service(policies)
    envoy = grpc_client(clients, f"127.0.0.1:{service.grpc_port}")
    assert envoy.check("GET", "/anything").allowed
    write_policies(policies, {"envoy/authz.rego": TUTORIAL_OBJECT})  # the query is now defined
    wait_for(lambda: envoy.check("POST", "/anything").status == 301, what="the reload")
    (policies / "envoy" / "authz.rego").write_text("package envoy.authz\n\nallow := 1 / 0 {\n")
    time.sleep(0.5)  # a broken change is rejected; the previous set keeps serving
    assert envoy.check("POST", "/anything").status == 301


# --- the sidecar's own settings ---------------------------------------------------------------

TOKEN_BLIND = """\
package envoy.authz

import rego.v1

default allow := false

# The service token is Envoy's and Ordinance's business: policies never see it.
allow if not input.attributes.request.http.headers["x-ordinance-authorization"]
"""


def test_sidecar_service_token(tmp_path: Path, run_ordinance: Any, clients: list[Any]) -> None:
    import grpc

    policies = write_policies(tmp_path / "p", {"policy.rego": TOKEN_BLIND})
    (tmp_path / "token").write_text("s3cret-token-for-envoy\n")
    sidecar = run_ordinance("envoy", "--policies", str(policies), "--grpc", "127.0.0.1:0",
                            "--http", "127.0.0.1:0", "--token-file", str(tmp_path / "token"),
                            "--decision-log-file", str(tmp_path / "d.jsonl"))
    anonymous = grpc_client(clients, sidecar.ready["grpc"])
    assert anonymous.serving()  # health needs no token
    with pytest.raises(grpc.RpcError) as refused:
        anonymous.check("GET", "/")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    envoy = EnvoyGrpc(sidecar.ready["grpc"], token="s3cret-token-for-envoy")  # initial_metadata
    clients.append(envoy)
    assert envoy.check("GET", "/").allowed
    http = http_client(clients, sidecar.ready["envoy_http"])
    assert http.check("GET", "/")[0] == 401
    assert http.check("GET", "/", headers={
        "x-ordinance-authorization": "Bearer s3cret-token-for-envoy"})[0] == 200


def test_sidecar_refuses_bad_settings(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.envoy.conftest import REPO

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engine.cli", "envoy", "--policies",
                               str(tmp_path), "--grpc", "127.0.0.1:0", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60,
                              env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})

    half = run("--oidc-jwks", "jwks.json")
    assert half.returncode == 2 and "go together" in half.stderr
    missing = run("--oidc-jwks", str(tmp_path / "nope.json"), "--oidc-issuer", "i",
                  "--oidc-audience", "a")
    assert missing.returncode == 1 and "cannot load JWKS" in missing.stderr
