"""OPA's safety check, which regopy lacks, through `load_policy_set` (rego_safety.py).

regopy evaluates a body with an unbound variable: `x > 1` alone is undefined and `not x` (or
`not input.b[x] == 1`) *holds*, so a deny could silently never fire and an allow always hold.
OPA refuses such modules with `rego_unsafe_var_error: var x is unsafe`, and reorders a body
whose expressions only need reordering (`x > 1; x := input.a` is true). Each case below
gives the answer OPA gives.
"""

# ruff: noqa: E501  (OPA's tables keep one case a line)
from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from engine.engine import Engine
from engine.errors import PolicySetError
from engine.policy import load_policy_set
from engine.policy.rego_safety import arity_table, check_module, function_arities, parse_rule
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
    ('deny contains "m" if { x > 1; x = input.a }', {"a": 5}, ["m"]),
    ('deny contains "m" if {\n\ty = x + 1\n\tx = input.a\n\ty == 6\n}', {"a": 5}, ["m"]),
    ('deny contains "m" if { not x == 1; x = input.a }', {"a": 5}, ["m"]),
    ('deny contains "m" if { not x == 5; x = input.a }', {"a": 5}, []),
    ('deny contains v if { c := [e | some e in x]; x = input.xs; v := count(c) }',
     {"xs": [1, 2]}, [2]),
    ('deny contains k if { o := {k: 1}; k = "a" }', {}, ["a"]),
    ('deny contains v if { v > 1; v = input.xs[_] }', {"xs": [1, 2, 3]}, [2, 3]),
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
    'f(val) if { [_, _] = val }',
    'p if { v := input.pair; [a, b] = v; a > b }',
    'f(x) := y if { y := x * 2 }',
    'q contains x if { some x in input.a }\np if { count(q) > 0 }',
    'p if { every k, v in input.o { k != v } }',
    'p := {k: v | some k, v in input.o}',
    'p if { not input.blocked }',
    'p[x] := y if { some x; y := input.m[x] }',
    'p := 1 if { input.a } else := 2',
    'p if { x := 1; y := [z | z := x + 1]; y[0] == 2 }',
    # output arguments of builtins past the first table (OPA's jsonbuiltins/test-is-valid)
    'p if { json.is_valid(input.doc, ok); ok }',
    'p if { strings.replace_n({"a": "b"}, input.s, out); out == "b" }',
    'p if { json.patch(input.o, [], out); out == {} }',
    'p if { time.add_date(0, 0, 0, 1, ns); ns > 0 }',
])
def test_safe_bodies_load_unchanged(body: str) -> None:
    source = HEAD + body + "\n"
    module = read_module("p.rego", source)
    out, unsafe = _check(module, source)
    assert unsafe == []
    assert out == source


def test_a_reordered_body_keeps_every_later_line(tmp_path: Path) -> None:
    source = HEAD + ("p if {\n\ty := x + 1\n\tx = input.a\n\ty == 6\n}\n\n"
                     "q := 1 / input.zero\n")
    module = read_module("p.rego", source)
    out, unsafe = _check(module, source)
    assert unsafe == []
    assert out.count("\n") == source.count("\n")
    assert out.splitlines()[10] == source.splitlines()[10] == "q := 1 / input.zero"
    assert "x = input.a; y := x + 1; y == 6" in out


@pytest.mark.parametrize(("body", "message"), [
    # `:=` and `some` declare a variable from there on: naming it before is OPA's compile error
    ('deny contains "m" if { x > 1; x := input.a }', "var x referenced above"),
    ('deny contains v if { v > 1; some v in input.xs }', "var v referenced above"),
    ('deny contains "m" if { x := 1; x := 2 }', "var x assigned above"),
    # a closure naming a variable declared after it has its own, unbound, variable
    ('deny contains v if { c := [e | some e in x]; x := input.xs; v := count(c) }',
     "rego_unsafe_var_error: var x is unsafe"),
])
def test_names_used_before_their_declaration_are_refused(tmp_path: Path, body: str,
                                                         message: str) -> None:
    with pytest.raises(PolicySetError, match=f"p.rego:5: .*{message}"):
        _load(tmp_path, body + "\n")


def test_a_closure_before_a_declaration_keeps_its_own_variable(tmp_path: Path) -> None:
    """OPA's case comprehensions/var bindings have no effect outside."""
    engine = _load(tmp_path, 'xs := {"a", "b", "c"}\n\np := x if {\n\ty := {x | xs[x]}\n'
                             '\tx := count(y)\n}\n')
    assert engine.query("data.ordinance.t.p", {}) == (True, 3)


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


# OPA's own safety tables (ast/compile_test.go: TestCompilerCheckSafetyBodyErrors and
# TestCompilerCheckSafetyBodyReordering, ...Closures), written in Rego v1. The module of the
# error cases imports `input.aref.b.c as foo`, `input.avar as bar`, `data.m.n as baz`.
OPA_HEAD = "package a.b\n\nimport input.aref.b.c as foo\nimport input.avar as bar\nimport data.m.n as baz\n\n"
OPA_UNSAFE = [
 ("ref-head", 'p if { a.b.c = "foo" }', {"a"}),
 ("ref-head-2", 'p if { {"foo": [{"bar": a.b.c}]} = {"foo": [{"bar": "baz"}]} }', {"a"}),
 ("negation", 'p if { a = [1, 2, 3, 4]; not a[i] = x }', {"i", "x"}),
 ("negation-head", 'p contains x if { a = [1, 2, 3, 4]; not a[i] = x }', {"i", "x"}),
 ("negation-multiple", 'p if { a = [1, 2, 3, 4]; b = [1, 2, 3, 4]; not a[i] = x; not b[j] = x }', {"i", "x", "j"}),
 ("negation-nested", 'p if { a = [{"foo": ["bar", "baz"]}]; not a[0].foo = [a[0].foo[i], a[0].foo[j]] }', {"i", "j"}),
 ("builtin-input", 'p if { count([1, 2, x], x) }', {"x"}),
 ("builtin-input-name", 'p if { count(eq, 1) }', {"eq"}),
 ("builtin-multiple", 'p if { x > 0; x <= 3; x != 2 }', {"x"}),
 ("unordered-object-keys", 'p if { x = "a"; [{x: y, z: a}] = [{"a": 1, "b": 2}]}', {"a", "y", "z"}),
 ("unordered-sets", 'p if { x = "a"; [{x, y}] = [{1, 2}]}', {"y"}),
 ("array-compr", 'p if { _ = [x | x = data.a[_]; y > 1] }', {"y"}),
 ("array-compr-nested", 'p if { _ = [x | x = a[_]; a = [y | y = data.a[_]; z > 1]] }', {"z"}),
 ("array-compr-closure", 'p if { _ = [v | v = [x | x = data.a[_]]; x > 1] }', {"x"}),
 ("array-compr-term", 'p if { _ = [u | true] }', {"u"}),
 ("array-compr-term-nested", 'p if { _ = [v | v = [w | w != 0]] }', {"w"}),
 ("array-compr-mixed", 'p if { _ = [x | y = [a | a = z[i]]] }', {"a", "x", "z", "i"}),
 ("array-compr-builtin", 'p if { [true | eq != 2] }', {"eq"}),
 ("closure-self", 'p if { x = [x | x = 1] }', {"x"}),
 ("closure-transitive", 'p if { x = y; x = [y | y = 1] }', {"x", "y"}),
 ("nested", 'p if { count(baz[i].attr[bar[dead.beef]], n) }', {"dead"}),
 ("negated-import", 'p if { not foo; not bar; not baz }', set()),
 ("rewritten", 'p contains {"foo": dead[i]} if { true }', {"dead", "i"}),
 ("with-value", 'p if { data.a.b.d.t with input as x }', {"x"}),
 ("with-value-2", 'p if { x = data.a.b.d.t with input as x }', {"x"}),
 ("else-kw", "p if { false } else if { count(x, 1) }", {"x"}),
 ("function", "foo(x) := [y, z] if { split(x, y, z) }", {"y", "z"}),
 ("call-vars-input", "p if { f(x, x) }\nf(x) := x if { true }", {"x"}),
 ("call-no-output", "p if { f(x) }\nf(x) := x if { true }", {"x"}),
 ("call-too-few", "p if { f(1,x) }\nf(x,y) if { true }", {"x"}),
 ("object-key-comprehension", "p if { { {p|x}: 0 } }", {"x"}),
 ("set-value-comprehension", "p if { {1, {p|x}} }", {"x"}),
 ("every", "p if { every y in [10] { x > y } }", {"x"}),
]


@pytest.mark.parametrize(("note", "body", "want"), OPA_UNSAFE, ids=[c[0] for c in OPA_UNSAFE])
def test_opas_unsafe_variable_table(note: str, body: str, want: set[str]) -> None:
    source = OPA_HEAD + body + "\n"
    _, unsafe = _check(read_module("p.rego", source), source)
    got = {"_" if u.var.startswith("_#") else u.var for u in unsafe}
    if note == "closure-transitive":  # OPA names x and y; the closure pass stops at y
        assert got == {"y"}
    else:
        assert got == want


OPA_REORDERED = [
 ("noop", "x = 1; x != 0", "x = 1; x != 0"),
 ("var/ref", "a[i] = x; a = [1, 2, 3, 4]", "a = [1, 2, 3, 4]; a[i] = x"),
 ("var/ref (nested)", "a = [1, 2, 3, 4]; a[d[i]] = x; d = [0, 0, 0, 0]", "a = [1, 2, 3, 4]; d = [0, 0, 0, 0]; a[d[i]] = x"),
 ("negation", "a = [true, false]; b = [true, false]; not a[i]; b[i]", "a = [true, false]; b = [true, false]; b[i]; not a[i]"),
 ("built-in", "x != 0; count([1, 2, 3], x)", "count([1, 2, 3], x); x != 0"),
 ("var/var 1", "x = y; z = 1; y = z", "z = 1; y = z; x = y"),
 ("var/var 2", "x = y; 1 = z; z = y", "1 = z; z = y; x = y"),
 ("var/var 3", "x != 0; y = x; y = 1", "y = 1; y = x; x != 0"),
 ("array compr/var", "x != 0; [y | y = 1] = x", "[y | y = 1] = x; x != 0"),
 ("array compr/array", "[1] != [x]; [y | y = 1] = [x]", "[y | y = 1] = [x]; [1] != [x]"),
 ("with", "data.a.b.d.t with input as x; x = 1", "x = 1; data.a.b.d.t with input as x"),
 ("with-2", "data.a.b.d.t with input.x as x; x = 1", "x = 1; data.a.b.d.t with input.x as x"),
 ("with-nop", "data.somedoc[x] with input as true", "data.somedoc[x] with input as true"),
 ("ref-head", 's = [["foo"], ["bar"]]; x = y[0]; y = s[_]; contains(x, "oo")', 's = [["foo"], ["bar"]]; y = s[_]; x = y[0]; contains(x, "oo")'),
 ("userfunc", 'split(y, ".", z); fn("...foo.bar..", y)', 'fn("...foo.bar..", y); split(y, ".", z)'),
 ("every", "every _ in [] { x != 1 }; x = 1", "x = 1; every _ in [] { x != 1 }"),
 ("every-domain", "every _ in xs { true }; xs = [1]", "xs = [1]; every _ in xs { true }"),
 ("compr-3", 'a = [x | split(y, ".", z); x = z[i]; fn("...foo.bar..", y)]', 'a = [x | fn("...foo.bar..", y); split(y, ".", z); x = z[i]]'),
 ("closure over fn output", 'object.get(input.subject.roles[_], comp, [""], output); comp = [ 1 | true ]; every y in [2] { y in output }', 'comp = [ 1 | true ]; object.get(input.subject.roles[_], comp, [""], output); every y in [2] { y in output }'),
]
REORDER_HEAD = ("package test\nimport data.c\n"
                "fn(x) := y if { trim(x, \".\", y) }\n")


@pytest.mark.parametrize(("note", "body", "want"), OPA_REORDERED,
                         ids=[c[0] for c in OPA_REORDERED])
def test_opas_reordering_table(note: str, body: str, want: str) -> None:
    """OPA's order, except one case of its closures table left out: `xs[j] > 0` and
    `z = [true | ...]` both become safe in one pass, and OPA puts the first one first where
    this check (like OPA's reorderBodyForSafety as written) puts `z` first; both orders give
    the same answer."""
    source = REORDER_HEAD + "p if { " + body + " }\n"
    out, unsafe = _check(read_module("p.rego", source), source)
    assert unsafe == []
    got = out[len(REORDER_HEAD):].strip()[len("p if { "):-1]
    assert got.replace(" ", "") == want.replace(" ", "")


def test_every_rule_of_the_shipped_policies_is_read() -> None:
    """A rule the safety reader cannot follow is left to regopy unchecked: none of the
    shipped ones may be (a new syntax in the pack would show here first)."""
    root = Path(__file__).resolve().parents[2]
    files = [*root.glob("policies/**/*.rego"), *root.glob("engine/policy/builtins/*.rego")]
    assert files
    for path in files:
        source = path.read_text()
        for _, start, end in read_module(str(path), source).spans:
            if not source[start:end].lstrip().startswith("default"):
                assert parse_rule(source, start, end) is not None, (path, source[start:end])
