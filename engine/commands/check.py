"""`ordinance check DIR`: compile and validate a policy set, report every error."""

from __future__ import annotations

import argparse
import sys

from engine.commands._common import load_policy_set_or_report
from engine.testing import validate_case_file


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check", help="compile and validate a policy set",
        description="Compile the policy set and validate its test files; print each error as "
                    "file:line: message. Exit 0 when valid, 2 when not.")
    parser.add_argument("policies", metavar="DIR", help="policy directory or OPA bundle")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    policy_set = load_policy_set_or_report(args.policies, "check")
    if policy_set is None:
        return 2
    errors = [e for t in policy_set.tests for e in validate_case_file(t)]
    for line in errors:
        print(line, file=sys.stderr)
    if errors:
        print(f"ordinance check: {len(errors)} error(s) in test files", file=sys.stderr)
        return 2
    rego = len(policy_set.rego.modules)
    cel = len(policy_set.cel_rules)
    print(f"ok: {rego} Rego module(s), {cel} CEL rule(s), {len(policy_set.tests)} test file(s); "
          f"revision {policy_set.revision}")
    return 0
