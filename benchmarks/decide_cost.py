"""The decision + mask set-up cost of one statement in the proxy's policy bridge, without the
wire or the records: what `PolicyBridge.decide` costs per `pgbench -S` statement.

    python -m benchmarks.decide_cost [--statements 20000] [--profile]

Starts a throwaway PostgreSQL cluster (`tests/support/pg_cluster.py`) with `pgbench -i -s 1`
and a `cards` table, then builds the bridge as `ordinance proxy postgres` does (the shipped PCI
pack in-process, the catalog on the cluster, resource `bench` with `env=dev`; the audit
recorder replaced by one that keeps nothing: records are not what this measures) and, in one
session, times `decide` (and the verdict's `on_complete` is not called) for:

- `pgbench -S`: `SELECT abalance FROM pgbench_accounts WHERE aid = N;`, N random per statement
  (every text differs by its literal, as pgbench's simple protocol sends them);
- a masked point read `SELECT id, holder, pan FROM cards WHERE id = N` (the masking plan);
- a prepared statement's text, decided again per execution (what an extended-protocol
  `Parse` sends: `... WHERE aid = $1`).

Reports the median and p99 wall time per decide and the process CPU per decide (from
/proc/self/stat, over the whole loop). `--profile` prints the hottest functions (cProfile).
The machine may be shared: compare figures of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu() -> float:
    fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class NoRecorder:
    async def append(self, *args: Any, **kwargs: Any) -> None:
        return None


def texts(kind: str, n: int) -> list[str]:
    rng = random.Random(7)
    if kind == "pgbench -S":
        return [f"SELECT abalance FROM pgbench_accounts WHERE aid = {rng.randint(1, 100000)};"
                for _ in range(n)]
    if kind == "masked point read":
        return [f"SELECT id, holder, pan FROM cards WHERE id = {rng.randint(1, 100)}"
                for _ in range(n)]
    return ["SELECT abalance FROM pgbench_accounts WHERE aid = $1;"] * n


async def measure(bridge: Any, ctx: Any, sqls: list[str]) -> tuple[list[float], float]:
    for sql in sqls[:200]:  # warm the caches
        verdict = await bridge.decide(sql, ctx)
        if verdict.effect != "allow":
            raise SystemExit(f"{sql!r} was not allowed: {verdict.message}")
    wall: list[float] = []
    cpu = process_cpu()
    for sql in sqls:
        started = time.perf_counter()
        await bridge.decide(sql, ctx)
        wall.append(time.perf_counter() - started)
    return wall, (process_cpu() - cpu) / len(sqls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--statements", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import psycopg

    from adapters.enforcement.hooks import SessionContext
    from adapters.enforcement.records import Resource
    from adapters.postgres.bridge import PolicyBridge
    from adapters.postgres.catalog import Catalog
    from engine.client import InProcessDecisionClient
    from engine.engine import Engine
    from engine.policy import load_policy_set
    from tests.support.pg_cluster import start_cluster

    pgbench = shutil.which("pgbench") or next(
        (str(p) for p in Path("/usr/lib/postgresql").glob("*/bin/pgbench")), None)
    if pgbench is None:
        raise SystemExit("pgbench not found")
    pg = start_cluster()
    try:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        dsn = pg.dsn.rsplit("/", 1)[0] + "/bench"
        subprocess.run([pgbench, "-i", "-s", "1", "-q", dsn], check=True,
                       capture_output=True, timeout=600)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE cards (id int PRIMARY KEY, holder text, pan text)")
        catalog = Catalog(dsn)
        bridge = PolicyBridge(
            InProcessDecisionClient(Engine(load_policy_set(str(REPO / "policies")))),
            resource=Resource("bench", {"env": "dev"}, type="postgres"), catalog=catalog,
            recorder=NoRecorder(), approvals=None)  # type: ignore[arg-type]
        ctx = SessionContext("s1", "alice", ("dev",), "bench", "pgbench", "127.0.0.1",
                             False, "scram-sha-256", protocol="postgres")

        async def run() -> None:
            await bridge.session_started(ctx)
            print(f"decide per statement, {args.statements} statements, one session "
                  f"(median / p99 wall, CPU per decide):")
            profiler = cProfile.Profile() if args.profile else None
            for kind in ("pgbench -S", "masked point read", "prepared text (Parse)"):
                sqls = texts(kind, args.statements)
                if profiler is not None:
                    profiler.enable()
                wall, cpu = await measure(bridge, ctx, sqls)
                if profiler is not None:
                    profiler.disable()
                ordered = sorted(wall)
                print(f"  {kind:24} {statistics.median(wall) * 1e6:7.1f} µs / "
                      f"{ordered[int(len(ordered) * 0.99)] * 1e6:7.1f} µs, "
                      f"CPU {cpu * 1e6:7.1f} µs")
            if profiler is not None:
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
                print(out.getvalue())
            await catalog.close()

        asyncio.run(run())
    finally:
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
