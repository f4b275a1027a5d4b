"""What replay compares of a decision (`Verdict`), and the difference of two (`Change`).

A Verdict is a Decision reduced to its effect, its reasons (policy, effect, message, approvers,
window), its masks (`column:method`, the form the proxy records) and, for OPA-style queries,
the canonical JSON of the result. Reason messages are scrubbed of card numbers as the trail
scrubs them, so a re-decided verdict compares equal to the recorded one.

Change categories (what `--fail-on` names): `deny`, `review`, `allow` (the effect became
that), `unmask` (a column masked before is not masked now), `mask` (a column is masked now and
was not, or with another method), `reason` (same effect, other reasons), `result` (a query's
value changed and nothing above did). One label per category lists a record's columns.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.decision import Decision
from engine.masking import scrub_pans

CATEGORIES = ("deny", "review", "allow", "unmask", "mask", "reason", "result")
EFFECTS = ("allow", "deny", "review")
ORDINANCE_MADE = ("ordinance.client", "ordinance.service")
"""Reason policies of denials Ordinance made without the policies (service unreachable, log
unavailable): such a recorded decision says nothing about the policy set."""

UNKNOWN_MASK_RULE = "(mask rule not recorded)"
"""The rule of a recorded mask: records keep `column:method`, not the rule that set it."""

ReasonKey = tuple[str, str, str, tuple[str, ...], str | None]


@dataclass(frozen=True, slots=True)
class Verdict:
    effect: str
    reasons: frozenset[ReasonKey] = frozenset()
    masks: frozenset[str] = frozenset()
    result: str | None = None
    mask_rules: Mapping[str, str] = field(default_factory=dict, compare=False)
    """`column:method` -> the rule that set it (known for re-decided verdicts only)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"effect": self.effect,
                               "reasons": [_reason_dict(r) for r in sorted(self.reasons, key=str)],
                               "masks": sorted(self.masks)}
        if self.result is not None:
            out["result"] = json.loads(self.result)
        return out

    def mask_methods(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for mask in self.masks:
            column, _, method = mask.rpartition(":")
            out[column] = method
        return out


def _reason_dict(reason: ReasonKey) -> dict[str, Any]:
    policy, effect, message, approvers, window = reason
    out: dict[str, Any] = {"policy": policy, "effect": effect, "message": message}
    if approvers:
        out["approvers"] = list(approvers)
    if window:
        out["window"] = window
    return out


def reason_key(reason: Mapping[str, Any]) -> ReasonKey:
    """A recorded reason (`Reason.to_dict()`) as compared."""
    approvers = reason.get("approvers") or ()
    return (str(reason.get("policy", "")), str(reason.get("effect", "deny")),
            scrub_pans(str(reason.get("message", ""))),
            tuple(str(a) for a in approvers) if isinstance(approvers, list) else (),
            str(reason["window"]) if reason.get("window") else None)


def recorded_verdict(effect: Any, reasons: Any, masks: Iterable[str]) -> Verdict | str:
    """A Verdict from recorded fields, or why they cannot be one."""
    if effect not in EFFECTS:
        return f"recorded effect {effect!r} is not allow, deny or review"
    if not isinstance(reasons, list) or not all(isinstance(r, dict) for r in reasons):
        return "recorded reasons are not a list of objects"
    return Verdict(str(effect), frozenset(reason_key(r) for r in reasons), frozenset(masks))


def decision_verdict(decision: Decision) -> Verdict:
    return Verdict(
        decision.effect,
        frozenset((r.policy, r.effect, scrub_pans(r.message), tuple(r.approvers), r.window)
                  for r in decision.reasons),
        frozenset(f"{m.column}:{m.method}" for m in decision.masks),
        mask_rules={f"{m.column}:{m.method}": m.policy for m in decision.masks if m.policy})


def query_verdict(defined: bool, value: Any) -> Verdict:
    """An OPA-style query result: its effect as Envoy would read it (a bool, or an object's
    `allowed`), `undefined`, or `value` for other results; the result itself compared too."""
    if not defined:
        return Verdict("undefined", result=json.dumps({"defined": False}))
    allowed = value.get("allowed") if isinstance(value, dict) else value
    effect = ("allow" if allowed else "deny") if isinstance(allowed, bool) else "value"
    return Verdict(effect, result=json.dumps({"defined": True, "value": value},
                                             sort_keys=True, separators=(",", ":")))


@dataclass(frozen=True, slots=True)
class Change:
    categories: frozenset[str]
    labels: tuple[str, ...]
    """What changed, for people: `allow->deny`, `unmask pan`, `reasons`, ..."""
    rules: tuple[str, ...]
    """The rules whose reasons or masks appeared or disappeared."""


def compare(before: Verdict, after: Verdict, query: str | None = None) -> Change | None:
    """The difference between two verdicts of one input, or None when they agree. A query's
    change is put under its path (`query`) when no reason names a rule."""
    if before == after:
        return None
    categories: set[str] = set()
    labels: list[str] = []
    rules: dict[str, None] = {}
    if before.effect != after.effect:
        categories.add(after.effect if after.effect in EFFECTS else "result")
        labels.append(f"{before.effect}->{after.effect}")
    old, new = before.mask_methods(), after.mask_methods()
    unmasked: list[str] = []
    masked: list[str] = []
    for column in sorted(old.keys() | new.keys()):
        if old.get(column) == new.get(column):
            continue
        if column not in new:
            unmasked.append(column)
            rules[before.mask_rules.get(f"{column}:{old[column]}", UNKNOWN_MASK_RULE)] = None
        else:
            masked.append(column if column not in old
                          else f"{column} {old[column]}->{new[column]}")
            rules[after.mask_rules.get(f"{column}:{new[column]}", UNKNOWN_MASK_RULE)] = None
    if unmasked:
        categories.add("unmask")
        labels.append("unmask " + ", ".join(unmasked))
    if masked:
        categories.add("mask")
        labels.append("mask " + ", ".join(masked))
    changed_reasons = before.reasons ^ after.reasons
    for reason in sorted(changed_reasons, key=str):
        rules[reason[0]] = None
    if changed_reasons and before.effect == after.effect:
        categories.add("reason")
        labels.append("reasons")
    if before.result != after.result and not categories:
        categories.add("result")
        labels.append("result")
    if not categories:  # only the rule attribution of masks differs: not a change
        return None
    return Change(frozenset(categories), tuple(labels), tuple(rules) or (query or "(no rule)",))
