"""The sealed head, anchors, and naming the kind of damage, on both backends.

Each test tampers with the database directly (`raw_sql`), as someone with write access to it
but without the audit key would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.audit import AuditWriteError, open_audit_log
from engine.audit.base import AuditLog
from engine.audit.chain import Anchor, AuditRecord, compute_hash, seal_head
from engine.cli import main
from tests.audit.conftest import RawSql
from tests.audit.test_audit_log import fill, forge, insert_raw

KEY = b"the operator's audit key, long enough"


@pytest.fixture
def sealed(store_url: str) -> AuditLog:
    with open_audit_log(store_url, hmac_key=KEY) as audit:
        yield audit


def cut_tail_and_rewrite_head(raw_sql: RawSql, records: list[AuditRecord], keep: int) -> None:
    """Delete every record after `keep` and point the head at the new last record."""
    last = records[keep - 1]
    raw_sql("DELETE FROM ordinance_audit WHERE seq > ?", keep)
    raw_sql("UPDATE ordinance_audit_head SET seq = ?, hash = ?, last_id = ?, last_ts = ?",
            last.seq, last.hash, last.id, last.ts)


def test_every_commit_seals_the_head(sealed: AuditLog, raw_sql: RawSql) -> None:
    assert sealed.verify().ok  # the empty trail's head is sealed too
    fill(sealed, 3)
    [(seq, digest, seal)] = raw_sql("SELECT seq, hash, seal FROM ordinance_audit_head")
    assert seal == seal_head(seq, digest, KEY) and seq == 3
    result = sealed.verify()
    assert result.ok and result.head_sealed
    assert "head seal valid" in result.describe()
    with open_audit_log(sealed.store.url) as keyless:
        unchecked = keyless.verify()
    assert unchecked.ok and unchecked.head_seal_unchecked and not unchecked.head_sealed
    assert "set ORDINANCE_AUDIT_KEY to check its seal" in unchecked.describe()


def test_cut_tail_with_rewritten_head_is_detected_with_the_key(sealed: AuditLog,
                                                               raw_sql: RawSql) -> None:
    records = fill(sealed, 6)
    cut_tail_and_rewrite_head(raw_sql, records, keep=4)
    result = sealed.verify()
    assert (result.ok, result.damage) == (False, "head_rewritten")
    assert "head was rewritten" in (result.problem or "")


def test_without_the_key_only_an_anchor_catches_it(store_url: str, raw_sql: RawSql) -> None:
    with open_audit_log(store_url) as log:
        records = fill(log, 6)
        anchor = log.anchor()
        assert anchor.seal_alg == "none" and anchor.seq == 6
        cut_tail_and_rewrite_head(raw_sql, records, keep=4)
        assert log.verify().ok  # a consistent shorter chain: nothing inside the trail can tell
        result = log.verify(anchor=anchor)
    assert (result.ok, result.damage) == (False, "anchor")
    assert "the trail ends at record 4 but the anchor names record 6" in (result.problem or "")


def test_a_replayed_old_head_seal_is_caught_by_the_anchor(sealed: AuditLog,
                                                          raw_sql: RawSql) -> None:
    records = fill(sealed, 4)
    [(old_seal,)] = raw_sql("SELECT seal FROM ordinance_audit_head")  # the head at record 4
    fill(sealed, 2)
    anchor = sealed.anchor()
    assert (anchor.seq, anchor.seal) == (6, seal_head(6, anchor.hash, KEY))
    cut_tail_and_rewrite_head(raw_sql, records, keep=4)
    raw_sql("UPDATE ordinance_audit_head SET seal = ?", old_seal)
    assert sealed.verify().ok  # a genuine earlier state: only an outside anchor knows better
    result = sealed.verify(anchor=anchor)
    assert (result.ok, result.damage) == (False, "anchor")


def test_removed_seal_is_detected(sealed: AuditLog, raw_sql: RawSql) -> None:
    fill(sealed, 2)
    raw_sql("UPDATE ordinance_audit_head SET seal = NULL")
    result = sealed.verify()
    assert (result.ok, result.damage) == (False, "head_unsealed")


def test_inserted_record_with_a_wrong_link_is_named_inserted(log_url_records: tuple[
        AuditLog, list[AuditRecord]], raw_sql: RawSql) -> None:
    log, _ = log_url_records
    raw_sql("UPDATE ordinance_audit SET seq = seq + 1000 WHERE seq >= 3")
    raw_sql("UPDATE ordinance_audit SET seq = seq - 999 WHERE seq >= 1000")
    raw_sql("UPDATE ordinance_audit_head SET seq = 6")
    insert_raw(raw_sql, forge(3, "f" * 64, {"text": "GRANT ALL TO mallory"}))
    result = log.verify()
    assert (result.ok, result.damage, result.first_bad_seq) == (False, "inserted", 3)
    assert "record inserted" in (result.problem or "")


def test_duplicated_record_is_named_duplicated(log_url_records: tuple[
        AuditLog, list[AuditRecord]], raw_sql: RawSql) -> None:
    log, records = log_url_records
    raw_sql("UPDATE ordinance_audit SET seq = seq + 1000 WHERE seq >= 4")
    raw_sql("UPDATE ordinance_audit SET seq = seq - 999 WHERE seq >= 1000")
    copy = records[2]
    insert_raw(raw_sql, AuditRecord(**{**copy.to_dict(), "seq": 4}))
    result = log.verify()
    assert (result.ok, result.damage, result.first_bad_seq) == (False, "duplicated", 4)
    assert "record 4 is a copy of record 3" in (result.problem or "")


def test_duplicate_appended_at_the_end_is_named_duplicated(log_url_records: tuple[
        AuditLog, list[AuditRecord]], raw_sql: RawSql) -> None:
    log, records = log_url_records
    insert_raw(raw_sql, AuditRecord(**{**records[1].to_dict(), "seq": 6}))
    result = log.verify()
    assert (result.ok, result.damage, result.first_bad_seq) == (False, "duplicated", 6)


def test_rechained_copy_is_named_duplicated(log_url_records: tuple[
        AuditLog, list[AuditRecord]], raw_sql: RawSql) -> None:
    """A copy given a fresh, valid hash still carries the original's id."""
    log, records = log_url_records
    copy = forge(6, records[-1].hash, records[1].payload)
    copy = AuditRecord(**{**copy.to_dict(), "id": records[1].id, "hash": ""})
    insert_raw(raw_sql, AuditRecord(**{**copy.to_dict(), "hash": compute_hash(copy)}))
    result = log.verify()
    assert (result.damage, result.first_bad_seq) == ("duplicated", 6)
    assert "copy of record 2" in (result.problem or "")


def test_broken_link_and_tail_cut_are_named(log_url_records: tuple[
        AuditLog, list[AuditRecord]], raw_sql: RawSql) -> None:
    log, _ = log_url_records
    raw_sql("DELETE FROM ordinance_audit WHERE seq = 5")
    assert log.verify().damage == "tail_cut"
    raw_sql("UPDATE ordinance_audit SET prev_hash = ? WHERE seq = 1", "e" * 64)
    assert log.verify().damage == "broken_link"


@pytest.fixture
def log_url_records(store_url: str) -> tuple[AuditLog, list[AuditRecord]]:
    with open_audit_log(store_url) as log:
        yield log, fill(log, 5)


# --- the CLI -------------------------------------------------------------------------------


def test_anchor_command_and_verify_against_it(store_url: str, raw_sql: RawSql, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ORDINANCE_AUDIT_KEY", KEY.decode())
    with open_audit_log(store_url) as log:
        records = fill(log, 5)
    out = tmp_path / "anchor.json"
    assert main(["audit", "anchor", "--audit", store_url, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    anchor = Anchor.from_dict(json.loads(out.read_text()))
    assert json.loads(printed) == anchor.to_dict()
    # the anchor covers its own access record (seq 6)
    assert anchor.seq == 6 and anchor.seal == seal_head(6, anchor.hash, KEY)
    # an anchor file is never overwritten
    assert main(["audit", "anchor", "--audit", store_url, "--output", str(out)]) == 2
    assert main(["audit", "verify", "--audit", store_url, "--anchor", str(out)]) == 0
    assert "head seal valid" in capsys.readouterr().out

    cut_tail_and_rewrite_head(raw_sql, records, keep=3)
    assert main(["audit", "verify", "--audit", store_url]) == 1
    assert "head was rewritten" in capsys.readouterr().err
    # the tamperer without the key cannot seal; with an anchor the cut is named precisely too
    assert main(["audit", "verify", "--audit", store_url, "--anchor", str(out)]) == 1
    assert "BROKEN" in capsys.readouterr().err
    assert main(["audit", "anchor", "--audit", store_url]) == 1  # no anchor of a damaged trail
    assert "not anchoring a damaged trail" in capsys.readouterr().err


def test_a_forged_or_malformed_anchor_is_refused(store_url: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with open_audit_log(store_url, hmac_key=KEY) as log:
        fill(log, 2)
        anchor = log.anchor().to_dict()
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**anchor, "seq": 1}))
    with open_audit_log(store_url, hmac_key=KEY) as log:
        result = log.verify(anchor=Anchor.from_dict(json.loads(forged.read_text())))
    assert (result.ok, result.damage) == (False, "anchor")
    assert "seal does not match" in (result.problem or "")
    bad = tmp_path / "bad.json"
    for doc in ({"seq": 1}, {**anchor, "hash": "xyz"}, {**anchor, "seal": None}, [1]):
        bad.write_text(json.dumps(doc))
        assert main(["audit", "verify", "--audit", store_url, "--anchor", str(bad)]) == 2
        assert "ordinance audit: error:" in capsys.readouterr().err
    assert main(["audit", "verify", "--audit", store_url, "--anchor",
                 str(tmp_path / "missing.json")]) == 2


def test_an_older_trail_gets_the_seal_column(tmp_path: Path) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path}/old.db"
    with open_audit_log(url) as log:
        fill(log, 2)
    conn = sqlite3.connect(tmp_path / "old.db")
    conn.execute("ALTER TABLE ordinance_audit_head DROP COLUMN seal")
    conn.close()
    with open_audit_log(url, create=False, hmac_key=KEY) as log:
        assert log.verify().damage == "head_unsealed"
        with pytest.raises(AuditWriteError, match="not sealed"):
            fill(log, 1)  # a keyed writer extends only a sealed head
        assert log.seal().ok  # adopted after verification
        fill(log, 1)
        result = log.verify()
        assert result.ok and result.head_sealed and result.count == 3


def test_writers_refuse_to_extend_a_head_they_cannot_trust(store_url: str,
                                                          raw_sql: RawSql) -> None:
    with open_audit_log(store_url, hmac_key=KEY) as log:
        records = fill(log, 4)
    with open_audit_log(store_url) as keyless, pytest.raises(AuditWriteError,
                                                             match="no audit key"):
        fill(keyless, 1)  # would clear the seal, hiding the next cut
    cut_tail_and_rewrite_head(raw_sql, records, keep=2)
    with open_audit_log(store_url, hmac_key=KEY) as log:
        with pytest.raises(AuditWriteError, match="head was rewritten"):
            fill(log, 1)  # the next commit must not launder the cut by resealing it
        assert log.seal().damage == "head_rewritten"  # and adoption refuses a forged head
        assert log.verify().damage == "head_rewritten"
    assert raw_sql("SELECT count(*) FROM ordinance_audit") == [(2,)]
