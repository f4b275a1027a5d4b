"""Rego behaviours policy authors rely on, pinned through the engine (load_policy_set + Engine).

Every answer here is what Ordinance gives today with regopy 1.5.2. Where that differs from OPA
the test's docstring says so and names the defect (the ones already known are in the "regopy
defects" table of docs/architecture.md), so that a regopy upgrade or an engine fix that changes
the answer fails here and gets noticed. Cases that must
end in a deny (a runtime error) are checked through `Engine.decide` as well.

`python -m benchmarks.rego_conformance DIR` measures the same engine path against OPA's own
conformance cases; these tests are our own, smaller and always run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.engine import Engine
from engine.errors import EvaluationError, PolicySetError
from engine.policy import load_policy_set

HEAD = "package sem\n\nimport rego.v1\n\n"

# One policy set for every value test: compiled once per module (a bundle costs ~50 ms).
RULES = r"""
big contains x if {
	some x in input.xs
	x > 1
}

positive[k] := v if {
	some k, v in input.m
	v > 0
}

keys_of_one contains k if some k, 1 in input.m

all_small if {
	every x in input.xs { x < 10 }
}

none_big if {
	every x in input.xs { x > 10 }
}

vacuous if {
	every x in [] { x > 10 }
}

doubled := [y | some x in input.xs; y := x * 2]
distinct := {x | some x in input.dups}
ages := {p.name: p.age | some p in input.people}

default level := "none"

level := "high" if input.score > 90

grade := "A" if input.score >= 90
else := "B" if input.score >= 80
else := "C"

sign(x) := "negative" if x < 0
sign(x) := "zero" if x == 0
sign(x) := "positive" if x > 0
signs := [sign(-2), sign(0), sign(5)]

greet("admin") := "root"
greet(name) := concat(" ", ["hello", name]) if name != "admin"
greetings := [greet("admin"), greet("bob")]

joined := concat(",", ["a", "b", "c"])
parts := split("db/schema/table", "/")
message := sprintf("%s has %d rows (%v)", ["orders", 42, true])
echoed := sprintf("%s!", [input.word])
shouted := sprintf("%s!", [upper(input.word)])
affixes := [startswith("pg_catalog", "pg_"), endswith("dump.sql", ".sql"), contains("a b", " ")]
regexes := [regex.match(`^[a-z]+_[0-9]{2}$`, "table_42"), regex.match(`^[a-z]+$`, "Table")]
globs := [
	glob.match("db.*.users", ["."], "db.prod.users"),
	glob.match("db.*", ["."], "db.prod.users"),
	glob.match("db.**", ["."], "db.prod.users"),
]
upper_accented := upper("héllo")

arithmetic := {"half": 7 / 2, "whole": 8 / 2, "rem": 7 % 3, "big": 9007199254740993 + 0}
null_above := null > 1000
string_above := "5000" > 1000
guarded_above if {
	is_number(input.limit)
	input.limit > 1000
}

got := [
	object.get({"a": 1}, "b", "fallback"),
	object.get({"a": {"b": {"c": 3}}}, ["a", "b", "c"], 0),
	object.get({"a": {"b": 1}}, ["a", "x"], "none"),
]
aggregates := {
	"count": count([1, 2, 3]), "sum": sum([1, 2, 3.5]),
	"max": max([3, 9, 4]), "min": min({5, 2}),
}
set_ops := {"union": ({1, 2} | {2, 3}), "inter": ({1, 2} & {2, 3}), "diff": ({1, 2} - {2, 3})}
members := ["b" in ["a", "b"], 1 in {"k": 1}, 3 in {1, 2}]
leaf_paths := [path | walk({"a": {"b": 1}, "c": [2, 1]}, [path, 1])]
encoded := json.marshal({"b": 1, "a": [true, null]})
decoded := json.unmarshal(`{"x": [1, 2.5, "s"]}`)
base64_round := [base64.encode("ordinance"), base64.decode("b3JkaW5hbmNl")]
digest := crypto.sha256("abc")
stamp_offset := time.parse_rfc3339_ns("2024-01-02T03:04:05+02:00")
stamp_zulu := time.parse_rfc3339_ns("2024-01-02T03:04:05Z")

cidr := net.cidr_contains(input.net, input.addr)
outside_private if not net.cidr_contains("10.0.0.0/8", input.ip)


deep_missing if input.nope.deeper == 1
not_present if not input.nope
"""

INPUT: dict[str, Any] = {
    "xs": [1, 2, 3], "m": {"a": 1, "b": -1, "c": 2}, "dups": [2, 1, 2],
    "people": [{"name": "ann", "age": 31}], "score": 85, "word": "drop",
}


def _write(root: Path, files: dict[str, str]) -> str:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return str(root)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    root = _write(tmp_path_factory.mktemp("sem"), {"sem.rego": HEAD + RULES})
    return Engine(load_policy_set(root))


def value(engine: Engine, rule: str, doc: Any = None) -> Any:
    defined, result = engine.query(f"data.sem.{rule}", INPUT if doc is None else doc)
    assert defined, f"data.sem.{rule} is undefined"
    return result


def undefined(engine: Engine, rule: str, doc: Any = None) -> bool:
    defined, _ = engine.query(f"data.sem.{rule}", INPUT if doc is None else doc)
    return not defined


def deny_engine(tmp_path: Path, body: str) -> Engine:
    root = _write(tmp_path / "deny", {"p.rego": "package ordinance.t\n\nimport rego.v1\n\n" + body})
    return Engine(load_policy_set(root))


# -- collections and iteration ----------------------------------------------------------------


def test_partial_set_keeps_matching_members_sorted(engine: Engine) -> None:
    assert value(engine, "big") == [2, 3]


def test_partial_object_and_some_key_value(engine: Engine) -> None:
    assert value(engine, "positive") == {"a": 1, "c": 2}
    assert value(engine, "keys_of_one") == ["a"]


@pytest.mark.parametrize(("rule", "holds"), [("all_small", True), ("none_big", False),
                                             ("vacuous", True)])
def test_every(engine: Engine, rule: str, holds: bool) -> None:
    assert undefined(engine, rule) is not holds


def test_comprehensions(engine: Engine) -> None:
    assert value(engine, "doubled") == [2, 4, 6]
    assert value(engine, "distinct") == [1, 2]
    assert value(engine, "ages") == {"ann": 31}


def test_array_comprehension_with_arithmetic_head_is_rejected_at_load(tmp_path: Path) -> None:
    """regopy defect: `[x * 2 | ...]` does not parse ("Invalid collection"); OPA accepts it.
    Fails closed at load; write `[y | ...; y := x * 2]` or `[(x * 2) | ...]`."""
    root = _write(tmp_path, {"p.rego": HEAD + "d := [x * 2 | some x in [1, 2]]\n"})
    with pytest.raises(PolicySetError, match="Invalid collection"):
        load_policy_set(root)


def test_membership(engine: Engine) -> None:
    assert value(engine, "members") == [True, True, False]


def test_set_operators(engine: Engine) -> None:
    assert value(engine, "set_ops") == {"union": [1, 2, 3], "inter": [2], "diff": [1]}


def test_walk_yields_paths_to_matching_leaves(engine: Engine) -> None:
    assert value(engine, "leaf_paths") == [["a", "b"], ["c", 1]]


# -- rule forms --------------------------------------------------------------------------------


def test_default_applies_only_when_no_body_holds(engine: Engine) -> None:
    assert value(engine, "level") == "none"
    assert value(engine, "level", {**INPUT, "score": 95}) == "high"


@pytest.mark.parametrize(("score", "grade"), [(95, "A"), (85, "B"), (10, "C")])
def test_else_chain_takes_the_first_branch_that_holds(engine: Engine, score: int,
                                                      grade: str) -> None:
    assert value(engine, "grade", {**INPUT, "score": score}) == grade


def test_function_with_several_definitions(engine: Engine) -> None:
    assert value(engine, "signs") == ["negative", "zero", "positive"]
    assert value(engine, "greetings") == ["root", "hello bob"]


def test_function_definitions_that_disagree_are_an_error(tmp_path: Path) -> None:
    engine = deny_engine(tmp_path, 'f(_) := 1\nf(_) := 2\ndeny contains "x" if f(0) == 1\n')
    decision = engine.decide({})
    assert decision.effect == "deny"
    assert "policy evaluation error" in decision.reasons[0].message


def test_undefined_input_paths_are_undefined_and_negate_to_true(engine: Engine) -> None:
    assert undefined(engine, "deep_missing")
    assert value(engine, "not_present") is True


def test_unsafe_variable_is_refused_at_load(tmp_path: Path) -> None:
    """OPA rejects `x > 1` with `x` unbound (rego_unsafe_var_error); regopy would load it and
    the rule would silently never fire. `engine/policy/rego_safety.py` refuses it, as OPA does
    (more cases in test_rego_safety.py)."""
    with pytest.raises(PolicySetError, match=r"p.rego:5: rego_unsafe_var_error: var x is unsafe"):
        deny_engine(tmp_path, 'deny contains "unsafe" if { x > 1 }\n')


# -- strings -----------------------------------------------------------------------------------


def test_concat_split_and_sprintf(engine: Engine) -> None:
    assert value(engine, "joined") == "a,b,c"
    assert value(engine, "parts") == ["db", "schema", "table"]
    assert value(engine, "message") == "orders has 42 rows (true)"
    assert value(engine, "echoed") == "drop!"


def test_sprintf_of_a_builtin_result_fails_closed(engine: Engine) -> None:
    """regopy defect (documented): in bundles `sprintf("%s", [upper(s)])` quotes the string
    and the result is no string the engine can read; it raises instead of answering."""
    with pytest.raises(EvaluationError, match="cannot tell apart from an unterminated"):
        engine.query("data.sem.shouted", INPUT)


def test_prefix_suffix_contains_regex_and_glob(engine: Engine) -> None:
    assert value(engine, "affixes") == [True, True, True]
    assert value(engine, "regexes") == [True, False]
    assert value(engine, "globs") == [True, False, True]


def test_upper_is_ascii_only(engine: Engine) -> None:
    """regopy defect: `upper`/`lower` leave non-ASCII letters alone (OPA: "HÉLLO")."""
    assert value(engine, "upper_accented") == "HéLLO"


# -- numbers and comparisons ---------------------------------------------------------------------


def test_arithmetic(engine: Engine) -> None:
    assert value(engine, "arithmetic") == {"half": 3.5, "whole": 4, "rem": 1,
                                           "big": 9007199254740993}


def test_null_compares_above_numbers(engine: Engine) -> None:
    """regopy defect (documented): `null > 1000` is true, so a comparison with a missing
    limit fires; policies check `is_number` first, which this also pins."""
    assert value(engine, "null_above") is True
    assert undefined(engine, "guarded_above", {"limit": None})
    assert value(engine, "guarded_above", {"limit": 5000}) is True


def test_string_does_not_compare_above_numbers(engine: Engine) -> None:
    """regopy differs from OPA's type order (string > number): `"5000" > 1000` is false.
    A limit sent as a string never trips a numeric check; guard with `is_number`."""
    assert value(engine, "string_above") is False


# -- builtins on documents -----------------------------------------------------------------------


def test_object_get_with_default_and_path(engine: Engine) -> None:
    assert value(engine, "got") == ["fallback", 3, "none"]


def test_count_sum_max_min(engine: Engine) -> None:
    assert value(engine, "aggregates") == {"count": 3, "sum": 6.5, "max": 9, "min": 2}


@pytest.mark.parametrize(("call", "why"), [
    ('semver.compare("1.10.0", "1.9.0")', "compares versions as text"),
    ('semver.is_valid("1.02.3")', "accepts invalid versions"),
    # regopy: time.format(0) is "1970-01-01T00:00:00.000000000Z" (OPA trims the zeros), and
    # [1500000000, "UTC", "2006-01-02T15:04:05.000Z07:00"] gives ".1500+00:00" (OPA ".500Z")
    ('time.format(0) == "1970-01-01T00:00:00Z"', "prints nine fraction digits"),
])
def test_builtins_regopy_answers_wrongly_are_refused(tmp_path: Path, call: str, why: str) -> None:
    """regopy defects found against OPA's conformance cases (object.union(_n), shallow in
    regopy, is provided in Rego instead: test_rego_fidelity.py): semver.compare("1.10.0",
    "1.9.0") is -1 (a version gate would let 1.9.x through).
    A silent wrong answer cannot be noticed by a policy, so the set is refused at load."""
    with pytest.raises(PolicySetError, match=why):
        deny_engine(tmp_path, f'deny contains "x" if {call}\n')


def test_json_base64_and_sha256(engine: Engine) -> None:
    assert value(engine, "encoded") == '{"a":[true,null],"b":1}'
    assert value(engine, "decoded") == {"x": [1, 2.5, "s"]}
    assert value(engine, "base64_round") == ["b3JkaW5hbmNl", "ordinance"]
    assert value(engine, "digest") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


def test_parse_rfc3339_with_numeric_offset(engine: Engine) -> None:
    assert value(engine, "stamp_offset") == 1704157445000000000  # 2024-01-02T01:04:05Z


def test_parse_rfc3339_with_zulu_suffix_fails_closed(engine: Engine) -> None:
    """regopy defect: "...Z" timestamps do not parse ("Unable to parse time"); OPA accepts
    them. The error denies; send "+00:00" instead."""
    with pytest.raises(EvaluationError, match="Unable to parse time"):
        engine.query("data.sem.stamp_zulu", INPUT)


# -- net.cidr_contains (Ordinance's Rego implementation) -----------------------------------------


@pytest.mark.parametrize(("net", "addr", "inside"), [
    ("10.0.0.0/8", "10.20.30.40", True),
    ("10.0.0.0/8", "11.0.0.1", False),
    ("192.168.0.0/16", "192.168.4.0/24", True),
    ("192.168.4.0/24", "192.168.0.0/16", False),
    ("10.1.2.3", "10.1.2.3", True),
    ("2001:db8::/32", "2001:db8:1234::1", True),
    ("2001:db8::/32", "2001:db9::1", False),
    ("::1/128", "::1", True),
])
def test_cidr_contains(engine: Engine, net: str, addr: str, inside: bool) -> None:
    assert value(engine, "cidr", {"net": net, "addr": addr}) is inside


def test_cidr_contains_is_false_across_families(engine: Engine) -> None:
    """As in OPA: an IPv6 address is simply not inside an IPv4 network."""
    assert value(engine, "cidr", {"net": "10.0.0.0/8", "addr": "::1"}) is False


@pytest.mark.parametrize("addr", ["not-an-ip", "10.0.0.300", "10.0.0.0/99"])
def test_cidr_contains_errors_on_malformed_input(engine: Engine, addr: str) -> None:
    """As in OPA, a malformed address is an error, so `not net.cidr_contains(...)` cannot
    succeed on garbage: the query raises and a decision would deny."""
    with pytest.raises(EvaluationError, match="invalid syntax"):
        engine.query("data.sem.outside_private", {"ip": addr})


# -- errors must deny ------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "error"), [
    ('deny contains "d" if 1 / input.zero > 0\n', "divide by zero"),
    ('deny contains "n" if to_number(input.text) > 0\n', "invalid syntax"),
    ('limit := 1\nlimit := 2 if input.zero == 0\ndeny contains "c" if limit > 1\n',
     "multiple outputs"),
])
def test_runtime_errors_deny(tmp_path: Path, body: str, error: str) -> None:
    engine = deny_engine(tmp_path, body)
    decision = engine.decide({"zero": 0, "text": "x"})
    assert decision.effect == "deny"
    assert "policy evaluation error" in decision.reasons[0].message
    with pytest.raises(EvaluationError, match=error):
        engine.query("data.ordinance.t.deny", {"zero": 0, "text": "x"})


def test_conflicting_partial_object_values_are_an_error(tmp_path: Path) -> None:
    engine = deny_engine(tmp_path, 'o["k"] := 1\no["k"] := 2\n')
    with pytest.raises(EvaluationError):
        engine.query("data.ordinance.t.o", {})


@pytest.mark.parametrize(("body", "error"), [
    ('deny contains "s" if strings.render_template("x", {})\n',
     "unknown builtin strings.render_template"),
    ('deny contains "r" if opa.runtime().env\n', "opa.runtime is not allowed"),
])
def test_load_rejects_missing_and_forbidden_builtins(tmp_path: Path, body: str,
                                                     error: str) -> None:
    with pytest.raises(PolicySetError, match=error):
        deny_engine(tmp_path, body)


def test_forbidden_builtin_is_rejected_as_a_with_replacement(tmp_path: Path) -> None:
    """Naming opa.runtime as a `with` replacement would hand the environment to Rego."""
    body = 'deny contains "e" if {\n\tx := time.now_ns() with time.now_ns as opa.runtime\n' \
           '\tx.env\n}\n'
    with pytest.raises(PolicySetError, match=r"opa\.runtime"):
        deny_engine(tmp_path, body)
