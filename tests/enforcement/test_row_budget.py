"""adapters/row_budget.py: a session's allowance per rule, shared by every source it meters;
a released source is neither limited nor charged."""

from __future__ import annotations

import pytest

from adapters.enforcement.row_budget import RowMeter, SessionRows, immediate_reviews, row_budgets
from engine.decision import Decision, Reason

BULK = Reason("pci.bulk_rows", "more than 100 rows", "review", ("leads",), rows=100)
SMALL = Reason("other.rows", "more than 10 rows", "review", rows=10)
PLAIN = Reason("pci.copy", "COPY needs approval", "review")


def test_budgets_and_immediate_reviews_are_told_apart() -> None:
    decision = Decision("review", (BULK, PLAIN, Reason("x", "no", "deny", rows=3)))
    assert [b.rule for b in row_budgets(decision)] == ["pci.bulk_rows"]
    assert immediate_reviews(decision) == (PLAIN,)


def test_sources_share_the_session_allowance() -> None:
    allowance = SessionRows()
    [budget] = row_budgets(Decision("review", (BULK,)))
    first, second = RowMeter([budget], allowance), RowMeter([budget], allowance)
    assert first.admit(60) == 60
    assert second.room() == 40 and second.admit(60) == 40  # the 41st row is held
    assert second.exceeded() == (budget,) and allowance.used("pci.bulk_rows") == 100
    assert first.admit(1) == 0
    second.release()  # approved: the rest flows, uncounted
    assert second.admit(500) == 500 and second.sent == 540
    assert allowance.used("pci.bulk_rows") == 100 and first.room() == 0


def test_the_tightest_budget_limits_and_each_rule_is_charged_once() -> None:
    allowance = SessionRows()
    budgets = row_budgets(Decision("review", (BULK, SMALL, BULK)))
    meter = RowMeter(budgets, allowance)
    assert meter.admit(25) == 10
    assert [b.rule for b in meter.exceeded()] == ["other.rows"]
    assert allowance.used("pci.bulk_rows") == 10 and allowance.used("other.rows") == 10
    assert RowMeter(row_budgets(Decision("review", (BULK,))), allowance).room() == 90


def test_a_zero_budget_holds_at_the_first_row() -> None:
    zero = row_budgets(Decision("review", (Reason("z", "m", "review", rows=0),)))
    assert RowMeter(zero, SessionRows()).admit(1) == 0
    with pytest.raises(ValueError):
        RowMeter((), SessionRows())
