"""Static reading of Rego source: package, rule heads, function calls, with line numbers.

regopy compiles Rego but does not reject calls to builtins it lacks: such a call evaluates to
undefined without an error, so `not net.cidr_contains(...)` would silently succeed. This module
finds every call so the loader can reject unknown functions with `file:line`, and rewrites the
calls to builtins that Ordinance provides in Rego itself. It is a tokenizer, not a parser: it
knows strings, comments, brackets and dotted names, which is all that question needs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from decimal import Decimal

_TOKEN = re.compile(
    r"""(?P<comment>\#[^\n]*)
      |(?P<string>"(?:[^"\\\n]|\\.)*")
      |(?P<raw>`[^`]*`)
      |(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
      |(?P<open>[\(\[\{])
      |(?P<close>[\)\]\}])
      |(?P<newline>\n)
      |(?P<space>[ \t\r]+)
      |(?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)

KEYWORDS = frozenset({
    "package", "import", "default", "if", "contains", "not", "some", "every", "in", "with",
    "as", "else", "true", "false", "null", "future",
})

# Functions whose result changes between two identical calls: decisions using them are not
# cached. `io.jwt.decode_verify` reads the clock when no `time` constraint is given.
NONDETERMINISTIC = frozenset({
    "time.now_ns", "rand.intn", "uuid.rfc4122", "uuid.parse", "http.send",
    "net.lookup_ip_addr", "io.jwt.decode_verify", "opa.runtime",
})

# Builtins regopy implements but Ordinance refuses: `opa.runtime()` exposes the process
# environment (secrets) to any policy author; the others give wrong answers in regopy 1.5.2
# without an error, which a policy cannot notice (measured against OPA's conformance cases).
FORBIDDEN = {
    "opa.runtime": "opa.runtime is not allowed: it exposes the process environment",
    "semver.compare": "semver.compare is refused: regopy compares versions as text "
                      "(1.10.0 < 1.9.0) and accepts invalid ones",
    "semver.is_valid": "semver.is_valid is refused: regopy accepts invalid versions",
    "time.format": "time.format is refused: regopy prints nine fraction digits where OPA "
                   "trims them and misreads Go layouts (.999999999, .000, Z07:00)",
}


@dataclass(frozen=True)
class Call:
    name: str
    line: int
    offset: int


@dataclass
class RegoModule:
    path: str
    source: str
    package: str = ""
    package_line: int = 1
    rules: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    imports: dict[str, str] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    # every mention of a forbidden or nondeterministic builtin, called or not
    # (`with time.now_ns as opa.runtime` names one without calling it)
    mentions: list[Call] = field(default_factory=list)
    # dotted heads of functions defined under a ref (`p.q.f(x) := ...`)
    function_refs: set[str] = field(default_factory=set)
    # `with input.a as ...`: regopy crashes on it when the input is not an object
    with_input_path: bool = False
    test_rules: list[str] = field(default_factory=list)
    # (rule name, start offset, end offset) of every top-level rule, in source order
    spans: list[tuple[str, int, int]] = field(default_factory=list)
    # Parts of the input document the module reads, as key paths: ("command", "statements"),
    # ("attributes", "request", "http", "headers", "x-role")... A path covers everything
    # below it. None when it reads `input` as a whole or with a computed key.
    input_paths: set[tuple[str, ...]] | None = field(default_factory=set)


def read_module(path: str, source: str) -> RegoModule:
    """Package, rule heads, imports and calls of one module (never raises on odd input)."""
    module = RegoModule(path=path, source=source)
    depth = 0
    line = 1
    at_line_start = True
    previous: str | None = None
    pending: tuple[str, int, int] | None = None
    expect: str | None = None  # "package", "import", "default" or "as"
    import_target: str | None = None
    for m in _TOKEN.finditer(source):
        kind = m.lastgroup
        text = m.group()
        if kind == "newline":
            line += 1
            if depth == 0:
                at_line_start = True
            continue
        if kind in ("space", "comment"):
            continue
        if pending is not None:
            name, call_line, offset = pending
            pending = None
            if text == "(":
                _record_call_or_head(module, name, call_line, offset, depth, previous)
        if kind == "raw":
            line += text.count("\n")
        if kind == "name":
            head_position = depth == 0 and at_line_start
            at_line_start = False
            if expect == "package":
                module.package, module.package_line = text, line
                expect = None
            elif expect == "import":
                import_target = text
                alias = text.rsplit(".", 1)[-1]
                module.imports[alias] = text
                expect = None
            elif expect == "as" and import_target:
                module.imports.pop(import_target.rsplit(".", 1)[-1], None)
                module.imports[text] = import_target
                expect = None
            elif text in ("package", "import") and head_position:
                expect = text
                if module.spans:
                    name, start, _ = module.spans[-1]
                    module.spans[-1] = (name, start, m.start())
            elif text == "as" and import_target:
                expect = "as"
            elif text == "default" and head_position:
                expect = "default"
            elif (head_position or expect == "default") and text not in KEYWORDS:
                expect = None
                import_target = None
                rule = text.split(".", 1)[0]
                module.rules.add(rule)
                if module.spans:
                    name, start, _ = module.spans[-1]
                    module.spans[-1] = (name, start, m.start())
                module.spans.append((rule, m.start(), len(source)))
                if rule.startswith("test_") and rule not in module.test_rules:
                    module.test_rules.append(rule)
                pending = (text, line, m.start())
                previous = "__head__"
                continue
            elif text not in KEYWORDS:
                pending = (text, line, m.start())
            if text in FORBIDDEN or text in NONDETERMINISTIC:
                module.mentions.append(Call(name=text, line=line, offset=m.start()))
            if previous == "with" and text.startswith("input."):
                module.with_input_path = True
            if previous not in ("with", "import", "as"):
                if text == "input" or text.startswith("input."):
                    _note_input_path(module, text, _literal_subscripts(source, m.end()))
                else:
                    target = module.imports.get(text.split(".", 1)[0], "")
                    if target == "input" or target.startswith("input."):
                        # `import input.attributes.request.http` then `http.method`
                        _note_input_path(module, target + text[len(text.split(".", 1)[0]):],
                                         _literal_subscripts(source, m.end()))
        else:
            at_line_start = False
            if kind == "open":
                depth += 1
            elif kind == "close":
                depth = max(0, depth - 1)
        previous = text
    return module


_SUBSCRIPT = re.compile(r"""\s*\[\s*("(?:[^"\\\n]|\\.)*"|`[^`]*`)\s*\]""")


def _literal_subscripts(source: str, pos: int) -> list[str]:
    """The keys of `["a"]["b"]` (or raw strings) right after a reference ending at `pos`."""
    keys: list[str] = []
    while (m := _SUBSCRIPT.match(source, pos)) is not None:
        literal = m.group(1)
        try:
            keys.append(literal[1:-1] if literal[0] == "`" else json.loads(literal))
        except ValueError:
            break
        pos = m.end()
    return keys


def _note_input_path(module: RegoModule, name: str, subscripts: list[str] | None = None
                     ) -> None:
    """Note that `name` (`input.a.b`, then `["c"]` subscripts) is read: everything below it."""
    if module.input_paths is None:
        return
    parts = tuple(name.split(".")[1:]) + tuple(subscripts or ())
    if not parts:
        module.input_paths = None  # `input` as a whole, or `input[expr]`
        return
    module.input_paths.add(parts)


def _record_call_or_head(module: RegoModule, name: str, line: int, offset: int, depth: int,
                         previous: str | None) -> None:
    if previous == "__head__":
        module.functions.add(name.split(".", 1)[0])
        module.functions.add(name.rsplit(".", 1)[-1])
        module.function_refs.add(name)
        return
    module.calls.append(Call(name=name, line=line, offset=offset))


def blank_rules(source: str, spans: list[tuple[str, int, int]], names: set[str]) -> str:
    """The source with the named rules blanked out; every offset and line stays where it was."""
    out: list[str] = []
    cursor = 0
    for name, start, end in spans:
        if name not in names:
            continue
        out.append(source[cursor:start])
        out.append(re.sub(r"[^\n]", " ", source[start:end]))
        cursor = end
    out.append(source[cursor:])
    return "".join(out)


def rewrite_calls(source: str, calls: list[Call], replacements: dict[str, str]) -> str:
    """The source with each call to a key of `replacements` renamed (line numbers unchanged)."""
    out: list[str] = []
    cursor = 0
    for call in sorted(calls, key=lambda c: c.offset):
        target = replacements.get(call.name)
        if target is None or not source.startswith(call.name, call.offset):
            continue  # not provided, or inside a blanked call
        out.append(source[cursor:call.offset])
        out.append(target)
        cursor = call.offset + len(call.name)
    out.append(source[cursor:])
    return "".join(out)


_NUMBER_SCAN = re.compile(
    r"""(?P<comment>\#[^\n]*)
      |(?P<string>"(?:[^"\\\n]|\\.)*")
      |(?P<raw>`[^`]*`)
      |(?P<name>[A-Za-z_][A-Za-z0-9_]*)
      |(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      |(?P<space>\s+)
      |(?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
_OPERAND_CLOSERS = frozenset(")]}")


def normalise_numbers(source: str) -> tuple[str, list[tuple[int, str]]]:
    """The source with each negative zero literal (`-0`, `-0.0`) written as zero, and
    `(line, message)` for each number literal float64 cannot hold exactly.

    regopy keeps `-0` apart from `0` (`-0 == 0` is false, `-0 < 0` true, `{-0, 0}` has two
    members); OPA does not. regopy holds a number with a fraction or an exponent as a float64,
    so `0.1234567890123456789 == 0.1234567890123456788` is true and `1e30 + 1 == 1e30`;
    OPA's decimals are exact. A literal float64 does not hold exactly, or one past 2^53
    written with a fraction or an exponent, is refused. Offsets and lines do not move.
    """
    out = list(source)
    problems: list[tuple[int, str]] = []
    previous: tuple[str, str] | None = None  # the last significant token
    before: tuple[str, str] | None = None  # the one before it
    for m in _NUMBER_SCAN.finditer(source):
        kind = m.lastgroup or "other"
        if kind in ("space", "comment"):
            continue
        text = m.group()
        if kind == "number":
            if previous == ("other", "-") and not _is_operand(before) and float(text) == 0:
                out[_minus_offset(source, m.start())] = " "
            problem = _inexact(text)
            if problem:
                problems.append((source.count("\n", 0, m.start()) + 1, problem))
        before, previous = previous, (kind, text)
    return "".join(out), problems


def _is_operand(token: tuple[str, str] | None) -> bool:
    """True when a `-` after this token is a binary minus."""
    if token is None:
        return False
    kind, text = token
    if kind == "name":
        return text not in KEYWORDS or text in ("true", "false", "null")
    return kind in ("number", "string", "raw") or text in _OPERAND_CLOSERS


def _minus_offset(source: str, number_start: int) -> int:
    i = number_start - 1
    while source[i] != "-":
        i -= 1
    return i


_EXACT_FLOAT_LIMIT = 2 ** 53  # past it, float64 does not hold every integer


def _inexact(text: str) -> str | None:
    if "." not in text and "e" not in text.lower():
        return None  # regopy integers are exact at any size
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")) \
            or Decimal(repr(value)) != Decimal(text):
        return (f"number {text} cannot be held exactly as a float64, as regopy holds it "
                "(OPA compares decimals exactly); use at most 15 significant digits")
    if abs(value) >= _EXACT_FLOAT_LIMIT:
        return (f"number {text} is past 2^53, where regopy's float64 rounds arithmetic "
                "(OPA's decimals do not); write it as an integer, which regopy keeps exact")
    return None


def blank_calls(source: str, calls: list[Call], names: frozenset[str]) -> str:
    """The source with each call to one of `names` (and its arguments) replaced by `true`:
    how `print(...)` becomes a no-op that never fails its body, as in OPA. Lines stay put."""
    out = list(source)
    for call in calls:
        if call.name not in names:
            continue
        end = _call_end(source, call.offset + len(call.name))
        if end is None:
            continue
        for i in range(call.offset, end):
            if out[i] != "\n":
                out[i] = " "
        out[call.offset:call.offset + 4] = list("true")
    return "".join(out)


def _call_end(source: str, open_at: int) -> int | None:
    """The offset just past the `)` that closes the `(` at or after `open_at`."""
    depth = 0
    for m in _TOKEN.finditer(source, open_at):
        kind = m.lastgroup
        if kind == "open":
            depth += 1
        elif kind == "close":
            depth -= 1
            if depth == 0:
                return m.end()
        elif kind not in ("space", "newline", "comment", "string", "raw") and depth == 0:
            return None
    return None


_NUMBER_TEXT = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_STRING_TEXT = re.compile(r'"(?:[^"\\\n]|\\.)*"|`[^`]*`')


def literal_arguments(source: str, call: Call) -> list[str | None]:
    """The kind of each argument of a call that is a literal (`number`, `string`, `boolean`,
    `null`, `array`, `object`, `set`), None for one that is not (a variable, an expression)."""
    return [_literal_kind(source[a:b].strip()) for a, b in call_arguments(source, call)[0]]


def call_arguments(source: str, call: Call) -> tuple[list[tuple[int, int]], int]:
    """The `(start, end)` of each argument of a call, and the offset just past its `)`
    (`([], -1)` when the call does not close)."""
    open_at = source.find("(", call.offset + len(call.name))
    if open_at < 0:
        return [], -1
    args: list[tuple[int, int]] = []
    depth = 0
    start = open_at + 1
    for m in _TOKEN.finditer(source, open_at):
        kind, text = m.lastgroup, m.group()
        if kind == "open":
            depth += 1
        elif kind == "close":
            depth -= 1
            if depth == 0:
                if source[start:m.start()].strip() or not args:
                    args.append((start, m.start()))
                if len(args) == 1 and not source[slice(*args[0])].strip():
                    args = []  # `f()`; a trailing comma adds no argument
                return args, m.end()
        elif depth == 1 and text == ",":
            args.append((start, m.start()))
            start = m.end()
    return [], -1


def _literal_kind(text: str) -> str | None:
    if _NUMBER_TEXT.fullmatch(text):
        return "number"
    if _STRING_TEXT.fullmatch(text):
        return "string"
    if text in ("true", "false"):
        return "boolean"
    if text == "null":
        return "null"
    if text[:1] in "[{" and _closes_at_end(text):
        if text[0] == "[":
            return "array"
        inner = text[1:-1].strip()
        if not inner or _top_level_colon(inner):
            return "object"
        return None if "|" in inner else "set"
    return None


def _closes_at_end(text: str) -> bool:
    depth = 0
    for m in _TOKEN.finditer(text):
        if m.lastgroup == "open":
            depth += 1
        elif m.lastgroup == "close":
            depth -= 1
            if depth == 0:
                return m.end() == len(text)
    return False


def _top_level_colon(text: str) -> bool:
    depth = 0
    for m in _TOKEN.finditer(text):
        if m.lastgroup == "open":
            depth += 1
        elif m.lastgroup == "close":
            depth -= 1
        elif depth == 0 and m.group() == ":":
            return True
    return False
