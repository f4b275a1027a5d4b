"""`ordinance approvals …` against a real store: authenticated approvers, refusals, exit codes."""

from __future__ import annotations

import io
import json
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from engine.approvals import open_approval_store
from engine.audit import open_audit_log
from engine.cli import main
from engine.identity import Subject

USERS = """\
users:
  - {name: alice, password: alice-secret, groups: [dev, dba-leads]}
  - {name: dana, password: dana-secret, groups: [dba-leads]}
  - {name: eve, password: eve-secret, groups: [dev]}
"""


@pytest.fixture
def users_file(tmp_path: Path) -> str:
    path = tmp_path / "users.yaml"
    path.write_text(USERS)
    return str(path)


def file_request(url: str, command: str = "DROP TABLE cards") -> str:
    with open_audit_log(url) as audit, open_approval_store(url, audit=audit) as store:
        return store.request(Subject(id="alice", groups=("dev",)), {"name": "payments"},
                             command, ["DDL needs review"], ["dba-leads"],
                             timedelta(hours=1)).id


def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str,
        password: str | None = None) -> tuple[int, str, str]:
    if password is not None:
        monkeypatch.setenv("ORDINANCE_PASSWORD", password)
    else:
        monkeypatch.delenv("ORDINANCE_PASSWORD", raising=False)
    code = main(["approvals", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_show_approve(store_url: str, users_file: str, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    open_audit_log(store_url).close()  # a deployment's trail exists before anyone lists
    code, out, _ = run(capsys, monkeypatch, "list", "--audit", store_url)
    assert code == 0 and out.startswith("ID") and len(out.splitlines()) == 1
    rid = file_request(store_url)
    code, out, _ = run(capsys, monkeypatch, "list", "--audit", store_url, "--status", "pending")
    assert code == 0 and rid in out and "DROP TABLE cards" in out
    code, out, _ = run(capsys, monkeypatch, "show", rid, "--audit", store_url, "--json")
    assert code == 0 and json.loads(out)["status"] == "pending"
    code, out, _ = run(capsys, monkeypatch, "approve", rid, "--as", "dana", "--users",
                       users_file, "--comment", "CHG-7", "--audit", store_url,
                       password="dana-secret")
    assert code == 0 and "approved" in out and "CHG-7" in out
    code, out, _ = run(capsys, monkeypatch, "list", "--audit", store_url, "--status", "approved",
                       "--json")
    assert [r["decided_by"] for r in json.loads(out)] == ["dana"]
    with open_audit_log(store_url) as audit:
        assert [r.kind for r in audit.iter_records()] == ["approval.requested",
                                                          "approval.approved"]


def test_refusals_exit_1(store_url: str, users_file: str, capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    rid = file_request(store_url)
    common = ("--users", users_file, "--audit", store_url)
    code, _, err = run(capsys, monkeypatch, "approve", rid, "--as", "alice", *common,
                       password="alice-secret")
    assert code == 1 and "separation of duties" in err
    code, _, err = run(capsys, monkeypatch, "approve", rid, "--as", "eve", *common,
                       password="eve-secret")
    assert code == 1 and "not in an approver group" in err
    monkeypatch.setattr(sys, "stdin", io.StringIO("dana-secret\n"))
    code, _, _ = run(capsys, monkeypatch, "deny", rid, "--as", "dana", "--password-stdin",
                     *common)
    assert code == 0
    code, _, err = run(capsys, monkeypatch, "approve", rid, "--as", "dana", *common,
                       password="dana-secret")
    assert code == 1 and "final" in err
    code, _, err = run(capsys, monkeypatch, "show", "01NOSUCHREQUEST", "--audit", store_url)
    assert code == 1 and "no approval request" in err


def test_a_withdrawn_request_is_listed_and_cannot_be_approved(
        store_url: str, users_file: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    rid = file_request(store_url)
    with open_audit_log(store_url) as audit, open_approval_store(store_url, audit=audit) as s:
        s.withdraw(rid, "alice", "the client cancelled the statement")
    code, out, _ = run(capsys, monkeypatch, "list", "--audit", store_url, "--status",
                       "withdrawn")
    assert code == 0 and f"{rid}  withdrawn  alice" in out
    code, out, _ = run(capsys, monkeypatch, "list", "--audit", store_url, "--status", "pending")
    assert code == 0 and rid not in out
    code, _, err = run(capsys, monkeypatch, "approve", rid, "--as", "dana", "--users",
                       users_file, "--audit", store_url, password="dana-secret")
    assert code == 1 and f"request {rid} was withdrawn" in err and "nobody waits" in err


def test_unusable_inputs_exit_2(store_url: str, users_file: str, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    rid = file_request(store_url)
    common = ("--users", users_file, "--audit", store_url)
    code, _, err = run(capsys, monkeypatch, "approve", rid, "--as", "dana", *common,
                       password="wrong")
    assert code == 2 and "authentication failed" in err
    code, _, err = run(capsys, monkeypatch, "approve", rid, "--as", "zed", *common,
                       password="x")
    assert code == 2 and "no user 'zed'" in err
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = run(capsys, monkeypatch, "approve", rid, "--as", "dana", *common)
    assert code == 2 and "no password" in err
    code, _, err = run(capsys, monkeypatch, "approve", rid, "--as", "dana", "--users",
                       str(tmp_path / "none.yaml"), "--audit", store_url, password="x")
    assert code == 2 and "cannot read users file" in err
    for url in ("nosuch://db", f"sqlite:///{tmp_path}/missing.db"):
        code, _, err = run(capsys, monkeypatch, "list", "--audit", url)
        assert code == 2 and err.count("\n") == 1
    assert not (tmp_path / "missing.db").exists()
    with open_audit_log(store_url) as audit, open_approval_store(store_url, audit=audit) as s:
        assert s.get(rid).stored_status == "pending"
