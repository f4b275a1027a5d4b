"""`ordinance serve` as a real subprocess: one process, and `--workers 2` on shared ports."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import grpc

from engine.api import decision_pb2, decision_pb2_grpc
from tests.service.conftest import read_log, start_serve, wait_for
from tests.service.test_http_api import call


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _decide_on_fresh_connection(target: str, raw: str) -> decision_pb2.Decision:
    with grpc.insecure_channel(target) as channel:
        request = decision_pb2.DecideRequest()
        request.input.update({"command": {"protocol": "shell", "raw": raw}})
        return decision_pb2_grpc.DecisionServiceStub(channel).Decide(request, timeout=30
                                                                      ).decision


def test_serve_single_process(policy_dir: Path, tmp_path: Path) -> None:
    server = start_serve(["--policies", str(policy_dir), "--grpc", "127.0.0.1:0",
                          "--http", "127.0.0.1:0", "--max-message-bytes", "64KiB"], tmp_path)
    try:
        assert server.ready["event"] == "serving" and server.ready["policy_revision"]
        decision = _decide_on_fresh_connection(server.grpc_target, "bad")
        assert decision.effect == decision_pb2.EFFECT_DENY
        port = int(server.ready["http"].rsplit(":", 1)[1])
        assert call(port, "GET", "/health?bundles")[0] == 200
        # default decision log location: ./var/decisions.jsonl
        assert read_log(tmp_path / "var" / "decisions.jsonl", 1)[0]["decision_id"] == \
            decision.decision_id
    finally:
        assert server.stop() == 0


def test_serve_workers_share_ports_and_stop_on_sigterm(policy_dir: Path, tmp_path: Path
                                                        ) -> None:
    log_path = tmp_path / "decisions.jsonl"
    server = start_serve(["--policies", str(policy_dir), "--grpc", "127.0.0.1:0",
                          "--http", "127.0.0.1:0", "--workers", "2",
                          "--decision-log-file", str(log_path)], tmp_path)
    workers = server.ready["workers"]
    try:
        assert len(workers) == 2 and server.proc.pid not in workers
        decisions = [_decide_on_fresh_connection(server.grpc_target, "bad")
                     for _ in range(40)]
        assert {d.effect for d in decisions} == {decision_pb2.EFFECT_DENY}
        records = read_log(log_path, 40)
        assert {r["pid"] for r in records} == set(workers), "SO_REUSEPORT spread connections"
        port = int(server.ready["http"].rsplit(":", 1)[1])

        def metrics_total() -> bool:
            text = call(port, "GET", "/metrics")[1]
            return 'ordinance_decisions_total{effect="deny",transport="grpc"} 40.0' in text

        wait_for(metrics_total, what="metrics aggregated over both workers")
    finally:
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
    for pid in workers:
        wait_for(lambda pid=pid: not _pid_alive(pid), what=f"worker {pid} gone")
    assert json.loads(log_path.read_text().splitlines()[0])["kind"] == "decide"


def test_a_worker_that_dies_is_restarted_with_a_log_line_and_a_metric(policy_dir: Path,
                                                                      tmp_path: Path) -> None:
    server = start_serve(["--policies", str(policy_dir), "--grpc", "127.0.0.1:0",
                          "--http", "127.0.0.1:0", "--workers", "2",
                          "--decision-log-file", str(tmp_path / "decisions.jsonl")], tmp_path)
    victim, survivor = server.ready["workers"]
    port = int(server.ready["http"].rsplit(":", 1)[1])
    try:
        os.kill(victim, signal.SIGKILL)

        def restarted() -> bool:
            try:  # a connection queued on the killed worker's socket is reset
                text = call(port, "GET", "/metrics")[1]
            except OSError:
                return False
            return 'ordinance_worker_restarts_total{ended="SIGKILL"} 1.0' in text

        wait_for(restarted, timeout=60, what="the restart counted in /metrics")
        assert _pid_alive(survivor)
        # the service answers throughout, whichever worker takes the connection
        decisions = [_decide_on_fresh_connection(server.grpc_target, "bad") for _ in range(10)]
        assert {d.effect for d in decisions} == {decision_pb2.EFFECT_DENY}
    finally:
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
    assert server.proc.stderr is not None
    events = [json.loads(line[line.index("{"):]) for line in server.proc.stderr.read().splitlines()
              if '"worker.restarted"' in line]
    assert [(e["pid"], e["ended"]) for e in events] == [(victim, "SIGKILL")]
    assert events[0]["new_pid"] not in (victim, survivor)
