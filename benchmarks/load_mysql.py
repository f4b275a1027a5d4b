"""One-run report for the MySQL proxy: sysbench direct and through `ordinance proxy mysql`.

    python -m benchmarks.load_mysql [--threads 8] [--duration 20] [--table-size 10000]
                                    [--rows 10000] [--runs 20] [--label env=dev] [--json F]

Everything is started by this script and stopped by it, on errors and Ctrl-C too:

- a throwaway MariaDB (`tests/support/mariadb_server.py`: the installed binaries, as root as
  the `mysql` user) with a database `sbtest` prepared by `sysbench oltp_common prepare`
  (`--tables 4`, `--table-size`) and a `cards` table of `--rows` rows (`id`, `holder`, `pan`:
  Luhn-valid test numbers);
- `ordinance proxy mysql` with the shipped PCI pack (a copy whose row budget `bulk_row_limit`
  is raised to 10**9, as benchmarks/load_postgres.py does, so the masked read is counted but
  never held), an SQLite audit trail in a temporary directory, a users file holding `alice`
  (group `dev`, mysql_native_password and caching_sha2_password verifiers), `--resource-name
  sbtest` and the `--label`s (default `env=dev`).

In ONE run, each sysbench workload (`oltp_point_select`, `oltp_read_only`, `oltp_read_write`,
`--threads` threads, server-side prepared statements as sysbench sends them) goes direct and
through the proxy in turn for `--duration` seconds: transactions and queries per second
(sysbench's ignored errors, deadlocks it retries, are reported, not failed on), the
median and p99 latency sysbench reports per way (`--percentile 99`; its median from the
histogram), the proxy/direct ratio, and the CPU the proxy process spent per statement (from
/proc). Then a masked read of `--rows` rows (`SELECT id, holder, pan FROM cards WHERE id
BETWEEN 1 AND N`) with PyMySQL, `--runs` times per way interleaved: median and p99 against
direct (goal: at most 1.5x). Through the proxy every PAN must come back masked; the statement
records are counted by effect (`review` is a read of cards under its never-reached row
budget); a denied statement, a failed sysbench run, an unmasked PAN or an error in the proxy's
log fails the run (exit 1). The machine's load average is printed with the figures: on a
shared machine they are indicative only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.load_common import cpu_seconds, percentile
from benchmarks.load_postgres import BenchmarkError, bench_policies, stop_process

REPO = Path(__file__).resolve().parent.parent
USER, USER_PASSWORD = "alice", "bench-secret"
DATABASE = "sbtest"
WORKLOADS = ("oltp_point_select", "oltp_read_only", "oltp_read_write")
TABLES = 4
PAN_PREFIX = "411111"


def luhn_pan(n: int) -> str:
    """A 16-digit Luhn-valid test number."""
    body = f"{PAN_PREFIX}{n:09d}"
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return body + str((10 - total % 10) % 10)


@contextlib.contextmanager
def mariadb() -> Iterator[tuple[str, int]]:
    from tests.support.mariadb_server import ROOT_PASSWORD, start_server

    server = start_server()
    try:
        yield ROOT_PASSWORD, server.port
    finally:
        server.stop()


def prepare(port: int, password: str, table_size: int, rows: int) -> None:
    import pymysql

    with pymysql.connect(host="127.0.0.1", port=port, user="root", password=password,
                         autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {DATABASE}")
        cur.execute(f"USE {DATABASE}")
        cur.execute("CREATE TABLE cards (id INT PRIMARY KEY, holder VARCHAR(40), "
                    "pan VARCHAR(19))")
        for start in range(1, rows + 1, 1000):
            cur.executemany("INSERT INTO cards VALUES (%s, %s, %s)",
                            [(i, f"holder {i}", luhn_pan(i))
                             for i in range(start, min(rows, start + 999) + 1)])
    done = subprocess.run(
        ["sysbench", "oltp_common", *sysbench_target("127.0.0.1", port, "root", password),
         f"--tables={TABLES}", f"--table-size={table_size}", "prepare"],
        capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise BenchmarkError(f"sysbench prepare failed: {done.stderr[-800:]}")


def sysbench_target(host: str, port: int, user: str, password: str) -> list[str]:
    return ["--db-driver=mysql", f"--mysql-host={host}", f"--mysql-port={port}",
            f"--mysql-user={user}", f"--mysql-password={password}", f"--mysql-db={DATABASE}",
            "--mysql-ssl=off"]


@contextlib.contextmanager
def ordinance_proxy(upstream: str, workdir: Path, labels: list[str],
                    policies: str) -> Iterator[tuple[subprocess.Popen[str], int, str]]:
    from engine.identity.users import mysql_native_verifier, mysql_sha2_verifier

    users = workdir / "users.yaml"
    users.write_text(json.dumps({"users": [{
        "name": USER, "mysql_native_password": mysql_native_verifier(USER_PASSWORD),
        "caching_sha2_password": mysql_sha2_verifier(USER_PASSWORD), "groups": ["dev"]}]}))
    audit = f"sqlite:///{workdir / 'audit.db'}"
    cmd = [sys.executable, "-m", "engine.cli", "proxy", "mysql", "--listen", "127.0.0.1:0",
           "--policies", str(Path(policies).resolve()), "--audit", audit, "--users",
           str(users), "--resource-name", DATABASE]
    for label in labels:
        cmd += ["--resource-label", label]
    env = dict(os.environ, ORDINANCE_UPSTREAM_URL=upstream)  # keeps the password out of ps
    log = open(workdir / "proxy.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO,
                            env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("{"):
            proc.wait(10)
            raise BenchmarkError(f"ordinance proxy mysql did not start (exit {proc.returncode})"
                                 f": {(workdir / 'proxy.log').read_text()[-800:]}")
        listening = json.loads(line)
        port = int(str(listening.get("listen") or listening.get("address")).rsplit(":", 1)[1])
        yield proc, port, audit[len("sqlite:///"):]
    finally:
        stop_process(proc, "ordinance proxy mysql")
        log.close()


_FIELD = {
    "transactions": re.compile(r"transactions:\s+(\d+)\s+\(([\d.]+) per sec"),
    "queries": re.compile(r"queries:\s+(\d+)\s+\(([\d.]+) per sec"),
    "errors": re.compile(r"ignored errors:\s+(\d+)"),
    "p99": re.compile(r"99th percentile:\s+([\d.]+)"),
    "avg": re.compile(r"avg:\s+([\d.]+)"),
}


def run_sysbench(workload: str, target: list[str], threads: int, duration: int,
                 table_size: int, pid: int | None) -> dict[str, float]:
    cmd = ["sysbench", workload, *target, f"--tables={TABLES}", f"--table-size={table_size}",
           f"--threads={threads}", f"--time={duration}", "--percentile=99", "--histogram=on",
           "--report-interval=0", "run"]
    cpu_before = cpu_seconds([pid]) if pid else None
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120,
                          check=False)
    cpu_after = cpu_seconds([pid]) if pid else None
    if done.returncode != 0:
        raise BenchmarkError(f"sysbench {workload} failed: {(done.stderr or done.stdout)[-800:]}")
    out = done.stdout
    found = {k: p.search(out) for k, p in _FIELD.items()}
    if found["transactions"] is None or found["queries"] is None:
        raise BenchmarkError(f"sysbench {workload}: no result in {out[-800:]}")
    result = {"tps": float(found["transactions"].group(2)),
              "qps": float(found["queries"].group(2)),
              "queries": float(found["queries"].group(1)),
              "errors": float(found["errors"].group(1)) if found["errors"] else 0.0,
              "p99_ms": float(found["p99"].group(1)) if found["p99"] else float("nan"),
              "avg_ms": float(found["avg"].group(1)) if found["avg"] else float("nan"),
              "median_ms": _histogram_median(out)}
    if cpu_before is not None and cpu_after is not None:
        result["proxy_cpu_us_per_statement"] = ((cpu_after - cpu_before) * 1e6
                                                / max(1.0, result["queries"]))
    return result


def _histogram_median(out: str) -> float:
    """The median latency from sysbench's `--histogram` (value | bar | count lines)."""
    buckets = [(float(v), int(c)) for v, c in re.findall(
        r"^\s*([\d.]+)\s*\|\**\s+(\d+)\s*$", out, re.MULTILINE)]
    total = sum(c for _, c in buckets)
    seen = 0
    for value, count in buckets:
        seen += count
        if seen * 2 >= total:
            return value
    return float("nan")


def masked_reads(direct: dict[str, Any], proxied: dict[str, Any], rows: int,
                 runs: int) -> dict[str, float]:
    import pymysql

    sql = f"SELECT id, holder, pan FROM cards WHERE id BETWEEN 1 AND {rows}"
    times: dict[str, list[float]] = {"direct": [], "ordinance": []}
    with pymysql.connect(**direct) as d, pymysql.connect(**proxied) as p:
        for _ in range(runs):
            for way, conn in (("direct", d), ("ordinance", p)):
                started = time.perf_counter()
                with conn.cursor() as cur:
                    cur.execute(sql)
                    got = cur.fetchall()
                times[way].append(time.perf_counter() - started)
                if len(got) != rows:
                    raise BenchmarkError(f"{way}: {len(got)} rows, expected {rows}")
                if way == "ordinance" and any(not r[2].startswith("*" * 12) for r in got):
                    raise BenchmarkError("a PAN came back unmasked through the proxy")
    out: dict[str, float] = {}
    for way, samples in times.items():
        out[f"{way}_median_ms"] = statistics.median(samples) * 1e3
        out[f"{way}_p99_ms"] = percentile(samples, 0.99) * 1e3
    out["ratio_median"] = out["ordinance_median_ms"] / out["direct_median_ms"]
    out["ratio_p99"] = out["ordinance_p99_ms"] / out["direct_p99_ms"]
    return out


def statement_records(audit_path: str) -> dict[str, int]:
    with sqlite3.connect(audit_path) as db:
        rows = db.execute("SELECT payload FROM ordinance_audit WHERE kind = 'statement'")
        effects: dict[str, int] = {}
        for (payload,) in rows:
            effect = str(json.loads(payload).get("effect"))
            effects[effect] = effects.get(effect, 0) + 1
    return effects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--duration", type=int, default=20, help="seconds per way (20)")
    parser.add_argument("--table-size", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=10_000, help="rows of the masked read")
    parser.add_argument("--runs", type=int, default=20, help="masked reads per way (20)")
    parser.add_argument("--label", action="append", default=None, metavar="KEY=VALUE")
    parser.add_argument("--policies", default=str(REPO / "policies"))
    parser.add_argument("--workloads", help="comma-separated subset of " + ",".join(WORKLOADS))
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures")
    args = parser.parse_args(argv)
    if shutil.which("sysbench") is None:
        print("sysbench is not installed (Debian: apt-get install -y sysbench)", file=sys.stderr)
        return 2
    workloads = args.workloads.split(",") if args.workloads else list(WORKLOADS)
    report: dict[str, Any] = {"load_average_before": os.getloadavg(), "threads": args.threads,
                              "duration_s": args.duration}
    workdir = Path(tempfile.mkdtemp(prefix="ordinance-load-mysql-"))
    try:
        with mariadb() as (root_password, port):
            prepare(port, root_password, args.table_size, args.rows)
            upstream = f"mysql://root:{root_password}@127.0.0.1:{port}/{DATABASE}"
            policies = bench_policies(args.policies, workdir)
            with ordinance_proxy(upstream, workdir, args.label or ["env=dev"],
                                 policies) as (proc, proxy_port, audit):
                direct = sysbench_target("127.0.0.1", port, "root", root_password)
                proxied = sysbench_target("127.0.0.1", proxy_port, USER, USER_PASSWORD)
                for workload in workloads:
                    d = run_sysbench(workload, direct, args.threads, args.duration,
                                     args.table_size, None)
                    o = run_sysbench(workload, proxied, args.threads, args.duration,
                                     args.table_size, proc.pid)
                    report[workload] = {"direct": d, "ordinance": o,
                                        "ratio_tps": o["tps"] / d["tps"]}
                    print(f"{workload}: direct {d['tps']:.0f} tps (median {d['median_ms']:.2f}"
                          f" ms, p99 {d['p99_ms']:.2f} ms), ordinance {o['tps']:.0f} tps "
                          f"(median {o['median_ms']:.2f} ms, p99 {o['p99_ms']:.2f} ms): "
                          f"{o['tps'] / d['tps']:.2f}x; proxy CPU "
                          f"{o.get('proxy_cpu_us_per_statement', float('nan')):.0f} us/statement",
                          flush=True)
                    # (sysbench's "ignored errors" are deadlocks it retries, direct too)
                report["masked_read"] = masked_reads(
                    {"host": "127.0.0.1", "port": port, "user": "root",
                     "password": root_password, "database": DATABASE},
                    {"host": "127.0.0.1", "port": proxy_port, "user": USER,
                     "password": USER_PASSWORD, "database": DATABASE}, args.rows, args.runs)
                m = report["masked_read"]
                print(f"masked {args.rows}-row read: direct median {m['direct_median_ms']:.1f} "
                      f"ms p99 {m['direct_p99_ms']:.1f} ms, ordinance median "
                      f"{m['ordinance_median_ms']:.1f} ms p99 {m['ordinance_p99_ms']:.1f} ms: "
                      f"{m['ratio_median']:.2f}x median, {m['ratio_p99']:.2f}x p99", flush=True)
                time.sleep(1.0)  # (the last records reach the trail)
                report["statement_records"] = statement_records(audit)
                report["proxy_log_errors"] = [
                    line for line in (workdir / "proxy.log").read_text().splitlines()
                    if "Traceback" in line or " ERROR " in line][:5]
        report["load_average_after"] = os.getloadavg()
        print(f"statement records by effect: {report['statement_records']}; load average "
              f"{report['load_average_before'][0]:.1f} -> {report['load_average_after'][0]:.1f}"
              " (2 cores, shared)")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        # (a read of cards is a `review` with a row budget that was never reached: it ran)
        if set(report["statement_records"]) - {"allow", "review"} or report["proxy_log_errors"]:
            print(f"a statement was denied, or the proxy logged errors: "
                  f"{report['statement_records']} {report['proxy_log_errors']}",
                  file=sys.stderr)
            return 1
        return 0
    except BenchmarkError as exc:
        print(f"load_mysql: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
