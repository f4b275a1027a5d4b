"""The audit trail on both backends: chaining, tamper detection, scrubbing, retention, export."""

from __future__ import annotations

import itertools
import stat
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.audit import (
    AuditConfigError,
    AuditEvent,
    AuditStoreUnavailable,
    AuditWriteError,
    InvalidAuditEvent,
    RetentionError,
    open_audit_log,
)
from engine.audit.base import AuditLog
from engine.audit.chain import GENESIS_HASH, AuditRecord, canonical_json, parse_ts, record_hash
from tests.audit.conftest import RawSql

PAN = "4111 1111 1111 1111"


@pytest.fixture
def log(store_url: str) -> AuditLog:
    with open_audit_log(store_url) as audit:
        yield audit


def fill(log: AuditLog, n: int = 5) -> list[AuditRecord]:
    return [log.append("statement", {"text": f"SELECT {i}", "i": i}, subject="alice@example.com",
                       session_id="s-1") for i in range(1, n + 1)]


def forge(seq: int, prev_hash: str, payload: dict[str, object]) -> AuditRecord:
    """A record a tamperer who knows the algorithm could compute."""
    rec = AuditRecord(seq, f"01FORGED{seq:018d}", "2030-01-01T00:00:00.000000Z", "statement",
                      "mallory", None, None, payload, prev_hash, "")
    return AuditRecord(**{**rec.hashed_fields(), "hash": record_hash(rec.hashed_fields())})


def insert_raw(raw_sql: RawSql, rec: AuditRecord) -> None:
    raw_sql("INSERT INTO ordinance_audit (seq, id, ts, kind, subject, session_id, decision_id, "
            "payload, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rec.seq, rec.id, rec.ts, rec.kind, rec.subject, rec.session_id, rec.decision_id,
            canonical_json(rec.payload), rec.prev_hash, rec.hash)


# --- chaining ----------------------------------------------------------------------------------


def test_records_are_chained_and_verify(log: AuditLog) -> None:
    records = fill(log)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == GENESIS_HASH
    for prev, rec in itertools.pairwise(records):
        assert rec.prev_hash == prev.hash
        assert rec.id > prev.id and rec.ts >= prev.ts
    assert all(r.hash == record_hash(r.hashed_fields()) for r in records)
    assert list(log.iter_records()) == records
    result = log.verify()
    assert (result.ok, result.count, result.first_bad_seq) == (True, 5, None)


def test_append_many_is_one_all_or_nothing_batch(log: AuditLog) -> None:
    first = log.append("session.start", {}, session_id="s")
    batch = log.append_many([AuditEvent("statement", {"text": f"SELECT {i}"}, "bob", "s")
                             for i in range(3)])
    assert [r.seq for r in batch] == [2, 3, 4] and batch[0].prev_hash == first.hash
    assert batch[2].subject == "bob" and list(log.iter_records())[1:] == batch
    with pytest.raises(InvalidAuditEvent):
        log.append_many([AuditEvent("statement", {}), AuditEvent("Bad Kind", {})])
    assert log.append_many([]) == [] and log.last_seq() == 4 and log.verify().ok


def test_failed_append_records_nothing_and_the_log_recovers(log: AuditLog,
                                                           raw_sql: RawSql) -> None:
    records = fill(log, 2)
    insert_raw(raw_sql, forge(3, records[-1].hash, {"text": "squatting on seq 3"}))
    with pytest.raises(AuditWriteError, match="nothing recorded"):
        log.append("session.start", {})
    with pytest.raises(AuditWriteError):
        log.append_many([AuditEvent("statement", {}), AuditEvent("statement", {})])
    assert raw_sql("SELECT seq FROM ordinance_audit_head") == [(2,)]
    raw_sql("DELETE FROM ordinance_audit WHERE seq = 3")
    assert log.append("session.start", {}).seq == 3
    assert log.verify().ok


def test_empty_trail_verifies(log: AuditLog) -> None:
    assert log.verify().ok and log.verify().count == 0


def test_reopen_continues_the_chain(store_url: str) -> None:
    with open_audit_log(store_url) as first:
        a = first.append("session.start", {})
    with open_audit_log(store_url) as second:
        b = second.append("session.end", {})
        assert (b.seq, b.prev_hash) == (a.seq + 1, a.hash)
        assert second.verify().ok


def test_pan_is_scrubbed_before_storage(log: AuditLog, raw_sql: RawSql) -> None:
    rec = log.append("statement", {"text": f"SELECT * FROM cards WHERE pan = '{PAN}'",
                                   "rows": [[4111111111111111]], PAN: "key"},
                     subject=f"user {PAN}", session_id=PAN)
    stored = raw_sql("SELECT subject, session_id, payload FROM ordinance_audit")
    dump = repr(stored) + repr(rec)
    for clear in ("4111 1111 1111 1111", "4111111111111111"):
        assert clear not in dump
    assert "1111" in stored[0][2]  # masked, last four kept
    assert log.verify().ok


def test_invalid_events_are_refused(log: AuditLog) -> None:
    with pytest.raises(InvalidAuditEvent):
        log.append("Bad Kind", {})
    with pytest.raises(InvalidAuditEvent):
        log.append("statement", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(InvalidAuditEvent):
        log.append("statement", {"x": float("nan")})
    with pytest.raises(InvalidAuditEvent):
        log.append("statement", {"blob": "x" * (1 << 20)})
    with pytest.raises(InvalidAuditEvent, match="not valid Unicode"):
        log.append("statement", {"text": "bad \ud800 surrogate"})
    with pytest.raises(InvalidAuditEvent, match="NUL"):
        log.append("statement", {}, subject="a\x00b")
    nul = log.append("statement", {"text": "NUL \x00 inside a payload is kept"})
    assert nul.payload["text"] == "NUL \x00 inside a payload is kept"
    rec = log.append("decision", {"at": datetime(2024, 1, 2, tzinfo=UTC), "tags": {"b", "a"}})
    assert rec.payload == {"at": "2024-01-02T00:00:00.000000Z", "tags": ["a", "b"]}
    assert log.last_seq() == 2 and log.verify().ok


# --- tampering ---------------------------------------------------------------------------------


def test_edited_record_is_named(log: AuditLog, raw_sql: RawSql) -> None:
    fill(log)
    raw_sql("UPDATE ordinance_audit SET payload = ? WHERE seq = 3", '{"i":3,"text":"SELECT 0"}')
    result = log.verify()
    assert not result.ok
    assert result.first_bad_seq == 3
    assert "hash mismatch (record edited)" in (result.problem or "")


def test_edited_and_rehashed_record_is_named(log: AuditLog, raw_sql: RawSql) -> None:
    records = fill(log)
    forged = forge(3, records[1].hash, {"i": 3, "text": "SELECT harmless"})
    raw_sql("DELETE FROM ordinance_audit WHERE seq = 3")
    insert_raw(raw_sql, forged)
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "prev_hash does not match previous record" in (result.problem or "")


def test_deleted_record_is_named(log: AuditLog, raw_sql: RawSql) -> None:
    fill(log)
    raw_sql("DELETE FROM ordinance_audit WHERE seq = 3")
    result = log.verify()
    assert (result.ok, result.first_bad_seq, result.count) == (False, 3, 2)
    assert "sequence gap (record deleted)" in (result.problem or "")


def test_deleted_first_records_are_named(log: AuditLog, raw_sql: RawSql) -> None:
    fill(log)
    raw_sql("DELETE FROM ordinance_audit WHERE seq <= 2")
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 1)
    assert "records 1-2 missing" in (result.problem or "")


def test_truncated_tail_is_named(log: AuditLog, raw_sql: RawSql) -> None:
    fill(log)
    raw_sql("DELETE FROM ordinance_audit WHERE seq >= 4")
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "tail truncated" in (result.problem or "")


def test_inserted_record_is_named(log: AuditLog, raw_sql: RawSql) -> None:
    records = fill(log)
    # Make room at seq 3 (in two steps so no primary key collides), then slip in a record whose
    # hash is valid and which links to record 2, as a knowledgeable tamperer would.
    raw_sql("UPDATE ordinance_audit SET seq = seq + 1000 WHERE seq >= 3")
    raw_sql("UPDATE ordinance_audit SET seq = seq - 999 WHERE seq >= 1000")
    raw_sql("UPDATE ordinance_audit_head SET seq = 6")
    insert_raw(raw_sql, forge(3, records[1].hash, {"text": "GRANT ALL TO mallory"}))
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "record inserted" in (result.problem or "")


def test_record_added_outside_the_log_is_named(log: AuditLog, raw_sql: RawSql) -> None:
    records = fill(log)
    insert_raw(raw_sql, forge(6, records[-1].hash, {"text": "nothing to see"}))
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 6)
    assert "outside the log" in (result.problem or "")


def test_reordered_records_are_named(log: AuditLog, raw_sql: RawSql) -> None:
    fill(log)
    raw_sql("UPDATE ordinance_audit SET seq = -3 WHERE seq = 3")
    raw_sql("UPDATE ordinance_audit SET seq = 3 WHERE seq = 4")
    raw_sql("UPDATE ordinance_audit SET seq = 4 WHERE seq = -3")
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "reordered" in (result.problem or "")


# --- retention ---------------------------------------------------------------------------------


def test_prune_leaves_a_verifiable_trail(log: AuditLog) -> None:
    old = fill(log, 5)
    fill(log, 3)
    result = log.prune(timedelta(days=1), now=parse_ts(old[-1].ts) + timedelta(days=1,
                                                                            microseconds=1))
    assert result.pruned == 5
    assert result.checkpoint is not None
    assert (result.checkpoint.through_seq, result.checkpoint.through_hash) == (5, old[-1].hash)
    assert result.checkpoint.seal_alg == "sha256"
    remaining = list(log.iter_records())
    assert [r.seq for r in remaining] == [6, 7, 8, 9]
    assert remaining[-1].kind == "audit.pruned" and remaining[-1].payload["pruned"] == 5
    verified = log.verify()
    assert (verified.ok, verified.count, verified.checkpoint_seq) == (True, 4, 5)
    log.append("session.start", {})
    assert log.verify().ok
    # nothing old enough: nothing removed, no checkpoint, no event
    assert log.prune().pruned == 0 and log.last_seq() == 10


def test_prune_twice_and_deleting_after_checkpoint_is_caught(log: AuditLog,
                                                             raw_sql: RawSql) -> None:
    fill(log, 4)
    later = datetime.now(UTC) + timedelta(days=2)
    assert log.prune(timedelta(days=1), now=later).pruned == 4
    fill(log, 2)
    assert log.prune(timedelta(days=1), now=datetime.now(UTC) + timedelta(days=2)).pruned == 3
    assert log.verify().ok
    assert len(raw_sql("SELECT * FROM ordinance_audit_checkpoints")) == 2
    fill(log, 2)
    raw_sql("DELETE FROM ordinance_audit WHERE seq = (SELECT min(seq) FROM ordinance_audit)")
    result = log.verify()
    assert not result.ok and "sequence gap" in (result.problem or "")


def test_hmac_sealed_checkpoint(store_url: str, raw_sql: RawSql) -> None:
    key = b"an audit key of sufficient length"
    with open_audit_log(store_url, hmac_key=key) as log:
        fill(log, 3)
        result = log.prune(timedelta(days=1), now=datetime.now(UTC) + timedelta(days=2))
        assert result.checkpoint is not None and result.checkpoint.seal_alg == "hmac-sha256"
        assert log.verify().ok
    with open_audit_log(store_url, hmac_key=b"some other key, also long") as wrong:
        assert "checkpoint seal mismatch" in (wrong.verify().problem or "")
    with open_audit_log(store_url) as keyless:
        assert "configure the audit key" in (keyless.verify().problem or "")
    with pytest.raises(AuditConfigError, match="16 bytes"):
        open_audit_log(store_url, hmac_key=b"short")
    # a forger swaps in a plain-hash checkpoint claiming more was pruned: refused under the key
    raw_sql("UPDATE ordinance_audit_checkpoints SET seal_alg = 'sha256'")
    with open_audit_log(store_url, hmac_key=key) as log:
        assert "not HMAC-sealed" in (log.verify().problem or "")


def test_edited_checkpoint_is_detected(log: AuditLog, raw_sql: RawSql) -> None:
    fill(log, 3)
    log.prune(timedelta(days=1), now=datetime.now(UTC) + timedelta(days=2))
    raw_sql("UPDATE ordinance_audit_checkpoints SET pruned_count = 1")
    assert "checkpoint seal mismatch (checkpoint edited)" in (log.verify().problem or "")


def test_retention_limits(store_url: str) -> None:
    with pytest.raises(RetentionError, match="7 years"):
        open_audit_log(store_url, retention=timedelta(days=7 * 366))
    with open_audit_log(store_url, retention=timedelta(days=7 * 365)) as log:
        assert log.retention == timedelta(days=2555)
        with pytest.raises(RetentionError):
            log.prune(timedelta(days=3000))
        with pytest.raises(RetentionError):
            log.prune(timedelta(0))
        assert log.prune().pruned == 0


# --- reading -----------------------------------------------------------------------------------


def test_iter_records_filters(log: AuditLog) -> None:
    log.append("session.start", {}, subject="alice", session_id="a")
    log.append("statement", {"text": "SELECT 1"}, subject="alice", session_id="a")
    middle = datetime.now(UTC)
    time.sleep(0.002)
    log.append("session.start", {}, subject="bob", session_id="b")
    log.append("statement", {"text": "SELECT 2"}, subject="bob", session_id="b")
    assert [r.seq for r in log.iter_records(subject="bob")] == [3, 4]
    assert [r.seq for r in log.iter_records(session_id="a", kind="statement")] == [2]
    assert [r.seq for r in log.iter_records(since=middle)] == [3, 4]
    assert [r.seq for r in log.iter_records(until=middle)] == [1, 2]
    assert [r.seq for r in log.iter_records(after_seq=1, limit=2)] == [2, 3]
    assert [r.seq for r in log.tail(2)] == [3, 4]


def test_iter_records_pages_through_many(log: AuditLog) -> None:
    fill(log, 1001)
    assert [r.seq for r in log.iter_records()] == list(range(1, 1002))
    assert log.verify().count == 1001


def test_wait_for_new_wakes_on_append(store_url: str) -> None:
    with open_audit_log(store_url) as reader, open_audit_log(store_url) as writer:
        assert reader.wait_for_new(0, 0.05) == []
        timer = threading.Timer(0.3, lambda: writer.append("session.start", {}))
        start = time.monotonic()
        timer.start()
        got = reader.wait_for_new(0, 5)
        elapsed = time.monotonic() - start
        timer.join()
        assert [r.seq for r in got] == [1]
        assert 0.25 < elapsed < 1.5


def test_missing_store_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(AuditStoreUnavailable, match="no database"):
        open_audit_log(f"sqlite:///{tmp_path}/missing.db", create=False)
    with pytest.raises(AuditStoreUnavailable, match="unsupported"):
        open_audit_log("mysql://localhost/audit")
    with pytest.raises(AuditStoreUnavailable, match="malformed"):
        open_audit_log("sqlite:audit.db")
    with pytest.raises(AuditStoreUnavailable, match="cannot connect"):
        open_audit_log("postgresql://nobody:pw@127.0.0.1:1/none")


def test_relative_sqlite_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_audit_log("sqlite:///audit.db") as log:
        log.append("session.start", {})
    assert (tmp_path / "audit.db").exists()


def test_sqlite_file_is_owner_only(tmp_path: Path) -> None:
    with open_audit_log(f"sqlite:///{tmp_path}/audit.db") as log:
        log.append("session.start", {})
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes["audit.db"] == 0o600 and modes["audit.db-wal"] == 0o600


def test_store_without_a_trail_is_unavailable(store_url: str) -> None:
    if store_url.startswith("sqlite"):
        open(store_url[len("sqlite:///"):], "wb").close()  # an empty file, no tables
    with pytest.raises(AuditStoreUnavailable, match="no audit trail"):
        open_audit_log(store_url, create=False)
