"""Static checks on CEL source for what cel-expr-python gets wrong without an error.

cel-expr-python (cel-cpp) rejects a map literal with a repeated key of one type
(`{1: 'a', 1: 'b'}`), but not keys that are equal across int and uint (`{0: 1, 0u: 2}`), where
cel-spec wants "Failed with repeated key"; a lookup then answers with one of the two values.
Such a literal is refused at load, as are the two-variable macros `transformMap` and
`transformMapEntry`, which compile but fail on every evaluation (the runtime lacks
`cel.@mapInsert`). It is a tokenizer, not a parser: it knows CEL's strings
(quoted, triple-quoted, raw, bytes), numbers and brackets, which is all that question needs.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(
    r"""(?P<string>[rRbB]{0,2}(?:\"\"\"(?:\\.|[^\\])*?\"\"\"|'''(?:\\.|[^\\])*?'''
                               |"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))
      |(?P<number>0[xX][0-9a-fA-F]+[uU]?|\d+\.\d*(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+
                  |\.\d+(?:[eE][+-]?\d+)?|\d+[uU]?)
      |(?P<name>[A-Za-z_][A-Za-z0-9_]*)
      |(?P<comment>//[^\n]*)
      |(?P<space>\s+)
      |(?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)

_OPEN = {"(": ")", "[": "]", "{": "}"}


def _tokens(expression: str) -> list[tuple[str, str]]:
    return [(m.lastgroup or "other", m.group()) for m in _TOKEN.finditer(expression)
            if m.lastgroup not in ("space", "comment")]


# name -> why: functions that compile in cel-expr-python 0.1.3 but can never evaluate
UNAVAILABLE = {
    "transformMap": "transformMap is not available (cel-expr-python lacks cel.@mapInsert)",
    "transformMapEntry": "transformMapEntry is not available "
                         "(cel-expr-python lacks cel.@mapInsert)",
}


def static_problems(expression: str) -> list[str]:
    """Why an expression is refused at load; empty when it is not."""
    tokens = _tokens(expression)
    problems = [UNAVAILABLE[text] for i, (kind, text) in enumerate(tokens)
                if kind == "name" and text in UNAVAILABLE and 0 < i < len(tokens) - 1
                and tokens[i - 1][1] == "." and tokens[i + 1][1] == "("]
    return list(dict.fromkeys(problems + map_key_problems(expression)))


def map_key_problems(expression: str) -> list[str]:
    """Messages for map literals whose keys may repeat across int and uint."""
    tokens = _tokens(expression)
    mentions_uint = any((kind == "number" and text[-1] in "uU") or (kind, text) == ("name", "uint")
                        for kind, text in tokens)
    if not mentions_uint:
        return []  # no uint value can exist: input numbers are int or double
    problems = []
    for keys in _map_literal_keys(tokens):
        numeric = [k for k in keys if k[0] not in ("string", "bool")]
        literal_values: dict[int, set[str]] = {}
        for kind, value in numeric:
            if kind in ("int", "uint"):
                literal_values.setdefault(int(value), set()).add(kind)
        clash = any(len(kinds) > 1 for kinds in literal_values.values())
        computed = any(kind == "computed" for kind, _ in numeric) and len(numeric) > 1
        if clash or computed:
            problems.append("a map literal whose keys may be equal across int and uint "
                            "(cel-expr-python does not report the repeated key); "
                            "use keys of one type")
    return list(dict.fromkeys(problems))


def _map_literal_keys(tokens: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """For each map literal `{k: v, ...}` (not a message `T{f: v}`), its keys' kinds:
    string, bool, int or uint literal (with its value), or computed."""
    out: list[list[tuple[str, str]]] = []
    for start, (_, text) in enumerate(tokens):
        if text != "{" or (start > 0 and tokens[start - 1][0] == "name"
                           and tokens[start - 1][1] not in ("in", "true", "false", "null")):
            continue
        keys: list[tuple[str, str]] = []
        depth = 0
        key: list[tuple[str, str]] = []
        in_key = True
        for kind2, text2 in tokens[start + 1:]:
            if depth == 0 and text2 == "}":
                break
            if text2 in _OPEN:
                depth += 1
            elif text2 in _OPEN.values():
                depth -= 1
            if depth == 0 and text2 == ":" and in_key:
                keys.append(_key_kind(key))
                key, in_key = [], False
                continue
            if depth == 0 and text2 == ",":
                key, in_key = [], True
                continue
            if in_key:
                key.append((kind2, text2))
        out.append(keys)
    return out


def _key_kind(key: list[tuple[str, str]]) -> tuple[str, str]:
    if len(key) == 1:
        kind, text = key[0]
        if kind == "string":
            return "string", text
        if text in ("true", "false"):
            return "bool", text
        if kind == "number" and re.fullmatch(r"0[xX][0-9a-fA-F]+|\d+", text.rstrip("uU")):
            base = 16 if text[:2].lower() == "0x" else 10
            return ("uint" if text[-1] in "uU" else "int"), str(int(text.rstrip("uU"), base))
    if len(key) == 2 and key[0][1] == "-" and key[1][0] == "number" and key[1][1].isdigit():
        return "int", str(-int(key[1][1]))
    return "computed", ""
