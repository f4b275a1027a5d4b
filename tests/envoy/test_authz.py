"""The ext_authz servicer against the real engine (Rego policies on disk) and real gRPC."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from jwt.algorithms import ECAlgorithm

from adapters.envoy.authz import AuthorizationServicer
from adapters.envoy.translate import APPROVAL_ID_HEADER, DECISION_ID_HEADER
from engine.decision import Decision
from engine.engine import Engine
from engine.identity.oidc import OidcVerifier
from engine.policy import load_policy_set

ENVOY_POLICY = """\
package envoy.authz

import rego.v1

default allow := false

allow if input.parsed_path[0] == "public"

allow := {"allowed": false, "http_status": 429, "body": "not here"} if {
	input.parsed_path[0] == "legal"
}

allow := {"allowed": "yes"} if input.parsed_path[0] == "malformed"

allow := x if {
	input.parsed_path[0] == "boom"
	x := 1 / 0
}
"""

ORDINANCE_POLICY = """\
package ordinance.http

import rego.v1

deny contains "DELETE is not allowed" if input.command.method == "DELETE"

deny contains "sign in first" if {
	input.parsed_path[0] == "private"
	not input.subject.id
}

review contains {"msg": "exports need approval", "approvers": ["leads"]} if {
	input.parsed_path[0] == "export"
}

deny contains x if {
	input.parsed_path[0] == "boom"
	x := 1 / 0
}
"""


def engine_for(tmp_path: Path, files: dict[str, str]) -> Engine:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return Engine(load_policy_set(str(tmp_path)))


@pytest.fixture
def ordinance_engine(tmp_path: Path) -> Engine:
    return engine_for(tmp_path, {"ordinance/http.rego": ORDINANCE_POLICY})


@pytest.fixture
def envoy_engine(tmp_path: Path) -> Engine:
    return engine_for(tmp_path, {"envoy/authz.rego": ENVOY_POLICY})


def request(path: str, method: str = "GET",
            headers: dict[str, str] | None = None) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host = method, path, "api.internal"
    for key, value in (headers or {}).items():
        http.headers[key] = value
    return req


def body(response: Any) -> Any:
    return json.loads(response.denied_response.body)


# --- the plugin's decision query --------------------------------------------------------------

def test_plugin_style_policy(envoy_engine: Engine) -> None:
    servicer = AuthorizationServicer(envoy_engine)
    assert servicer.check(request("/public/x")).status.code == code_pb2.OK
    denied = servicer.check(request("/secret"))
    assert denied.status.code == code_pb2.PERMISSION_DENIED
    legal = servicer.check(request("/legal")).denied_response
    assert (legal.status.code, legal.body) == (429, "not here")


def test_malformed_result_fails_closed(envoy_engine: Engine) -> None:
    response = AuthorizationServicer(envoy_engine).check(request("/malformed"), "d-1")
    assert response.status.code == code_pb2.INTERNAL
    assert response.denied_response.status.code == 500
    assert body(response) == {"error": "policy error", "decision_id": "d-1"}
    assert response.dynamic_metadata.fields["error"].string_value == (
        "expected allowed to be a boolean, got str")


def test_query_runtime_error_fails_closed(envoy_engine: Engine) -> None:
    response = AuthorizationServicer(envoy_engine).check(request("/boom"), "d-0")
    assert response.status.code == code_pb2.INTERNAL
    assert response.denied_response.status.code == 500
    assert body(response)["error"] == "policy error"


def test_undefined_decision_is_an_error_as_in_the_plugin(tmp_path: Path) -> None:
    # No `default allow`: the path exists in the set but is undefined for this request. The
    # plugin answers "undefined decision" (an error); Ordinance never falls back to its own
    # rules there (with none, that would be an allow).
    engine = engine_for(tmp_path, {"envoy/authz.rego": "package envoy.authz\n\nimport rego.v1"
                                   "\n\nallow if input.parsed_path[0] == \"open\"\n"})
    assert engine.defines("data.envoy.authz.allow") and not engine.defines("envoy/other")
    assert AuthorizationServicer(engine).check(request("/open")).status.code == code_pb2.OK
    closed = AuthorizationServicer(engine).check(request("/closed"))
    assert closed.denied_response.status.code == 500
    assert closed.dynamic_metadata.fields["error"].string_value == "undefined decision"
    lenient = AuthorizationServicer(engine, failure_mode_allow=True).check(request("/closed"))
    assert lenient.status.code == code_pb2.OK


def test_unparseable_request_is_400(envoy_engine: Engine) -> None:
    response = AuthorizationServicer(envoy_engine).check(request("/a%zz"))
    assert response.denied_response.status.code == 400
    assert "invalid URL escape" in body(response)["message"]


# --- Ordinance's own decision when the query is undefined -------------------------------------

def test_ordinance_decisions(ordinance_engine: Engine) -> None:
    servicer = AuthorizationServicer(ordinance_engine)
    allowed = servicer.check(request("/cards"), "d-2")
    assert allowed.status.code == code_pb2.OK
    assert [(h.header.key, h.header.value) for h in allowed.ok_response.headers] == [
        (DECISION_ID_HEADER, "d-2")]
    denied = servicer.check(request("/cards/1", method="DELETE"), "d-3")
    assert denied.denied_response.status.code == 403
    assert body(denied)["reasons"] == [{"message": "DELETE is not allowed", "effect": "deny"}]


def test_review_creates_an_approval_request(ordinance_engine: Engine) -> None:
    calls: list[tuple[Decision, dict[str, Any], str]] = []

    def request_approval(decision: Decision, input_doc: dict[str, Any],
                         decision_id: str) -> str:
        calls.append((decision, input_doc, decision_id))
        return "apr-1"

    servicer = AuthorizationServicer(ordinance_engine, request_approval=request_approval)
    response = servicer.check(request("/export/all"), "d-4")
    assert body(response)["approval_id"] == "apr-1"
    assert (APPROVAL_ID_HEADER, "apr-1") in [
        (h.header.key, h.header.value) for h in response.denied_response.headers]
    assert [(c[0].effect, c[1]["parsed_path"], c[2]) for c in calls] == [
        ("review", ["export", "all"], "d-4")]


def test_policy_runtime_error_is_a_deny(ordinance_engine: Engine) -> None:
    response = AuthorizationServicer(ordinance_engine).check(request("/boom"))
    assert response.status.code == code_pb2.INTERNAL
    assert response.denied_response.status.code == 500


# --- identity ---------------------------------------------------------------------------------

@pytest.fixture
def oidc(tmp_path: Path) -> tuple[OidcVerifier, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1"}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    verifier = OidcVerifier("https://idp.test", "ordinance", jwks_file=tmp_path / "jwks.json",
                            algorithms=("ES256",))
    return verifier, key


def token(key: ec.EllipticCurvePrivateKey, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": "https://idp.test", "aud": "ordinance", "sub": "u1",
               "email": "alice@example.com", "groups": ["dev"], "iat": now, "exp": now + 60,
               **claims}
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": "k1"})


def test_subject_from_bearer_token(ordinance_engine: Engine,
                                   oidc: tuple[OidcVerifier, Any]) -> None:
    verifier, key = oidc
    servicer = AuthorizationServicer(ordinance_engine, verifier=verifier)
    anonymous = servicer.check(request("/private"))
    assert body(anonymous)["reasons"][0]["message"] == "sign in first"
    signed_in = servicer.check(request("/private",
                                       headers={"authorization": f"Bearer {token(key)}"}))
    assert signed_in.status.code == code_pb2.OK
    expired = servicer.check(request("/private", headers={
        "authorization": f"Bearer {token(key, exp=int(time.time()) - 600)}"}))
    assert expired.status.code == code_pb2.UNAUTHENTICATED
    assert expired.denied_response.status.code == 401
    assert body(expired)["message"] == "token expired"


def test_required_subject(ordinance_engine: Engine, oidc: tuple[OidcVerifier, Any]) -> None:
    verifier, key = oidc
    servicer = AuthorizationServicer(ordinance_engine, verifier=verifier, require_subject=True)
    missing = servicer.check(request("/cards"))
    assert missing.denied_response.status.code == 401
    assert body(missing)["message"] == "a bearer token is required"
    ok = servicer.check(request("/cards", headers={"authorization": f"Bearer {token(key)}"}))
    assert ok.status.code == code_pb2.OK


# --- over gRPC --------------------------------------------------------------------------------

@pytest.fixture
def grpc_target(ordinance_engine: Engine) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
        AuthorizationServicer(ordinance_engine), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_check_over_grpc(grpc_target: str) -> None:
    with grpc.insecure_channel(grpc_target) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        allowed = stub.Check(request("/cards"), timeout=10)
        denied = stub.Check(request("/cards", method="DELETE"), timeout=10)
    assert allowed.status.code == code_pb2.OK
    assert denied.denied_response.status.code == 403
    decision_id = allowed.dynamic_metadata.fields["decision_id"].string_value
    assert len(decision_id) == 26  # a ULID, like the decision service's ids
