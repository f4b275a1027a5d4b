"""`ordinance test DIR`: run the Rego `test_*` rules and the YAML decision cases."""

from __future__ import annotations

import argparse
import sys

from engine.commands._common import load_policy_set_or_report
from engine.engine import Engine
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
                    "Exit 0 when all pass, 1 when any fails, 2 when the policies do not compile.")
    parser.add_argument("policies", metavar="DIR", help="policy directory or OPA bundle")
    parser.add_argument("--format", choices=("text", "junit"), default="text")
    parser.add_argument("-v", "--verbose", action="store_true", help="list passing tests too")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
    if args.format == "junit":
        print(format_junit(results))
    else:
        print(format_text(results, args.verbose))
    if not results:
        print("ordinance test: no tests found", file=sys.stderr)
        return 1
    return 0 if all(r.passed for r in results) else 1
