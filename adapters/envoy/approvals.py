"""Review decisions on HTTP requests -> just-in-time approvals in an `ApprovalStore`.

A `review` decision on an HTTP request files an approval request for exactly that request
(method, target and body: the body is part of what is approved, so a different POST body is a
different request). While it is pending, the same requester asking again gets the same
request id back rather than a new request. Once an approver has granted it, the next identical
request by the same requester uses it (single use, or any number of times during the rule's
`window`) and is let through. The store enforces separation of duties, approver groups and
expiry; this module only maps an HTTP request onto it and must not decide anything.

An anonymous request (no verified subject) cannot request approval: the store needs an
authenticated requester. It gets the plain 403.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from engine.approvals import ApprovalStore, command_sha256
from engine.decision import Decision
from engine.identity import Subject

log = logging.getLogger(__name__)

DEFAULT_TTL = timedelta(hours=1)
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(text: str | None) -> timedelta | None:
    """A rule's `window` (`30m`, `8h`, `1d`, `90s`); None when absent or unreadable
    (an unreadable window makes the approval single-use, the stricter reading)."""
    if not text:
        return None
    match = _DURATION.match(text)
    if match is None:
        log.warning("approval window %r not understood; the approval will be single-use", text)
        return None
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def approval_command(input_doc: dict[str, Any]) -> str:
    """What is approved: `METHOD target` and, when there is one, the body after a blank line."""
    command = input_doc.get("command") or {}
    raw = str(command.get("raw") or "")
    http = ((input_doc.get("attributes") or {}).get("request") or {}).get("http") or {}
    body = http.get("body") or http.get("rawBody") or ""
    return f"{raw}\n\n{body}" if body else raw


def requester(input_doc: dict[str, Any]) -> Subject | None:
    subject = input_doc.get("subject")
    if not isinstance(subject, dict) or not isinstance(subject.get("id"), str) \
            or not subject["id"].strip():
        return None
    return Subject(id=subject["id"], groups=tuple(subject.get("groups") or ()))


class EnvoyApprovals:
    """`consume` and `request` for `AuthorizationServicer(consume_approval=…,
    request_approval=…)`, backed by one `ApprovalStore`."""

    def __init__(self, store: ApprovalStore, *, ttl: timedelta = DEFAULT_TTL) -> None:
        self.store = store
        self.ttl = ttl

    def consume(self, decision: Decision, input_doc: dict[str, Any]) -> bool:
        """True when an approved request covers this request; it is used now (audited)."""
        who = requester(input_doc)
        if who is None:
            return False
        return self.store.consume((who, command_sha256(approval_command(input_doc))))

    def request(self, decision: Decision, input_doc: dict[str, Any],
                decision_id: str) -> str | None:
        """The id of the pending request for this request, filing one if there is none."""
        who = requester(input_doc)
        if who is None:
            return None
        command = approval_command(input_doc)
        digest = command_sha256(command)
        key = who.id.strip().casefold()
        for pending in self.store.list("pending"):
            if pending.command_sha256 == digest and \
                    pending.requester_id.strip().casefold() == key:
                return pending.id
        reasons = [r for r in decision.reasons if r.effect == "review"]
        approvers: Sequence[str] = list(dict.fromkeys(a for r in reasons for a in r.approvers))
        windows = [w for w in (parse_window(r.window) for r in reasons) if w is not None]
        filed = self.store.request(
            who, dict(input_doc.get("resource") or {}), command,
            [r.message for r in reasons], approvers, self.ttl,
            min(windows) if windows else None, session_id=decision_id)
        return filed.id
