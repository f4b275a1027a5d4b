"""A small reader for protobuf text format, without schemas (for cel-spec's test files).

Every field becomes a list of values under its name (the reader cannot know which fields are
repeated): a message is a `dict[str, list]`, a scalar a `bytes` (quoted strings, escapes
decoded, adjacent strings joined) or a `str` token (numbers, enum names, `true`). An Any
written as `[type.googleapis.com/x.Y] { ... }` is a field named by its type URL.
"""

from __future__ import annotations

import re
from typing import Any

_TOKEN = re.compile(
    r"""(?P<space>\s+|\#[^\n]*)
      |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      |(?P<url>\[[^\]\s]+\])
      |(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+)
      |(?P<word>[-+]?[A-Za-z0-9_.]+)
      |(?P<punct>[{}<>\[\]:,;])""",
    re.VERBOSE,
)
_ESCAPES = {"n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "f": 12, "v": 11, "\\": 92, "'": 39,
            '"': 34, "?": 63}

Message = dict[str, list[Any]]


class TextprotoError(ValueError):
    pass


def parse(text: str) -> Message:
    tokens = _tokens(text)
    message, pos = _message(tokens, 0, None)
    if pos != len(tokens):
        raise TextprotoError(f"unexpected {tokens[pos][1]!r}")
    return message


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise TextprotoError(f"unreadable text at offset {pos}: {text[pos:pos + 20]!r}")
        if m.lastgroup != "space":
            out.append((m.lastgroup or "", m.group()))
        pos = m.end()
    return out


def _message(tokens: list[tuple[str, str]], pos: int, close: str | None) -> tuple[Message, int]:
    message: Message = {}
    while pos < len(tokens):
        kind, text = tokens[pos]
        if close is not None and text == close:
            return message, pos + 1
        if kind not in ("word", "url"):
            raise TextprotoError(f"expected a field name, got {text!r}")
        name = text[1:-1] if kind == "url" else text
        pos += 1
        if pos < len(tokens) and tokens[pos][1] == ":":
            pos += 1
        values, pos = _values(tokens, pos)
        message.setdefault(name, []).extend(values)
        if pos < len(tokens) and tokens[pos][1] in (",", ";"):
            pos += 1
    if close is not None:
        raise TextprotoError(f"missing {close!r}")
    return message, pos


def _values(tokens: list[tuple[str, str]], pos: int) -> tuple[list[Any], int]:
    kind, text = tokens[pos]
    if text == "[":
        values: list[Any] = []
        pos += 1
        while tokens[pos][1] != "]":
            more, pos = _values(tokens, pos)
            values.extend(more)
            if tokens[pos][1] == ",":
                pos += 1
        return values, pos + 1
    if text in ("{", "<"):
        message, pos = _message(tokens, pos + 1, "}" if text == "{" else ">")
        return [message], pos
    if kind == "string":
        data = b""
        while pos < len(tokens) and tokens[pos][0] == "string":
            data += _unescape(tokens[pos][1][1:-1])
            pos += 1
        return [data], pos
    if kind in ("word", "number"):
        return [text], pos + 1
    raise TextprotoError(f"expected a value, got {text!r}")


def _unescape(body: str) -> bytes:
    raw = body.encode("utf-8")
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c != 92:  # backslash
            out.append(c)
            i += 1
            continue
        e = chr(raw[i + 1])
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e in "01234567":
            m = re.match(rb"[0-7]{1,3}", raw[i + 1:i + 4])
            assert m is not None
            out.append(int(m.group(), 8) & 0xFF)
            i += 1 + len(m.group())
        elif e in "xX":
            m = re.match(rb"[0-9a-fA-F]{1,2}", raw[i + 2:i + 4])
            if m is None:
                raise TextprotoError("bad \\x escape")
            out.append(int(m.group(), 16))
            i += 2 + len(m.group())
        elif e in "uU":
            width = 4 if e == "u" else 8
            out.extend(chr(int(raw[i + 2:i + 2 + width], 16)).encode("utf-8"))
            i += 2 + width
        else:
            raise TextprotoError(f"unknown escape \\{e}")
    return bytes(out)


def first(message: Message, name: str, default: Any = None) -> Any:
    values = message.get(name)
    return values[0] if values else default


def text(message: Message, name: str, default: str = "") -> str:
    value = first(message, name)
    return value.decode("utf-8") if isinstance(value, bytes) else default if value is None \
        else str(value)
