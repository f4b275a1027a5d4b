"""Memory soak: RSS of `ordinance serve` and `ordinance proxy postgres` over many distinct
decisions, none answered by a cache.

Usage: `python -m benchmarks.soak_memory [--decisions 50000] [--warmup 12000]
[--only grpc,http,proxy]`

- gRPC: `Decide` with a new subject id each call (the PCI pack's CEL rules read `subject`, so
  no two calls share a cache entry: every call runs Rego and CEL);
- HTTP: OPA's Data API `POST /v1/data/ordinance` with a new statement text each (a column
  alias: the Rego modules read `input.command`, so the query cache misses every time, and the
  facts are parsed anew);
- proxy: statements through `ordinance proxy postgres` that differ in a column alias (a new
  text and literal fingerprint each: parse, facts and a full decision per statement, and a
  durable record), on a throwaway cluster, with the pack's row budget raised as
  `benchmarks.load_postgres` does (every row is counted; none is held for approval).

The warm-up fills the bounded caches (decision cache 10,000 entries, facts and plan LRUs) so
the measured window shows growth, not cache filling. RSS is read from /proc/PID/status every
`--decisions / 5` calls; the script prints each reading and the growth over the window.
Exit 1 when growth is above `--limit-mb` (default 8).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
POLICIES = REPO / "policies"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def soak(name: str, pid: int, call: Callable[[int], None], warmup: int, decisions: int
         ) -> dict[str, Any]:
    started = time.monotonic()
    for i in range(warmup):
        call(i)
    readings = [(0, rss_mb(pid))]
    step = max(1, decisions // 5)
    for i in range(decisions):
        call(warmup + i)
        if (i + 1) % step == 0:
            readings.append((i + 1, rss_mb(pid)))
    growth = readings[-1][1] - readings[0][1]
    result = {"what": name, "warmup": warmup, "decisions": decisions,
              "rss_mb": [(n, round(mb, 1)) for n, mb in readings],
              "growth_mb": round(growth, 1),
              "per_decision_bytes": round(growth * 1024 * 1024 / decisions, 1),
              "seconds": round(time.monotonic() - started, 1)}
    print(json.dumps(result), flush=True)
    return result


@contextlib.contextmanager
def running(cmd: list[str], env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("{"):
            raise RuntimeError(f"{cmd[3]} did not start: {line!r}")
        ready: dict[str, Any] = json.loads(line)
        ready.setdefault("pid", proc.pid)
        yield ready
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def input_doc(i: int, raw: str = "SELECT id FROM cards WHERE id = 1") -> dict[str, Any]:
    return {"subject": {"id": f"soak-{i}", "groups": ["dev"]},
            "resource": {"type": "postgres", "name": "payments", "labels": {"env": "prod"}},
            "command": {"protocol": "postgres", "raw": raw}}


def serve_soaks(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    import grpc

    from engine.api import decision_pb2, decision_pb2_grpc

    results = []
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--policies", str(POLICIES),
           "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0",
           "--decision-log-file", str(workdir / "decisions.jsonl")]
    with running(cmd) as ready:
        pid = int(ready["pid"])
        if "grpc" in args.only:
            channel = grpc.insecure_channel(ready["grpc"])
            stub = decision_pb2_grpc.DecisionServiceStub(channel)

            def decide(i: int) -> None:
                request = decision_pb2.DecideRequest()
                request.input.update(input_doc(i))
                stub.Decide(request, timeout=30)

            results.append(soak("serve gRPC Decide", pid, decide, args.warmup, args.decisions))
            channel.close()
        if "http" in args.only:
            host, port = ready["http"].rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=30)

            def query(i: int) -> None:
                conn.request("POST", "/v1/data/ordinance", json.dumps({"input": input_doc(
                    i, f"SELECT id AS c{i} FROM cards WHERE id = 1")}),
                             {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

            results.append(soak("serve HTTP POST /v1/data", pid, query, args.warmup,
                                args.decisions))
            conn.close()
    return results


def proxy_soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import psycopg

    from benchmarks.load_postgres import (
        DATABASE,
        USER,
        USER_PASSWORD,
        bench_policies,
        cluster,
        ordinance_proxy,
    )
    from tests.support.pg_cluster import SUPERUSER, SUPERUSER_PASSWORD

    with cluster() as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        dsn = pg.dsn.rsplit("/", 1)[0] + f"/{DATABASE}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE cards (id int PRIMARY KEY, holder text, pan text)")
            conn.execute("INSERT INTO cards VALUES (1, 'Ann Lee', '4111111111111111')")
        upstream = (f"postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{pg.port}/"
                    f"{DATABASE}")
        policies = bench_policies(str(POLICIES), workdir)  # rows counted, never held
        with ordinance_proxy(upstream, workdir, ["env=dev"], policies) as (proc, ready):
            port = int(ready["listen"].rsplit(":", 1)[1])
            with psycopg.connect(host="127.0.0.1", port=port, dbname=DATABASE, user=USER,
                                 password=USER_PASSWORD, sslmode="disable",
                                 autocommit=True) as conn:
                def statement(i: int) -> None:
                    conn.execute(f"SELECT id AS c{i}, holder FROM cards WHERE id = 1"
                                 ).fetchall()

                return soak("proxy postgres statements", proc.pid, statement, args.warmup,
                            args.decisions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak_memory")
    parser.add_argument("--decisions", type=int, default=50_000)
    parser.add_argument("--warmup", type=int, default=12_000)
    parser.add_argument("--only", default="grpc,http,proxy",
                        type=lambda s: set(s.split(",")))
    parser.add_argument("--limit-mb", type=float, default=8.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ordinance-soak-") as tmp:
        results = serve_soaks(args, Path(tmp)) if args.only & {"grpc", "http"} else []
        if "proxy" in args.only:
            results.append(proxy_soak(args, Path(tmp)))
    over = [r["what"] for r in results if r["growth_mb"] > args.limit_mb]
    for r in results:
        print(f"{r['what']}: {r['rss_mb'][0][1]} -> {r['rss_mb'][-1][1]} MB over "
              f"{r['decisions']} distinct decisions ({r['growth_mb']:+} MB, "
              f"{r['per_decision_bytes']} B each, {r['seconds']} s)")
    if over:
        print(f"RSS grew more than {args.limit_mb} MB: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
