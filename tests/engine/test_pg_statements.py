"""`pg_statement_count` (statement boundaries by PostgreSQL's lexical rules) against a plain
character-by-character reference below, curated cases (statements hidden from sqlglot), and
what `parse_sql` makes of a text that sqlglot splits differently. The same count is checked
against a real server in tests/postgres/test_pg_statements_server.py."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.facts.pg_statements import pg_statement_count
from engine.facts.sql import parse_sql

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_IDENTIFIER = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?")


def reference_count(sql: str, *, standard_conforming_strings: bool = True) -> int | None:
    """The count, one character at a time, as scan.l reads it."""
    count = 0
    content = False  # the current statement has a token
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == ";":
            count += content
            content = False
            i += 1
        elif c.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = min((j for j in (sql.find("\n", i), sql.find("\r", i)) if j >= 0), default=n)
            i = end
        elif sql.startswith("/*", i):
            end = _comment_end(sql, i)
            if end is None:
                return None
            i = end
        else:
            content = True
            end = _token_end(sql, i, standard_conforming_strings)
            if end is None:
                return None
            i = end
    return count + content


def _comment_end(sql: str, i: int) -> int | None:
    depth = 0
    n = len(sql)
    while i < n:
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return None


def _token_end(sql: str, i: int, standard: bool) -> int | None:
    """Where the token starting at `i` ends (the string, identifier, number or one other
    character)."""
    c = sql[i]
    nxt = sql[i + 1:i + 2]
    if c == "'":
        return _quoted_end(sql, i + 1, "'", backslash=not standard)
    if c in "eE" and nxt == "'":
        return _quoted_end(sql, i + 2, "'", backslash=True)
    if c in "bBxXnN" and nxt == "'":
        return _quoted_end(sql, i + 2, "'", backslash=not standard)
    if c in "uU" and nxt == "&" and sql[i + 2:i + 3] in ("'", '"'):
        quote = sql[i + 2]
        return _quoted_end(sql, i + 3, quote, backslash=quote == "'" and not standard)
    if c == '"':
        return _quoted_end(sql, i + 1, '"', backslash=False)
    if c == "$":
        if nxt.isdigit() and nxt.isascii():  # a parameter
            j = i + 1
            while j < len(sql) and sql[j].isascii() and sql[j].isdigit():
                j += 1
            return j
        tag = _DOLLAR_TAG.match(sql, i)
        if tag is None:
            return i + 1
        close = sql.find(tag.group(), tag.end())
        return None if close < 0 else close + len(tag.group())
    identifier = _IDENTIFIER.match(sql, i)
    if identifier is not None:
        return identifier.end()
    number = _NUMBER.match(sql, i)
    if number is not None:
        return number.end()
    return i + 1


def _quoted_end(sql: str, i: int, quote: str, *, backslash: bool) -> int | None:
    """After the closing `quote` of a quoted token whose body starts at `i` (a doubled quote
    is part of the body; with `backslash`, so is the character after a backslash)."""
    n = len(sql)
    while i < n:
        c = sql[i]
        if backslash and c == "\\":
            i += 2
        elif c == quote:
            if sql[i + 1:i + 2] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return None


_FRAGMENTS = st.sampled_from([
    ";", " ", "\n", "SELECT", "1", "a", "E", "e", "U&", "B", "x", "N", "$", "$$", "$a$", "$1",
    "'", "''", "\"", "\\", "\\'", "--", "/*", "*/", "-", "/", "*", "é", "1.5e3", "a$b$",
])


@settings(max_examples=3000, deadline=None)
@given(st.lists(_FRAGMENTS, max_size=30).map("".join), st.booleans())
def test_the_regex_scanner_equals_the_reference(sql: str, standard: bool) -> None:
    assert (pg_statement_count(sql, standard_conforming_strings=standard)
            == reference_count(sql, standard_conforming_strings=standard))


@pytest.mark.parametrize(("sql", "count"), [
    ("SELECT 1", 1), ("SELECT 1;", 1), ("SELECT 1; SELECT 2", 2), (";;", 0), ("", 0),
    ("-- only a comment\n", 0), ("/* a */", 0),
    ("SELECT 'it''s; fine'", 1), ('SELECT "a;b" FROM t', 1),
    ("SELECT 'a\\'; DROP TABLE x; SELECT ''", 3),  # scs on: the backslash is a character
    ("SELECT E'a\\''; DROP TABLE x; --'", 2),
    ("SELECT 1 /* a /* b */ ; DROP TABLE x; */", 1),  # comments nest
    ("SELECT $a$ x; $a$; DROP TABLE y", 2),
    ("SELECT a1$b$; SELECT 2", 2),  # `$` inside an identifier opens nothing
    ("PREPARE a AS SELECT $1;COMMIT;DROP/**/TABLE/**/v;COMMIT;PREPARE/**/b/**/AS/**/SELECT/**/$2",
     5),
    ("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; SELECT 2; $$ LANGUAGE sql", 1),
    ("SELECT 1 -- c; DROP\n; SELECT 2", 2),
    ("SELECT 'open", None), ("SELECT /* open", None), ("SELECT $x$ open", None),
    ("SELECT foo$bar$; DROP TABLE z; $bar$", None),
])
def test_statement_counts(sql: str, count: int | None) -> None:
    assert pg_statement_count(sql) == count


def test_a_text_sqlglot_splits_otherwise_is_unparseable() -> None:
    """Whatever sqlglot makes of it, facts are never given for fewer statements than
    PostgreSQL runs."""
    for sql in ("SELECT 1 /* /* */ ; DROP TABLE x; */ ; SELECT 2",
                "SELECT $a$ ; $a$ ; DROP TABLE x"):
        facts = parse_sql(sql, "postgres")
        expected = pg_statement_count(sql)
        assert facts["parse_error"] is not None or len(
            [s for s in facts["statements"] if not s["nested"]]) == expected, facts


@settings(max_examples=1500, deadline=None)
@given(st.lists(_FRAGMENTS, max_size=30).map("".join))
def test_parse_sql_never_gives_facts_for_another_split(sql: str) -> None:
    facts = parse_sql(sql, "postgres")
    expected = pg_statement_count(sql)
    if facts["parse_error"] is None:
        assert expected is None or len(
            [s for s in facts["statements"] if not s["nested"]]) == expected, (sql, facts)


def test_a_doubled_quote_is_never_read_as_a_close_and_a_new_string() -> None:
    """Found by the reference test: `E''` + `'\\'` is not how PostgreSQL reads `E'''\\'`."""
    assert pg_statement_count("E'''\\'") is None
    assert pg_statement_count("'''\\'", standard_conforming_strings=False) is None
    assert pg_statement_count("SELECT E'''\\''; SELECT 1") == 2
