"""Helpers shared by the subcommands that load a policy set or read an input document."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from engine.engine import Engine
from engine.errors import PolicySetError
from engine.policy import PolicySet, load_policy_set


def add_policies_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policies", "-p", required=True, metavar="DIR",
                        help="policy directory or OPA bundle (.tar.gz)")


def load_policy_set_or_report(root: str, command: str) -> PolicySet | None:
    try:
        return load_policy_set(root)
    except PolicySetError as err:
        for line in err.errors:
            print(line, file=sys.stderr)
        print(f"ordinance {command}: policy set {root} has {len(err.errors)} error(s)",
              file=sys.stderr)
        return None


def load_engine_or_report(root: str, command: str) -> Engine | None:
    policy_set = load_policy_set_or_report(root, command)
    return Engine(policy_set) if policy_set is not None else None


def read_json_input(path: str) -> tuple[Any, str | None]:
    """The document in FILE (`-` for stdin), JSON or YAML; or an error message."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as err:
        return None, f"cannot read {path}: {err.strerror}"
    except UnicodeDecodeError as err:
        return None, f"{path} is not UTF-8 text: {err.reason}"
    if not text.strip():
        return None, f"{'stdin' if path == '-' else path} is empty"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as json_err:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError:
            return None, (f"{'stdin' if path == '-' else path} is not valid JSON: "
                          f"{json_err.msg} at line {json_err.lineno} column {json_err.colno}")
        if not isinstance(document, dict):
            return None, f"{path}: the input document must be a JSON object"
        return document, None
