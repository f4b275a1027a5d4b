"""The CEL extensions Ordinance's environment offers, and what it refuses instead of answering
wrongly (cel-spec answers; cel-expr-python 0.1.3)."""

from __future__ import annotations

from typing import Any

import pytest
from cel_expr_python import cel

from engine.engine import Engine
from engine.errors import PolicySetError
from engine.policy import load_policy_set
from engine.policy.cel import CEL_EXTENSIONS, cel_env, compile_expression
from engine.policy.cel_source import map_key_problems, static_problems

ERROR = object()

CASES: list[tuple[str, Any]] = [
    # math
    ("math.greatest(1, 5, 3)", 5),
    ("math.least([2.5, 1.5])", 1.5),
    ("math.abs(-3)", 3),
    ("math.sqrt(16) == 4.0", True),
    ("math.bitOr(1, 2)", 3),
    ("math.isNaN(0.0 / 0.0)", True),
    # encoders
    ("base64.encode(b'hello')", "aGVsbG8="),
    ("base64.decode('aGVsbG8=') == b'hello'", True),
    ("base64.decode('!!!')", ERROR),
    # optional types
    ("{'a': 1}[?'b'].orValue(7)", 7),
    ("{'a': 1}.?a.value()", 1),
    ("optional.none().hasValue()", False),
    ("optional.of(2).value()", 2),
    # bindings
    ("cel.bind(x, 20, x * x)", 400),
    # sets
    ("sets.contains([1, 2, 3], [3, 1])", True),
    ("sets.equivalent([1, 1, 2], [2, 1])", True),
    ("sets.intersects([1], [2])", False),
    # lists
    ("lists.range(4)", [0, 1, 2, 3]),
    ("[3, 1, 2].sort()", [1, 2, 3]),
    ("[[1], [2, [3]]].flatten(1)", [1, 2, [3]]),
    ("[1, 1, 2].distinct()", [1, 2]),
    ("[1, 2, 3].reverse()", [3, 2, 1]),
    ("[1, 2, 3, 4].slice(1, 3)", [2, 3]),
    ("['bb', 'a'].sortBy(s, size(s))", ["a", "bb"]),
    # two-variable comprehensions
    ("[10, 20].all(i, v, v == (i + 1) * 10)", True),
    ("{'a': 1, 'b': 2}.exists(k, v, k == 'b' && v == 2)", True),
    ("[5, 6].existsOne(i, v, i == 1)", True),
    ("[1, 2].transformList(i, v, i + v)", [1, 3]),
    # strings (v2+: format, quote, reverse)
    ("'%s-%d'.format(['a', 3])", "a-3"),
    ("strings.quote('a\"b')", '"a\\"b"'),
    ("'abc'.reverse()", "cba"),
    ("'a,b,c'.split(',', 2)", ["a", "b,c"]),
    # regex
    ("regex.replace('a1b2', '[0-9]', '#')", "a#b#"),
    ("regex.extract('id=42', '[0-9]+').orValue('')", "42"),
]


@pytest.mark.parametrize(("expr", "want"), CASES, ids=[c[0] for c in CASES])
def test_extension(expr: str, want: Any) -> None:
    value = compile_expression(cel_env(), expr).eval(data={})
    if want is ERROR:
        assert value.type() == cel.Type.ERROR, value.value()
    else:
        assert value.type() != cel.Type.ERROR, value.value()
        assert value.plain_value() == want


def test_every_named_extension_is_registered() -> None:
    """An unknown library name fails at compile time, so each name must have compiled above."""
    assert set(CEL_EXTENSIONS) >= {"strings", "math", "encoders", "optional", "bindings",
                                   "sets", "lists", "two-var-comprehensions"}
    cel_env().compile("true")


@pytest.mark.parametrize("expr", [
    "{0: 1, 0u: 2}[0.0]",               # cel-spec: "Failed with repeated key"
    "{0x10: 'a', 16u: 'b'}[16]",        # the same value written in hex
    "{subject.level: 1, 2u: 2}",        # a computed key next to a uint one
    "{uint(subject.level): 1, 2: 2}",   # a uint conversion next to an int key
    "[{0: 1, 0u: 2}].size() == 1",      # nested
])
def test_map_keys_equal_across_int_and_uint_are_refused(expr: str) -> None:
    assert map_key_problems(expr)
    with pytest.raises(RuntimeError, match="equal across int and uint"):
        compile_expression(cel_env(), expr)


@pytest.mark.parametrize("expr", [
    "{0: 1, 1: 2}[0] == 1",
    "{0u: 1, 1u: 2}[1u] == 2",
    "{'0': 1, 0u: 2}['0'] == 1",        # string keys never equal numbers
    "{subject.id: 1, resource.id: 2}.size() == 2",  # no uint anywhere: input has none
    "'{0: 1, 0u: 2}' != ''",            # inside a string
    "TestAllTypes{single_int64: 0, single_uint64: 0u} == dyn(1)",  # a message, not a map
])
def test_ordinary_map_literals_are_not_refused(expr: str) -> None:
    assert map_key_problems(expr) == []


@pytest.mark.parametrize("expr", ["{'a': 1}.transformMap(k, v, v + 1)['a'] == 2",
                                  "{'a': 1}.transformMapEntry(k, v, {k: v}).size() == 1"])
def test_map_transforms_that_cannot_evaluate_are_refused_at_load(expr: str) -> None:
    with pytest.raises(RuntimeError, match="not available"):
        compile_expression(cel_env(), expr)
    assert static_problems("'transformMap' == subject.transformMap") == []


def test_exact_repeated_key_raises_in_cel_expr_python() -> None:
    """cel-expr-python raises (not an error value) for a key repeated at run time."""
    program = compile_expression(cel_env(), "{subject.a: 1, subject.b: 2}.size() == 2")
    with pytest.raises(RuntimeError, match="duplicate key"):
        program.eval(data={"subject": {"a": "x", "b": "x"}})


def test_a_raising_evaluation_is_a_deny_naming_the_rule(policy_dir) -> None:
    root = policy_dir({"r.yaml": "rules:\n  - name: keys\n    effect: review\n"
                                 "    when: '{subject.id: 1, subject.name: 2}.size() == 2'\n"})
    engine = Engine(load_policy_set(str(root)))
    out = engine.decide({"subject": {"id": "x", "name": "x"}, "resource": {},
                         "command": {"raw": "x"}}).to_dict()
    assert out["effect"] == "deny"
    assert "keys" in out["reasons"][0]["message"]
    assert "duplicate key" in out["reasons"][0]["message"]
    ok = engine.decide({"subject": {"id": "x", "name": "y"}, "resource": {},
                        "command": {"raw": "x"}}).to_dict()
    assert ok["effect"] == "review"


def test_refused_map_literal_names_file_and_line(policy_dir) -> None:
    root = policy_dir({"r.yaml": "rules:\n  - name: ok\n    effect: deny\n    when: 'false'\n"
                                 "  - name: clash\n    effect: deny\n"
                                 "    when: '{0: true, 0u: false}[0]'\n"})
    with pytest.raises(PolicySetError) as info:
        load_policy_set(str(root))
    assert len(info.value.errors) == 1
    assert "r.yaml:5:" in info.value.errors[0] and "clash" in info.value.errors[0]


def test_extensions_work_in_rules(policy_dir) -> None:
    root = policy_dir({"r.yaml": """rules:
  - name: admins-only
    effect: deny
    when: '!sets.intersects(subject.groups, ["admin", "dba"])'
  - name: many-groups
    effect: review
    when: 'cel.bind(g, subject.groups.distinct(), g.size() > 1)'
  - name: optional-label
    effect: deny
    when: 'resource.?labels.?env.orValue("prod") == "dev"'
"""})
    engine = Engine(load_policy_set(str(root)))

    def effect(groups: list[str], labels: dict[str, str]) -> str:
        doc = {"subject": {"id": "a", "groups": groups}, "resource": {"labels": labels},
               "command": {"raw": "x"}}
        return str(engine.decide(doc).to_dict()["effect"])

    assert effect(["dev"], {}) == "deny"
    assert effect(["dba", "dba"], {}) == "allow"
    assert effect(["dba", "dev"], {}) == "review"
    assert effect(["dba"], {"env": "dev"}) == "deny"
