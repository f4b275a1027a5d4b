"""Sustained `AuditLog.append` throughput (events/s) on SQLite and PostgreSQL.

Each append is one durable transaction (SQLite WAL with synchronous=FULL; PostgreSQL with
synchronous_commit on, against the throwaway test cluster, which runs with fsync=off, so its
figures are an upper bound for a real disk). Shapes: one sequential writer; 4 threads sharing
one `AuditLog`; 4 processes each with its own; `append_many` batches of 100 (one commit).
The events/s figure of each case is stored in the benchmark's `extra_info`. Run:
`pytest benchmarks/test_audit_throughput.py --benchmark-only` (PostgreSQL from
`ORDINANCE_TEST_PG_DSN` or a throwaway cluster).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from engine.audit import AuditEvent, AuditLog, open_audit_log

EVENT = {
    "text": "SELECT id, pan, expiry FROM cards WHERE customer_id = 42 LIMIT 10",
    "effect": "allow", "rows": 10, "duration_ms": 1.7, "policy_revision": "3f9c2a1",
    "masks": [{"column": "pan", "method": "pan"}],
    "reasons": [{"policy": "pci/select_pan", "message": "PAN column is masked"}],
}
WRITERS = 4
PER_WRITER = 100


@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    dsn = os.environ.get("ORDINANCE_TEST_PG_DSN")
    if dsn:
        yield dsn
        return
    from tests.support.pg_cluster import ClusterUnavailable, start_cluster

    try:
        cluster = start_cluster()
    except ClusterUnavailable as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield cluster.dsn
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def audit_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/bench.db"
        return
    import psycopg

    server = request.getfixturevalue("pg_server")
    name = "bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield server.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _append_n(log: AuditLog, n: int, tag: str) -> None:
    for _ in range(n):
        log.append("statement", EVENT, subject=tag, session_id="bench")


def _report(benchmark: Any, events_per_round: int) -> float:
    rate = events_per_round / benchmark.stats.stats.mean
    benchmark.extra_info["events_per_s"] = round(rate)
    return rate


def test_append_sequential(benchmark: Any, audit_url: str) -> None:
    with open_audit_log(audit_url) as log:
        benchmark.pedantic(_append_n, args=(log, PER_WRITER, "seq"), rounds=10,
                           warmup_rounds=1)
        rate = _report(benchmark, PER_WRITER)
        assert log.verify().ok
    assert rate > 50


def test_append_many_batches_of_100(benchmark: Any, audit_url: str) -> None:
    batch = [AuditEvent("statement", EVENT, "batch", "bench")] * PER_WRITER
    with open_audit_log(audit_url) as log:
        benchmark.pedantic(log.append_many, args=(batch,), rounds=10, warmup_rounds=1)
        rate = _report(benchmark, PER_WRITER)
        assert log.verify().ok
    assert rate > 500


def test_append_4_threads(benchmark: Any, audit_url: str) -> None:
    with open_audit_log(audit_url) as log:
        def round_() -> None:
            threads = [threading.Thread(target=_append_n, args=(log, PER_WRITER, f"t{i}"))
                       for i in range(WRITERS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        benchmark.pedantic(round_, rounds=5, warmup_rounds=1)
        rate = _report(benchmark, WRITERS * PER_WRITER)
        assert log.verify().ok
    assert rate > 50


_WORKER_LOG: AuditLog | None = None


def _worker_open(url: str) -> None:
    global _WORKER_LOG
    _WORKER_LOG = open_audit_log(url)


def _worker_append(n: int) -> int:
    assert _WORKER_LOG is not None
    _append_n(_WORKER_LOG, n, f"p{os.getpid()}")
    return n


def test_append_4_processes(benchmark: Any, audit_url: str) -> None:
    open_audit_log(audit_url).close()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(WRITERS, initializer=_worker_open, initargs=(audit_url,)) as pool:
        pool.map(_worker_append, [1] * WRITERS)  # every worker connected before timing
        benchmark.pedantic(lambda: pool.map(_worker_append, [PER_WRITER] * WRITERS),
                           rounds=5, warmup_rounds=1)
    rate = _report(benchmark, WRITERS * PER_WRITER)
    with open_audit_log(audit_url) as log:
        result = log.verify()
        assert result.ok and result.count == WRITERS * (1 + 6 * PER_WRITER)
    assert rate > 50
