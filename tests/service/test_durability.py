"""The durable decision log under kill -9: every answered decision is in the trail.

`ordinance serve --audit URL` (SQLite and PostgreSQL) answers decisions in a loop over gRPC
`Decide` and the OPA Data API while it is killed with SIGKILL and restarted; afterwards every
decision id a client received is in the trail and `ordinance audit verify` passes; with the
default `--audit-durability fsync` and with `os` (acknowledged once the OS has the record,
which a killed process cannot lose).
"""

from __future__ import annotations

import http.client
import json
import random
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import grpc
import pytest

from engine.api import decision_pb2, decision_pb2_grpc
from tests.audit.conftest import conninfo_to_url
from tests.service.conftest import start_serve
from tests.support.kill9 import kill_under_load

KILLS = 3


@pytest.fixture(params=["sqlite", "postgres", "jsonl"])
def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An audit store URL, or (`jsonl`) the path of a JSON-lines decision log file."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/audit.db"
    if request.param == "jsonl":
        return str(tmp_path / "decisions.jsonl")
    return conninfo_to_url(request.getfixturevalue("pg_database"))


def _grpc_caller(target: str, stop: threading.Event, answered: list[str]) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        i = 0
        while not stop.is_set():
            request = decision_pb2.DecideRequest()
            request.input.update({"command": {"protocol": "shell", "raw": f"echo {i}"}})
            i += 1
            try:
                answer = stub.Decide(request, timeout=5)
            except grpc.RpcError:
                return  # the server is gone
            answered.append(answer.decision.decision_id)


def _http_caller(address: str, stop: threading.Event, answered: list[str]) -> None:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    i = 0
    while not stop.is_set():
        body = json.dumps({"input": {"subject": {"id": f"u{i}"}}})
        i += 1
        try:
            conn.request("POST", "/v1/data/ordinance/test/greeting", body,
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            return
        if response.status == 200:
            answered.append(json.loads(data)["decision_id"])


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_kill_9_loses_no_answered_decision(policy_dir: Path, tmp_path: Path,
                                           audit_url: str, durability: str) -> None:
    rng = random.Random(18)
    answered: list[str] = []
    jsonl = not audit_url.startswith(("sqlite:", "postgresql:"))
    trail_args = ["--decision-log-file", audit_url] if jsonl else ["--audit", audit_url]
    for _ in range(KILLS):
        server = start_serve(["--policies", str(policy_dir), "--grpc", "127.0.0.1:0",
                              "--http", "127.0.0.1:0", *trail_args,
                              "--audit-durability", durability], tmp_path)
        callers = [partial(_grpc_caller, server.grpc_target) for _ in range(2)]
        callers += [partial(_http_caller, server.ready["http"]) for _ in range(2)]
        answered += kill_under_load(server.proc, callers, rng)
    if jsonl:
        recorded = {json.loads(line)["decision_id"]
                    for line in Path(audit_url).read_text().splitlines()}
        assert not set(answered) - recorded, "answered decisions missing from the file"
        return
    from engine.audit import open_audit_log

    with open_audit_log(audit_url) as audit:
        recorded = {r.decision_id for r in audit.iter_records() if r.kind == "decision"}
    missing = set(answered) - recorded
    assert not missing, f"{len(missing)} of {len(answered)} answered decisions not recorded"
    verify = subprocess.run([sys.executable, "-m", "engine.cli", "audit", "verify", "--audit",
                             audit_url], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
