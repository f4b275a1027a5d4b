"""Huge statements cost bounded time and memory in `ordinance serve` (a subprocess).

Distinct 1 MB statements over gRPC `Decide` and the Data API are denied unparsed
(`parse_error`), and the server's resident memory returns to its level afterwards: no cache
(facts, fingerprint, decision, query, response encodings) keeps such a text.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import grpc

from engine.api import decision_pb2, decision_pb2_grpc
from tests.service.conftest import start_serve

PACK = Path(__file__).resolve().parents[2] / "policies"
RESOURCE = {"type": "postgres", "name": "payments", "labels": {"env": "prod"}}
GROWTH_LIMIT_MB = 25  # before the fix, 16 statements left ~40 MB (and ~70 MB each parsed)


def _input(raw: str) -> dict[str, Any]:
    return {"subject": {"id": "alice", "groups": ["dev"]}, "resource": RESOURCE,
            "command": {"protocol": "postgres", "raw": raw}}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_huge_statements_are_denied_unparsed_and_memory_returns(tmp_path: Path) -> None:
    server = start_serve(["--policies", str(PACK), "--grpc", "127.0.0.1:0", "--http",
                          "127.0.0.1:0", "--decision-log-file", str(tmp_path / "d.jsonl")],
                         tmp_path)
    host, port = server.ready["http"].rsplit(":", 1)
    http_conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = decision_pb2_grpc.DecisionServiceStub(channel)

            def decide(raw: str) -> decision_pb2.Decision:
                request = decision_pb2.DecideRequest()
                request.input.update(_input(raw))
                return stub.Decide(request, timeout=60).decision

            def query(raw: str) -> dict[str, Any]:
                http_conn.request("POST", "/v1/data/ordinance/pci/sql",
                                  json.dumps({"input": _input(raw)}),
                                  {"Content-Type": "application/json"})
                response = http_conn.getresponse()
                body = json.loads(response.read())
                assert response.status == 200, body
                return body  # type: ignore[no-any-return]

            def warm() -> None:
                for i in range(200):
                    assert decide(f"SELECT id FROM orders WHERE id = {i}").effect \
                        == decision_pb2.EFFECT_ALLOW
                    query(f"SELECT id FROM orders WHERE id = {i}")

            warm()
            before = _rss_mb(server.proc.pid)
            for n in range(16):
                raw = f"SELECT id FROM orders WHERE id = {n} /* " + "a" * 1_000_000 + " */"
                decision = decide(raw)
                assert decision.effect == decision_pb2.EFFECT_DENY
                assert any("statement too large to analyse" in r.message
                           for r in decision.reasons), decision.reasons
                if n % 4 == 0:
                    assert query(raw + " ")["result"]["deny"]
            warm()
            after = _rss_mb(server.proc.pid)
    finally:
        http_conn.close()
        server.stop()
    assert after - before < GROWTH_LIMIT_MB, f"RSS {before:.0f} MB -> {after:.0f} MB"
