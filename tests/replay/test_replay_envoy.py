"""Envoy checks answered by an opa-envoy-plugin style policy (`envoy/authz/allow`), recorded
through the decision log into the trail as `ordinance envoy --audit` does, then replayed: the
rebuilt CheckRequest input answers as recorded, and a changed rule shows up."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.envoy.authz import AuthorizationServicer
from engine.engine import Engine
from engine.policy import load_policy_set
from engine.service.decision_log import AuditSink, DecisionLog
from tests.envoy.envoy_requests import envoy_check_request
from tests.replay.trail import replay, write_policies

AUTHZ = """package envoy.authz
import rego.v1

default allow := false

allow if input.parsed_path[0] == "public"

allow if {
    input.attributes.request.http.method == "GET"
    input.parsed_path[0] == "cards"
}

allow if input.parsed_body.amount < 10
"""


def test_envoy_queries_replayed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    current = write_policies(tmp_path / "current", {"authz.rego": AUTHZ})
    proposed = write_policies(tmp_path / "proposed", {"authz.rego": AUTHZ.replace(
        'input.attributes.request.http.method == "GET"', 'input.subject.id == "ops"')})
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    log = DecisionLog(AuditSink(url))
    servicer = AuthorizationServicer(Engine(load_policy_set(str(current))), record=log.submit,
                                     transport="envoy-grpc")
    answers = [servicer.check(envoy_check_request(method, path, body=body, headers=headers))
               for method, path, body, headers in (
                   ("GET", "/public/a", b"", {}),
                   ("GET", "/cards/1", b"", {"authorization": "Bearer x"}),
                   ("POST", "/cards/1", '{"amount": 5}', {"content-type": "application/json"}),
                   ("POST", "/cards/2", '{"amount": 50}', {"content-type": "application/json"}),
               )]
    log.close()
    assert [a.status.code for a in answers] == [0, 0, 0, 7]
    code, report, _ = replay(capsys, "--audit", url, "--policies", str(current))
    assert (code, report["kinds"], report["replayed"], report["changed"]) == (
        0, {"decision": 4}, 4, 0)
    code, report, _ = replay(capsys, "--audit", url, "--policies", str(proposed),
                             "--baseline", str(current))
    assert (code, report["changed"], report["changes"]) == (1, 1, {"allow->deny": 1})
    [rule] = report["by_rule"]
    assert rule["rule"] == "envoy/authz/allow"
    [example] = rule["examples"]
    assert example["text"] == "GET /cards/1"
    assert example["before"]["result"] == {"defined": True, "value": True}
