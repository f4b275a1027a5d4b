"""The gateway's use of the enforcement core: one `Enforcer` per target (its resource).

What is SSH's own here: `SshContext` (a session's login credential, the key's SHA256
fingerprint or the ID token's subject, and the target's address, which `session.start`
records), `input.command` without `raw` for requests that carry no command line (a shell, an
SFTP operation, a forwarding: `engine.facts.ssh` gives their facts from `request` and its
member), the text each request is recorded under (`text_of`) and the one an approval is for:
the text with its target (`SshStatement`), so that a window approval for a command on one
target is no approval on another (the store matches approvals by requester and text). Deciding,
holds, approvals per execution and the `statement` records are `adapters.enforcement`'s.
Must not: speak SSH (the gateway does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.enforcement.bridge import Enforcer
from adapters.enforcement.hooks import SessionContext
from adapters.enforcement.records import Resource, Statement, session_start_payload
from adapters.enforcement.review import ApprovalGate
from adapters.ssh.targets import Target, Targets
from engine.audit.recorder import AuditRecorder
from engine.decision import Decision

PROTOCOL = "ssh"


@dataclass(frozen=True)
class SshContext(SessionContext):
    """A gateway session: `credential` is `{"key_fingerprint": ...}` or `{"token_subject":
    ...}`; `target` the target's name."""

    credential: Mapping[str, str] = field(default_factory=dict, kw_only=True)
    target: str = field(default="", kw_only=True)


class SshStatement(Statement):
    """A decided request; its approvals are for `TEXT (on ssh target NAME)`."""

    def __init__(self, enforcer: Enforcer, ctx: SessionContext, text: str, decision_id: str,
                 decision: Decision, command: Mapping[str, Any] | None = None) -> None:
        super().__init__(enforcer, ctx, text, decision_id, decision, command)
        self.approval_text = f"{text} (on ssh target {enforcer.resource.name})"

    def payload(self, details: Mapping[str, Any] | None = None,
                **outcome: Any) -> dict[str, Any]:
        record = super().payload(details, **outcome)
        record.pop("prepared", None)  # (an SQL EXECUTE's PREPARE text: not SSH's)
        return record


class SshEnforcer(Enforcer):
    """The enforcer of one target."""

    def __init__(self, client: Any, *, target: Target, recorder: AuditRecorder,
                 approvals: ApprovalGate | None = None) -> None:
        super().__init__(client, resource=Resource(target.name, dict(target.labels),
                                                   type=PROTOCOL),
                         recorder=recorder, approvals=approvals)
        self.target = target

    async def session_started(self, ctx: SessionContext) -> None:
        """`session.start` with the credential and the target's address (durable before the
        user's first request is decided)."""
        payload = session_start_payload(PROTOCOL, self.resource, ctx)
        payload["target"] = {"name": self.target.name, "host": self.target.host,
                             "port": self.target.port, "user": self.target.user}
        if isinstance(ctx, SshContext):
            payload.update(ctx.credential)
        await self.recorder.append("session.start", payload, subject=ctx.user,
                                   session_id=ctx.session_id)
        self.allowance(ctx)  # the session's counters, for session.end

    def statement(self, ctx: SessionContext, text: str, decision_id: str, decision: Decision,
                  command: Mapping[str, Any] | None = None) -> Statement:
        return SshStatement(self, ctx, text, decision_id, decision, command)

    def input_document(self, text: str, ctx: SessionContext,
                       command: Mapping[str, Any] | None = None) -> dict[str, Any]:
        document = super().input_document(text, ctx, command)
        if document["command"].get("request") != "exec":
            del document["command"]["raw"]  # no command line: facts from `request`
        return document


def enforcers(client: Any, targets: Targets, *, recorder: AuditRecorder,
              approvals: ApprovalGate | None) -> dict[str, SshEnforcer]:
    """An enforcer per target, by name, sharing the decision client, trail and approvals."""
    return {t.name: SshEnforcer(client, target=t, recorder=recorder, approvals=approvals)
            for t in targets}


def text_of(request: str, command: Mapping[str, Any]) -> str:
    """What a request without a command line is recorded and approved as."""
    if request == "shell":
        return "shell"
    if request == "forward":
        forward = command["forward"]
        where = f" {forward['host']}:{forward['port']}" if "host" in forward else ""
        return f"forward {forward['kind']}{where}"
    sftp = command["sftp"]
    parts = ["sftp", str(sftp["op"])]
    if sftp.get("mode"):
        parts.append(str(sftp["mode"]))
    parts.append(str(sftp["path"]))
    if sftp.get("target") is not None:
        parts += ["->", str(sftp["target"])]
    return " ".join(parts)
