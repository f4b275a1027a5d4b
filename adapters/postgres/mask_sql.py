"""Masking in SQL: PostgreSQL expressions equal to `engine.masking`'s methods.

Owns: `mask_sql(method, value_sql)`, a PostgreSQL expression of type text that masks a text or
varchar value as the Python method does, for the methods in `SQL_METHODS`, so a statement can
compute on a masked column's masked value (`mask_rewrite`). Must not: decide which columns are
masked or how (the Decision does), rewrite statements (the caller embeds the expression), do
I/O, or express `hash` (it needs the HMAC key, which stays in the proxy).

Exactness, in a UTF8 database (`length(text)` counts code points, as Python's `len` does):
`last4`, `redact`, `null` and `email` equal the Python function for every value PostgreSQL can
store. `pan` equals `mask_pan` for every all-ASCII value; a value with any non-ASCII character
is hidden whole, one `*` per character (`str.isdigit` knows the digits of every script, SQL
does not, so it cannot tell which to keep: it hides more, never less). NULL stays NULL.

The expressions work on PostgreSQL 12 and later, with `standard_conforming_strings` on or off
(no literal holds a backslash or a quote), and on columns of any collation, nondeterministic
ones included: no text is compared with `=` (under a nondeterministic collation
`'' = E'\\u200b'` may be true), and `COLLATE "C"` is applied where such a collation would be
rejected (`strpos`, regular expressions), only inside subexpressions of type integer or
boolean, so the result keeps the collation of `value_sql` (`redact`, `null`: the default).
Every function, operator, type and collation is named with its schema (`pg_catalog.right`,
`OPERATOR(pg_catalog.||)`): a session may put a schema of its own first in its search_path,
and what it defines there must never receive an unmasked value.
`value_sql` is evaluated several times and must have no side effects; a column
reference is embedded as it is, anything else in parentheses.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from engine.masking import (
    LAST4_MIN_LENGTH,
    MASK_CHAR,
    PAN_KEEP_DIGITS,
    PAN_MIN_DIGITS,
    REDACTED,
)

_DIGITS = "0123456789"

_NAME = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'
_REFERENCE = re.compile(rf"{_NAME}(?:\.{_NAME})*")
"""A column reference, possibly qualified and quoted: embedded as it is, anything else in
parentheses."""


def _lit(text: str) -> str:
    """A standard SQL string literal (quotes doubled; none of ours holds a backslash)."""
    return "'" + text.replace("'", "''") + "'"


# Every function, operator, type and collation is named with its schema: a session may put
# a schema of its own before pg_catalog in its search_path, and a `right(text, int)` or `||`
# found there would receive the unmasked value.
def _f(name: str, *args: str) -> str:
    return f"pg_catalog.{name}({', '.join(args)})"


def _op(left: str, op: str, right: str) -> str:
    return f"({left} OPERATOR(pg_catalog.{op}) {right})"  # (all OPERATOR()s bind alike)


_TEXT = "pg_catalog.text"
_C = 'pg_catalog."C"'
_STAR = _lit(MASK_CHAR)
_DIGIT_SET = _lit(_DIGITS)
_STARS_FOR_DIGITS = _lit(MASK_CHAR * len(_DIGITS))
_POSITION_SET = _lit(_DIGITS + MASK_CHAR)
# In the reversed value: everything up to and including the 4th digit-or-`*` from the end (a
# "position" of `mask_pan`). Anchored, so matching it costs a short forward scan.
_KEPT_SUFFIX = _lit(f"^(?:[^0-9*]*[0-9*]){{{PAN_KEEP_DIGITS}}}")
_ALL_DIGITS = _lit("^[0-9]*$")


def _keep_last(v: str, min_length: int) -> str:
    """`*` for every character but the last 4, or for all of them when fewer than `min_length`."""
    n = _f("length", v)
    hidden = _f("repeat", _STAR, _op(n, "-", str(PAN_KEEP_DIGITS)))
    return (f"(CASE WHEN {_op(n, '<', str(min_length))} THEN {_f('repeat', _STAR, n)} "
            f"ELSE {_op(hidden, '||', _f('right', v, str(PAN_KEEP_DIGITS)))} END)")


def _pan(v: str) -> str:
    # Digits kept by `mask_pan` are those with fewer than 4 positions (digits or `*`) after
    # them, when the value has 13 or more positions. Cases, cheapest test first:
    # all ASCII digits (or empty), by an anchored regex (cheaper than translate): the "keep
    # the last 4" of 13+ characters;
    # any non-ASCII character: all hidden;
    # fewer than 13 positions: every digit hidden, by translate;
    # otherwise: digits hidden before the 4th position from the end, kept from there on.
    n = _f("length", v)
    kept = _f("length", _f("substring", f"{_f('reverse', v)} COLLATE {_C}", _KEPT_SUFFIX))
    positions = _op(n, "-", _f("length", _f("translate", v, _POSITION_SET, "''")))
    head = _f("left", v, f"OPERATOR(pg_catalog.-) {kept}")
    tail = _f("right", v, kept)
    return (
        f"(CASE WHEN {_op(f'{v} COLLATE {_C}', '~', _ALL_DIGITS)} "
        f"THEN {_keep_last(v, PAN_MIN_DIGITS)} "
        f"WHEN {_op(_f('octet_length', v), '<>', n)} THEN {_f('repeat', _STAR, n)} "
        f"WHEN {_op(positions, '<', str(PAN_MIN_DIGITS))} "
        f"THEN {_f('translate', v, _DIGIT_SET, _STARS_FOR_DIGITS)} "
        f"ELSE {_op(_f('translate', head, _DIGIT_SET, _STARS_FOR_DIGITS), '||', tail)} END)")


def _last4(v: str) -> str:
    return _keep_last(v, LAST4_MIN_LENGTH)


def _redact(v: str) -> str:
    return f"(CASE WHEN {v} IS NOT NULL THEN {_lit(REDACTED)}::{_TEXT} END)"


def _null(v: str) -> str:
    return f"(NULL::{_TEXT})"


def _email(v: str) -> str:
    # rpartition("@"): `last_at` counts from the end, so the domain is the last `last_at - 1`
    # characters and the local part the first `length - last_at` (the first of them is shown).
    last_at = _f("strpos", f"{_f('reverse', v)} COLLATE {_C}", "'@'")
    shown = _f("left", v, f"LEAST(1, {_op(_f('length', v), '-', last_at)})")
    domain = _f("right", v, _op(last_at, "-", "1"))
    masked = _op(_op(shown, "||", _lit(MASK_CHAR * 3 + "@")), "||", domain)
    return (f"(CASE WHEN {_op(_f('strpos', f'{v} COLLATE {_C}', _lit('@')), '=', '0')} "
            f"THEN {_lit(MASK_CHAR * 3)}::{_TEXT} ELSE {masked} END)")


_BUILDERS: dict[str, Callable[[str], str]] = {
    "pan": _pan, "last4": _last4, "redact": _redact, "null": _null, "email": _email,
}

SQL_METHODS: frozenset[str] = frozenset(_BUILDERS)
"""The methods `mask_sql` can express; not `hash` (it needs the HMAC key)."""


def mask_sql(method: str, value_sql: str) -> str:
    """A PostgreSQL expression of type text that masks `value_sql` (an SQL expression of type
    text or varchar that may be evaluated several times, e.g. a quoted column reference such as
    `o."c3"`) as engine.masking's `method` does. NULL stays NULL. Raises ValueError for a method
    not in SQL_METHODS."""
    try:
        build = _BUILDERS[method]
    except KeyError:
        known = ", ".join(sorted(SQL_METHODS))
        raise ValueError(
            f"masking method {method!r} cannot be applied by PostgreSQL (can: {known})") from None
    return build(value_sql if _REFERENCE.fullmatch(value_sql) else f"({value_sql})")
