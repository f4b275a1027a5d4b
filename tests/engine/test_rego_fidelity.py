"""Rego that answers as OPA does where regopy alone would not: the builtins Ordinance provides
(policy/builtins/*.rego), `print` as a no-op, negative zero, and number literals float64 cannot
hold. Expected values are OPA's (its conformance cases and documentation)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.engine import Engine
from engine.errors import EvaluationError, PolicySetError
from engine.policy import load_policy_set
from engine.policy.rego_source import blank_calls, normalise_numbers, read_module

HEAD = "package ordinance.t\n\nimport rego.v1\n\n"
UNDEFINED = object()
ERROR = object()


def _nested(depth: int, leaf: Any) -> Any:
    return leaf if depth == 0 else {"a": _nested(depth - 1, leaf)}


def value_of(tmp_path: Path, expr: str, input_doc: Any = None) -> Any:
    root = tmp_path / "p"
    root.mkdir(exist_ok=True)
    (root / "p.rego").write_text(HEAD + f"r := {expr}\n")
    engine = Engine(load_policy_set(str(root)))
    try:
        defined, value = engine.query("data.ordinance.t.r", input_doc or {})
    except EvaluationError:
        return ERROR
    return value if defined else UNDEFINED


@pytest.mark.parametrize(("expr", "want"), [
    ('strings.split_n("a.b.c.d", ".", 2)', ["a", "b"]),
    ('strings.split_n("a.b.c.d", ".", 10)', ["a", "b", "c", "d"]),
    ('strings.split_n("a.b.c.d", ".", 0)', []),
    ('strings.split_n("a.b.c.d", ".", -1)', ["d"]),
    ('strings.split_n("a.b.c.d", ".", -10)', ["a", "b", "c", "d"]),
    ('strings.split_n("abc", ".", -2)', ["abc"]),
    ('strings.split_n("", ".", 2)', [""]),
    ('strings.split_n("abc", "", 2)', ["a", "b"]),
    ('strings.split_n("abc", "", -2)', ["b", "c"]),
    ('strings.split_n("a.b.c", ".", 1.5)', ERROR),
    ('strings.split_n("a.b.c", ".", "1")', ERROR),
    ('net.cidr_intersects("10.0.0.0/8", "10.1.0.0/16")', True),
    ('net.cidr_intersects("10.1.0.0/16", "10.0.0.0/8")', True),
    ('net.cidr_intersects("10.0.0.0/16", "10.1.0.0/16")', False),
    ('net.cidr_intersects("fd00::/8", "fd12:3456::/32")', True),
    ('net.cidr_intersects("10.0.0.0/8", "fd00::/8")', False),
    ('net.cidr_intersects("10.0.0.0/8", "not-a-cidr")', ERROR),
    ('net.cidr_is_valid("10.0.0.0/8")', True),
    ('net.cidr_is_valid("2001:db8::/32")', True),
    ('net.cidr_is_valid("10.0.0.0")', False),
    ('net.cidr_is_valid("10.0.0.0/33")', False),
    ('net.cidr_is_valid("300.0.0.0/8")', False),
    ('net.cidr_is_valid(8)', False),
    ('net.cidr_contains_matches("10.0.0.0/8", "10.1.2.3")', [["10.0.0.0/8", "10.1.2.3"]]),
    ('net.cidr_contains_matches(["10.0.0.0/8", "192.168.0.0/16"], '
     '{"a": "10.1.1.1", "b": ["192.168.1.1", "tag"], "c": "1.1.1.1"})', [[0, "a"], [1, "b"]]),
    ('net.cidr_contains_matches({"10.0.0.0/8"}, ["10.0.0.1", "11.0.0.1"])',
     [["10.0.0.0/8", 0]]),
    ('net.cidr_contains_matches(["1.0.0.0/8"], ["2.0.0.1"])', []),
    ('net.cidr_expand("192.168.1.0/30")',
     ["192.168.1.0", "192.168.1.1", "192.168.1.2", "192.168.1.3"]),
    ('net.cidr_expand("192.168.1.5/30")',
     ["192.168.1.4", "192.168.1.5", "192.168.1.6", "192.168.1.7"]),
    ('net.cidr_expand("10.0.0.1/32")', ["10.0.0.1"]),
    ('count(net.cidr_expand("10.0.0.0/20"))', 4096),
    ('net.cidr_expand("::1/128")', ERROR),
    ('to_number("-0") == 0', True),
    ('to_number("-0") < 0', False),
    ('to_number("-0.0") < 0', False),
    ('to_number("12.5")', 12.5),
    ('to_number("twelve")', ERROR),
    ('net.cidr_merge(["192.0.128.0/24", "192.0.129.0/24"])', ["192.0.128.0/23"]),
    ('net.cidr_merge(["10.0.0.0/8", "10.1.0.0/16"])', ["10.0.0.0/8"]),
    ('net.cidr_merge(["192.0.128.0/24", "192.0.130.0/24"])', ["192.0.128.0/24", "192.0.130.0/24"]),
    ('net.cidr_merge({"10.0.0.0/25", "10.0.0.128/25", "10.0.1.0/24"})', ["10.0.0.0/23"]),
    ('net.cidr_merge(["10.0.0.1", "10.0.0.0", "10.0.0.2", "10.0.0.3"])', ["10.0.0.0/30"]),
    ('net.cidr_merge(["10.0.0.5/24", "10.0.0.9"])', ["10.0.0.0/24"]),
    ('net.cidr_merge(["0.0.0.0/1", "128.0.0.0/1"])', ["0.0.0.0/0"]),
    ('net.cidr_merge([])', []),
    ('net.cidr_merge(["::1/128"])', ERROR),
    ('net.cidr_merge(["10.0.0.0/33"])', ERROR),
    # object.union(_n): OPA's deep merge (regopy's own is shallow)
    ('object.union({"a": 1}, {"b": 2})', {"a": 1, "b": 2}),
    ('object.union({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}})', {"a": {"b": 3, "c": 2}}),
    ('object.union({"b": 2}, {"a": {"b": {"c": 1}}})', {"a": {"b": {"c": 1}}, "b": 2}),
    ('object.union({"a": 1}, {"a": {"b": {"c": 1}}, "d": 7})', {"a": {"b": {"c": 1}}, "d": 7}),
    ('object.union({"a": {"b": 1}}, {"a": false})', {"a": False}),
    ('object.union({"a": {"b": {"c": {"d": 1}}}}, {"a": {"b": {"c": {"e": null}}}})',
     {"a": {"b": {"c": {"d": 1, "e": None}}}}),
    ('object.union({}, {})', {}),
    ('object.union({"a": 1}, [1])', ERROR),
    ('object.union_n([])', {}),
    ('object.union_n([{"a": 1}, {"a": {"x": 1}}, {"a": {"y": 2}}])', {"a": {"x": 1, "y": 2}}),
    ('object.union_n([{"a": {"x": 1}}, {"a": 2}, {"a": {"y": 2}}])', {"a": {"y": 2}}),
    ('object.union_n([{"a": 1, "b": 2}, {"a": "a", "d": 4}, {"a": "final"}])',
     {"a": "final", "b": 2, "d": 4}),
    ('object.union_n([{"a": 1}, "b"])', ERROR),
    ('object.union_n({"a": 1})', ERROR),
    ("object.union(" + '{"a": ' * 13 + "1" + "}" * 13 + ", " + '{"a": ' * 13 + "2" + "}" * 13
     + ")", ERROR),  # nested deeper than 12 levels: an error, never a shallow answer
    ("object.union(" + '{"a": ' * 11 + "1" + "}" * 11 + ", " + '{"a": ' * 11 + "2" + "}" * 11
     + ")", _nested(11, 2)),
])
def test_provided_builtin(tmp_path: Path, expr: str, want: Any) -> None:
    got = value_of(tmp_path, expr)
    if want is ERROR:
        assert got is ERROR
    else:
        assert got == want


def test_split_n_in_a_policy_that_destructures(tmp_path: Path) -> None:
    expr = '[name, email] if { [name, email] := strings.split_n(input.user, ";", -2) }'
    got = value_of(tmp_path, expr, {"user": "admin;active;alice;alice@example.com"})
    assert got == ["alice", "alice@example.com"]


@pytest.mark.parametrize("call", [
    'print("checking", input.user)',
    'print(input.missing)',            # an undefined argument does not fail the body (OPA)
    'print(to_number("x"))',           # nor does an argument that would be an error
    'print()',
    'print(\n\t\t"spans", "lines"\n\t)',
])
def test_print_is_a_no_op_that_never_fails_its_body(tmp_path: Path, call: str) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "p.rego").write_text(HEAD + f'deny contains "d" if {{\n\t{call}\n\tinput.x == 1\n}}\n')
    engine = Engine(load_policy_set(str(root)))
    assert engine.query("data.ordinance.t.deny", {"x": 1}) == (True, ["d"])
    assert engine.query("data.ordinance.t.deny", {"x": 2}) == (True, [])


def test_a_line_after_a_multiline_print_keeps_its_number(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "p.rego").write_text(HEAD + 'deny contains "d" if {\n\tprint(\n\t\t"a"\n\t)\n'
                                 '\tx := \n}\n')
    with pytest.raises(PolicySetError) as info:
        load_policy_set(str(root))
    assert any("p.rego:" in e for e in info.value.errors)


# -- negative zero ------------------------------------------------------------------------------


@pytest.mark.parametrize(("expr", "want"), [
    ("-0 == 0", True),
    ("-0 < 0", False),
    ("{-0, 0}", [0]),
    ("count({-0, 0, -0.0})", 1),
    ("[1, 2][-0]", 1),
    ('{-0: "a"}', {"0": "a"}),
    ("numbers.range(-0, 0)", [0]),
    ("max([-0]) < 0", False),
    ("x if { x := -0; x < 0 }", UNDEFINED),
    ("3 -0", 3),                        # a binary minus is left alone
    ("[3 -0, -1, -0.5]", [3, -1, -0.5]),
    ("-0.0 == 0", True),
])
def test_negative_zero_is_zero(tmp_path: Path, expr: str, want: Any) -> None:
    assert value_of(tmp_path, expr) == want


def test_negative_zero_from_parsed_text_is_pinned(tmp_path: Path) -> None:
    """Not normalised (documented in docs/architecture.md): json.unmarshal and yaml.unmarshal
    of `-0` give regopy's -0, which is below 0. A policy comparing such numbers should add 0."""
    assert value_of(tmp_path, 'json.unmarshal("-0") < 0') is True
    assert value_of(tmp_path, 'json.unmarshal("-0") + 0 < 0') is False
    assert value_of(tmp_path, 'json.unmarshal("-0.0") < 0') is False


def test_negative_zero_in_input_is_zero(tmp_path: Path) -> None:
    assert value_of(tmp_path, "input.x < 0", {"x": -0.0}) is False
    assert value_of(tmp_path, "input.x == 0", {"x": -0.0}) is True


# -- numbers float64 cannot hold ----------------------------------------------------------------


@pytest.mark.parametrize("literal", [
    "0.1234567890123456789", "100000000000000000000.5", "1e400", "1.00000000000000000001",
    "2.5e-400", "1e30", "9007199254740993.0", "-1e16",
])
def test_number_literals_float64_cannot_hold_are_refused_with_file_and_line(
        tmp_path: Path, literal: str) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "p.rego").write_text(HEAD + f'ok := 1\ndeny contains "d" if input.n == {literal}\n')
    with pytest.raises(PolicySetError) as info:
        load_policy_set(str(root))
    assert len(info.value.errors) == 1
    assert "p.rego:6:" in info.value.errors[0] and literal.lstrip("-") in info.value.errors[0]


@pytest.mark.parametrize(("expr", "want"), [
    ("0.1 + 0.2 == 0.3", True),
    ("1e3 == 1000", True),
    ("1.5e3", 1500),
    ("1e15 + 1", 1000000000000001),
    ("1000000000000000000000000000000 + 1", 1000000000000000000000000000001),
    ("12345678901234567890 == 12345678901234567891", False),  # regopy integers are exact
    ("9007199254740993 == 9007199254740992", False),
    ('"0.1234567890123456789"', "0.1234567890123456789"),  # inside a string: not a number
])
def test_exact_numbers_are_accepted(tmp_path: Path, expr: str, want: Any) -> None:
    assert value_of(tmp_path, expr) == want


def test_big_input_numbers_are_float64_as_python_json_gives_them(tmp_path: Path) -> None:
    """Pinned (documented): input arrives parsed by Python's json, so a decimal beyond float64
    is already rounded, and an integer beyond 64 bits is passed as a float64."""
    assert value_of(tmp_path, "input.a == input.b",
                    {"a": 0.1234567890123456789, "b": 0.1234567890123456788}) is True
    assert value_of(tmp_path, "input.a == input.b",
                    {"a": 2 ** 64 + 1, "b": 2 ** 64}) is True


@pytest.mark.parametrize("definition", ['print(x) := false', "to_number(x) := 0",
                                        'strings.split_n(a, b, c) := ["x"]'])
def test_a_function_shadowing_a_provided_builtin_is_refused(tmp_path: Path,
                                                            definition: str) -> None:
    """Otherwise `allow if print(x)` would be blanked to true, or a user's to_number renamed."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "p.rego").write_text(HEAD + f"{definition}\n\nallow if print(1)\n")
    with pytest.raises(PolicySetError, match="would shadow a builtin"):
        load_policy_set(str(root))


def test_runtime_text_to_number_conversions_round_as_float64(tmp_path: Path) -> None:
    """Pinned (documented): only literals are checked; text converted at run time rounds."""
    assert value_of(tmp_path, 'to_number("0.1234567890123456789") == '
                              'to_number("0.1234567890123456788")') is True


# -- the source rewrites keep every offset --------------------------------------------------------

_PIECES = st.sampled_from([
    "-0", "- 0", "-0.0", "0", "3 -0", "x", "[", "]", "(", ")", "{", "}", ",", "\n", " ", "\t",
    '"-0"', "`-0`", "# -0\n", "print(", "1.5", "1e3", "-", "+", ":=", "if", "in", "to_number(",
    "0.1234567890123456789", "input.a[0].b", "abs(-0)",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=40))
def test_source_rewrites_keep_offsets_and_lines(pieces: list[str]) -> None:
    """Every rewrite the compiler applies leaves each character where it was, so errors keep
    their `file:line` and the recorded call offsets stay valid."""
    source = "".join(pieces)
    normalised, problems = normalise_numbers(source)
    assert len(normalised) == len(source)
    assert [i for i, c in enumerate(normalised) if c == "\n"] == \
        [i for i, c in enumerate(source) if c == "\n"]
    assert all(1 <= line <= source.count("\n") + 1 for line, _ in problems)
    assert all(a == b or (a == "-" and b == " ") for a, b in zip(source, normalised, strict=True))
    module = read_module("p.rego", source)
    blanked = blank_calls(source, module.calls, frozenset({"print"}))
    assert len(blanked) == len(source) and blanked.count("\n") == source.count("\n")


@pytest.mark.parametrize(("definition", "call", "want"), [
    ('f(o, k) := [v | v := o[k]]', 'f({"a": 1, "b": 2}, "a")', [1]),
    ('f(o, k) := [v | v := o.x[k].y]', 'f({"x": {"a": {"y": 1}, "b": {"y": 2}}}, "a")', [1]),
    ('f(o, k) := [1 | o[k]]', 'f({"a": false, "b": 2}, "a")', []),
    ('f(o, k) := n if { n := count([v | v := o[k]]) }', 'f({"a": 1, "b": 2}, "a")', 1),
    ('f(o, k) if count([v | v := o[k]]) == 1', 'f({"a": 1, "b": 2}, "a")', True),
    ('f(o, k) := {j: v | some j in ["a"]; v := o[j][k]}', 'f({"a": {"p": 1, "q": 2}}, "p")',
     {"a": 1}),
])
def test_function_parameters_in_comprehension_refs(tmp_path: Path, definition: str, call: str,
                                                   want: Any) -> None:
    """regopy defect: a function parameter in a ref inside a comprehension is taken as a fresh
    variable (`f({"a": 1, "b": 2}, "a")` gave [1, 2]); the loader binds it again in the body
    (`rego_safety.bind_parameters`)."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "p.rego").write_text(HEAD + definition + f"\n\nr := {call}\n")
    defined, value = Engine(load_policy_set(str(root))).query("data.ordinance.t.r", {})
    assert (value if defined else UNDEFINED) == want


def test_a_function_with_else_needing_the_workaround_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "p.rego").write_text(HEAD + "f(o, k) := [v | v := o[k]] if false else := 1\n")
    with pytest.raises(PolicySetError, match=r"p.rego:5: a function with else whose "):
        load_policy_set(str(root))


@pytest.mark.parametrize("call", [
    'strings.render_template("{{.x}}", {"x": 1})',
])
def test_builtins_not_provided_are_refused_with_a_reason(tmp_path: Path, call: str) -> None:
    """Builtins real suites use that regopy lacks and Ordinance does not provide: regopy
    would evaluate each to undefined without an error, so the load names it and why."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "p.rego").write_text(HEAD + f"r := {call}\n")
    name = call.split("(", 1)[0]
    with pytest.raises(PolicySetError, match=rf"p.rego:5: unknown builtin {re.escape(name)} \("):
        load_policy_set(str(root))
