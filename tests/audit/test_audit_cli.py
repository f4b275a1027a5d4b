"""`ordinance audit …`: exit codes 0 intact / 1 tampered / 2 unusable store, and the formats."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.audit import open_audit_log
from engine.cli import main
from tests.audit.conftest import RawSql

REPO = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def record_session(url: str) -> None:
    with open_audit_log(url) as log:
        log.append("session.start", {"client": "10.0.0.5", "resource": "payments"},
                   subject="alice@example.com", session_id="s-1")
        log.append("statement", {"text": "SELECT pan FROM cards", "effect": "allow", "rows": 2,
                                 "duration_ms": 1.5}, subject="alice@example.com",
                   session_id="s-1")
        log.append("statement", {"text": "DROP TABLE cards", "effect": "deny",
                                 "reasons": [{"message": "DDL needs approval"}]},
                   subject="alice@example.com", session_id="s-1")
        log.append("statement", {"text": "SELECT 1", "effect": "allow",
                                 "error": "connection reset"}, subject="bob", session_id="s-2")
        log.append("session.end", {"statements": 2}, subject="alice@example.com",
                   session_id="s-1")


def test_verify_exit_codes(store_url: str, raw_sql: RawSql,
                           capsys: pytest.CaptureFixture[str]) -> None:
    record_session(store_url)
    code, out, _ = run(capsys, "audit", "verify", "--audit", store_url)
    assert code == 0 and "intact: 5 records" in out
    raw_sql("UPDATE ordinance_audit SET payload = ? WHERE seq = 2", '{"text":"SELECT 1"}')
    code, _, err = run(capsys, "audit", "verify", "--audit", store_url)
    assert code == 1
    assert "record 2" in err and "hash mismatch (record edited)" in err


def test_bad_urls_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for url in (f"sqlite:///{tmp_path}/missing.db", "nosuch://x",
                "postgresql://nobody:pw@127.0.0.1:1/none"):
        for action in ("verify", "export", "tail", "prune"):
            code, out, err = run(capsys, "audit", action, "--audit", url)
            assert code == 2, (action, url)
            assert err.count("\n") == 1 and err.startswith("ordinance audit: error:"), err
            assert "pw" not in err and out == ""


def test_export_jsonl_and_filters(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    record_session(store_url)
    code, out, _ = run(capsys, "audit", "export", "--audit", store_url)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[1]["payload"]["text"] == "SELECT pan FROM cards" and rows[1]["hash"]
    _, out, _ = run(capsys, "audit", "export", "--audit", store_url, "--subject", "bob")
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [4]
    future = "2999-01-01T00:00:00"
    _, out, _ = run(capsys, "audit", "export", "--audit", store_url, "--since", future)
    assert out == ""
    _, out, _ = run(capsys, "audit", "export", "--audit", store_url, "--until", future,
                    "--session", "s-2")
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [4]


def test_export_csv(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    record_session(store_url)
    code, out, _ = run(capsys, "audit", "export", "--audit", store_url, "--format", "csv")
    table = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(table) == 5
    assert table[0]["kind"] == "session.start" and table[0]["decision_id"] == ""
    assert json.loads(table[2]["payload"])["effect"] == "deny"


def test_export_session_transcript(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    record_session(store_url)
    code, out, _ = run(capsys, "audit", "export", "--audit", store_url, "--format", "text",
                       "--session", "s-1")
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == "Session s-1 (alice@example.com)"
    assert "session.start" in lines[1]
    assert "[allow] SELECT pan FROM cards -> 2 rows, 1.5 ms" in lines[2]
    assert "[deny] DROP TABLE cards -> because DDL needs approval" in lines[3]
    assert "session.end" in lines[4] and len(lines) == 5


def test_transcript_names_a_reason_once() -> None:
    """A denial's error already holds its reasons (the proxy's 42501 message): not repeated."""
    from engine.audit import AuditRecord
    from engine.commands.audit import transcript_line

    def line(payload: dict[str, object]) -> str:
        return transcript_line(AuditRecord(1, "r", "t", "statement", "alice", "s", "d", payload,
                                           "", ""))

    reasons = [{"message": "DROP is not allowed on production resources"}]
    denied = line({"effect": "deny", "sql": "DROP TABLE t", "reasons": reasons,
                   "error": "permission denied by policy: DROP is not allowed on production "
                            "resources"})
    assert denied.count("DROP is not allowed") == 1
    assert "because" not in denied
    reviewed = line({"effect": "review", "sql": "SELECT * FROM cards", "reasons": reasons})
    assert reviewed.endswith("-> because DROP is not allowed on production resources")


def test_prune_command(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    record_session(store_url)
    code, out, _ = run(capsys, "audit", "prune", "--audit", store_url, "--older-than", "365d")
    assert code == 0 and "nothing older than" in out
    code, _, err = run(capsys, "audit", "prune", "--audit", store_url, "--older-than", "8y")
    assert code == 2 and "7 years" in err
    time.sleep(1.1)
    code, out, err = run(capsys, "audit", "prune", "--audit", store_url, "--older-than", "1s")
    assert code == 0 and "pruned 5 records" in out and "12 months" in err
    code, out, _ = run(capsys, "audit", "verify", "--audit", store_url)
    assert code == 0 and "from checkpoint at seq 5" in out


def test_tail_follows_until_interrupted(store_url: str) -> None:
    record_session(store_url)
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "audit", "tail", "--audit",
                             store_url, "-n", "2"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = [proc.stdout.readline() for _ in range(2)]
        assert first[0].split()[0] == "5" and "session.end" in first[0]
        assert first[1].split()[0] == "6" and "audit.accessed" in first[1]  # tail's own access
        with open_audit_log(store_url) as log:
            log.append("policy.reload", {"revision": "abc123"})
        new = proc.stdout.readline()
        assert new.split()[0] == "7" and "policy.reload" in new and "abc123" in new
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_reading_the_trail_is_itself_recorded(store_url: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    record_session(store_url)
    run(capsys, "audit", "export", "--audit", store_url, "--session", "s-1")
    run(capsys, "audit", "verify", "--audit", store_url)
    with open_audit_log(store_url) as log:
        export, verify = log.tail(2)
    assert (export.kind, export.payload["action"], export.payload["records"]) == (
        "audit.accessed", "export", 4)
    assert export.payload["filters"] == {"session_id": "s-1"} and export.subject
    assert (verify.payload["action"], verify.payload["ok"], verify.payload["count"]) == (
        "verify", True, 6)
