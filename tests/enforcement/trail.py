"""What the enforcement tests stand on: a SQLite audit trail behind the group-commit recorder
and the approvals store on it, as `ordinance proxy …` opens them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.enforcement.review import ApprovalGate
from engine.approvals import ApprovalStore, open_approval_store
from engine.audit import AuditLog, open_audit_log
from engine.audit.recorder import AuditRecorder


class Trail:
    def __init__(self, tmp: Path, *, approvals: bool = True) -> None:
        url = f"sqlite:///{tmp / 'audit.db'}"
        self.audit: AuditLog = open_audit_log(url)
        self.recorder = AuditRecorder(self.audit).start()
        self.store: ApprovalStore = open_approval_store(url, audit=self.audit)
        self.gate = ApprovalGate(self.store, timeout=20) if approvals else None

    def records(self, kind: str) -> list[dict[str, Any]]:
        return [r.payload for r in self.audit.iter_records(kind=kind)]

    def close(self) -> None:
        if self.gate is not None:
            self.gate.close()
        self.recorder.close()
        self.store.close()
        self.audit.close()
