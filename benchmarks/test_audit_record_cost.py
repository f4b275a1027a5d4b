"""CPU cost of one statement record, the way the PostgreSQL proxy writes it (SQLite trail).

Three layers, each with its CPU time per event in the benchmark's `extra_info`:

- `prepare_event` for a record like the proxy's `statement` record of `pgbench -S` (validate,
  encode once, card-number precheck), and the same with a card number in it (the general path:
  JSON round trip, `scrub_document`, canonical encoding);
- `AuditLog.append_many` of prepared events in batches of 1, 2 and 8 (one transaction, WAL,
  synchronous=FULL; and with `os` durability, synchronous=NORMAL and the WAL synced within
  10 ms): the commit's fixed cost shared by the batch;
- `AuditRecorder` end to end: N coroutines on one event loop, each awaiting its record in a
  loop (a short sleep stands in for the upstream round trip), so the writer thread and the
  loop run as in the proxy; `events_per_commit` says how many records shared a commit.

CPU time is the process's (or the thread's) user + system time, not wall time, so the figures
mean something on a shared machine; wall-clock stats are pytest-benchmark's. Run:
`pytest benchmarks/test_audit_record_cost.py --benchmark-only`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from engine.audit import AuditLog, open_audit_log, prepare_event
from engine.audit.recorder import AuditRecorder

STATEMENT: dict[str, Any] = {
    "text": "SELECT abalance FROM pgbench_accounts WHERE aid = 734521;", "effect": "allow",
    "reasons": [], "masked": [], "approval": None, "policy_revision": "3f9c2a1b7d0e4c55",
    "resource": "bench", "database": "bench", "tag": "SELECT 1", "rows": 1, "error": None,
    "duration_ms": 0.412, "suspended": None,
}
WITH_PAN = {**STATEMENT, "text": "SELECT * FROM cards WHERE pan = '4111 1111 1111 1111'"}
IDS = {"subject": "alice", "session_id": "5ab0c9d3e1f2a4b6c8d0e2f4",
       "decision_id": "01KQ3V7X9R2M4N6P8S0T2W4Y6Z"}


def _cpu_per_call(fn: Any, calls: int, per_call: int = 1) -> float:
    start = time.thread_time()
    for _ in range(calls):
        fn()
    return round((time.thread_time() - start) / calls / per_call * 1e6, 2)


@pytest.fixture(params=["fsync", "os"])
def audit(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """The SQLite trail with each `--audit-durability`."""
    with open_audit_log(f"sqlite:///{tmp_path}/audit.db", durability=request.param) as log:
        yield log


@pytest.mark.parametrize("payload", [STATEMENT, WITH_PAN], ids=["statement", "with-pan"])
def test_prepare_event(benchmark: Any, payload: dict[str, Any]) -> None:
    def prepare() -> Any:
        return prepare_event("statement", payload, IDS["subject"], IDS["session_id"],
                             IDS["decision_id"])

    event = benchmark(prepare)
    benchmark.extra_info["cpu_us_per_event"] = _cpu_per_call(prepare, 5000)
    assert "4111 1111 1111 1111" not in event.payload_json


@pytest.mark.parametrize("batch", [1, 2, 8])
def test_append_many_prepared(benchmark: Any, audit: AuditLog, batch: int) -> None:
    events = [prepare_event("statement", STATEMENT, IDS["subject"], f"s{i}",
                            IDS["decision_id"]) for i in range(batch)]
    benchmark.pedantic(audit.append_many, args=(events,), rounds=50, warmup_rounds=5)
    benchmark.extra_info["cpu_us_per_event"] = _cpu_per_call(
        lambda: audit.append_many(events), 200, batch)
    assert audit.verify().ok


@pytest.mark.parametrize("appenders", [1, 8])
def test_recorder_end_to_end(benchmark: Any, audit: AuditLog, appenders: int) -> None:
    recorder = AuditRecorder(audit).start()
    per_appender = 100

    async def appender(i: int) -> None:
        for _ in range(per_appender):
            await asyncio.sleep(0.0002)
            await recorder.append("statement", dict(STATEMENT), subject=IDS["subject"],
                                  session_id=f"s{i}", decision_id=IDS["decision_id"])

    async def run() -> None:
        await asyncio.gather(*(appender(i) for i in range(appenders)))

    cpu: list[float] = []

    def round_() -> None:
        start = time.process_time()  # CLOCK_PROCESS_CPUTIME_ID: os.times() counts 10 ms ticks
        asyncio.run(run())
        cpu.append(time.process_time() - start)

    try:
        benchmark.pedantic(round_, rounds=3, warmup_rounds=1)
    finally:
        recorder.close()
    events = appenders * per_appender
    benchmark.extra_info["process_cpu_us_per_event"] = round(min(cpu) / events * 1e6, 1)
    benchmark.extra_info["events_per_commit"] = round(recorder.events / recorder.commits, 2)
    assert audit.verify().ok
