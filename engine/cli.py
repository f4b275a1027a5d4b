"""The `ordinance` command line.

Each subcommand lives in its own module under `engine.commands` and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int` as the handler.
Modules whose name starts with `_` are shared helpers. This module only discovers the
commands and runs the chosen one; exit codes are the handlers'.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from engine import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ordinance",
        description="Policy-as-code enforcement: decide, mask, approve and record every command.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue  # shared helpers, not subcommands
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
