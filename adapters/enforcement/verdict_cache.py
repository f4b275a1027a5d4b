"""A session's verdict cache: a statement of a shape decided before is not asked about again.

Within one session everything the policies can read but the command is fixed (the subject,
the session fields, the resource), so two statements with the same key get the same Decision
from a deterministic policy set: the key is the statement's literal fingerprint
(`engine.facts.fingerprint`: string and number literals as `?`, LIMIT/OFFSET/FETCH counts
kept) when the set cannot see literals and the protocol is PostgreSQL's (whose lexical rules
the fingerprint follows), else its exact text, plus the
fields an adapter adds to `input.command`. An entry holds the Decision and what the adapter
prepared from it (`plan`: PostgreSQL keeps an allowed statement's masking plan there), and is
used only while the policy revision that made it is active. Whether decisions may be reused
at all is the decision client's to say (`InProcessDecisionClient.reuse`: deterministic
policies, engine cache on, no decision log; a gRPC client never says so, every statement is
asked). What is per statement is never cached here: a review's hold and its approval (each
execution asks the approvals store), row budget meters, the statement's record and its
decision id. Must not: decide, or hold anything a policy could tell apart.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.client import CLIENT_POLICY
from engine.decision import Decision
from engine.engine import ENGINE_POLICY, canonical_json
from engine.facts.fingerprint import FINGERPRINT_PROTOCOLS, literal_fingerprint

MAX_ENTRIES = 256  # per session
MAX_KEY_CHARS = 128 * 1024  # per session: its keys' characters (a few statements of MAX_TEXT)
MAX_TEXT = 8 * 1024  # longer texts are decided every time
UNCACHED_POLICIES = frozenset({ENGINE_POLICY, CLIENT_POLICY})
"""Reasons of decisions nobody caches (evaluation errors, an unreachable service)."""


@dataclass(slots=True)
class CachedDecision:
    decision: Decision
    plan: Any = None  # the adapter's, set once it knows the decision's verdict may be reused


def decision_key(text: str, protocol: str, literal_insensitive: bool,
                 command: Mapping[str, Any] | None) -> str | None:
    """The cache key of a statement, or None when it is decided every time."""
    if len(text) > MAX_TEXT:
        return None
    key = None
    if literal_insensitive and protocol in FINGERPRINT_PROTOCOLS:
        fingerprint = literal_fingerprint(text)
        if fingerprint is not None:
            key = "?" + fingerprint
    if key is None:
        key = "=" + text
    if command:
        try:
            key += "\0" + canonical_json(command)
        except (TypeError, ValueError):
            return None
    return key


class SessionDecisions:
    """One session's decisions by key: an LRU bounded by entries and by its keys' characters
    (a session's memory cannot grow with what its client sends)."""

    __slots__ = ("_chars", "_items")

    def __init__(self) -> None:
        self._items: OrderedDict[str, CachedDecision] = OrderedDict()
        self._chars = 0

    def get(self, key: str, revision: str) -> CachedDecision | None:
        """The entry of `key` made under `revision` (an older revision's is dropped)."""
        entry = self._items.get(key)
        if entry is None:
            return None
        if entry.decision.policy_revision != revision:
            del self._items[key]
            self._chars -= len(key)
            return None
        self._items.move_to_end(key)
        return entry

    def put(self, key: str, decision: Decision, revision: str) -> CachedDecision | None:
        """Keep `decision` (made under `revision`) for `key`; None when it is not kept."""
        if decision.policy_revision != revision or any(
                r.policy in UNCACHED_POLICIES for r in decision.reasons):
            return None
        if key not in self._items:
            self._chars += len(key)
        entry = self._items[key] = CachedDecision(decision)
        self._items.move_to_end(key)
        while len(self._items) > MAX_ENTRIES or self._chars > MAX_KEY_CHARS:
            old, _ = self._items.popitem(last=False)
            self._chars -= len(old)
        return entry

    def __len__(self) -> int:
        return len(self._items)
