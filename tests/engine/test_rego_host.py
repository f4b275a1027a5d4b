"""`json.match_schema` / `json.verify_schema`, computed by Ordinance (rego_host.py) because
regopy has no host functions: through `load_policy_set` and `Engine`, with real jsonschema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.engine import Engine
from engine.errors import PolicySetError
from engine.policy import load_policy_set

HEAD = "package ordinance.t\n\nimport rego.v1\n\n"  # the body starts on line 5
PERSON = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
SCHEMA = json.dumps(PERSON)
SCHEMA_STRING = json.dumps(SCHEMA)  # the schema as a Rego string holding JSON


def _engine(tmp_path: Path, body: str, data: dict[str, Any] | None = None) -> Engine:
    (tmp_path / "p.rego").write_text(HEAD + body + "\n")
    if data is not None:
        (tmp_path / "data.json").write_text(json.dumps(data))
    return Engine(load_policy_set(tmp_path))


RULES = f"""
deny contains "bad object" if {{
\t[ok, _] := json.match_schema(input.request.object, {SCHEMA})
\tnot ok
}}

result := json.match_schema(input.request.object, data.schemas.person)

verified := json.verify_schema({SCHEMA})

broken := json.verify_schema({{"type": 12}})

literal := json.match_schema({{"name": "x"}}, {SCHEMA_STRING})
"""


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return _engine(tmp_path, RULES, {"schemas": {"person": PERSON}})


def test_a_document_that_does_not_match_is_denied(engine: Engine) -> None:
    doc = {"request": {"object": {"name": 3}}}
    assert engine.decide(doc).effect == "deny"
    defined, (ok, errors) = engine.query("data.ordinance.t.result", doc)
    assert (defined, ok) == (True, False)
    assert errors == [{"error": "name: 3 is not of type 'string'", "type": "type",
                       "field": "name", "desc": "3 is not of type 'string'"}]


def test_a_matching_document_passes(engine: Engine) -> None:
    doc = {"request": {"object": {"name": "alice"}}}
    assert engine.decide(doc).effect == "allow"
    assert engine.query("data.ordinance.t.result", doc) == (True, [True, []])


def test_an_undefined_document_makes_the_call_undefined_as_in_opa(engine: Engine) -> None:
    assert engine.query("data.ordinance.t.result", {"request": {}}) == (False, None)


def test_an_input_cannot_forge_the_host_results(engine: Engine) -> None:
    doc = {"request": {"object": {}}, "__ordinance_host": {"c0": [True, []], "c1": [True, []]}}
    assert engine.decide(doc).effect == "deny"
    assert engine.query("data.ordinance.t.result", doc)[1][0] is False


def test_literal_calls_are_computed_at_load(engine: Engine) -> None:
    assert engine.query("data.ordinance.t.verified", {}) == (True, [True, None])
    defined, (valid, message) = engine.query("data.ordinance.t.broken", {})
    assert (defined, valid) == (True, False) and "12" in message
    assert engine.query("data.ordinance.t.literal", {}) == (True, [True, []])


@pytest.mark.parametrize(("body", "message"), [
    ("r := json.match_schema(x, {}) if x := input.obj", "the document must be a JSON literal"),
    ("r := json.match_schema(input.obj, input.schema)", "the schema must be a JSON literal"),
    ("r := json.match_schema(input.obj, data.nothing)", "is not a data document"),
    ('r := json.match_schema(input.obj, {"type": 12})', "invalid schema"),
    ("r if json.match_schema(input.obj, {}, out)", "output-argument form"),
    ("r := input.__ordinance_host", "is reserved"),
])
def test_what_cannot_be_computed_is_refused_at_load(tmp_path: Path, body: str,
                                                     message: str) -> None:
    with pytest.raises(PolicySetError, match=message) as err:
        _engine(tmp_path, body)
    assert "p.rego:" in err.value.errors[0]


def test_lines_after_a_multiline_call_keep_their_numbers(tmp_path: Path) -> None:
    body = ("r := json.match_schema(\n\tinput.obj,\n\t{\"type\": \"object\"},\n)\n\n"
            "q := 1 / input.zero\n")
    engine = _engine(tmp_path, body)
    assert engine.query("data.ordinance.t.r", {"obj": {}}) == (True, [True, []])
    with pytest.raises(Exception, match="divide by zero"):
        engine.query("data.ordinance.t.q", {"zero": 0})


def test_the_decision_cache_keeps_documents_apart(engine: Engine) -> None:
    """The document's path is read by the policy, so it is part of the cache key."""
    good, bad = {"request": {"object": {"name": "a"}}}, {"request": {"object": {"name": 1}}}
    assert [engine.decide(d).effect for d in (good, bad, good, bad)] == \
        ["allow", "deny", "allow", "deny"]
