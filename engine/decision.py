"""The Decision: what the engine answers for one input document.

`effect` is `deny` if any deny rule fired, else `review` if any review rule fired, else `allow`.
This module is the model only; it evaluates nothing.

A review reason with `rows` is a *row budget*: the statement needs approval only once its
results would bring a session past `rows` rows counted under the rule (its `policy`). An
enforcement point that counts result rows (the PostgreSQL proxy) may run such a statement and
hold it at that row; any other treats it as the review it is (fail closed). See
`adapters/enforcement/row_budget.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Effect = Literal["allow", "deny", "review"]
EFFECTS: tuple[Effect, ...] = ("allow", "deny", "review")


@dataclass(frozen=True)
class Reason:
    """Why a rule fired: `policy` names the file or package and rule, `message` is for people."""

    policy: str
    message: str
    effect: Effect = "deny"
    approvers: tuple[str, ...] = ()
    window: str | None = None
    rows: int | None = None  # a review's row budget (see the module docstring)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"policy": self.policy, "message": self.message,
                               "effect": self.effect}
        if self.approvers:
            out["approvers"] = list(self.approvers)
        if self.window:
            out["window"] = self.window
        if self.rows is not None:
            out["rows"] = self.rows
        return out


@dataclass(frozen=True)
class Mask:
    """Hide a result column: `column` is `name` or `table.name`; `method` names a masking method."""

    column: str
    method: str
    policy: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "method": self.method}


@dataclass(frozen=True)
class Decision:
    effect: Effect
    reasons: tuple[Reason, ...] = ()
    masks: tuple[Mask, ...] = ()
    policy_revision: str = ""
    command: dict[str, Any] = field(default_factory=dict)
    eval_ns: int = 0
    cached: bool = False

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"

    def to_dict(self) -> dict[str, Any]:
        return {
            "effect": self.effect,
            "reasons": [r.to_dict() for r in self.reasons],
            "masks": [m.to_dict() for m in self.masks],
            "policy_revision": self.policy_revision,
            "command": self.command,
        }


def combine_effect(reasons: tuple[Reason, ...]) -> Effect:
    """deny beats review beats allow."""
    effects = {r.effect for r in reasons}
    if "deny" in effects:
        return "deny"
    if "review" in effects:
        return "review"
    return "allow"
