"""Real decisions through `ordinance serve --audit URL` (gRPC Decide, the OPA Data API and an
Envoy Check on the same gRPC port), then `ordinance replay` of its decision records with a
changed policy: counts and examples exactly, the Envoy record whose redacted header the new
policy reads reported instead of guessed, and the rebuilt inputs re-deciding as recorded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc

from engine.api import decision_pb2, decision_pb2_grpc
from tests.envoy.envoy_requests import envoy_check_request
from tests.service.conftest import start_serve
from tests.service.test_http_api import post

REPO = Path(__file__).resolve().parents[2]
PROD = {"type": "postgres", "name": "payments", "labels": {"env": "prod"}}
DEV = {"id": "alice", "groups": ["dev"]}
DECIDE = ["DROP TABLE cards", "DELETE FROM scratch WHERE id = 1",
          "SELECT id, pan FROM cards WHERE id = 1"]
CHANGE = """package ordinance.change
import rego.v1

deny contains {"msg": "no DELETE on scratch", "rule": "no_scratch_delete"} if {
    some s in input.command.statements
    s.kind == "delete"
    "scratch" in s.tables
}

deny contains {"msg": "no basic auth", "rule": "no_basic_auth"} if {
    startswith(input.command.headers.authorization, "Basic ")
}
"""


def replay(*args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "engine.cli", "replay", *args, "--format",
                           "json"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("replay-service")
    url = f"sqlite:///{tmp / 'audit.db'}"
    server = start_serve(["--policies", str(REPO / "policies"), "--grpc", "127.0.0.1:0",
                          "--http", "127.0.0.1:0", "--audit", url], tmp)
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = decision_pb2_grpc.DecisionServiceStub(channel)
            effects = []
            for raw in DECIDE:
                request = decision_pb2.DecideRequest()
                request.input.update({"subject": DEV, "resource": PROD,
                                      "command": {"protocol": "postgres", "raw": raw}})
                effects.append(stub.Decide(request, timeout=30).decision.effect)
            check = external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                envoy_check_request("POST", "/payments/refunds", body='{"amount": 5}',
                                    headers={"authorization": "Basic YWxpY2U6c2VjcmV0",
                                             "content-type": "application/json"}),
                timeout=30)
        # (a read of cards carries the pack's row budget: a review past 100 rows)
        assert effects == [decision_pb2.EFFECT_DENY, decision_pb2.EFFECT_ALLOW,
                           decision_pb2.EFFECT_REVIEW]
        # no token, so no subject: the pack's CEL rules fail on it, and that is a deny
        assert check.status.code == 7 and "CEL rule 'mask-pan' failed" in \
            check.denied_response.body
        port = int(server.ready["http"].rsplit(":", 1)[1])
        status, body = post(port, "/v1/data/ordinance/pci/sql/deny", {"input": {
            "subject": DEV, "resource": PROD,
            "command": {"protocol": "postgres", "raw": "DROP TABLE cards"}}})
        assert status == 200 and body["result"] == [
            "DROP is not allowed on production resources (PCI DSS 6.5.1)"]
    finally:
        assert server.stop() == 0  # drains the decision log into the trail
    return url


@pytest.fixture(scope="module")
def proposed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("proposed") / "policies"
    shutil.copytree(REPO / "policies", root)
    masking = root / "ordinance" / "pci" / "masking.yaml"
    masking.write_text(masking.read_text().replace("      - {column: cvv, method: redact}\n",
                                                   ""))
    (root / "ordinance" / "change.rego").write_text(CHANGE)
    return root


def test_replay_of_service_decisions(recorded: str, proposed: Path) -> None:
    code, report = replay("--audit", recorded, "--policies", str(proposed), "--baseline",
                          str(REPO / "policies"))
    assert code == 1
    assert report["kinds"] == {"decision": 5}
    assert (report["replayed"], report["changed"], report["unchanged"],
            report["not_replayed"]) == (4, 3, 1, 1)
    assert report["changes"] == {"unmask cvv": 3, "allow->deny": 1}
    rules = {g["rule"]: g for g in report["by_rule"]}
    assert set(rules) == {"mask-cvv-and-expiry", "ordinance.change.no_scratch_delete"}
    assert [e["text"] for e in rules["mask-cvv-and-expiry"]["examples"]] == DECIDE
    [delete] = rules["ordinance.change.no_scratch_delete"]["examples"]
    assert (delete["subject"], delete["kind"], delete["text"]) == ("alice", "decision",
                                                                    DECIDE[1])
    assert delete["after"]["reasons"] == [{"policy": "ordinance.change.no_scratch_delete",
                                           "effect": "deny", "message": "no DELETE on scratch"}]
    [skipped] = report["not_replayed_reasons"]
    assert skipped["reason"] == ("the record lacks command.headers.authorization, which the "
                                 "proposed policies read")
    assert skipped["examples"][0]["text"] == "POST /payments/refunds"


def test_rebuilt_inputs_decide_as_recorded(recorded: str) -> None:
    code, report = replay("--audit", recorded, "--policies", str(REPO / "policies"))
    assert (code, report["replayed"], report["changed"], report["not_replayed"]) == (0, 5, 0, 0)
    code, report = replay("--audit", recorded, "--policies", str(REPO / "policies"),
                          "--kind", "statement")
    assert (code, report["records"]) == (0, 0)
