"""`ordinance test DIR`: run the Rego `test_*` rules and the YAML decision cases, and with
`--coverage` / `--threshold` measure what they cover (engine/coverage.py)."""

from __future__ import annotations

import argparse
import json
import sys

from engine.commands._common import load_policy_set_or_report
from engine.coverage import CoverageReport, format_coverage_text, measure, to_opa_json
from engine.engine import Engine
from engine.errors import PolicySetError
from engine.policy import PolicySet
from engine.testing import (
    format_junit,
    format_text,
    run_case_file,
    run_rego_tests,
    validate_case_file,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "test", help="run policy unit tests",
        description="Run every Rego rule named test_* and every case of every *_test.yaml. "
                    "Exit 0 when all pass (and coverage reaches --threshold), 1 when any fails "
                    "(or coverage is below it), 2 when the policies do not compile.")
    parser.add_argument("policies", metavar="DIR", help="policy directory or OPA bundle")
    parser.add_argument("--format", choices=("text", "junit", "json"), default="text",
                        help="json: the coverage report as `opa test --coverage` writes it "
                             "(needs --coverage)")
    parser.add_argument("-v", "--verbose", action="store_true", help="list passing tests too")
    parser.add_argument("--coverage", action="store_true",
                        help="report which Rego lines and rules and which CEL rules the tests "
                             "reach (after the results in text, alone in json)")
    parser.add_argument("--threshold", type=_percent, metavar="P",
                        help="fail (exit 1) when coverage is below P percent")
    parser.set_defaults(func=run)


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text} is not a percentage between 0 and 100")
    return value


def run(args: argparse.Namespace) -> int:
    if args.format == "json" and not args.coverage:
        print("ordinance test: --format json is the coverage report; add --coverage",
              file=sys.stderr)
        return 2
    if args.format == "junit" and args.coverage:
        print("ordinance test: --coverage prints text or json, not junit (use --threshold "
              "alone with junit)", file=sys.stderr)
        return 2
    policy_set = load_policy_set_or_report(args.policies, "test")
    if policy_set is None:
        return 2
    errors = [e for t in policy_set.tests for e in validate_case_file(t)]
    if errors:
        for line in errors:
            print(line, file=sys.stderr)
        return 2
    engine = Engine(policy_set, cache_size=0)
    results = run_rego_tests(policy_set)
    for test_file in policy_set.tests:
        results.extend(run_case_file(engine, test_file))
    coverage = None
    measured = args.coverage or args.threshold is not None
    if measured:
        coverage = _measure(policy_set)
    if args.format == "junit":
        print(format_junit(results))
    elif args.format == "json":
        if coverage is not None:
            print(json.dumps(to_opa_json(coverage), indent=2))
    else:
        print(format_text(results, args.verbose))
        if args.coverage and coverage is not None:
            print(format_coverage_text(coverage))
    if measured and coverage is None:
        return 2
    if not results:
        print("ordinance test: no tests found", file=sys.stderr)
        return 1
    status = 0 if all(r.passed for r in results) else 1
    if coverage is not None and args.threshold is not None \
            and coverage.percent < args.threshold:
        print(f"ordinance test: coverage {coverage.percent:.2f}% is below the threshold "
              f"{args.threshold:g}%", file=sys.stderr)
        status = 1
    return status


def _measure(policy_set: PolicySet) -> CoverageReport | None:
    try:
        return measure(policy_set)
    except PolicySetError as err:
        for line in err.errors:
            print(f"ordinance test: {line}", file=sys.stderr)
        return None
