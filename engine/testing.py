"""Policy unit tests: Rego `test_*` rules (run by `engine.rego_testing`, mocks included) and
YAML decision cases, with the text and JUnit reports.

YAML cases (`*_test.yaml`) go through `Engine.decide`, exactly as the service evaluates:

    cases:
      - name: drop is blocked in prod
        input: {resource: {type: postgres, labels: {env: prod}}, command: {raw: "DROP TABLE x"}}
        expect: {effect: deny, reasons: ["not allowed"], masks: [{column: pan, method: pan}]}
"""

from __future__ import annotations

import time
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from engine.engine import Engine
from engine.policy.loader import TestFile
from engine.rego_testing import TestResult, run_rego_tests

__all__ = ["TestResult", "format_junit", "format_text", "run_case_file", "run_rego_tests",
           "validate_case_file"]

EXPECT_KEYS = {"effect", "reasons", "masks"}
CASE_KEYS = {"name", "input", "expect", "description"}


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
        results.append(TestResult(name=case["name"], source=where,
                                  status="fail" if problems else "pass",
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
    """One line per failing or erroring test (every test with `verbose`), with what its
    `print` calls printed, then `N passed, N failed, N errored`."""
    lines = []
    for r in results:
        if r.passed and not verbose:
            continue
        line = f"{r.status.upper()}: {r.name} ({r.source})"
        if r.message:
            line += f"\n    {r.message}"
        line += "".join(f"\n    print: {printed}" for printed in r.output)
        lines.append(line)
    counts = {status: sum(r.status == status for r in results)
              for status in ("pass", "fail", "error")}
    if lines:
        lines.append("-" * 60)
    lines.append(f"{counts['pass']} passed, {counts['fail']} failed, {counts['error']} errored")
    return "\n".join(lines)


def format_junit(results: list[TestResult]) -> str:
    failures = sum(r.status == "fail" for r in results)
    errors = sum(r.status == "error" for r in results)
    total = sum(r.seconds for r in results)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuites tests="{len(results)}" failures="{failures}" errors="{errors}" '
           f'time="{total:.6f}">',
           f'  <testsuite name="ordinance" tests="{len(results)}" failures="{failures}" '
           f'errors="{errors}" time="{total:.6f}">']
    for r in results:
        attrs = f"name={quoteattr(r.name)} classname={quoteattr(r.source)} time=\"{r.seconds:.6f}\""
        if r.passed:
            out.append(f"    <testcase {attrs}/>")
        else:
            tag = "failure" if r.status == "fail" else "error"
            out.append(f"    <testcase {attrs}>")
            out.append(f"      <{tag} message={quoteattr(r.message)}>{escape(r.message)}</{tag}>")
            out.append("    </testcase>")
    out.append("  </testsuite>")
    out.append("</testsuites>")
    return "\n".join(out)
