"""Writing trails for replay tests, with the payloads the proxy and the service write, and
running `ordinance replay` in this process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.audit import AuditLog
from engine.cli import main

RESOURCE = {"type": "postgres", "name": "payments", "labels": {"env": "prod"}}


def session_start(log: AuditLog, sid: str, user: str, groups: list[str], *,
                  claims: dict[str, Any] | None = None, resource: Any = RESOURCE) -> None:
    payload: dict[str, Any] = {
        "protocol": "postgres", "resource": resource, "database": "app", "user": user,
        "requested_user": user, "groups": groups, "auth_method": "scram-sha-256",
        "tls": False, "client_addr": "127.0.0.1", "application_name": "psql"}
    if claims is not None:  # records written before claims were recorded have none
        payload["claims"] = claims
    log.append("session.start", payload, subject=user, session_id=sid)


def statement(log: AuditLog, sid: str, user: str, text: str, decision_id: str, *,
              effect: str = "allow", reasons: list[dict[str, Any]] | None = None,
              masks: list[str] | None = None, revision: str = "rev1",
              resource: str = "payments") -> None:
    payload: dict[str, Any] = {
        "text": text, "effect": effect, "reasons": reasons or [], "masked": [],
        "approval": None, "policy_revision": revision, "resource": resource,
        "database": "app", "tag": "SELECT 1", "rows": 1, "error": None, "duration_ms": 0.5}
    if masks is not None:
        payload["masks"] = masks
    log.append("statement", payload, subject=user, session_id=sid, decision_id=decision_id)


def write_policies(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    """(exit code, the JSON report or {}, stderr) of `ordinance replay ARGS --format json`."""
    code = main(["replay", *args, "--format", "json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), err
