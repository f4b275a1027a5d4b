"""The parts of a `COPY` statement the proxy needs to mask its data: source, direction and
row layout.

Owns a small tokenizer and parser for PostgreSQL's COPY grammar, both the option list
(`WITH (FORMAT csv, DELIMITER ';', HEADER)`) and the pre-9.0 form (`WITH CSV HEADER
DELIMITER ';'`), returning the table and column list or the query text, TO / FROM, the target
(stdout, stdin, a file, a program) and the `CopyLayout` of the rows. Pure functions; it must
not decide anything: the bridge denies a COPY whose layout it cannot know (`CopySyntaxError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from adapters.postgres.descriptors import CopyLayout


class CopySyntaxError(ValueError):
    """The COPY statement cannot be read with certainty."""


@dataclass(frozen=True)
class CopyStatement:
    direction: Literal["to", "from"]
    target: Literal["stdout", "stdin", "file", "program"]
    table: str | None  # as written, lower case unless quoted (`public.cards`)
    columns: tuple[str, ...] | None  # the column list, if any
    query: str | None  # the text of `COPY (query) TO`
    binary: bool
    layout: CopyLayout | None  # None for binary
    query_start: int = 0  # where `query` starts in the statement's text


_TOKEN = re.compile(
    r"""(?P<space>\s+|--[^\n]*|/\*.*?\*/)
      |(?P<estring>[eE]'(?:[^'\\]|\\.|'')*')
      |(?P<string>'(?:[^']|'')*')
      |(?P<dollar>\$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?P=tag)?\$)
      |(?P<ident>"(?:[^"]|"")*")
      |(?P<word>[A-Za-z_][\w$]*)
      |(?P<number>\d+(?:\.\d+)?)
      |(?P<punct>[(),.;])
      |(?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str  # words lower-cased, strings and identifiers unquoted
    start: int
    end: int


def _unescape_e(body: str) -> str:
    out = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "'" and body[i + 1:i + 2] == "'":
            out.append("'")
            i += 2
            continue
        if ch != "\\" or i + 1 >= len(body):
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i + 1:])
            assert digits is not None
            out.append(chr(int(digits.group(), 8)))
            i += 1 + len(digits.group())
        elif nxt == "x" and re.match(r"[0-9A-Fa-f]", body[i + 2:i + 3] or " "):
            digits = re.match(r"[0-9A-Fa-f]{1,2}", body[i + 2:])
            assert digits is not None
            out.append(chr(int(digits.group(), 16)))
            i += 2 + len(digits.group())
        elif nxt in "uU":
            raise CopySyntaxError("unicode escapes in COPY options are not supported")
        else:
            out.append(nxt)
            i += 2
    return "".join(out)


def _tokens(sql: str) -> list[_Tok]:
    out = []
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup
        if kind == "tag":
            kind = "dollar"
        text = m.group()
        if kind == "space":
            if text.startswith("/*") and not text.endswith("*/"):
                raise CopySyntaxError("unterminated comment")
            continue
        if kind == "string":
            text = text[1:-1].replace("''", "'")
        elif kind == "estring":
            kind, text = "string", _unescape_e(text[2:-1])
        elif kind == "ident":
            text = text[1:-1].replace('""', '"')
        elif kind == "word":
            text = text.lower()
        elif kind == "other" and text in "'\"":
            raise CopySyntaxError("unterminated quoted text")
        out.append(_Tok(kind or "other", text, m.start(), m.end()))
    return out


class _Parser:
    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.toks = _tokens(sql)
        self.i = 0

    def peek(self, offset: int = 0) -> _Tok | None:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else None

    def next(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise CopySyntaxError("COPY statement ends too early")
        self.i += 1
        return tok

    def word(self, *words: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.kind == "word" and tok.text in words:
            self.i += 1
            return True
        return False

    def punct(self, char: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.kind == "punct" and tok.text == char:
            self.i += 1
            return True
        return False

    def expect_punct(self, char: str) -> None:
        if not self.punct(char):
            raise CopySyntaxError(f"expected {char!r} in COPY statement")

    def name(self) -> str:
        tok = self.next()
        if tok.kind not in ("word", "ident"):
            raise CopySyntaxError(f"expected a name, found {tok.text!r}")
        return tok.text

    def parenthesised(self) -> tuple[int, int]:
        """After an opening parenthesis: the span of the text up to its closing one."""
        start = self.toks[self.i - 1].end
        depth = 1
        while True:
            tok = self.next()
            if tok.kind == "punct" and tok.text == "(":
                depth += 1
            elif tok.kind == "punct" and tok.text == ")":
                depth -= 1
                if depth == 0:
                    return start, tok.start


def parse_copy(sql: str) -> CopyStatement | None:
    """The COPY statement in `sql` (one statement, optionally ending with `;`); None when `sql`
    is not a COPY statement. Raises `CopySyntaxError` when it is one that cannot be read."""
    p = _Parser(sql)
    if not p.word("copy"):
        return None
    binary = p.word("binary")  # COPY BINARY table (pre-7.4 form)
    table = query = None
    query_start = 0
    columns: tuple[str, ...] | None = None
    if p.punct("("):
        start, end = p.parenthesised()
        query = sql[start:end].strip()
        query_start = start + len(sql[start:end]) - len(sql[start:end].lstrip())
    else:
        parts = [p.name()]
        while p.punct("."):
            parts.append(p.name())
        table = ".".join(parts)
        if p.punct("("):
            names = [p.name()]
            while p.punct(","):
                names.append(p.name())
            p.expect_punct(")")
            columns = tuple(names)
    if p.word("to"):
        direction: Literal["to", "from"] = "to"
    elif p.word("from"):
        direction = "from"
    else:
        raise CopySyntaxError("expected TO or FROM in COPY statement")
    target: Literal["stdout", "stdin", "file", "program"]
    if p.word("stdout", "stdin"):
        target = "stdout" if direction == "to" else "stdin"
    elif p.word("program"):
        target = "program"
        p.next()
    else:
        tok = p.next()
        if tok.kind != "string":
            raise CopySyntaxError(f"unexpected {tok.text!r} as COPY target")
        target = "file"
    options = _options(p)
    if p.punct(";") and p.peek() is not None:
        raise CopySyntaxError("text after the COPY statement")
    if p.peek() is not None:
        raise CopySyntaxError(f"unexpected {p.peek().text!r} in COPY options")  # type: ignore[union-attr]
    fmt = options.get("format", "binary" if binary else "text")
    if fmt not in ("text", "csv", "binary"):
        raise CopySyntaxError(f"unknown COPY format {fmt!r}")
    encoding = options.get("encoding")
    if encoding is not None and encoding.replace("-", "").replace("_", "").lower() not in (
            "utf8", "unicode"):
        raise CopySyntaxError(f"COPY ENCODING {encoding!r}: only UTF8 is supported")
    if fmt == "binary":
        return CopyStatement(direction, target, table, columns, query, True, None, query_start)
    layout = CopyLayout(
        format="csv" if fmt == "csv" else "text",
        delimiter=_byte(options, "delimiter"), null=_bytes(options, "null"),
        quote=_byte(options, "quote") or b'"', escape=_byte(options, "escape"),
        header=_truthy(options.get("header", "false")))
    return CopyStatement(direction, target, table, columns, query, False, layout, query_start)


def _options(p: _Parser) -> dict[str, str]:
    options: dict[str, str] = {}
    with_word = p.word("with")
    if p.punct("("):
        while True:
            name = p.name()
            value = "true"
            tok = p.peek()
            if tok is not None and not (tok.kind == "punct" and tok.text in ",)"):
                if tok.kind == "punct" and tok.text == "(":
                    p.next()
                    p.parenthesised()  # FORCE_QUOTE (a, b): not needed for the layout
                    value = "(list)"
                else:
                    value = p.next().text
            options[name] = value.lower() if name in ("format", "header") else value
            if p.punct(")"):
                return options
            p.expect_punct(",")
    del with_word
    while (tok := p.peek()) is not None and tok.kind == "word":
        p.next()
        word = tok.text
        if word in ("binary", "csv"):
            options["format"] = word
        elif word == "header":
            options["header"] = "true"
        elif word == "oids":
            options["oids"] = "true"
        elif word in ("delimiter", "null", "quote", "escape", "encoding"):
            p.word("as")
            literal = p.next()
            if literal.kind != "string":
                raise CopySyntaxError(f"{word.upper()} needs a quoted string")
            options[word] = literal.text
        elif word == "force":
            if p.word("quote"):
                if not p.punct("*") and not _other(p, "*"):
                    _name_list(p)
            elif p.word("not"):
                if not p.word("null"):
                    raise CopySyntaxError("expected FORCE NOT NULL")
                _name_list(p)
            elif p.word("null"):
                _name_list(p)
            else:
                raise CopySyntaxError("unknown FORCE option")
        else:
            raise CopySyntaxError(f"unknown COPY option {word.upper()}")
    return options


def _other(p: _Parser, char: str) -> bool:
    tok = p.peek()
    if tok is not None and tok.kind == "other" and tok.text == char:
        p.next()
        return True
    return False


def _name_list(p: _Parser) -> None:
    p.name()
    while p.punct(","):
        p.name()


def _bytes(options: dict[str, str], name: str) -> bytes | None:
    value = options.get(name)
    return None if value is None else value.encode("utf-8")


def _byte(options: dict[str, str], name: str) -> bytes | None:
    value = _bytes(options, name)
    if value is not None and len(value) != 1:
        raise CopySyntaxError(f"COPY {name.upper()} must be a single one-byte character")
    return value


def _truthy(value: str) -> bool:
    value = value.lower()
    if value in ("true", "on", "1", "match"):
        return True
    if value in ("false", "off", "0"):
        return False
    raise CopySyntaxError(f"HEADER {value!r} is not a boolean")
