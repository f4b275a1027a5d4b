"""Row budgets in policies: a review item's `rows` (Rego) or a review rule's `rows` (CEL)
becomes `Reason.rows`; what cannot be read as a budget is a plain review (held before the
statement runs), and the budget crosses the gRPC envelope both ways."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.decision import Decision, Reason
from engine.engine import Engine
from engine.errors import PolicySetError
from engine.policy import load_policy_set
from engine.service.convert import decision_from_proto, decision_to_proto

HEAD = "package ordinance.t\n\nimport rego.v1\n\n"


def reasons(root: Path) -> list[Reason]:
    doc = {"subject": {"id": "a"}, "resource": {"type": "postgres"},
           "command": {"raw": "SELECT * FROM cards WHERE id > 0"}}
    decision = Engine(load_policy_set(str(root))).decide(doc)
    assert decision.effect == "review"  # a budget is a review: fail closed elsewhere
    return [r for r in decision.reasons if r.effect == "review"]


@pytest.mark.parametrize(("value", "rows"), [
    ("100", 100), ("0", 0), ("2.0", 2),
    ("-1", None), ("1.5", None), ('"100"', None), ("true", None), ("null", None),
])
def test_rego_review_rows_are_read_or_fail_closed(policy_dir, value: str,
                                                  rows: int | None) -> None:
    root = policy_dir({"a.rego": HEAD + 'review contains {"msg": "m", "rule": "r", '
                                        f'"rows": {value}}} if true\n'})
    [reason] = reasons(root)
    assert reason.rows == rows
    assert reason.policy == "ordinance.t.r"
    assert ("rows" in reason.to_dict()) == (rows is not None)


def test_rows_of_a_deny_item_are_ignored(policy_dir) -> None:
    root = policy_dir({"a.rego": HEAD + 'deny contains {"msg": "no", "rows": 5} if true\n'})
    doc = {"resource": {"type": "postgres"}, "command": {"raw": "SELECT 1"}}
    decision = Engine(load_policy_set(str(root))).decide(doc)
    assert decision.effect == "deny" and decision.reasons[0].rows is None


def test_cel_review_rules_take_rows(policy_dir) -> None:
    root = policy_dir({"r.yaml": "rules:\n  - name: bulk\n    effect: review\n"
                                 "    when: 'true'\n    approvers: [leads]\n    rows: 50\n"})
    [reason] = reasons(root)
    assert (reason.rows, reason.approvers) == (50, ("leads",))


@pytest.mark.parametrize("rule", [
    "  - name: x\n    effect: deny\n    when: 'true'\n    rows: 5\n",
    "  - name: x\n    effect: review\n    when: 'true'\n    rows: -5\n",
    "  - name: x\n    effect: review\n    when: 'true'\n    rows: many\n",
])
def test_cel_rows_that_are_no_budget_refuse_the_set(policy_dir, rule: str) -> None:
    root = policy_dir({"r.yaml": "rules:\n" + rule})
    with pytest.raises(PolicySetError) as info:
        load_policy_set(str(root))
    assert any("rows must be a whole number" in e for e in info.value.errors)


def test_the_budget_crosses_the_wire_and_its_absence_too() -> None:
    decision = Decision("review", (Reason("p.bulk", "m", "review", ("leads",), "1h", 100),
                                   Reason("p.other", "n", "review"),
                                   Reason("p.zero", "z", "review", rows=0)))
    _, back = decision_from_proto(decision_to_proto(decision, "id1"))
    assert [r.rows for r in back.reasons] == [100, None, 0]
    assert back.reasons[0] == decision.reasons[0]


def test_the_shipped_pack_keeps_deciding_by_literal_fingerprint() -> None:
    # a rule that read input.command whole (object.get(input.command, ...)) would key every
    # decision by the statement's full text: pgbench -S would be decided afresh each time
    policies = load_policy_set(str(Path(__file__).resolve().parents[2] / "policies"))
    assert policies.literal_insensitive and policies.cacheable
