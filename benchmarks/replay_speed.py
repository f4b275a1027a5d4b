"""How fast `ordinance replay` re-decides a large trail: a synthetic SQLite trail of N proxy
statement records (default 1,000,000), written as the proxy writes them (session.start, then
statements with the decision the PCI pack made), replayed with a proposed set that adds one
rule, against the pack as baseline directory, in one process and with `--jobs`.

    python -m benchmarks.replay_speed [--records N] [--trail PATH] [--jobs 1,2]

The trail is kept at PATH (default var/replay-bench.db) and reused when it already holds N
records. Statements differ by their literals (pgbench-like), as real traffic does, so the
figure includes the literal-fingerprint cache the proxy uses. Prints one JSON line per run
(`max_rss_mb`: the largest resident set of this process or of a worker so far).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import engine  # noqa: F401  (before regopy: engine/native.py)
from engine.audit import AuditEvent, open_audit_log
from engine.client import InProcessDecisionClient
from engine.engine import Engine
from engine.policy import load_policy_set

REPO = Path(__file__).resolve().parents[1]
USERS = (("alice", ["dev"]), ("bob", ["dev"]), ("pat", ["pci-pan-viewers"]),
         ("dana", ["dba-leads"]))
STATEMENTS = (
    (60, "SELECT abalance FROM pgbench_accounts WHERE aid = {n}"),
    (15, "UPDATE pgbench_accounts SET abalance = abalance + {m} WHERE aid = {n}"),
    (10, "SELECT id, holder, pan FROM cards WHERE id = {n}"),
    (8, "INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 2, {n}, {m})"),
    (5, "SELECT * FROM cards"),
    (2, "DELETE FROM pgbench_history WHERE aid = {n}"),
)
PROPOSED_RULE = """package ordinance.bench

import rego.v1

deny contains "no deletes from pgbench_history (benchmark rule)" if {
    some s in input.command.statements
    s.kind == "delete"
    "pgbench_history" in s.tables
}
"""
STATEMENTS_PER_SESSION = 500


def _texts(rng: random.Random) -> list[str]:
    weights = [w for w, _ in STATEMENTS]
    shapes = [s for _, s in STATEMENTS]
    return [shape.format(n=rng.randrange(1, 10_000_000), m=rng.randrange(-5000, 5000))
            for shape in rng.choices(shapes, weights, k=10_000)]


def write_trail(path: Path, records: int) -> None:
    """A trail as the proxy writes it: each session's start, then its statements, each with
    the decision the shipped pack makes for it (so a replay against the recorded decisions
    with the same pack finds nothing)."""
    if path.exists():
        path.unlink()
    rng = random.Random(17)
    texts = _texts(rng)
    client = InProcessDecisionClient(Engine(load_policy_set(str(REPO / "policies"))))
    resource = {"type": "postgres", "name": "payments", "labels": {"env": "prod"}}
    log = open_audit_log(f"sqlite:///{path}")
    batch: list[AuditEvent] = []
    written = 0
    session = 0
    while written < records:
        session += 1
        user, groups = USERS[session % len(USERS)]
        sid = f"bench{session:08d}"
        ctx = {"client_addr": f"10.0.{session % 250}.7", "tls": True,
               "application_name": "pgbench"}
        batch.append(AuditEvent("session.start", {
            "protocol": "postgres", "resource": resource, "database": "bench", "user": user,
            "requested_user": user, "groups": groups, "claims": {},
            "auth_method": "scram-sha-256", **ctx}, subject=user, session_id=sid))
        doc: dict[str, Any] = {"subject": {"id": user, "groups": groups, "claims": {}},
                               "resource": resource, "session": {"id": sid, **ctx}}
        for _ in range(min(STATEMENTS_PER_SESSION, records - written)):
            text = texts[written % len(texts)]
            decision_id, decision = client.decide({**doc, "command": {"protocol": "postgres",
                                                                      "raw": text}})
            batch.append(AuditEvent("statement", {
                "text": text, "effect": decision.effect,
                "reasons": [r.to_dict() for r in decision.reasons], "masked": [],
                "masks": [f"{m.column}:{m.method}" for m in decision.masks],
                "approval": None, "policy_revision": decision.policy_revision,
                "resource": "payments", "database": "bench", "tag": "SELECT 1", "rows": 1,
                "error": None, "duration_ms": 0.4}, subject=user, session_id=sid,
                decision_id=decision_id))
            written += 1
        if len(batch) >= 5000:
            log.append_many(batch)
            batch = []
    if batch:
        log.append_many(batch)
    log.close()


def _statement_count(path: Path) -> int:
    import sqlite3

    if not path.exists():
        return -1
    with sqlite3.connect(path) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM ordinance_audit WHERE kind = "
                                    "'statement'").fetchone()[0])
        except sqlite3.Error:
            return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--trail", type=Path, default=REPO / "var" / "replay-bench.db")
    parser.add_argument("--jobs", default="1,2", help="comma-separated job counts to time")
    args = parser.parse_args()
    args.trail.parent.mkdir(parents=True, exist_ok=True)
    if _statement_count(args.trail) != args.records:
        started = time.perf_counter()
        write_trail(args.trail, args.records)
        print(json.dumps({"wrote": args.records, "seconds": round(
            time.perf_counter() - started, 1), "trail": str(args.trail)}), flush=True)
    from engine.replay.run import ReplayOptions, replay

    proposed = Path(tempfile.mkdtemp(prefix="ordinance-replay-bench-"))
    try:
        shutil.copytree(REPO / "policies", proposed, dirs_exist_ok=True)
        (proposed / "ordinance" / "bench.rego").write_text(PROPOSED_RULE)
        for jobs in (int(j) for j in args.jobs.split(",")):
            options = ReplayOptions(audit_url=f"sqlite:///{args.trail}",
                                    policies=str(proposed), baseline=str(REPO / "policies"),
                                    jobs=jobs)
            started = time.perf_counter()
            cpu = os.times()
            report = replay(options).to_dict(frozenset())
            seconds = time.perf_counter() - started
            after = os.times()
            print(json.dumps({
                "records": report["records"], "jobs": jobs, "seconds": round(seconds, 1),
                "records_per_second": round(report["records"] / seconds),
                "main_cpu_seconds": round(after.user + after.system - cpu.user - cpu.system, 1),
                "workers_cpu_seconds": round(after.children_user + after.children_system
                                             - cpu.children_user - cpu.children_system, 1),
                "max_rss_mb": round(max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
                                    / 1024),
                "changed": report["changed"], "changes": report["changes"],
                "not_replayed": report["not_replayed"]}), flush=True)
    finally:
        shutil.rmtree(proposed, ignore_errors=True)


if __name__ == "__main__":
    main()
