"""Rego results are read from regopy's node tree: input text quoted by a rule comes back as it
is, and can never add fields to a decision (regopy 1.5.2 prints bundle results unescaped)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.engine import Engine
from engine.policy import load_policy_set

QUOTING = """package ordinance.quoting
review contains {"message": sprintf("approve %s", [input.command.raw]),
                 "approvers": ["dba-leads"], "window": "1h"} if {
  startswith(input.command.raw, "DROP")
}
deny contains sprintf("denied: %s", [input.command.raw]) if {
  startswith(input.command.raw, "DELETE")
}
values := {"n": 12345678901234567890, "f": 1.5, "t": true, "f2": false, "z": null,
           "s": {"a", "b"}, "raw": input.command.raw}
"""


def _engine(tmp_path: Path) -> Engine:
    (tmp_path / "quoting.rego").write_text(QUOTING)
    return Engine(load_policy_set(tmp_path))


def _doc(raw: str) -> dict:
    return {"subject": {"id": "mallory", "groups": []}, "resource": {},
            "command": {"protocol": "shell", "raw": raw}}


def test_a_quoted_input_cannot_name_its_own_approvers(tmp_path: Path) -> None:
    raw = 'DROP x", "approvers": ["mallory"], "window": "87600h", "z": "'
    decision = _engine(tmp_path).decide(_doc(raw))
    assert decision.effect == "review"
    (reason,) = decision.reasons
    assert reason.approvers == ("dba-leads",)
    assert reason.window == "1h"
    assert reason.message == f"approve {raw}"


def test_quotes_and_backslashes_in_a_deny_message_come_back_whole(tmp_path: Path) -> None:
    raw = 'DELETE FROM "t\\\\x" WHERE a = \'\\n\' -- é ✓ \n\t'
    decision = _engine(tmp_path).decide(_doc(raw))
    assert decision.effect == "deny"
    assert [r.message for r in decision.reasons] == [f"denied: {raw}"]


def test_every_json_kind_is_read_from_the_tree(tmp_path: Path) -> None:
    defined, value = _engine(tmp_path).query("ordinance/quoting/values", _doc('a"b\\c'))
    assert defined
    assert value == {"n": 12345678901234567890, "f": 1.5, "t": True, "f2": False, "z": None,
                     "s": ["a", "b"], "raw": 'a"b\\c'}


def test_a_nul_the_rego_runtime_would_cut_the_text_at_is_a_deny(tmp_path: Path) -> None:
    # regopy reads C strings: `ALTER …` after the NUL would be invisible to the rule
    decision = _engine(tmp_path).decide(_doc("SELECT 1\0; DROP x"))
    assert decision.effect == "deny"
    assert "NUL character" in decision.reasons[0].message


@pytest.fixture(scope="module")
def quoting_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return _engine(tmp_path_factory.mktemp("quoting"))


_TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")  # no NUL: refused


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(_TEXT, max_size=60))
def test_any_text_round_trips_through_a_rule(quoting_engine: Engine, text: str) -> None:
    raw = "DELETE " + text
    decision = quoting_engine.decide(_doc(raw))
    assert decision.effect == "deny"
    assert [r.message for r in decision.reasons] == [f"denied: {raw}"]


READING = """package ordinance.reading
length := count(input.s)
same_as_data := input.s == data.settings.expected
"""


@pytest.mark.parametrize("text", ['"q"', '"', '"abc', 'é', 'x y', ''])
def test_input_strings_reach_rules_whole(tmp_path: Path, text: str) -> None:
    # regopy read a string that begins with `"` as a quoted token (`"q"` was `q`), and data
    # dumped with \\u escapes never equalled the same input text
    (tmp_path / "reading.rego").write_text(READING)
    (tmp_path / "data.yaml").write_text(json.dumps({"settings": {"expected": text}},
                                                   ensure_ascii=False))
    engine = Engine(load_policy_set(tmp_path))
    doc = {**_doc("x"), "s": text}
    assert engine.query("ordinance/reading/same_as_data", doc) == (True, True)
    # pinned regopy defect (docs/architecture.md): a string passed as a quoted token is
    # measured with its JSON escapes (`"` counts 2)
    escaped = len(json.dumps(text, ensure_ascii=False)) - 2
    expected = escaped if text.startswith('"') else len(text)
    assert engine.query("ordinance/reading/length", doc) == (True, expected)
