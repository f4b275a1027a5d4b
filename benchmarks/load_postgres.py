"""One-run report for the PostgreSQL proxy: pgbench direct, through PgBouncer, through Ordinance.

    python -m benchmarks.load_postgres [--clients 8] [--duration 25] [--scale 10] [--runs 30]
                                       [--label env=dev] [--breakdown] [--profile DIR]

Everything is started by this script and stopped by it, on errors and Ctrl-C too:

- a throwaway PostgreSQL cluster (`tests/support/pg_cluster.py`: the installed server
  binaries, SCRAM-SHA-256 on TCP, `fsync=on` as users run it; as root it runs as the
  `postgres` user), with a
  database `bench` initialised by `pgbench -i -s SCALE` and a `cards` table of `--rows` rows
  (`id`, `holder`, `pan`: Luhn-valid test numbers);
- PgBouncer (`pgbouncer` on PATH or in /usr/sbin; Debian: `apt-get install -y pgbouncer`) in
  session mode, from a generated ini and userlist, `auth_type = scram-sha-256` like the server;
- `ordinance proxy postgres` with the shipped PCI pack (`--policies policies`), an SQLite audit
  trail in a temporary directory, a users file holding `alice` (groups `dev`, a SCRAM verifier;
  pgbench logs in with her password through PGPASSWORD), `--resource-name bench` and the
  `--label`s (default `env=dev`: a development database).

In ONE run, at `--clients` clients (`pgbench -j 2`), each workload goes to the ways in turn for
`--duration` seconds each: `pgbench -S` (simple protocol: every statement text differs by its
literal), `pgbench -S -M prepared`, and pgbench's default TPC-B-like script. The report gives
TPS and average latency per way, the Ordinance/PgBouncer and PgBouncer/direct TPS ratios, and
the CPU time the middle process spent per transaction (from /proc; for Ordinance also the part
of its `audit-recorder` thread, the audit trail's writer). `--breakdown` adds three
proxies built like the CLI's with parts left out (`relay`: the loop alone, every statement
allowed by a stub; `no-audit`: the PCI pack's decisions and masking, no statement records;
`fsync-log`: as `no-audit`, with each record made durable by the proxy's group-commit
recorder in a plain file, `fdatasync` per commit, no hash chain and no SQLite), which shows
where the proxy's time goes, and `ordinance-os`: the CLI's proxy with `--audit-durability os`
(records written to the OS before the result, synced within 10 ms; its own SQLite trail).
`--breakdown` also measures, for direct, PgBouncer and both Ordinance proxies: a single client
(`pgbench -S -c 1`, per-transaction latencies from `pgbench -l`: median, p99 and the latency
added over direct) and `\\copy pgbench_accounts to /dev/null` with psql (`--copy-runs`, best
and median).

Then a 10,000-row read with one masked column, `SELECT id, holder, pan FROM cards WHERE id
BETWEEN 1 AND N` (the proxies run with a copy of the policies whose row budget,
`bulk_row_limit`, is raised to 10**9, so the read is counted but never held), and the same rows
without `pan`, `--runs` times per way with psycopg, interleaved: median and p99 (with 30
runs, the slowest) against direct. Through Ordinance, alice (not in `pci-pan-viewers`) must
get every PAN masked.

Every statement must have been decided by policy: the statement records that each Ordinance
run added to the audit trail are counted by effect (with the distinct decision ids) and
compared with pgbench's transactions; the records per commit (records of one commit share
their `ts`) show how well group commit shares the fsyncs. A statement denied, held or
failed, a failed transaction, an unmasked PAN or an error in a log of a process we started
fails the run (exit 1).

`--profile DIR` then repeats each workload through Ordinance under `py-spy record` (not
during the measured runs; `pip install py-spy`) and prints where the proxy's time goes (self
and inclusive time of the hottest frames); the raw collapsed stacks are kept in DIR.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATABASE = "bench"
USER = "alice"
USER_PASSWORD = "alice-bench-secret"
CLK_TCK = os.sysconf("SC_CLK_TCK")
RECORDER_THREAD = "audit-recorder"
WAYS = ("direct", "pgbouncer", "ordinance")
OS_WAY = "ordinance-os"
AUDIT_DB = {"fsync": "audit.db", "os": "audit-os.db"}
"""Each Ordinance proxy's SQLite trail in the work directory, by its --audit-durability."""
WORKLOADS: dict[str, list[str]] = {
    "select-only, simple (-S)": ["-S"],
    "select-only, prepared (-S -M prepared)": ["-S", "-M", "prepared"],
    "TPC-B-like (default)": [],
}
PGBOUNCER_HINT = ("pgbouncer not found (looked on PATH and in /usr/sbin). Install it: "
                  "`apt-get install -y pgbouncer` on Debian/Ubuntu, `brew install pgbouncer` "
                  "on macOS; or name the binary with --pgbouncer PATH.")


class BenchmarkError(RuntimeError):
    """Something this benchmark started did not work; the message says what."""


@dataclass
class Way:
    name: str
    host: str
    port: int
    user: str
    password: str
    pid: int | None = None  # the middle process, for its CPU time

    def dsn(self) -> str:
        return (f"host={self.host} port={self.port} dbname={DATABASE} user={self.user} "
                f"password={self.password} sslmode=disable connect_timeout=10")


@dataclass
class PgbenchResult:
    tps: float
    latency_ms: float
    transactions: int
    failed: int
    cpu_s: float | None = None
    recorder_cpu_s: float | None = None
    """Of `cpu_s`, the part of the proxy's `audit-recorder` thread (the audit trail's writer)."""
    audit: dict[str, Any] = field(default_factory=dict)


# -- helpers ------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def thread_cpu_seconds(pid: int, name: str) -> float | None:
    """utime + stime of the threads of `pid` named `name`; None when it has none."""
    total = None
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            comm, _, rest = stat.partition("(")[2].rpartition(")")
            if comm == name:
                fields = rest.split()
                total = (total or 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def wait_port(host: str, port: int, proc: subprocess.Popen[Any] | None, what: str,
              limit: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchmarkError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchmarkError(f"{what} did not listen on {host}:{port} within {limit:.0f}s")


def stop_process(proc: subprocess.Popen[Any], what: str) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            print(f"{what} ignored SIGTERM for 20s; killing it", file=sys.stderr)
            proc.kill()
            proc.wait(10)


def luhn_pan(n: int) -> str:
    body = f"4{n:014d}"
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return body + str((10 - total % 10) % 10)


# -- what this script starts ----------------------------------------------------------------

@contextlib.contextmanager
def cluster() -> Iterator[Any]:
    from tests.support.pg_cluster import ClusterUnavailable, start_cluster

    try:
        pg = start_cluster(fsync=True)
    except ClusterUnavailable as exc:
        raise BenchmarkError(f"cannot start a PostgreSQL cluster: {exc}") from None
    try:
        yield pg
    finally:
        pg.stop()


def prepare_database(pg: Any, pgbench: str, scale: int, rows: int) -> str:
    import psycopg

    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DATABASE}")
    dsn = pg.dsn.rsplit("/", 1)[0] + f"/{DATABASE}"
    print(f"pgbench -i -s {scale} ...", file=sys.stderr, flush=True)
    init = subprocess.run([pgbench, "-i", "-s", str(scale), "-q", dsn], capture_output=True,
                          text=True, timeout=900, check=False)
    if init.returncode != 0:
        raise BenchmarkError(f"pgbench -i failed: {init.stderr.strip()[-800:]}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE cards (id int PRIMARY KEY, holder text NOT NULL, pan text)")
        with conn.cursor().copy("COPY cards (id, holder, pan) FROM STDIN") as copy:
            for i in range(1, rows + 1):
                copy.write_row((i, f"holder {i}", luhn_pan(i)))
        conn.execute("VACUUM ANALYZE")
    return dsn


@contextlib.contextmanager
def pgbouncer(binary: str, pg: Any, port: int) -> Iterator[subprocess.Popen[str]]:
    from tests.support.pg_cluster import SUPERUSER, SUPERUSER_PASSWORD

    workdir = tempfile.mkdtemp(prefix="ordinance-bench-pgbouncer-")
    try:
        (Path(workdir) / "userlist.txt").write_text(f'"{SUPERUSER}" "{SUPERUSER_PASSWORD}"\n')
        (Path(workdir) / "pgbouncer.ini").write_text(f"""\
[databases]
{DATABASE} = host=127.0.0.1 port={pg.port} dbname={DATABASE}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {workdir}/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 50
ignore_startup_parameters = extra_float_digits
logfile = {workdir}/pgbouncer.log
""")
        cmd = [binary]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root; -u drops to the user
            shutil.chown(workdir, "postgres")
            for name in ("userlist.txt", "pgbouncer.ini"):
                shutil.chown(Path(workdir) / name, "postgres")
            cmd += ["-u", "postgres"]
        cmd.append(f"{workdir}/pgbouncer.ini")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        try:
            try:
                wait_port("127.0.0.1", port, proc, "pgbouncer")
            except BenchmarkError as exc:
                log = Path(workdir, "pgbouncer.log")
                tail = log.read_text()[-800:] if log.exists() else ""
                err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
                raise BenchmarkError(f"{exc}: {err.strip()} {tail.strip()}") from None
            yield proc
        finally:
            stop_process(proc, "pgbouncer")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


BENCH_ROW_BUDGET = 10**9


def bench_policies(policies: str, workdir: Path) -> str:
    """A copy of the policies with the PCI pack's row budget (`bulk_row_limit`) raised to
    BENCH_ROW_BUDGET: the masked read's runs fetch more card rows in one session than the
    shipped 100, and must measure masking (with the budget's row counting), not an approval.
    Every proxy of the run (the variants too) uses it."""
    target = workdir / "policies"
    shutil.copytree(policies, target)
    data = target / "settings" / "pci" / "data.yaml"
    if data.exists():
        text, found = re.subn(r"^bulk_row_limit:.*$", f"bulk_row_limit: {BENCH_ROW_BUDGET}",
                              data.read_text(), flags=re.MULTILINE)
        if not found:
            raise BenchmarkError(f"{data} has no bulk_row_limit to raise")
        data.write_text(text)
    return str(target)


@contextlib.contextmanager
def ordinance_proxy(upstream: str, workdir: Path, labels: list[str], policies: str,
                    durability: str = "fsync"
                    ) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    from engine.identity.users import format_verifier, scram_auth_info

    users = workdir / "users.yaml"
    users.write_text(json.dumps({"users": [{
        "name": USER, "scram": format_verifier(scram_auth_info(USER_PASSWORD)),
        "groups": ["dev"]}]}))
    audit = f"sqlite:///{workdir / AUDIT_DB[durability]}"  # absolute: sqlite:////tmp/...
    cmd = [sys.executable, "-m", "engine.cli", "proxy", "postgres", "--listen",
           "127.0.0.1:0", "--policies", str(Path(policies).resolve()), "--audit", audit,
           "--users", str(users), "--resource-name", DATABASE, "--audit-durability",
           durability]
    for label in labels:
        cmd += ["--resource-label", label]
    env = dict(os.environ, ORDINANCE_UPSTREAM_URL=upstream)  # keeps the password out of ps
    log = open(workdir / f"proxy-{durability}.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO,
                            env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("{"):
            proc.wait(10)
            raise BenchmarkError(f"ordinance proxy postgres did not start (exit "
                                 f"{proc.returncode}): "
                                 f"{(workdir / f'proxy-{durability}.log').read_text()[-800:]}")
        yield proc, json.loads(line)
    finally:
        stop_process(proc, "ordinance proxy")
        log.close()


# -- measurements ---------------------------------------------------------------------------

def run_pgbench(pgbench: str, way: Way, flags: list[str], clients: int, duration: int
                ) -> PgbenchResult:
    env = dict(os.environ, PGPASSWORD=way.password, PGSSLMODE="disable",
               PGCONNECT_TIMEOUT="10")
    cmd = [pgbench, "-h", way.host, "-p", str(way.port), "-U", way.user, "-n",
           "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(duration), *flags,
           DATABASE]
    cpu_before = cpu_seconds(way.pid) if way.pid else None
    recorder_before = thread_cpu_seconds(way.pid, RECORDER_THREAD) if way.pid else None
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 120,
                         check=False)
    cpu = cpu_seconds(way.pid) - cpu_before if way.pid and cpu_before is not None else None
    recorder_after = thread_cpu_seconds(way.pid, RECORDER_THREAD) if way.pid else None
    recorder = (recorder_after - recorder_before
                if recorder_after is not None and recorder_before is not None else None)
    out = run.stdout

    def number(pattern: str) -> float:
        match = re.search(pattern, out)
        if match is None:
            raise BenchmarkError(f"pgbench {' '.join(flags)} via {way.name} (exit "
                                 f"{run.returncode}): no {pattern!r} in its output:\n"
                                 f"{out[-600:]}\n{run.stderr[-1200:]}")
        return float(match.group(1))

    failed = re.search(r"number of failed transactions: (\d+)", out)
    return PgbenchResult(
        tps=number(r"tps = ([\d.]+) \(without initial connection time\)"),
        latency_ms=number(r"latency average = ([\d.]+) ms"),
        transactions=int(number(r"number of transactions actually processed: (\d+)")),
        failed=int(failed.group(1)) if failed else 0, cpu_s=cpu, recorder_cpu_s=recorder)


def audit_last_seq(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM ordinance_audit")
                   .fetchone()[0])


def audit_counts(db: Path, after_seq: int) -> dict[str, Any]:
    """What the trail gained after `after_seq`: statement records by effect, those with an
    error, distinct decision ids, other records by kind, up to 5 texts not allowed or failed,
    and the commits (the records of one commit share their `ts`)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        counts: dict[str, Any] = collections.Counter()
        for kind, effect, error, n in conn.execute(
                "SELECT kind, json_extract(payload, '$.effect'), "
                "json_extract(payload, '$.error') IS NOT NULL, count(*) "
                "FROM ordinance_audit WHERE seq > ? GROUP BY 1, 2, 3", (after_seq,)):
            if kind == "statement":
                counts["statements"] += n
                counts[f"effect:{effect}"] += n
                if error:
                    counts["with_error"] += n
            else:
                counts[kind] += n
        counts = dict(counts)
        counts["commits"] = conn.execute(
            "SELECT count(DISTINCT ts) FROM ordinance_audit WHERE seq > ?",
            (after_seq,)).fetchone()[0]
        counts["decision_ids"] = conn.execute(
            "SELECT count(DISTINCT decision_id) FROM ordinance_audit WHERE seq > ? AND "
            "kind = 'statement'", (after_seq,)).fetchone()[0]
        counts["not_allowed"] = [r[0] for r in conn.execute(
            "SELECT DISTINCT json_extract(payload, '$.effect') || ': ' || "
            "json_extract(payload, '$.text') || ' -> ' || "
            "coalesce(json_extract(payload, '$.error'), '') "
            "FROM ordinance_audit WHERE seq > ? AND kind = 'statement' AND "
            "(json_extract(payload, '$.effect') != 'allow' OR "
            "json_extract(payload, '$.error') IS NOT NULL) LIMIT 5", (after_seq,))]
        return counts


def single_client(pgbench: str, ways: list[Way], duration: int, workdir: Path
                  ) -> dict[str, dict[str, float]]:
    """`pgbench -S -c 1` per way, each transaction's latency logged (`-l`): median, p99 and
    mean in ms, and the CPU time of the middle process per transaction."""
    out: dict[str, dict[str, float]] = {}
    for way in ways:
        prefix = workdir / f"latency-{way.name}"
        env = dict(os.environ, PGPASSWORD=way.password, PGSSLMODE="disable")
        cmd = [pgbench, "-h", way.host, "-p", str(way.port), "-U", way.user, "-n", "-S",
               "-c", "1", "-j", "1", "-T", str(duration), "-l", f"--log-prefix={prefix}",
               DATABASE]
        cpu_before = cpu_seconds(way.pid) if way.pid else None
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=workdir,
                             timeout=duration + 120, check=False)
        cpu = cpu_seconds(way.pid) - cpu_before if way.pid and cpu_before is not None else None
        if run.returncode != 0:
            raise BenchmarkError(f"pgbench -S -c 1 via {way.name}: {run.stderr[-800:]}")
        latencies = [int(line.split()[2]) / 1000 for log in workdir.glob(f"{prefix.name}.*")
                     for line in log.read_text().splitlines() if line.strip()]
        for log in workdir.glob(f"{prefix.name}.*"):
            log.unlink()
        if not latencies:
            raise BenchmarkError(f"pgbench -l via {way.name} logged no transactions")
        out[way.name] = {"median_ms": statistics.median(latencies),
                         "p99_ms": percentile(latencies, 0.99),
                         "mean_ms": statistics.fmean(latencies),
                         "transactions": len(latencies)}
        if cpu is not None:
            out[way.name]["cpu_us_per_tx"] = 1e6 * cpu / len(latencies)
    return out


COPY_OUT = "\\copy pgbench_accounts to /dev/null"


def copy_out(psql: str, ways: list[Way], runs: int) -> dict[str, dict[str, float]]:
    """`psql -c '\\copy pgbench_accounts to /dev/null'` per way, `runs` times interleaved:
    best and median seconds."""
    times: dict[str, list[float]] = {w.name: [] for w in ways}
    for _ in range(runs):
        for way in ways:
            env = dict(os.environ, PGPASSWORD=way.password, PGSSLMODE="disable")
            started = time.perf_counter()
            run = subprocess.run([psql, "-X", "-q", "-h", way.host, "-p", str(way.port), "-U",
                                  way.user, "-d", DATABASE, "-c", COPY_OUT], env=env,
                                 capture_output=True, text=True, timeout=600, check=False)
            elapsed = time.perf_counter() - started
            if run.returncode != 0 or run.stderr.strip():
                raise BenchmarkError(f"{COPY_OUT} via {way.name} failed: "
                                     f"{(run.stderr or run.stdout)[-800:]}")
            times[way.name].append(elapsed)
    return {name: {"best_s": min(t), "median_s": statistics.median(t)}
            for name, t in times.items()}


MASKED_QUERY = "SELECT id, holder, pan FROM cards WHERE id BETWEEN 1 AND {rows}"
PLAIN_QUERY = "SELECT id, holder FROM cards WHERE id BETWEEN 1 AND {rows}"


def masked_select(ways: list[Way], rows: int, runs: int) -> dict[str, dict[str, Any]]:
    """The masked read (and, for comparison, the same rows without the masked column: only
    scanned by the card-number backstop) per way, interleaved; median and p99 in ms."""
    import psycopg

    queries = {"masked": MASKED_QUERY.format(rows=rows),
               "unmasked": PLAIN_QUERY.format(rows=rows)}
    conns = {w.name: psycopg.connect(w.dsn(), autocommit=True) for w in ways}
    try:
        for name, conn in conns.items():  # check, and warm caches (catalog, decisions)
            for _ in range(3):
                result = conn.execute(queries["masked"]).fetchall()
                conn.execute(queries["unmasked"]).fetchall()
            if len(result) != rows:
                raise BenchmarkError(f"{name}: {len(result)} rows, expected {rows}")
            pans = [r[2] for r in result]
            clear = sum(1 for i, p in enumerate(pans, 1) if p == luhn_pan(i))
            if name == "ordinance" and clear:
                raise BenchmarkError(f"ordinance returned {clear} unmasked PANs to {USER}")
            if name == "ordinance" and not all(p and p.endswith(luhn_pan(i)[-4:])
                                               for i, p in enumerate(pans, 1)):
                raise BenchmarkError(f"ordinance: unexpected masked values, e.g. {pans[:2]}")
        samples: dict[str, list[float]] = {f"{q} {name}": [] for q in queries for name in conns}
        for _ in range(runs):
            for q, query in queries.items():
                for name, conn in conns.items():
                    started = time.perf_counter()
                    conn.execute(query).fetchall()
                    samples[f"{q} {name}"].append((time.perf_counter() - started) * 1000)
        example = conns["ordinance"].execute(
            "SELECT pan FROM cards WHERE id = 1").fetchone() if "ordinance" in conns else None
    finally:
        for conn in conns.values():
            conn.close()
    report: dict[str, dict[str, Any]] = {
        key: {"median_ms": statistics.median(s), "p99_ms": percentile(s, 0.99)}
        for key, s in samples.items()}
    if example is not None:
        report["masked ordinance"]["example_pan"] = example[0]
    return report


# -- the breakdown: the same proxy with parts left out (not a product configuration) --------

VARIANTS = {
    "relay": "the proxy loop alone: every statement allowed by a stub hook, nothing recorded",
    "no-audit": "the PCI pack decides and masks as in `ordinance proxy postgres`, but the "
                "statement records are not written",
    "fsync-log": "as `no-audit`, and the records go through the proxy's group-commit recorder "
                 "to a plain file, one `fdatasync` per commit (no hash chain, no SQLite): the "
                 "cheapest durable record",
}


class FsyncLog:
    """The `fsync-log` variant's trail: each batch appended to a file, then `fdatasync`."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append_many(self, events: list[Any]) -> list[Any]:
        os.write(self.fd, "".join(e.payload_json + "\n" for e in events).encode())
        os.fdatasync(self.fd)
        return []


def serve_variant(mode: str, users: str) -> int:
    """`--serve-variant MODE`: a PostgresProxy on 127.0.0.1:0 built like the CLI's, with
    the audit trail (and for `relay` the policy bridge) left out. Prints one JSON line with
    the port; SIGTERM stops it."""
    import asyncio

    from adapters.enforcement.hooks import StatementVerdict
    from adapters.enforcement.records import Resource
    from adapters.postgres.bridge import PolicyBridge
    from adapters.postgres.catalog import Catalog
    from adapters.postgres.proxy import PostgresProxy, ProxyConfig
    from engine.client import InProcessDecisionClient
    from engine.engine import Engine
    from engine.identity.users import load_users
    from engine.policy import load_policy_set

    upstream = os.environ["ORDINANCE_UPSTREAM_URL"]

    from engine.audit.recorder import AuditRecorder

    class NoRecorder:
        async def append(self, *args: Any, **kwargs: Any) -> None:
            return None

    async def allow(sql: str, ctx: Any) -> StatementVerdict:
        return StatementVerdict.allow()

    async def run() -> None:
        catalog = None
        hooks: dict[str, Any]
        if mode == "relay":
            hooks = {"decide": allow}
        else:
            catalog = Catalog(upstream)
            engine = Engine(load_policy_set(str(Path(users).parent / "policies")))
            recorder: Any = NoRecorder()
            if mode == "fsync-log":
                recorder = AuditRecorder(FsyncLog(Path(users).parent / "fsync.log")  # type: ignore[arg-type]
                                         ).start()
            bridge = PolicyBridge(InProcessDecisionClient(engine),
                                  resource=Resource(DATABASE, {"env": "dev"}, type="postgres"),
                                  catalog=catalog,
                                  recorder=recorder, approvals=None)
            hooks = bridge.hooks()
        proxy = PostgresProxy(ProxyConfig(upstream_url=upstream, directory=load_users(users),
                                          **hooks))
        await proxy.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print(json.dumps({"listen": f"127.0.0.1:{proxy.port}"}), flush=True)
        await stop.wait()
        await proxy.close()
        if catalog is not None:
            await catalog.close()

    asyncio.run(run())
    return 0


@contextlib.contextmanager
def variant_proxy(mode: str, upstream: str, workdir: Path) -> Iterator[Way]:
    env = dict(os.environ, ORDINANCE_UPSTREAM_URL=upstream)
    log = open(workdir / f"variant-{mode}.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.load_postgres",
                             "--serve-variant", mode, "--users", str(workdir / "users.yaml")],
                            stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("{"):
            proc.wait(10)
            raise BenchmarkError(f"variant {mode} did not start: "
                                 f"{(workdir / f'variant-{mode}.log').read_text()[-800:]}")
        host, _, port = json.loads(line)["listen"].rpartition(":")
        yield Way(mode, host, int(port), USER, USER_PASSWORD, pid=proc.pid)
    finally:
        stop_process(proc, f"variant {mode}")
        log.close()


# -- profiling ------------------------------------------------------------------------------

def profile(pgbench: str, way: Way, clients: int, duration: int, outdir: Path) -> str:
    """py-spy over the proxy for each workload; a text summary of the hottest frames."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return "py-spy not found: `pip install py-spy` to profile the proxy"
    outdir.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    for label, flags in WORKLOADS.items():
        slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
        raw = outdir / f"{slug}.txt"
        spy_proc = subprocess.Popen(
            [spy, "record", "--pid", str(way.pid), "--duration", str(duration), "--rate",
             "200", "--format", "raw", "--output", str(raw), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)
            result = run_pgbench(pgbench, way, flags, clients, duration)
            spy_proc.wait(duration + 60)
        finally:
            if spy_proc.poll() is None:
                spy_proc.kill()
                spy_proc.wait()
        if not raw.exists():
            err = spy_proc.stderr.read() if spy_proc.stderr else ""
            text.write(f"\n{label}: py-spy wrote nothing: {err.strip()[-400:]}\n")
            continue
        text.write(f"\n{label} (under py-spy: {result.tps:.0f} tps); collapsed stacks in "
                   f"{raw}\n")
        text.write(summarise_stacks(raw))
    return text.getvalue()


def summarise_stacks(raw: Path, top: int = 14) -> str:
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r" \(/[^)]*/((?:site-packages|lib/python3[^/]*|work/main)/)?",
                         " (", f) for f in stack.split(";")]
        self_time[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "  (no samples)\n"
    out = io.StringIO()
    out.write(f"  {total} samples; self time:\n")
    for frame, n in self_time.most_common(top):
        out.write(f"    {100 * n / total:5.1f}%  {frame}\n")
    out.write("  inclusive time (frames under the event loop):\n")
    shown = 0
    for frame, n in inclusive.most_common():
        if any(s in frame for s in ("asyncio", "<module>", "run_module", "_run_code",
                                    "engine/cli", "main (", "run (")):
            continue
        out.write(f"    {100 * n / total:5.1f}%  {frame}\n")
        shown += 1
        if shown == top:
            break
    return out.getvalue()


# -- the report -----------------------------------------------------------------------------

def print_report(results: dict[str, dict[str, PgbenchResult]],
                 select: dict[str, dict[str, Any]], clients: int, duration: int,
                 labels: list[str], rows: int, runs: int) -> None:
    print(f"\npgbench, {clients} clients, {duration}s per way, in one run "
          f"(Ordinance: PCI pack, resource labels {', '.join(labels) or 'none'})\n")
    head = (f"{'workload':40} {'direct':>17} {'pgbouncer':>17} {'ordinance':>17} "
            f"{'ord/pgb':>8} {'pgb/dir':>8}")
    print(head)
    print(f"{'':40} " + " ".join(f"{'tps':>8} {'lat ms':>8}" for _ in WAYS))
    for label, by_way in results.items():
        cells = " ".join(f"{by_way[w].tps:8.0f} {by_way[w].latency_ms:8.2f}" for w in WAYS)
        ratio = by_way["ordinance"].tps / by_way["pgbouncer"].tps
        base = by_way["pgbouncer"].tps / by_way["direct"].tps
        print(f"{label:40} {cells} {ratio:7.2f}x {base:7.2f}x")
    print("\nCPU time of the middle process per transaction:")
    for label, by_way in results.items():
        parts = []
        for w in ("pgbouncer", "ordinance"):
            r = by_way[w]
            if r.cpu_s is not None and r.transactions:
                parts.append(f"{w} {1e6 * r.cpu_s / r.transactions:7.0f} us")
            if r.recorder_cpu_s is not None and r.transactions:
                parts.append(f"of which its {RECORDER_THREAD} thread "
                             f"{1e6 * r.recorder_cpu_s / r.transactions:.0f} us")
        print(f"  {label:40} " + ", ".join(parts))
    variants = [v for v in VARIANTS if any(v in by_way for by_way in results.values())]
    if variants:
        print("\nWhere the proxy's time goes (same run; the proxy with parts left out):")
        for v in variants:
            print(f"  {v}: {VARIANTS[v]}")
        cols = [*variants, "ordinance"]
        print(f"  {'workload':40} " + " ".join(f"{c:>24}" for c in cols))
        print(f"  {'':40} " + " ".join(f"{'tps':>8} {'CPU us/tx':>15}" for _ in cols))
        for label, by_way in results.items():
            row = []
            for c in cols:
                r = by_way[c]
                cpu = 1e6 * r.cpu_s / r.transactions if r.cpu_s and r.transactions else 0
                row.append(f"{r.tps:8.0f} {cpu:15.0f}")
            print(f"  {label:40} " + " ".join(row))
    print("\nEvery statement decided by policy (statement records added to the audit trail):")
    for label, by_way in results.items():
        r = by_way["ordinance"]
        a = r.audit
        effects = ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in sorted(a.items())
                            if k.startswith("effect:"))
        per_tx = a.get("statements", 0) / r.transactions if r.transactions else 0
        records = a.get("statements", 0) + a.get("session.start", 0) + a.get("session.end", 0)
        per_commit = records / a["commits"] if a.get("commits") else 0
        print(f"  {label:40} {a.get('statements', 0):7d} records ({effects}; "
              f"{a.get('with_error', 0)} with an error; {a.get('decision_ids', 0)} decisions) "
              f"for {r.transactions} transactions ({per_tx:.3f} per transaction); "
              f"{per_commit:.1f} records per commit")
    if select:
        print(f"\nmasked: {MASKED_QUERY.format(rows='N')} (pan masked through Ordinance)")
        print(f"unmasked: {PLAIN_QUERY.format(rows='N')} (scanned by the PAN backstop)")
        print(f"N = {rows} rows, psycopg, {runs} runs per way, interleaved; ms:")
        for key, s in select.items():
            base = select[key.split()[0] + " direct"]["median_ms"]
            extra = f"   e.g. pan = {s['example_pan']}" if "example_pan" in s else ""
            print(f"  {key:20} median {s['median_ms']:8.2f}  p99 {s['p99_ms']:8.2f}  "
                  f"{s['median_ms'] / base:5.2f}x direct{extra}")


def print_breakdown(results: dict[str, dict[str, PgbenchResult]],
                    single: dict[str, dict[str, float]],
                    copies: dict[str, dict[str, float]]) -> None:
    """Issue 19's table: CPU per transaction, TPS against PgBouncer with both durabilities,
    single-client latency over direct, the \\copy against direct."""
    if not single:
        return
    print("\nIssue 19 (one run; --audit-durability fsync = the default, os = written to the OS "
          "before the result, synced within 10 ms):")
    for label, by_way in results.items():
        base = by_way["pgbouncer"].tps
        cells = []
        for name in ("ordinance", OS_WAY):
            r = by_way.get(name)
            if r is None:
                continue
            cpu = f", {1e6 * r.cpu_s / r.transactions:.0f} us CPU/tx" if (
                r.cpu_s and r.transactions) else ""
            rec = f" (recorder thread {1e6 * r.recorder_cpu_s / r.transactions:.0f})" if (
                r.recorder_cpu_s and r.transactions) else ""
            cells.append(f"{name} {r.tps:.0f} tps = {r.tps / base:.2f}x PgBouncer{cpu}{rec}")
        print(f"  {label:40} " + "; ".join(cells))
    direct = single["direct"]
    print("  single client (pgbench -S -c 1), ms per transaction:")
    for name, s in single.items():
        added = (f"  added over direct: median {s['median_ms'] - direct['median_ms']:+.3f}, "
                 f"mean {s['mean_ms'] - direct['mean_ms']:+.3f}") if name != "direct" else ""
        cpu = f", {s['cpu_us_per_tx']:.0f} us CPU/tx" if "cpu_us_per_tx" in s else ""
        print(f"    {name:14} median {s['median_ms']:.3f}  p99 {s['p99_ms']:.3f}  "
              f"mean {s['mean_ms']:.3f}{cpu}{added}")
    if copies:
        print(f"  {COPY_OUT} (psql), seconds:")
        best = copies["direct"]["best_s"]
        for name, c in copies.items():
            print(f"    {name:14} best {c['best_s']:.3f}  median {c['median_s']:.3f}  "
                  f"{c['best_s'] / best:.2f}x direct (best)")


def scan_log(path: Path, what: str, problems: list[str]) -> None:
    """Report the ERROR / Traceback lines a process we started logged."""
    if not path.exists():
        return
    lines = path.read_text(errors="replace").splitlines()
    bad = [line for line in lines if " ERROR " in line or "Traceback" in line
           or "Error:" in line]
    if bad:
        problems.append(f"{what} logged {len(bad)} error line(s), first: {bad[0][:300]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=int, default=25, help="seconds per way (25)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i -s (10)")
    parser.add_argument("--rows", type=int, default=10_000, help="rows of the masked read")
    parser.add_argument("--runs", type=int, default=30, help="masked reads per way (30)")
    parser.add_argument("--copy-runs", type=int, default=3,
                        help="--breakdown: runs of the \\copy per way (3)")
    parser.add_argument("--label", action="append", default=None, metavar="KEY=VALUE",
                        help="resource label for the proxy (repeatable; default env=dev)")
    parser.add_argument("--policies", default=str(REPO / "policies"))
    parser.add_argument("--pgbouncer", help="the pgbouncer binary (default: PATH, /usr/sbin)")
    parser.add_argument("--workloads", help="comma-separated subset: simple,prepared,tpcb")
    parser.add_argument("--breakdown", action="store_true",
                        help="also run each workload through the proxy with parts left out: "
                             + "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()))
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="afterwards, profile the proxy with py-spy for each workload")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures")
    parser.add_argument("--serve-variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--users", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_variant:
        return serve_variant(args.serve_variant, args.users)
    labels = args.label if args.label is not None else ["env=dev"]

    pgbench = shutil.which("pgbench")
    bouncer = args.pgbouncer or shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if pgbench is None:
        print("pgbench not found: install the PostgreSQL client tools (Debian: "
              "`apt-get install -y postgresql-client`)", file=sys.stderr)
        return 2
    if bouncer is None or not os.access(bouncer, os.X_OK):
        print(PGBOUNCER_HINT, file=sys.stderr)
        return 2
    workloads = dict(WORKLOADS)
    if args.workloads:
        keys = dict(zip(("simple", "prepared", "tpcb"), WORKLOADS, strict=True))
        workloads = {keys[k]: WORKLOADS[keys[k]] for k in args.workloads.split(",")}

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # also when started with SIGINT ignored (`&`)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.support.pg_cluster import SUPERUSER, SUPERUSER_PASSWORD, free_port

    problems: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            workdir = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="ordinance-bench-pg-")))

            def scan_logs() -> None:  # once every process below has stopped
                for log in sorted(workdir.glob("*.log")):
                    scan_log(log, log.stem, problems)

            stack.callback(scan_logs)
            pg = stack.enter_context(cluster())
            upstream = prepare_database(pg, pgbench, args.scale, args.rows)
            bouncer_port = free_port()
            bouncer_proc = stack.enter_context(pgbouncer(bouncer, pg, bouncer_port))
            policies = bench_policies(args.policies, workdir)
            proxy_proc, ready = stack.enter_context(
                ordinance_proxy(upstream, workdir, labels, policies))
            host, _, port = ready["listen"].rpartition(":")
            ways = [
                Way("direct", "127.0.0.1", pg.port, SUPERUSER, SUPERUSER_PASSWORD),
                Way("pgbouncer", "127.0.0.1", bouncer_port, SUPERUSER, SUPERUSER_PASSWORD,
                    pid=bouncer_proc.pid),
                Way("ordinance", host, int(port), USER, USER_PASSWORD, pid=proxy_proc.pid),
            ]
            audit_dbs = {"ordinance": workdir / AUDIT_DB["fsync"]}
            if args.breakdown:
                os_proc, os_ready = stack.enter_context(
                    ordinance_proxy(upstream, workdir, labels, policies, durability="os"))
                os_host, _, os_port = os_ready["listen"].rpartition(":")
                ways.append(Way(OS_WAY, os_host, int(os_port), USER, USER_PASSWORD,
                                pid=os_proc.pid))
                audit_dbs[OS_WAY] = workdir / AUDIT_DB["os"]
                ways += [stack.enter_context(variant_proxy(mode, upstream, workdir))
                         for mode in VARIANTS]
            results: dict[str, dict[str, PgbenchResult]] = {}
            for label, flags in workloads.items():
                results[label] = {}
                for way in ways:
                    print(f"{label} via {way.name} ...", file=sys.stderr, flush=True)
                    audit_db = audit_dbs.get(way.name)
                    before = audit_last_seq(audit_db) if audit_db else 0
                    r = run_pgbench(pgbench, way, flags, args.clients, args.duration)
                    if audit_db:
                        time.sleep(0.5)  # session.end records of the closed sessions
                        r.audit = audit_counts(audit_db, before)
                        unexpected = set(r.audit) - {
                            "statements", "effect:allow", "session.start", "session.end",
                            "decision_ids", "not_allowed", "commits"}
                        if unexpected or r.audit.get("with_error") or r.audit["not_allowed"]:
                            problems.append(f"{label}: not every statement was allowed and "
                                            f"ran: {r.audit}")
                    if r.failed:
                        problems.append(f"{label} via {way.name}: {r.failed} failed "
                                        f"transactions")
                    results[label][way.name] = r
            print(f"{args.rows}-row reads ...", file=sys.stderr, flush=True)
            select = masked_select(ways[:3], args.rows, args.runs)
            single: dict[str, dict[str, float]] = {}
            copies: dict[str, dict[str, float]] = {}
            if args.breakdown:
                products = [w for w in ways if w.name in (*WAYS, OS_WAY)]
                print("single client ...", file=sys.stderr, flush=True)
                single = single_client(pgbench, products, args.duration, workdir)
                psql = shutil.which("psql") or str(Path(pgbench).with_name("psql"))
                print(f"{COPY_OUT} ...", file=sys.stderr, flush=True)
                copies = copy_out(psql, [w for w in products if w.name != "pgbouncer"],
                                  args.copy_runs)
            print_report(results, select, args.clients, args.duration, labels,
                         args.rows, args.runs)
            print_breakdown(results, single, copies)
            if args.json:
                args.json.write_text(json.dumps({
                    "clients": args.clients, "duration_s": args.duration, "labels": labels,
                    "pgbench": {label: {w: vars(r) for w, r in by_way.items()}
                                for label, by_way in results.items()},
                    "masked_select": select, "single_client": single,
                    "copy_out": copies}, indent=2))
            if args.profile:
                print("\nprofiling the proxy with py-spy (not part of the figures above) ...",
                      file=sys.stderr, flush=True)
                print(profile(pgbench, ways[2], args.clients, args.duration, args.profile))
    except BenchmarkError as exc:
        print(f"load_postgres: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("load_postgres: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    if problems:
        print("\nPROBLEMS:\n  " + "\n  ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
