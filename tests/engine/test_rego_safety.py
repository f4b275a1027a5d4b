"""OPA's safety check, which regopy lacks, through `load_policy_set` (rego_safety.py).

regopy evaluates a body with an unbound variable: `x > 1` alone is undefined and `not x` (or
`not input.b[x] == 1`) *holds*, so a deny could silently never fire and an allow always hold.
OPA refuses such modules with `rego_unsafe_var_error: var x is unsafe`, and reorders a body
whose expressions only need reordering (`x > 1; x := input.a` is true). Each case below
gives the answer OPA gives.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from engine.engine import Engine
from engine.errors import PolicySetError
from engine.policy import load_policy_set
from engine.policy.rego_safety import arity_table, check_module, function_arities
from engine.policy.rego_source import read_module
from engine.rego_testing import run_rego_tests

HEAD = "package ordinance.t\n\nimport rego.v1\n\n"  # the body starts on line 5


def _load(tmp_path: Path, body: str) -> Engine:
    (tmp_path / "p.rego").write_text(HEAD + body)
    return Engine(load_policy_set(tmp_path))


@pytest.mark.parametrize(("body", "line", "var"), [
    ('deny contains "m" if { x > 1 }', 5, "x"),
    # negation over an unbound variable: regopy says `not x` holds
    ('deny contains "m" if { not x }', 5, "x"),
    ('allow if { not input.blocked[x] == true }', 5, "x"),
    ('allow if { not input.blocked[_] == true }', 5, "_"),
    # a variable declared with `some` but never bound
    ('deny contains "m" if { some x; x > 1 }', 5, "x"),
    # rule heads: value, key, contains term
    ('p := y if { input.a }', 5, "y"),
    ('p[k] := 1 if { input.a }', 5, "k"),
    ('deny contains msg if { input.a }', 5, "msg"),
    ('p := y', 5, "y"),
    # else branches and functions
    ('p := 1 if { input.a } else := y if { input.b }', 5, "y"),
    ('f(a) := b if { a > 1 }', 5, "b"),
    # comprehensions: a head variable the body does not bind, an unbound one inside
    ('p := [x | y := input.a]', 5, "x"),
    ('p := {x | some x in input.a; x > z}', 5, "z"),
    # every: its body needs its own variables bound
    ('p if {\n\tevery x in input.a {\n\t\tx > y\n\t}\n}', 7, "y"),
    # a `with` value, a ref through an unbound variable, a membership test
    ('p if { q with input as {"a": z} }\nq if input.a', 5, "z"),
    ('p if { x.role == "admin" }', 5, "x"),
    ('p if { x in input.roles }', 5, "x"),
    # a line further down: the message names it
    ('p if {\n\tinput.a\n\tcount(input.xs) > n\n}', 7, "n"),
])
def test_unsafe_variables_are_refused_with_opas_message(tmp_path: Path, body: str, line: int,
                                                        var: str) -> None:
    with pytest.raises(PolicySetError) as err:
        _load(tmp_path, body + "\n")
    want = f"p.rego:{line}: rego_unsafe_var_error: var {var} is unsafe"
    assert [e for e in err.value.errors if e.endswith(want)] == [e for e in err.value.errors
                                                                if "unsafe" in e][:1], err.value


@pytest.mark.parametrize(("body", "doc", "want"), [
    # OPA reorders these so every variable is bound first; regopy alone would be undefined
    ('deny contains "m" if { x > 1; x := input.a }', {"a": 5}, ["m"]),
    ('deny contains "m" if {\n\ty := x + 1\n\tx := input.a\n\ty == 6\n}', {"a": 5}, ["m"]),
    ('deny contains "m" if { not x == 1; x := input.a }', {"a": 5}, ["m"]),
    ('deny contains "m" if { not x == 5; x := input.a }', {"a": 5}, []),
    ('deny contains v if { c := [e | some e in x]; x := input.xs; v := count(c) }',
     {"xs": [1, 2]}, [2]),
    ('deny contains k if { o := {k: 1}; k := "a" }', {}, ["a"]),
    ('deny contains v if { v > 1; some v in input.xs }', {"xs": [1, 2, 3]}, [2, 3]),
])
def test_bodies_opa_reorders_give_opas_answer(tmp_path: Path, body: str, doc: dict,
                                              want: list) -> None:
    engine = _load(tmp_path, body + "\n")
    assert engine.query("data.ordinance.t.deny", doc) == (True, want)


@pytest.mark.parametrize("body", [
    'p if { some x in input.xs; x > 1 }',
    'p if { input.xs[i] > 1; i > 0 }',
    'p if { count(input.xs, n); n > 1 }',
    'p if { walk(input, [path, v]); v == 1; count(path) > 0 }',
    'p if { [a, b] = input.pair; a > b }',
    'p if { {"k": v} = input.o; v == 1 }',
    'p if { some k, v in input.o; k == v }',
    'f([a, b]) := a + b',
    'f(x) := y if { y := x * 2 }',
    'q contains x if { some x in input.a }\np if { count(q) > 0 }',
    'p if { every k, v in input.o { k != v } }',
    'p := {k: v | some k, v in input.o}',
    'p if { not input.blocked }',
    'p[x] := y if { some x; y := input.m[x] }',
    'p := 1 if { input.a } else := 2',
    'p if { x := 1; y := [z | z := x + 1]; y[0] == 2 }',
])
def test_safe_bodies_load_unchanged(body: str) -> None:
    source = HEAD + body + "\n"
    module = read_module("p.rego", source)
    out, unsafe = _check(module, source)
    assert unsafe == []
    assert out == source


def test_a_reordered_body_keeps_every_later_line(tmp_path: Path) -> None:
    source = HEAD + ("p if {\n\ty := x + 1\n\tx := input.a\n\ty == 6\n}\n\n"
                     "q := 1 / input.zero\n")
    module = read_module("p.rego", source)
    out, unsafe = _check(module, source)
    assert unsafe == []
    assert out.count("\n") == source.count("\n")
    assert out.splitlines()[10] == source.splitlines()[10] == "q := 1 / input.zero"
    assert "x := input.a; y := x + 1; y == 6" in out


def test_unsafe_test_rules_are_refused_by_ordinance_test(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text(HEAD + "p if input.a\n\ntest_p if { not x }\n")
    results = run_rego_tests(load_policy_set(tmp_path))
    assert [r.status for r in results] == ["error"]
    assert "p.rego:7: rego_unsafe_var_error: var x is unsafe" in results[0].message


def test_the_provided_builtin_modules_are_safe() -> None:
    for name in ("net.rego", "num.rego", "strings.rego"):
        source = resources.files("engine.policy.builtins").joinpath(name).read_text()
        module = read_module(name, source)
        out, unsafe = _check(module, source)
        assert (unsafe, out == source) == ([], True), name


def _check(module, source):  # type: ignore[no-untyped-def]
    globals_ = set(module.rules) | set(module.imports) | {"data", "input"}
    arity = arity_table(function_arities(source, module.spans))
    import regopy  # after `engine`, which loads the C++ runtime first (engine/native.py)

    is_builtin = regopy.Interpreter().is_builtin
    return check_module(source, module.spans, globals_, arity,
                        lambda n: n in module.functions or bool(is_builtin(n)))
