"""Policy unit tests: Rego `test_*` rules and YAML decision cases, run by the serving engine.

Rego tests use `with input as V` to mock the input. regopy 1.5.2 aborts the process when it
compiles `with` over a rule that calls a function, so the runner rewrites each test rule:
`with input as V` is removed and V becomes a rule of its own (`__input_<test>`); the test rule
is then evaluated with V as the real input. A test that mocks several different inputs, or
mocks `data`, runs with regopy's own `with` in a child process first, so a crash fails that
run with a message instead of killing the runner.

YAML cases (`*_test.yaml`) go through `Engine.decide`, exactly as the service evaluates:

    cases:
      - name: drop is blocked in prod
        input: {resource: {type: postgres, labels: {env: prod}}, command: {raw: "DROP TABLE x"}}
        expect: {effect: deny, reasons: ["not allowed"], masks: [{column: pan, method: pan}]}
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from engine.engine import Engine
from engine.errors import EvaluationError
from engine.policy import PolicySet
from engine.policy.loader import TestFile
from engine.policy.rego import RegoProgram
from engine.policy.rego_source import _TOKEN, RegoModule

EXPECT_KEYS = {"effect", "reasons", "masks"}
CASE_KEYS = {"name", "input", "expect", "description"}


@dataclass
class TestResult:
    name: str
    source: str  # "file:line" or "package"
    passed: bool
    message: str = ""
    seconds: float = 0.0


# -- Rego test rules --------------------------------------------------------------------------

@dataclass
class _RegoTest:
    module: RegoModule
    rule: str
    input_rule: str | None  # aux rule holding the mocked input, when rewritten


def _with_input_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, value text) of each `with input as VALUE` in a rule's text."""
    tokens = [(m.lastgroup, m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]
    spans = []
    i = 0
    while i < len(tokens):
        kind, value, start, _ = tokens[i]
        if kind == "name" and value == "with":
            j = i + 1
            words: list[tuple[str, int]] = []
            while j < len(tokens) and len(words) < 3:
                if tokens[j][0] not in ("space", "newline", "comment"):
                    words.append((tokens[j][1], j))
                j += 1
            if [w for w, _ in words[:2]] == ["input", "as"] and len(words) == 3:
                k = words[2][1]
                depth = 0
                value_start = tokens[k][2]
                end = value_start
                while k < len(tokens):
                    tkind, tval, _, tend = tokens[k]
                    if tkind == "open":
                        depth += 1
                    elif tkind == "close":
                        if depth == 0:
                            break
                        depth -= 1
                    elif depth == 0 and (tkind == "newline" or tval == ";" or
                                         (tkind == "name" and tval == "with")):
                        break
                    if tkind not in ("space", "newline", "comment"):
                        end = tend
                    k += 1
                spans.append((start, end, text[value_start:end]))
                i = k
                continue
        i += 1
    return spans


def _rewrite_tests(modules: list[RegoModule]) -> tuple[dict[str, str], list[_RegoTest]]:
    sources: dict[str, str] = {}
    tests: list[_RegoTest] = []
    for module in modules:
        if not module.test_rules:
            continue
        source = module.source
        appended: list[str] = []
        pieces: list[str] = []
        cursor = 0
        for name, start, end in module.spans:
            if name not in module.test_rules:
                continue
            text = source[start:end]
            spans = _with_input_spans(text)
            values = {v.strip() for _, _, v in spans}
            if len(values) != 1 or _mocks_data(text):
                tests.append(_RegoTest(module, name, None))
                continue
            stripped = text
            for s, e, _ in reversed(spans):
                stripped = stripped[:s] + re.sub(r"[^\n]", " ", stripped[s:e]) + stripped[e:]
            pieces.append(source[cursor:start])
            pieces.append(stripped)
            cursor = end
            aux = f"__input_{name}"
            appended.append(f"\n{aux} := {values.pop()}\n")
            tests.append(_RegoTest(module, name, aux))
        pieces.append(source[cursor:])
        rewritten = "".join(pieces)
        if appended:
            rewritten = rewritten.rstrip("\n") + "\n" + "".join(appended)
        sources[module.path] = rewritten
        module.rules.update(t.input_rule for t in tests if t.input_rule and t.module is module)
    # keep rule order stable: test order follows source order within each module
    seen: list[_RegoTest] = []
    for module in modules:
        for rule in module.test_rules:
            seen.extend(t for t in tests if t.module is module and t.rule == rule)
    return sources, seen


def _mocks_data(text: str) -> bool:
    return re.search(r"\bwith\s+data\.", text) is not None


def _build_test_program(policy_set: PolicySet) -> tuple[RegoProgram, list[_RegoTest]]:
    originals = {id(m): set(m.rules) for m in policy_set.rego.modules}
    sources, tests = _rewrite_tests(policy_set.rego.modules)
    try:
        program = RegoProgram(policy_set.rego.modules, policy_set.data, with_tests=True,
                              extra_sources=sources)
    finally:
        for m in policy_set.rego.modules:
            m.rules = originals[id(m)]
    return program, tests


def _compiles_in_child(root: str) -> str | None:
    """None when the test program compiles in a child process, else why it did not."""
    child = subprocess.run([sys.executable, "-m", "engine.testing", root],
                           capture_output=True, text=True, check=False, timeout=300)
    if child.returncode == 0:
        return None
    tail = (child.stderr.strip().splitlines() or ["no output"])[-1]
    return (f"regopy crashed compiling the Rego tests (exit {child.returncode}: {tail}); "
            "a known regopy defect is `with` over rules that call functions: mock one "
            "input per test rule with `with input as`, which Ordinance runs without `with`")


def run_rego_tests(policy_set: PolicySet) -> list[TestResult]:
    if not any(m.test_rules for m in policy_set.rego.modules):
        return []
    native_with = any(
        "with" in m.source[start:end]
        for m in policy_set.rego.modules for name, start, end in m.spans
        if name in m.test_rules and (len({v.strip() for *_, v in _with_input_spans(
            m.source[start:end])}) > 1 or _mocks_data(m.source[start:end])))
    if native_with:
        problem = _compiles_in_child(policy_set.root)
        if problem:
            return [TestResult(name="rego tests", source=policy_set.root, passed=False,
                               message=problem)]
    program, tests = _build_test_program(policy_set)
    results = []
    for test in tests:
        base = test.module.package.replace(".", "/")
        started = time.perf_counter()
        passed, message = _run_one(program, base, test)
        results.append(TestResult(
            name=f"data.{test.module.package}.{test.rule}", source=test.module.path,
            passed=passed, message=message, seconds=time.perf_counter() - started))
    return results


def _run_one(program: RegoProgram, base: str, test: _RegoTest) -> tuple[bool, str]:
    try:
        mocked: Any = {}
        if test.input_rule:
            defined, mocked = program.query(f"{base}/{test.input_rule}", {})
            if not defined:
                return False, "the mocked input (`with input as ...`) is undefined"
        defined, value = program.query(f"{base}/{test.rule}", mocked)
    except EvaluationError as err:
        return False, f"error: {err}"
    if not defined:
        return False, "undefined (a condition in the test did not hold)"
    if value is not True:
        return False, f"result is {value!r}, not true"
    return True, ""


# -- YAML decision cases ----------------------------------------------------------------------

def validate_case_file(test_file: TestFile) -> list[str]:
    errors = []
    doc = test_file.document
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
        return [f"{test_file.path}:1: a test file needs a top-level `cases:` list"]
    for i, case in enumerate(doc["cases"]):
        where = f"{test_file.path}:{test_file.lines.get(i, 1)}"
        if not isinstance(case, dict):
            errors.append(f"{where}: case {i} must be a mapping")
            continue
        unknown = set(case) - CASE_KEYS
        if unknown:
            errors.append(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        if not isinstance(case.get("name"), str):
            errors.append(f"{where}: case {i} needs a `name`")
        if not isinstance(case.get("input"), dict):
            errors.append(f"{where}: case {case.get('name', i)!r} needs an `input` mapping")
        expect = case.get("expect")
        if not isinstance(expect, dict) or not expect:
            errors.append(f"{where}: case {case.get('name', i)!r} needs an `expect` mapping")
            continue
        if set(expect) - EXPECT_KEYS:
            errors.append(f"{where}: unknown expect key(s) "
                          f"{', '.join(sorted(set(expect) - EXPECT_KEYS))}")
        if "effect" in expect and expect["effect"] not in ("allow", "deny", "review"):
            errors.append(f"{where}: expect.effect must be allow, deny or review")
    return errors


def run_case_file(engine: Engine, test_file: TestFile) -> list[TestResult]:
    results = []
    for i, case in enumerate(test_file.document["cases"]):
        where = f"{test_file.path}:{test_file.lines.get(i, 1)}"
        started = time.perf_counter()
        decision = engine.decide(case["input"])
        problems = _compare(case["expect"], decision.to_dict())
        results.append(TestResult(name=case["name"], source=where, passed=not problems,
                                  message="; ".join(problems),
                                  seconds=time.perf_counter() - started))
    return results


def _compare(expect: dict[str, Any], got: dict[str, Any]) -> list[str]:
    problems = []
    if "effect" in expect and expect["effect"] != got["effect"]:
        reasons = "; ".join(r["message"] for r in got["reasons"]) or "no reasons"
        problems.append(f"effect is {got['effect']}, expected {expect['effect']} ({reasons})")
    for wanted in expect.get("reasons") or []:
        text = wanted if isinstance(wanted, str) else wanted.get("message", "")
        fields = {} if isinstance(wanted, str) else {
            k: v for k, v in wanted.items() if k != "message"}  # e.g. rows: 100
        if not any((text in r["message"] or text == r["policy"])
                   and all(r.get(k) == v for k, v in fields.items()) for r in got["reasons"]):
            problems.append(f"no reason matches {wanted!r}")
    for wanted in expect.get("masks") or []:
        if not any(all(m.get(k) == v for k, v in wanted.items()) for m in got["masks"]):
            problems.append(f"no mask matches {wanted!r}")
    return problems


# -- reports -----------------------------------------------------------------------------------

def format_text(results: list[TestResult], verbose: bool) -> str:
    lines = []
    for r in results:
        if r.passed and not verbose:
            continue
        status = "PASS" if r.passed else "FAIL"
        line = f"{status}: {r.name} ({r.source})"
        if r.message:
            line += f"\n    {r.message}"
        lines.append(line)
    passed = sum(r.passed for r in results)
    failed = len(results) - passed
    if lines:
        lines.append("-" * 60)
    lines.append(f"{passed} passed, {failed} failed")
    return "\n".join(lines)


def format_junit(results: list[TestResult]) -> str:
    failures = sum(not r.passed for r in results)
    total = sum(r.seconds for r in results)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuites tests="{len(results)}" failures="{failures}" time="{total:.6f}">',
           f'  <testsuite name="ordinance" tests="{len(results)}" failures="{failures}" '
           f'errors="0" time="{total:.6f}">']
    for r in results:
        attrs = f"name={quoteattr(r.name)} classname={quoteattr(r.source)} time=\"{r.seconds:.6f}\""
        if r.passed:
            out.append(f"    <testcase {attrs}/>")
        else:
            out.append(f"    <testcase {attrs}>")
            failure = f"<failure message={quoteattr(r.message)}>{escape(r.message)}</failure>"
            out.append(f"      {failure}")
            out.append("    </testcase>")
    out.append("  </testsuite>")
    out.append("</testsuites>")
    return "\n".join(out)


if __name__ == "__main__":  # the child of _compiles_in_child
    from engine.policy import load_policy_set

    _build_test_program(load_policy_set(sys.argv[1]))
