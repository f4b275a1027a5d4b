"""A shell word's value after quote removal, as bash computes it, or what is not known of it.

Words come from tree-sitter-bash's syntax tree (`shell_syntax`). A word whose value depends on
the run (a parameter, command substitution, arithmetic, brace expansion) has no `value`; its
`pattern` is a glob with `*` for each unknown part (`$HOME/.ssh/id_rsa` -> `*/.ssh/id_rsa`), so
a policy can still ask whether it could name a given path. Unquoted glob characters make
`glob` true and stay in the pattern; quoted ones are escaped there (`\\*`).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from tree_sitter import Node

_SPECIAL = re.compile(r"[*?\[\]{}\\]")
_PLAIN = re.compile(r"[^\\*?\[{]+")
_DQ_ESCAPE = re.compile(r"\\([$`\"\\\n])")
_BRACE = re.compile(r"\{[^{}]*(,|\.\.)[^{}]*\}")
_DQ_ESCAPABLE = frozenset('$`"\\\n')
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n",
                   "r": "\r", "t": "\t", "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}
_HEX = re.compile(r"[0-9a-fA-F]")
_OCT = re.compile(r"[0-7]")


@dataclass(frozen=True)
class Word:
    value: str | None
    """The word as the program receives it; None when it depends on the run."""
    pattern: str
    """A glob matching every value the word may have."""
    source: str
    glob: bool = False
    """It contains unquoted glob characters or a brace expansion: the shell may expand it."""

    @property
    def known(self) -> bool:
        return self.value is not None and not self.glob

    @property
    def text(self) -> str:
        """The value when known, else the source text (what a policy shows a person)."""
        return self.value if self.known and self.value is not None else self.source


def literal(text: str) -> Word:
    return Word(value=text, pattern=_escape(text), source=text)


def _escape(text: str) -> str:
    return _SPECIAL.sub(r"\\\g<0>", text)


class _Builder:
    """Accumulates the parts of one word."""

    def __init__(self) -> None:
        self.value: list[str] | None = []
        self.pattern: list[str] = []
        self.glob = False

    def quoted(self, text: str) -> None:
        if self.value is not None:
            self.value.append(text)
        self.pattern.append(_escape(text))

    def unknown(self) -> None:
        self.value = None
        if not self.pattern or self.pattern[-1] != "*":
            self.pattern.append("*")

    def word(self, source: str) -> Word:
        value = None if self.value is None else "".join(self.value)
        return Word(value=value, pattern="".join(self.pattern), source=source, glob=self.glob)


def resolve(node: Node) -> Word:
    """The Word a tree-sitter-bash word node (`word`, `string`, `concatenation`, ...) makes."""
    builder = _Builder()
    _add(node, builder)
    return builder.word(_text(node))


def _text(node: Node) -> str:
    return (node.text or b"").decode("utf-8", "surrogateescape")


def _add(node: Node, out: _Builder) -> None:
    kind = node.type
    if kind in ("word", "number", "variable_name", "extglob_pattern"):
        _unquoted(_text(node), out)
    elif kind == "raw_string":
        out.quoted(_text(node)[1:-1])
    elif kind in ("string", "translated_string"):
        for child in node.named_children:
            if child.type == "string_content":
                out.quoted(_double_quoted(_text(child)))
            elif child.type == "string":
                _add(child, out)
            else:
                out.unknown()
    elif kind == "ansi_c_string":
        decoded = ansi_c(_text(node)[2:-1])
        if decoded is None:
            out.unknown()
        else:
            out.quoted(decoded)
    elif kind == "concatenation":
        # tree-sitter-bash splits `[`, `]`, `{`, `}` into words of their own: the unquoted
        # runs are read whole, so a bracket class or brace expansion is seen as one
        run: list[str] = []
        for child in node.children:
            if child.type == "word" or not child.is_named:
                run.append(_text(child))
                continue
            if run:
                _unquoted("".join(run), out)
                run = []
            _add(child, out)
        if run:
            _unquoted("".join(run), out)
    elif not node.is_named:
        _unquoted(_text(node), out)  # punctuation tree-sitter splits off inside a word
    else:  # expansions, substitutions, arithmetic, arrays, brace expressions, ...
        out.unknown()
        if kind == "brace_expression":
            out.glob = True


def _unquoted(text: str, out: _Builder) -> None:
    """Unquoted text: backslash removal; glob and brace characters noted. In the pattern a
    bracket class becomes `?` and a brace expansion `*` (supersets), so it is always valid.
    Linear in the text (runs of plain characters are taken whole)."""
    i = 0
    n = len(text)
    no_close_from = n  # no `]` at or after this index
    while i < n:
        plain = _PLAIN.match(text, i)
        if plain:
            out.quoted(plain.group(0))
            i = plain.end()
            continue
        c = text[i]
        if c == "\\":
            if i + 1 < n and text[i + 1] != "\n":  # backslash-newline: a line continuation
                out.quoted(text[i + 1])
            elif i + 1 >= n:
                out.quoted(c)
            i += 2
            continue
        if c in "*?":
            out.glob = True
            if out.value is not None:
                out.value.append(c)
            out.pattern.append(c)
            i += 1
            continue
        if c == "[":
            end = text.find("]", i + 2) if i + 2 < no_close_from else -1
            if end < 0:
                no_close_from = min(no_close_from, i + 2)
                out.quoted(c)
                i += 1
                continue
            out.glob = True
            if out.value is not None:
                out.value.append(text[i:end + 1])
            out.pattern.append("?")
            i = end + 1
            continue
        brace = _BRACE.match(text, i)  # c == "{"
        if brace:
            out.glob = True
            if out.value is not None:
                out.value.append(brace.group(0))
            out.pattern.append("*")
            i = brace.end()
        else:
            out.quoted(c)
            i += 1


def _double_quoted(text: str) -> str:
    """Inside double quotes a backslash escapes only $ ` " \\ and newline."""
    return _DQ_ESCAPE.sub(lambda m: "" if m.group(1) == "\n" else m.group(1), text)


def ansi_c(body: str) -> str | None:
    """Bash's `$'...'` decoding; None for what cannot be decoded with certainty."""
    out: list[str] = []
    i = 0
    n = len(body)
    while i < n:
        c = body[i]
        if c != "\\" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        i += 2
        if e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
        elif _OCT.match(e):
            digits = e
            while len(digits) < 3 and i < n and _OCT.match(body[i]):
                digits += body[i]
                i += 1
            out.append(chr(int(digits, 8) & 0xFF))
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = ""
            while len(digits) < width and i < n and _HEX.match(body[i]):
                digits += body[i]
                i += 1
            if not digits:
                out.append("\\" + e)
                continue
            code = int(digits, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                return None
            out.append(chr(code))
        elif e == "c":
            if i >= n:
                return None
            out.append(chr(ord(body[i]) & 0x1F))
            i += 1
        else:
            out.append("\\" + e)
    decoded = "".join(out)
    return decoded.split("\0", 1)[0]  # bash ends the string at a NUL


def quoted_for_message(text: str, limit: int = 60) -> str:
    """`text` in single quotes for a fact's message, without `"` or backslashes (regopy 1.5.2
    does not escape them in the JSON of its results, so a policy message quoting such text
    would be unreadable: a deny that names an engine error instead of the reason)."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return "'" + cut.replace("\\", "?").replace('"', "?").replace("\n", " ") + "'"


def normalise_path(text: str) -> str:
    """`/etc//./shadow` -> `/etc/shadow`; a relative path stays relative."""
    if not text:
        return text
    norm = posixpath.normpath(text)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    return norm


def path_candidates(text: str) -> list[str]:
    """Every path a word may name: itself, after `=` (`of=/dev/sda`, `--file=x`), after `@`
    (`file=@/etc/shadow`) and after a host's `:` (`host:/etc/shadow`), each normalised."""
    seen: list[str] = []
    parts = [text]
    for sep in ("=", "@", ":"):
        parts += [p.split(sep, 1)[1] for p in list(parts) if sep in p]
    for part in parts:
        if part and (not part.startswith("-") or "/" in part):
            norm = normalise_path(part)
            if norm not in seen:
                seen.append(norm)
    return seen
