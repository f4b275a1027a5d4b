"""Rego `test_*` rules run as `opa test` runs them, mocks included, without regopy's `with`.

regopy 1.5.2 aborts the process compiling `with` over rules that call functions, so no `with`
reaches it: each `with TARGET as VALUE` of a test rule is blanked out (offsets and lines stay)
and VALUE becomes a rule of its own (`__mock_<test>_<n>`), evaluated first. Then

- `with input as V` / `with input.a.b as V`: the test is evaluated with V as (part of) the input;
- `with data.a.b as V`: a program of its own, with V at `a.b` in the data document (a mocked
  rule is blanked out of its module);
- `with f as g` / `with f as V` (a function or builtin): a program of its own where every call
  to `f` calls `g`, or a generated function returning V.

A test's mocks apply to the whole test rule (OPA scopes them to one expression); a test that
mocks one target with two values is an error, to be split. Outcomes are PASS (true), FAIL
(false or undefined) and ERROR (an evaluation error, or a mock that cannot be applied).

`print` is a no-op in every bundle (`rego.NO_OP_BUILTINS`). What a `print` at the top of a
test's body prints is shown all the same: a rule `__print_<test>_<n>` holds the body up to that
call and collects its arguments, evaluated with the test's mocks.
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import regopy

from engine.errors import EvaluationError, PolicySetError
from engine.policy import PolicySet
from engine.policy.rego import PROVIDED_BUILTINS, RegoProgram
from engine.policy.rego_source import _TOKEN, RegoModule, read_module

MOCK_PACKAGE = "ordinance_mocks"


@dataclass
class TestResult:
    name: str
    source: str  # "file:line" or "package"
    status: str  # "pass", "fail" or "error"
    message: str = ""
    seconds: float = 0.0
    output: list[str] = field(default_factory=list)  # what its `print` calls print

    @property
    def passed(self) -> bool:
        return self.status == "pass"


@dataclass(frozen=True)
class WithClause:
    target: str
    value: str
    start: int  # offsets in the rule's text
    end: int


@dataclass
class RegoTest:
    module: RegoModule
    rule: str
    mocks: dict[str, str] = field(default_factory=dict)  # target -> aux rule holding the value
    functions: dict[str, str] = field(default_factory=dict)  # target -> function replacing it
    prints: list[str] = field(default_factory=list)  # rules holding what each print prints
    problem: str = ""  # why the mocks cannot be applied (an ERROR)


def with_clauses(text: str) -> list[WithClause]:
    """Every `with TARGET as VALUE` in a rule's text."""
    tokens = [(m.lastgroup, m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]
    significant = [i for i, t in enumerate(tokens) if t[0] not in ("space", "newline", "comment")]
    clauses = []
    for n, i in enumerate(significant):
        kind, value, start, _ = tokens[i]
        if kind != "name" or value != "with" or n + 3 >= len(significant):
            continue
        target, as_ = tokens[significant[n + 1]], tokens[significant[n + 2]]
        if target[0] != "name" or as_[1] != "as":
            continue
        k = significant[n + 3]
        value_start = end = tokens[k][2]
        depth = 0
        while k < len(tokens):
            tkind, tval, _, tend = tokens[k]
            if tkind == "open":
                depth += 1
            elif tkind == "close":
                if depth == 0:
                    break
                depth -= 1
            elif depth == 0 and (tkind == "newline" or tval == ";"
                                 or (tkind == "name" and tval == "with")):
                break
            if tkind not in ("space", "newline", "comment"):
                end = tend
            k += 1
        clauses.append(WithClause(target[1], text[value_start:end], start, end))
    return clauses


def _blank(text: str, start: int, end: int) -> str:
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]


class RegoSuite:
    """The test rules of a policy set, rewritten, and the shared program that runs them."""

    def __init__(self, policy_set: PolicySet):
        self.policy_set = policy_set
        self.modules = policy_set.rego.modules
        self.functions = {f for m in self.modules for f in m.functions}
        self.is_builtin = regopy.Interpreter().is_builtin
        self.tests: list[RegoTest] = []
        self.sources: dict[str, str] = {}
        for module in self.modules:
            self._rewrite(module)

    def _rewrite(self, module: RegoModule) -> None:
        if not module.test_rules:
            return
        source = module.source
        appended: list[str] = []
        for name, start, end in module.spans:
            if name not in module.test_rules:
                continue
            test = RegoTest(module, name)
            text = source[start:end]
            clauses = with_clauses(text)
            values: dict[str, set[str]] = {}
            for clause in clauses:
                values.setdefault(clause.target, set()).add(clause.value.strip())
                text = _blank(text, clause.start, clause.end)
            source = source[:start] + text + source[end:]
            for target, options in values.items():
                value = sorted(options)[0]
                if len(options) > 1:
                    test.problem = (f"mocks {target} with {len(options)} different values; "
                                    "Ordinance applies a test's mocks to the whole test rule, "
                                    "so split it into one test per mock")
                elif self._function(value):
                    test.functions[target] = self._function(value) or ""
                elif re.fullmatch(r"[A-Za-z_]\w*", value) and value not in module.rules \
                        and value not in ("true", "false", "null"):
                    test.problem = (f"the mock of {target} is the local variable {value}: "
                                    "write the value, or a rule holding it, after `as`")
                else:
                    aux = f"__mock_{name}_{len(test.mocks)}"
                    test.mocks[target] = aux
                    appended.append(f"\n{aux} := {value}\n")
            appended.extend(self._print_rules(module, test, text, start))
            if name not in {t.rule for t in self.tests if t.module is module}:
                self.tests.append(test)
        if appended:
            source = source.rstrip("\n") + "\n" + "".join(appended)
        self.sources[module.path] = source

    def _print_rules(self, module: RegoModule, test: RegoTest, text: str, start: int
                     ) -> list[str]:
        """Rules collecting the arguments of each `print` at the top of the test's body, each
        holding the body up to that print, so that `ordinance test -v` can show them."""
        rules = []
        body = _body_open(text)
        for call in module.calls:
            offset = call.offset - start
            if call.name != "print" or body is None or not body < offset < len(text) \
                    or _depth(text, body, offset) != 1:
                continue
            close = _close_of(text, offset + len(call.name))
            if close is None:
                continue
            args = text[text.index("(", offset) + 1:close - 1]
            rule = f"__print_{test.rule}_{len(test.prints)}"
            test.prints.append(rule)
            rules.append(f"\n{rule} contains __args if {{{text[body + 1:offset]}\n"
                         f"\t__args := [{args}]\n}}\n")
        return rules

    def program(self, data: dict[str, Any], replaced: dict[str, dict[str, Any]] | None = None,
                renames: dict[str, str] | None = None, extra_module: str = "") -> RegoProgram:
        """A test program: the rewritten sources, with `replaced` rules (path -> rule -> value)
        defined as that value instead, `renames` applied to calls and `extra_module` (the mock
        functions) added."""
        sources = dict(self.sources)
        for module in self.modules:
            rules = (replaced or {}).get(module.path, {})
            if rules:
                text = sources.get(module.path, module.source)
                for rule, start, end in module.spans:
                    if rule in rules:
                        text = _blank(text, start, end)
                sources[module.path] = text.rstrip("\n") + "\n" + "".join(
                    f"\n{rule} := {json.dumps(value)}\n" for rule, value in rules.items())
        # read again, so that the rules and calls appended (mocks, prints) are seen too
        modules = [read_module(m.path, sources.get(m.path, m.source)) for m in self.modules]
        if extra_module:
            modules.append(read_module("ordinance_mocks.rego", extra_module))
        return RegoProgram(modules, data, with_tests=True, call_renames=renames)

    # -- one test -----------------------------------------------------------------------------

    def run(self, shared: RegoProgram, test: RegoTest) -> tuple[str, str, list[str]]:
        status, message, program, input_doc = self.execute(shared, test)
        output = []
        if program is not None:
            for rule in test.prints:
                try:
                    defined, rows = program.query(f"{_base(test)}/{rule}", input_doc)
                except EvaluationError:
                    continue
                for row in rows if defined else []:
                    output.append(" ".join(v if isinstance(v, str) else json.dumps(v)
                                           for v in row))
        return status, message, output

    def execute(self, shared: RegoProgram, test: RegoTest
             ) -> tuple[str, str, RegoProgram | None, Any]:
        """(status, message, the program and input the test ran with)."""
        if test.problem:
            return "error", test.problem, None, None
        base = _base(test)
        input_doc: Any = {}
        data = self.policy_set.data
        replaced: dict[str, dict[str, Any]] = {}
        renames: dict[str, str] = {}
        mock_functions: list[str] = []
        try:
            values = {t: self._value(shared, base, aux) for t, aux in test.mocks.items()}
        except EvaluationError as err:
            return "error", f"a mocked value is an error: {err}", None, None
        for target, function in test.functions.items():
            names, problem = self._call_names(target)
            if problem:
                return "error", problem, None, None
            renames.update(dict.fromkeys(names, function))
        for target in sorted(test.mocks, key=lambda t: (t != "input", t)):
            value = values[target]
            if target == "input":
                input_doc = value
            elif target.startswith("input."):
                if not isinstance(input_doc, dict):
                    why = f"cannot mock {target}: the input is not an object"
                    return "error", why, None, None
                input_doc = _patched(input_doc, target.split(".")[1:], value)
            elif target.startswith("data.") and not self._names_function(target):
                problem, rule_mocked = self._mock_rule(target, value, replaced)
                if problem:
                    return "error", problem, None, None
                if not rule_mocked:
                    data = _patched(data, target.split(".")[1:], value)
            else:
                names, problem = self._call_names(target)
                problem = problem or self._mock_function(names, value, renames, mock_functions)
                if problem:
                    return "error", problem, None, None
        program = shared
        if replaced or renames or data is not self.policy_set.data:
            try:
                program = self.program(data, replaced, renames,
                                       _mock_module(mock_functions) if mock_functions else "")
            except PolicySetError as err:
                why = "the mocked test does not compile: " + "; ".join(err.errors)
                return "error", why, None, None
        try:
            defined, result = program.query(f"{base}/{test.rule}", input_doc)
        except EvaluationError as err:
            return "error", str(err), program, input_doc
        if not defined:
            return "fail", "undefined (a condition in the test did not hold)", program, input_doc
        if result is not True:
            return "fail", f"result is {result!r}, not true", program, input_doc
        return "pass", "", program, input_doc

    def _value(self, shared: RegoProgram, base: str, aux: str) -> Any:
        defined, value = shared.query(f"{base}/{aux}", {})
        if not defined:
            raise EvaluationError(f"the value of a mock ({aux}) is undefined")
        return value

    def _names_function(self, target: str) -> bool:
        return target.rsplit(".", 1)[-1] in self.functions

    def _mock_rule(self, target: str, value: Any, replaced: dict[str, dict[str, Any]]
                   ) -> tuple[str, bool]:
        """(problem, whether a rule is replaced) for `with data.…`: a rule of the set is
        defined as the value instead; any other path is a data document."""
        parts = target.split(".")[1:]
        mocked = False
        for module in self.modules:
            package = module.package.split(".")
            if parts[:len(package)] != package:
                if package[:len(parts)] == parts:
                    return f"cannot mock {target}: it holds the package {module.package}", False
                continue
            rest = parts[len(package):]
            if not rest:
                return f"cannot mock {target}: it is the package {module.package}", False
            if rest[0] in module.rules:
                if len(rest) > 1:
                    return f"cannot mock {target}: it is inside the rule {rest[0]}", False
                replaced.setdefault(module.path, {})[rest[0]] = value
                mocked = True
        return "", mocked

    def _call_names(self, target: str) -> tuple[list[str], str]:
        """(the names calls to a mocked function use, problem): `data.p.f` is also called `f`
        inside package `p`."""
        local = target.rsplit(".", 1)[-1]
        if target in self.functions or self.is_builtin(target) or target in PROVIDED_BUILTINS:
            return [target], ""
        if target.startswith("data.") and local in self.functions:
            package = target[5:].rsplit(".", 1)[0]
            owners = {m.package for m in self.modules if local in m.functions}
            if owners != {package}:
                return [], f"cannot mock {target}: {local} is defined in {len(owners)} packages"
            return [target, local], ""
        return [], f"cannot mock {target}: it is neither input, data, a function nor a builtin"

    def _mock_function(self, names: list[str], value: Any, renames: dict[str, str],
                       mock_functions: list[str]) -> str:
        """Calls by any of `names` call a generated function returning `value`."""
        name = f"m{len(mock_functions)}"
        arities = sorted({_arity(m.source, c.offset + len(c.name)) for m in self.modules
                          for c in m.calls if c.name in names})
        if len(arities) > 1:
            return f"cannot mock {names[0]}: it is called with different argument counts"
        arity = arities[0] if arities else 0
        mock_functions.append(f"{name}({', '.join(['_'] * arity)}) := {json.dumps(value)}")
        renames.update(dict.fromkeys(names, f"data.{MOCK_PACKAGE}.{name}"))
        return ""

    def _function(self, value: str) -> str | None:
        """The function a mock's value names (`with f as g`), or None for a value."""
        if not re.fullmatch(r"[A-Za-z_][\w.]*", value) or value in ("true", "false", "null"):
            return None
        if value in PROVIDED_BUILTINS:
            return PROVIDED_BUILTINS[value]
        if value in self.functions or self.is_builtin(value):
            return value
        if value.startswith("data.") and value.rsplit(".", 1)[-1] in self.functions:
            return value
        return None


def _base(test: RegoTest) -> str:
    return test.module.package.replace(".", "/")


def _body_open(text: str) -> int | None:
    """The offset of the `{` opening a rule's body (`test_x if {`), or None."""
    for m in _TOKEN.finditer(text):
        if m.group() == "{":
            return m.start()
        if m.lastgroup in ("open", "close", "string", "raw") or m.group() == "=":
            return None
    return None


def _depth(text: str, start: int, end: int) -> int:
    depth = 0
    for m in _TOKEN.finditer(text[:end], start):
        if m.lastgroup == "open":
            depth += 1
        elif m.lastgroup == "close":
            depth -= 1
    return depth


def _close_of(text: str, at: int) -> int | None:
    """The offset just past the `)` closing the `(` at or after `at`."""
    depth = 0
    for m in _TOKEN.finditer(text, at):
        if m.lastgroup == "open":
            depth += 1
        elif m.lastgroup == "close":
            depth -= 1
            if depth == 0:
                return m.end()
    return None


def _mock_module(functions: list[str]) -> str:
    return f"package {MOCK_PACKAGE}\n\nimport rego.v1\n\n" + "\n\n".join(functions) + "\n"


def _arity(source: str, open_at: int) -> int:
    """How many arguments the call whose `(` is at `open_at` passes."""
    depth = 0
    count = 0
    empty = True
    for m in _TOKEN.finditer(source, open_at):
        kind, text = m.lastgroup, m.group()
        if kind == "open":
            depth += 1
            if depth == 1:
                continue
        elif kind == "close":
            depth -= 1
            if depth == 0:
                return count + (0 if empty else 1)
        if depth == 1 and text == ",":
            count += 1
        elif kind not in ("space", "newline", "comment"):
            empty = False
    return count


def _patched(doc: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """A copy of `doc` with `value` at `path` (objects created along the way)."""
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value
    return out


def run_rego_tests(policy_set: PolicySet) -> list[TestResult]:
    if not any(m.test_rules for m in policy_set.rego.modules):
        return []
    suite = RegoSuite(policy_set)
    try:
        shared = suite.program(policy_set.data)
    except PolicySetError as err:
        return [TestResult(name="rego tests", source=policy_set.root, status="error",
                           message="the tests do not compile: " + "; ".join(err.errors))]
    results = []
    for test in suite.tests:
        started = time.perf_counter()
        status, message, output = suite.run(shared, test)
        results.append(TestResult(
            name=f"data.{test.module.package}.{test.rule}", source=test.module.path,
            status=status, message=message, seconds=time.perf_counter() - started,
            output=output))
    return results
