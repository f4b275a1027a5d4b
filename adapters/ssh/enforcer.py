"""The gateway's policy bridge: each SSH request -> a Decision -> what the gateway does.

Owns the input document of an SSH request (`{subject, resource, command, session}` with
`command.protocol: "ssh"`, `command.request`: `exec` | `shell` | `sftp` | `forward`; the
shapes are in docs/ssh-gateway.md), asking the `DecisionClient`, turning the Decision into a
`Verdict` (deny / review hold / allow), and the gateway's audit records: `session.start`,
`session.end` and one `command` record per request (its text, decision, approval, exit status,
duration, bytes), each durable before the client learns the outcome (the gateway awaits
`Command.finished` before it sends the exit status).

A review is held: the approval request is filed (or found), its id and how to approve it are
told to the client (`notify`: the gateway writes it on stderr), and once approved the request
runs exactly as sent (the approval is bound to the requester and the text's SHA-256, and used
once, or within the rule's `window`). A client that leaves while held withdraws its request.

Must not: evaluate policy, or speak SSH (the gateway does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from adapters.postgres.review import ApprovalGate, parse_window
from adapters.ssh.targets import Target
from engine.audit.recorder import AuditRecorder
from engine.decision import Decision
from engine.identity import Subject

log = logging.getLogger("ordinance.adapters.ssh.enforcer")

GATEWAY_POLICY = "ordinance.gateway"  # the `policy` of the reasons of the gateway's own refusals
MAX_RECORDED_TEXT = 64 * 1024
Notify = Callable[[str], Awaitable[None]]
Request = Literal["exec", "shell", "sftp", "forward"]


@dataclass
class SshSession:
    """One authenticated client connection to one target."""

    session_id: str
    user: str
    groups: tuple[str, ...]
    claims: dict[str, Any]
    requested_user: str
    client_addr: str
    auth_method: str  # "publickey" | "oidc-token"
    credential: str  # the key's SHA256 fingerprint, or the token's subject
    target: Target
    started: float = field(default_factory=time.monotonic)
    commands: int = 0
    denied: int = 0

    def subject(self) -> Subject:
        return Subject(self.user, self.groups, self.claims)


@dataclass
class Verdict:
    effect: Literal["allow", "deny", "review"]
    command: Command
    message: str = ""
    hold: Callable[[Notify], Awaitable[Verdict]] | None = None


class Command:
    """One decided request: what its `command` record says."""

    def __init__(self, enforcer: SshEnforcer, session: SshSession, request: Request,
                 text: str, decision_id: str, decision: Decision) -> None:
        self.enforcer = enforcer
        self.session = session
        self.request = request
        self.text = text
        self.decision_id = decision_id
        self.decision = decision
        self.approval: dict[str, Any] | None = None
        self.started = time.monotonic()
        self.recorded = False

    def _payload(self, outcome: dict[str, Any]) -> dict[str, Any]:
        text = self.text if len(self.text) <= MAX_RECORDED_TEXT else (
            self.text[:MAX_RECORDED_TEXT] + " …[truncated]")
        return {"protocol": "ssh", "request": self.request, "text": text,
                "effect": self.decision.effect,
                "reasons": [r.to_dict() for r in self.decision.reasons],
                "approval": self.approval, "policy_revision": self.decision.policy_revision,
                "resource": self.session.target.name, **outcome}

    async def _record(self, **outcome: Any) -> None:
        if self.recorded:
            return
        self.recorded = True
        self.session.commands += 1
        await self.enforcer.recorder.append(
            "command", self._payload(outcome), subject=self.session.user,
            session_id=self.session.session_id, decision_id=self.decision_id or None)

    async def refused(self, message: str) -> Verdict:
        """Record the denial (durable), then answer it."""
        self.session.denied += 1
        await self._record(error=f"denied: {message}", exit_status=None, duration_ms=None)
        return Verdict("deny", self, message)

    async def finished(self, *, exit_status: int | None, signal: str | None = None,
                       bytes_in: int = 0, bytes_out: int = 0, bytes_err: int = 0,
                       masked: int = 0, error: str | None = None,
                       **extra: Any) -> None:
        """The request ran: record how it ended (durable when this returns)."""
        await self._record(
            exit_status=exit_status, signal=signal, error=error,
            duration_ms=round((time.monotonic() - self.started) * 1000, 3),
            bytes_in=bytes_in, bytes_out=bytes_out, bytes_err=bytes_err, masked=masked,
            **extra)


def _messages(decision: Decision, effect: str) -> list[str]:
    return [r.message for r in decision.reasons if r.effect == effect and r.message]


class SshEnforcer:
    def __init__(self, client: Any, *, recorder: AuditRecorder,
                 approvals: ApprovalGate | None = None) -> None:
        self.client = client
        self.recorder = recorder
        self.approvals = approvals

    # -- sessions -----------------------------------------------------------------------------

    async def session_started(self, session: SshSession) -> None:
        await self.recorder.append("session.start", {
            "protocol": "ssh", "resource": session.target.resource(),
            "target": session.target.name, "user": session.user,
            "requested_user": session.requested_user, "groups": list(session.groups),
            "claims": dict(session.claims), "client_addr": session.client_addr,
            "auth_method": session.auth_method,
            ("key_fingerprint" if session.auth_method == "publickey" else "token_subject"):
                session.credential,
        }, subject=session.user, session_id=session.session_id)

    async def session_ended(self, session: SshSession, reason: str) -> None:
        await self.recorder.append("session.end", {
            "protocol": "ssh", "target": session.target.name, "reason": reason,
            "duration_ms": round((time.monotonic() - session.started) * 1000, 3),
            "commands": session.commands, "denied": session.denied,
        }, subject=session.user, session_id=session.session_id)

    # -- requests -----------------------------------------------------------------------------

    def input_document(self, session: SshSession, command: dict[str, Any]) -> dict[str, Any]:
        return {
            "subject": session.subject().to_input(),
            "resource": session.target.resource(),
            "command": {"protocol": "ssh", **command},
            "session": {"id": session.session_id, "client_addr": session.client_addr,
                        "auth_method": session.auth_method},
        }

    async def refuse(self, session: SshSession, request: Request, text: str,
                     message: str) -> Verdict:
        """A request the gateway refuses itself (no policy was asked), recorded."""
        from engine.decision import Reason

        decision = Decision("deny", (Reason(GATEWAY_POLICY, message),))
        return await Command(self, session, request, text, "", decision).refused(message)

    async def decide(self, session: SshSession, request: Request, command: dict[str, Any],
                     text: str) -> Verdict:
        """`command`: the request's `input.command` members (`raw`, `pty`, `sftp`, ...);
        `text`: what is recorded and what an approval is for."""
        decision_id, decision = await self.client.adecide(
            self.input_document(session, {"request": request, **command}))
        cmd = Command(self, session, request, text, decision_id, decision)
        if decision.effect == "deny":
            return await cmd.refused("; ".join(_messages(decision, "deny")) or
                                     "denied by policy")
        if decision.effect == "review":
            return await self._review(cmd)
        return Verdict("allow", cmd)

    # -- review -------------------------------------------------------------------------------

    async def _review(self, cmd: Command) -> Verdict:
        reasons = _messages(cmd.decision, "review") or ["approval required"]
        gate = self.approvals
        if gate is None:
            return await cmd.refused("; ".join(reasons) + " (no approval store is configured, "
                                     "so it cannot be approved)")
        who = cmd.session.subject()
        try:
            standing = await gate.use_standing(who, cmd.text)
        except Exception as exc:
            log.error("approvals store failed: %s", exc)
            return await cmd.refused("; ".join(reasons) + " (the approvals store is "
                                     "unavailable)")
        if standing is not None:
            cmd.approval = {"id": standing.id, "approver": standing.decided_by,
                            "status": "approved", "standing": True}
            return Verdict("allow", cmd)

        async def hold(notify: Notify) -> Verdict:
            return await self._hold(cmd, who, reasons, notify)

        return Verdict("review", cmd, "; ".join(reasons), hold=hold)

    async def _hold(self, cmd: Command, who: Subject, reasons: list[str],
                    notify: Notify) -> Verdict:
        gate = self.approvals
        assert gate is not None
        review = [r for r in cmd.decision.reasons if r.effect == "review"]
        approvers = list(dict.fromkeys(a for r in review for a in r.approvers))
        windows = [w for w in (parse_window(r.window) for r in review) if w is not None]
        filing = asyncio.ensure_future(gate.request(
            who, cmd.session.target.resource(), cmd.text, reasons, approvers,
            min(windows) if windows else None, cmd.session.session_id))
        try:
            request = await asyncio.shield(filing)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                filed = await asyncio.shield(filing)
                await asyncio.shield(gate.release(filed, "withdrawn", "the client left"))
            raise
        except Exception as exc:
            log.error("session %s: approval request not filed: %s", cmd.session.session_id,
                      exc)
            return await cmd.refused("; ".join(reasons) + f" (the approval request could not "
                                     f"be filed: {exc})")
        cmd.approval = {"id": request.id, "status": "pending"}
        released = False
        try:
            await notify(
                f"ordinance: held for approval: {'; '.join(reasons)}. Approval request "
                f"{request.id} (approvers: {', '.join(request.approver_groups)}). To release "
                f"it: {gate.hint(request.id)} -- waiting up to {gate.timeout:g}s.")
            final = await gate.wait(request.id)
            status = final.status_at(datetime.now(UTC))
            if status in ("pending", "expired"):
                status = "expired"
                final = await gate.release(final, "expired",
                                           f"not approved within {gate.timeout:g}s")
            else:
                await gate.release(final, None)
            released = True
            cmd.approval = {"id": final.id, "status": status, "approver": final.decided_by,
                            "comment": final.comment}
            used = status == "approved" and await gate.consume(who, cmd.text)
        except asyncio.CancelledError:
            if not released:
                await asyncio.shield(self._withdraw(cmd, request))
            raise
        except Exception as exc:
            log.error("session %s: approval %s could not be awaited: %s",
                      cmd.session.session_id, request.id, exc)
            if not released:
                with contextlib.suppress(Exception):
                    await gate.release(request, "withdrawn", f"the hold failed: {exc}")
            return await cmd.refused(f"approval {request.id} could not be awaited: {exc}")
        if used:
            return Verdict("allow", cmd)
        if status == "denied":
            comment = f": {final.comment}" if final.comment else ""
            return await cmd.refused(f"approval {final.id} was denied by {final.decided_by}"
                                     f"{comment}")
        if status == "approved":
            return await cmd.refused(f"approval {final.id} could not be used")
        if status == "withdrawn":
            return await cmd.refused(f"approval {final.id} was withdrawn before a verdict")
        return await cmd.refused(f"approval {final.id} was not given within "
                                 f"{gate.timeout:g}s")

    async def _withdraw(self, cmd: Command, request: Any) -> None:
        """The client left while held: withdraw its request, record the command."""
        assert self.approvals is not None
        try:
            closed = await self.approvals.release(request, "withdrawn",
                                                  "the client disconnected while held")
            cmd.approval = {"id": request.id, "status": closed.stored_status}
        except Exception as exc:
            log.error("approval %s not withdrawn: %s", request.id, exc)
        try:
            await cmd.finished(exit_status=None,
                               error="the client disconnected while the command awaited "
                                     "approval")
        except Exception as exc:
            log.error("session %s: abandoned command not recorded: %s",
                      cmd.session.session_id, exc)
