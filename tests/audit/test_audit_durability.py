"""`os` durability: records acknowledged once the OS has them, synced within the delay, and a
failing sync refusing every further record (fail closed). The kill -9 tests are in
test_audit_concurrency.py (audit writer) and tests/service/test_durability.py (`serve`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from engine.audit import AuditWriteError, open_audit_log
from engine.audit.durability import OS_SYNC_DELAY, DelayedSync
from engine.service.decision_log import JsonLinesSink


def _wait(predicate: object, limit: float = 5.0) -> float:
    started = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - started < limit, "timed out"
        time.sleep(0.001)
    return time.monotonic() - started


def test_os_durability_commits_without_a_sync_and_syncs_within_the_delay(
        store_url: str) -> None:
    with open_audit_log(store_url, durability="os") as log:
        assert log._os_sync is not None
        if store_url.startswith("sqlite:"):  # the writer's own connection does not sync
            assert log._conn.one("PRAGMA synchronous") == (1,)  # NORMAL
        else:
            assert log._conn.one("SHOW synchronous_commit") == ("off",)
        before = log._os_sync.syncs
        record = log.append("statement", {"n": 1})
        elapsed = _wait(lambda: log._os_sync.syncs > before)  # type: ignore[union-attr]
        assert elapsed < 1.0  # the delay (10 ms) plus one sync, on a loaded machine
        assert log.verify().ok
    with open_audit_log(store_url) as again:  # and a default (fsync) writer extends it
        assert [r.seq for r in again.tail(1)] == [record.seq]
        again.append("statement", {"n": 2})
        assert again.verify().ok


def test_a_failing_sync_refuses_every_further_record(store_url: str) -> None:
    fd, other = os.pipe()  # fdatasync on a pipe fails with EINVAL: a real failed sync
    with open_audit_log(store_url, durability="os") as log:
        assert log._os_sync is not None
        log._os_sync.close()
        log._os_sync = DelayedSync(lambda: os.fdatasync(fd), delay=0.001)
        log.append("statement", {"n": 1})  # written to the OS; its sync will fail
        _wait(lambda: log._os_sync.broken is not None)  # type: ignore[union-attr]
        with pytest.raises(AuditWriteError, match="cannot sync"):
            log.append("statement", {"n": 2})
        with pytest.raises(AuditWriteError, match="cannot sync"):
            log.prune()
        assert [r.payload for r in log.tail(5)] == [{"n": 1}]
    os.close(fd)
    os.close(other)


def test_delayed_sync_gathers_writes_and_syncs_on_close(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    calls: list[float] = []

    def sync() -> None:
        os.fdatasync(fd)
        calls.append(time.monotonic())

    syncer = DelayedSync(sync)
    try:
        started = time.monotonic()
        for _ in range(50):  # written together: one sync for all of them
            syncer.written()
        _wait(lambda: calls)
        assert calls[0] - started >= OS_SYNC_DELAY * 0.9 and syncer.syncs == 1
        time.sleep(OS_SYNC_DELAY * 5)
        assert syncer.syncs == 1  # nothing written since: no sync
        syncer.written()
    finally:
        syncer.close()
        os.close(fd)
    assert syncer.syncs == 2 and syncer.broken is None  # close() synced the last write


def test_json_lines_os_durability(tmp_path: Path) -> None:
    sink = JsonLinesSink(tmp_path / "d.jsonl", durability="os")
    assert sink._later is not None
    sink.write_text('{"n":1}\n')
    assert (tmp_path / "d.jsonl").read_text() == '{"n":1}\n'  # in the OS at once
    _wait(lambda: sink._later.syncs >= 1)  # type: ignore[union-attr]
    sink.close()
    assert JsonLinesSink(os.devnull, durability="os")._later is None  # nothing to sync


def test_close_while_a_sync_is_pending_returns_at_once(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    syncer = DelayedSync(lambda: os.fdatasync(fd), delay=0.2)
    syncer.written()
    time.sleep(0.05)  # the thread is in its delay
    started = time.monotonic()
    syncer.close()
    assert time.monotonic() - started < 2.0 and syncer.syncs >= 1
    os.close(fd)


def test_an_unknown_durability_is_a_configuration_error(tmp_path: Path) -> None:
    from engine.audit import AuditConfigError

    with pytest.raises(AuditConfigError, match="fsync, os"):
        open_audit_log(f"sqlite:///{tmp_path}/a.db", durability="none")  # type: ignore[arg-type]
