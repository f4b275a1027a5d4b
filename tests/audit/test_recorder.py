"""The group-commit recorder's blocking path (`append_blocking`), on a real SQLite trail.

The decision service's handler threads commit their own records, leader/follower: these tests
hold the leader's commit at a gate so the followers provably queue behind it, then check that
they are committed together, that a failure reaches every waiter, and that coroutines and
threads share one recorder and one intact chain.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.audit import AuditLog, AuditWriteError, InvalidAuditEvent, open_audit_log
from engine.audit.recorder import AuditRecorder


class GatedTrail:
    """A real audit trail whose commits wait for `gate` (and fail while `fail` is set)."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail = False
        self.batches: list[int] = []

    def append_many(self, events: list[Any]) -> Any:
        self.entered.set()
        assert self.gate.wait(10)
        if self.fail:
            raise AuditWriteError("disk full")
        self.batches.append(len(events))
        return self.log.append_many(events)


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[GatedTrail]:
    log = open_audit_log(f"sqlite:///{tmp_path}/audit.db")
    yield GatedTrail(log)
    log.close()


def _wait(condition: Any) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _start(recorder: AuditRecorder, n: int, errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            recorder.append_blocking("decision", {"n": n}, decision_id=f"d{n}")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_threads_arriving_during_a_commit_are_committed_together(trail: GatedTrail) -> None:
    recorder = AuditRecorder(trail).start()  # type: ignore[arg-type]
    errors: list[BaseException] = []
    leader = _start(recorder, 0, errors)
    assert trail.entered.wait(10)  # the first thread is committing its own record
    followers = [_start(recorder, n, errors) for n in range(1, 6)]
    _wait(lambda: recorder.backlog == 5)
    trail.gate.set()
    for thread in (leader, *followers):
        thread.join(10)
    recorder.close()
    assert not errors and trail.batches == [1, 5]
    records = list(trail.log.iter_records())
    assert sorted(r.decision_id for r in records) == [f"d{n}" for n in range(6)]
    assert trail.log.verify().ok


def test_a_failed_commit_fails_every_waiter_and_the_next_one_recovers(
        trail: GatedTrail) -> None:
    recorder = AuditRecorder(trail).start()  # type: ignore[arg-type]
    trail.fail = True
    errors: list[BaseException] = []
    leader = _start(recorder, 0, errors)
    assert trail.entered.wait(10)
    followers = [_start(recorder, n, errors) for n in range(1, 4)]
    _wait(lambda: recorder.backlog == 3)
    trail.gate.set()
    for thread in (leader, *followers):
        thread.join(10)
    assert len(errors) == 4 and all(isinstance(e, AuditWriteError) for e in errors)
    assert recorder.broken is not None and "disk full" in recorder.broken
    trail.fail = False
    recorder.append_blocking("decision", {"n": 9}, decision_id="d9")
    assert recorder.broken is None
    with pytest.raises(InvalidAuditEvent):  # refused in the caller's thread, never queued
        recorder.append_blocking("Not A Kind", {})
    recorder.close()
    with pytest.raises(AuditWriteError):
        recorder.append_blocking("decision", {"n": 10})
    assert [r.decision_id for r in trail.log.iter_records()] == ["d9"]


def test_a_waiter_gives_up_after_its_timeout(trail: GatedTrail) -> None:
    recorder = AuditRecorder(trail).start()  # type: ignore[arg-type]
    errors: list[BaseException] = []
    leader = _start(recorder, 0, errors)
    assert trail.entered.wait(10)
    with pytest.raises(AuditWriteError, match="did not commit within"):
        recorder.append_blocking("decision", {"n": 1}, timeout=0.2)
    trail.gate.set()
    leader.join(10)
    recorder.close()
    assert not errors


def test_close_commits_the_threads_still_waiting(trail: GatedTrail) -> None:
    recorder = AuditRecorder(trail).start()  # type: ignore[arg-type]
    errors: list[BaseException] = []
    leader = _start(recorder, 0, errors)
    assert trail.entered.wait(10)
    followers = [_start(recorder, n, errors) for n in range(1, 3)]
    _wait(lambda: recorder.backlog == 2)
    closer = threading.Thread(target=recorder.close)
    closer.start()
    trail.gate.set()
    for thread in (leader, *followers, closer):
        thread.join(10)
    assert not errors
    assert sorted(r.decision_id for r in trail.log.iter_records()) == ["d0", "d1", "d2"]


def test_coroutines_and_threads_share_one_recorder_and_one_chain(trail: GatedTrail) -> None:
    trail.gate.set()
    recorder = AuditRecorder(trail).start()  # type: ignore[arg-type]
    errors: list[BaseException] = []

    async def coroutines() -> None:
        await asyncio.gather(*(recorder.append("statement", {"i": i}) for i in range(20)))

    threads = [_start(recorder, n, errors) for n in range(20)]
    asyncio.run(coroutines())
    for thread in threads:
        thread.join(10)
    recorder.close()
    assert not errors
    records = list(trail.log.iter_records())
    assert len(records) == 40 and trail.log.verify().ok
