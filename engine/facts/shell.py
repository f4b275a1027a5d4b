"""Shell command text -> `argv` and `program`, split with shlex as a POSIX shell would."""

from __future__ import annotations

import os
import shlex
from typing import Any

_SEPARATORS = {";", "&&", "||", "|", "&"}


def shell_facts(raw: str) -> dict[str, Any]:
    """`argv`, `program` (basename of argv[0]), `programs` (every command in a pipeline or
    list), and `parse_error` (unbalanced quotes and the like)."""
    try:
        lexer = shlex.shlex(raw, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError as err:
        return {"argv": [], "program": None, "programs": [], "parse_error": str(err)}
    argv: list[str] = []
    programs: list[str] = []
    at_start = True
    for token in tokens:
        if token in _SEPARATORS:
            at_start = True
            continue
        if at_start and "=" in token and not token.startswith("="):
            continue  # VAR=value prefix
        if at_start:
            programs.append(os.path.basename(token))
            at_start = False
        if not programs or len(programs) == 1:
            argv.append(token)
    return {"argv": argv, "program": programs[0] if programs else None,
            "programs": programs, "parse_error": None}
