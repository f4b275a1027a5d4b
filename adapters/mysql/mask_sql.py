"""Masking in SQL: MySQL/MariaDB expressions equal to `engine.masking`'s methods.

Owns: `mask_sql(method, value_sql)`, a MySQL/MariaDB expression of a string type that masks a
string value as the Python method does, for the methods in `SQL_METHODS`, so a statement can
compute on a masked column's masked value (`adapters/postgres/mask_rewrite.py` with
`dialect="mysql"`). The PostgreSQL twin is `adapters/postgres/mask_sql.py`. Must not: decide
which columns are masked or how, rewrite statements, do I/O, or express `hash` (it needs the
HMAC key, which stays in the proxy).

Exactness: the value is first converted to utf8mb4 (`CONVERT(v USING utf8mb4)`), where
`CHAR_LENGTH` counts code points as Python's `len` does, whatever the column's character set.
`last4`, `redact`, `null` and `email` then equal the Python function for every value the server
can store; `pan` equals `mask_pan` for every all-ASCII value, and hides a value with any
non-ASCII character whole, one `*` per character (SQL does not know the digits of every script
as `str.isdigit` does: it hides more, never less). NULL stays NULL.

Written for MariaDB 10.5+ and MySQL 8.0+ (`REGEXP_REPLACE`, `REGEXP_SUBSTR`) under any
`sql_mode`: no `||` (`PIPES_AS_CONCAT` makes it concatenation, else it is OR), no double-quoted
literal (`ANSI_QUOTES` makes it an identifier), no backslash (`NO_BACKSLASH_ESCAPES`). No text
is compared with `=` or searched under the column's collation (a case- or accent-insensitive
collation could match other characters): regular expressions and `INSTR` run on
`utf8mb4_bin`. Native functions cannot be replaced by a session's stored functions of the same
name (an unqualified call always means the built-in one). `value_sql` is evaluated several
times and must have no side effects. Under `sql_mode=ORACLE` (CONCAT ignores NULL) NULL is
tested first.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.masking import LAST4_MIN_LENGTH, MASK_CHAR, PAN_KEEP_DIGITS, PAN_MIN_DIGITS, REDACTED


def _lit(text: str) -> str:
    """A MySQL string literal of ASCII text without quotes or backslashes (all of ours)."""
    assert text.isascii() and "'" not in text and "\\" not in text
    return f"_utf8mb4'{text}'"


_STAR = _lit(MASK_CHAR)
_BIN = "utf8mb4_bin"


def _bin(v: str) -> str:
    return f"({v} COLLATE {_BIN})"


def _keep_last(v: str, min_length: int) -> str:
    """`*` for every character but the last 4, or for all of them when fewer than
    `min_length`."""
    n = f"CHAR_LENGTH({v})"
    return (f"(CASE WHEN {n} < {min_length} THEN REPEAT({_STAR}, {n}) ELSE CONCAT(REPEAT("
            f"{_STAR}, {n} - {PAN_KEEP_DIGITS}), RIGHT({v}, {PAN_KEEP_DIGITS})) END)")


def _pan(v: str) -> str:
    # As mask_pan: all ASCII digits (or empty): the "keep the last 4" of 13+ characters; any
    # non-ASCII character: all hidden; fewer than 13 positions (digits or `*`): every digit
    # hidden; otherwise digits hidden before the 4th position from the end, kept from there.
    n = f"CHAR_LENGTH({v})"
    positions = f"({n} - CHAR_LENGTH(REGEXP_REPLACE({_bin(v)}, {_lit('[0-9*]')}, {_lit('')})))"
    kept = (f"CHAR_LENGTH(REGEXP_SUBSTR({_bin(f'REVERSE({v})')}, "
            f"{_lit(f'^([^0-9*]*[0-9*]){{{PAN_KEEP_DIGITS}}}')}))")
    head = f"LEFT({v}, {n} - {kept})"
    tail = f"RIGHT({v}, {kept})"
    return (
        f"(CASE WHEN {_bin(v)} REGEXP {_lit('^[0-9]*$')} THEN {_keep_last(v, PAN_MIN_DIGITS)} "
        f"WHEN OCTET_LENGTH({v}) <> {n} THEN REPEAT({_STAR}, {n}) "
        f"WHEN {positions} < {PAN_MIN_DIGITS} "
        f"THEN REGEXP_REPLACE({_bin(v)}, {_lit('[0-9]')}, {_STAR}) "
        f"ELSE CONCAT(REGEXP_REPLACE({_bin(head)}, {_lit('[0-9]')}, {_STAR}), {tail}) END)")


def _last4(v: str) -> str:
    return _keep_last(v, LAST4_MIN_LENGTH)


def _redact(v: str) -> str:
    return f"(CASE WHEN {v} IS NOT NULL THEN {_lit(REDACTED)} END)"


def _null(v: str) -> str:
    return "(CAST(NULL AS CHAR))"


def _email(v: str) -> str:
    # rpartition("@"): the domain is what follows the last `@` (SUBSTRING_INDEX matches
    # case-sensitively), the local part's first character is shown.
    domain = f"SUBSTRING_INDEX({_bin(v)}, {_lit('@')}, -1)"
    shown = f"LEFT({v}, LEAST(1, CHAR_LENGTH({v}) - CHAR_LENGTH({domain}) - 1))"
    return (f"(CASE WHEN INSTR({_bin(v)}, {_lit('@')}) = 0 THEN {_lit(MASK_CHAR * 3)} "
            f"ELSE CONCAT({shown}, {_lit(MASK_CHAR * 3 + '@')}, {domain}) END)")


_BUILDERS: dict[str, Callable[[str], str]] = {
    "pan": _pan, "last4": _last4, "redact": _redact, "null": _null, "email": _email,
}

SQL_METHODS: frozenset[str] = frozenset(_BUILDERS)
"""The methods `mask_sql` can express; not `hash` (it needs the HMAC key)."""


def mask_sql(method: str, value_sql: str) -> str:
    """A MySQL expression that masks `value_sql` (an SQL expression of a string type, without
    side effects, e.g. a column reference such as `` c.`pan` ``) as engine.masking's `method`
    does. NULL stays NULL. Raises ValueError for a method not in SQL_METHODS."""
    try:
        build = _BUILDERS[method]
    except KeyError:
        known = ", ".join(sorted(SQL_METHODS))
        raise ValueError(
            f"masking method {method!r} cannot be applied by MySQL (can: {known})") from None
    v = f"CONVERT(({value_sql}) USING utf8mb4)"
    # NULL first: under sql_mode ORACLE, CONCAT treats NULL as ''
    return f"(CASE WHEN {v} IS NULL THEN NULL ELSE {build(v)} END)"
