"""How many statements PostgreSQL finds in a query string, by its own lexical rules.

Owns `pg_statement_count`: a scanner for the parts of PostgreSQL's lexer (`scan.l`) that
decide where a statement ends: `;` outside string constants (standard, `E''` with backslash
escapes, `B''`, `X''`, `N''`, `U&''`), quoted identifiers (`""`, `U&""`), dollar-quoted
bodies (`$tag$ … $tag$`; a `$` inside an identifier and `$1` parameters start none), `--`
comments and nested `/* */` comments. Must not: parse anything else.

`parse_sql` compares its count with sqlglot's: a text that sqlglot splits differently from
PostgreSQL (a statement hidden inside what sqlglot took for a string or a comment) is
reported unparseable rather than decided on the wrong statements.
"""

from __future__ import annotations

import re

_ID_START = r"A-Za-z_\x80-\U0010ffff"
_ID_CONT = r"A-Za-z0-9_$\x80-\U0010ffff"
# Quoted tokens use possessive repeats (`*+`): a doubled quote is always an escaped quote, as in
# PostgreSQL's lexer, never a close followed by a new string (`E'''\'` is unterminated).
# One match per token that matters, and one for each run of tokens that cannot end a
# statement or open a quote (identifiers, numbers, operators, white space), so a statement
# costs a few matches, not one per character.
_TOKEN = re.compile(
    rf"""(?P<plain>(?:
            (?![eEbBxXnN]'|[uU]&['"])[{_ID_START}][{_ID_CONT}]*  # identifier, not a prefix
          | (?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?  # number (`1e3$a$`: no ident)
          | \s+
          | [^;'"$/\-{_ID_START}0-9\s] | /(?!\*) | -(?!-)
        )+)
      | (?P<semicolon>;)
      | (?P<line_comment>--[^\n\r]*)
      | (?P<block_comment>/\*)
      | (?P<escape_string>[eE]'(?:[^'\\]|\\.|'')*+')
      | (?P<string>(?:[bBxXnN]|[uU]&)?'(?:[^']|'')*+')
      | (?P<identifier>(?:[uU]&)?"(?:[^"]|"")*+")
      | (?P<parameter>\$[0-9]+)
      | (?P<dollar_tag>\$(?:[{_ID_START}][{_ID_START}0-9]*)?\$)
      | (?P<other>.)""",
    re.VERBOSE | re.DOTALL)
# With standard_conforming_strings off, a backslash escapes the next character in every
# string constant.
_LEGACY_STRING = re.compile(r"(?:[bBxXnN]|[uU]&)?'(?:[^'\\]|\\.|'')*+'", re.DOTALL)
_COMMENT_MARK = re.compile(r"/\*|\*/")


def pg_statement_count(sql: str, *, standard_conforming_strings: bool = True) -> int | None:
    """The number of non-empty statements PostgreSQL reads in `sql`, or None when a string
    constant, quoted identifier, dollar-quoted body or comment is not terminated (PostgreSQL
    rejects the whole text then)."""
    count = 0
    content = False  # the current statement has a token
    pos, n = 0, len(sql)
    while pos < n:
        m = _TOKEN.match(sql, pos)
        assert m is not None  # (`other` matches any character)
        kind = m.lastgroup
        end = m.end()
        if kind == "semicolon":
            count += content
            content = False
        elif kind == "line_comment":
            pass
        elif kind == "block_comment":
            closed = _comment_end(sql, end)
            if closed is None:
                return None
            end = closed
        elif kind == "plain":
            content = content or not m.group().isspace()
        elif kind in ("string", "other") and not standard_conforming_strings and (
                legacy := _LEGACY_STRING.match(sql, pos)) is not None:
            end = legacy.end()  # a backslash escapes a quote here: `'\''` is one string
            content = True
        elif kind == "string" and not standard_conforming_strings:
            return None  # not terminated once backslashes escape
        elif kind == "dollar_tag":
            close = sql.find(m.group(), end)
            if close < 0:
                return None
            end = close + len(m.group())
            content = True
        elif kind == "other":
            if m.group() in "'\"eEbBxXnNuU":
                return None  # a quote (or a string's prefix) that no rule above could close
            content = True
        else:
            content = True
        pos = end
    return count + content


def _comment_end(sql: str, pos: int) -> int | None:
    """After the `*/` that closes a comment whose `/*` ends at `pos` (comments nest)."""
    depth = 1
    for mark in _COMMENT_MARK.finditer(sql, pos):
        depth += 1 if mark.group() == "/*" else -1
        if depth == 0:
            return mark.end()
    return None
