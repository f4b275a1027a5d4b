"""`ordinance eval`: one input document in, the Decision out as one JSON object."""

from __future__ import annotations

import argparse
import json
import sys

from engine.commands._common import add_policies_argument, load_engine_or_report, read_json_input


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="decide one input document",
        description="Print the Decision for one input document as a JSON object. Exit 0 "
                    "whatever the effect; 2 for unreadable input or a broken policy set.")
    add_policies_argument(parser)
    parser.add_argument("--input", "-i", required=True, metavar="FILE",
                        help="input document (JSON or YAML); - for stdin")
    parser.add_argument("--pretty", action="store_true", help="indent the JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    document, error = read_json_input(args.input)
    if error:
        print(f"ordinance eval: {error}", file=sys.stderr)
        return 2
    engine = load_engine_or_report(args.policies, "eval")
    if engine is None:
        return 2
    decision = engine.decide(document)
    print(json.dumps(decision.to_dict(), indent=2 if args.pretty else None, sort_keys=False))
    return 0
