"""The masking expressions of `mask_sql`, evaluated by a real PostgreSQL, equal the Python
methods of `engine.masking` (for `pan`: on all-ASCII values; others are hidden whole)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.postgres.mask_sql import SQL_METHODS, mask_sql
from engine.masking import MASK_CHAR, mask_value

pytestmark = pytest.mark.postgres

METHODS = sorted(SQL_METHODS)

# Digits of other scripts: str.isdigit() is true for them, SQL's [0-9] is not.
AR1, AR3 = "\u0661", "\u0663"  # ARABIC-INDIC DIGIT ONE, THREE
FW1, FW4 = "\uff11", "\uff14"  # FULLWIDTH DIGIT ONE, FOUR

EDGE_CASES: list[str | None] = [
    None, "", "0", "123456789012", "1234567890123", "1234567890123456789",
    "12345678901234567890", "4111 1111 1111 1111", "4111-1111-1111-1111",
    "****-****-****-1111", "**** 1234", "*************", "************1", "1234 5678 9012 ",
    " 1234-5678-9012-3", "card: 4111 1111 1111 1111, exp 12/27", "4111 1111 1111 111" + AR1,
    AR3 * 13, FW4 + FW1 * 12, "é1234567890123",
    "@", "a@", "@b", "a@b@c", "@@", "é@ü", "😀@😀", "alice@example.com", "no at sign",
    "x" * 7, "x" * 8, "é" * 7, "😀" * 8, "\u200b", "\u200b@\u200b", "\x01", "'", "\\", "%s",
]

_ASCII = list("0123456789" * 4 + "*" * 6 + " " * 4 + "--@@..azZ'\\")
_NON_ASCII = ["é", "ß", AR3, AR1, FW4, FW1, "😀", "\u200b", "\u00a0"]
_ANY_CHAR = st.characters(codec="utf-8", exclude_characters="\x00")  # no surrogates, no NUL

_card_like = st.builds(
    lambda prefix, groups, sep, suffix: prefix + sep.join(groups) + suffix,
    st.text(st.sampled_from(_ASCII), max_size=3),
    st.lists(st.text(st.sampled_from("0123456789*"), min_size=1, max_size=6),
             min_size=2, max_size=7),
    st.sampled_from(["", " ", "-", "  ", " - ", "x", "*"]),
    st.text(st.sampled_from(_ASCII), max_size=3),
)

VALUE = st.one_of(
    st.none(),
    st.text(st.sampled_from(_ASCII), max_size=30),
    _card_like,
    st.text(st.sampled_from("0123456789"), min_size=10, max_size=22),
    _card_like,
    st.text(st.sampled_from(_ASCII + _NON_ASCII), max_size=30),
    st.text(_ANY_CHAR, max_size=20),
)

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def expected(method: str, value: str | None) -> str | None:
    """What the SQL mask must give: the Python method's output, except that `pan`
    hides every character of a value with a non-ASCII one (SQL cannot tell the digits of
    other scripts, which `str.isdigit` knows)."""
    if method == "pan" and value is not None and not value.isascii():
        return MASK_CHAR * len(value)
    return mask_value(method, value)


@pytest.fixture(scope="module")
def conn(pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        encoding = connection.execute("SHOW server_encoding").fetchone()
        assert encoding == ("UTF8",)
        yield connection


def evaluate(conn: psycopg.Connection, method: str,
             values: Sequence[str | None]) -> list[tuple[str | None, str | None]]:
    """Each value and its mask, computed by PostgreSQL in one round trip."""
    rows = conn.execute(
        f"SELECT t.v, {mask_sql(method, 't.v')} "
        "FROM unnest(%s::text[]) WITH ORDINALITY AS t(v, n) ORDER BY t.n",
        (list(values),)).fetchall()
    assert [v for v, _ in rows] == list(values)  # stored and returned as given
    return rows


def check(conn: psycopg.Connection, method: str, values: Sequence[str | None]) -> None:
    got = evaluate(conn, method, values)
    wrong = [(v, masked, expected(method, v)) for v, masked in got
             if masked != expected(method, v)]
    assert not wrong, f"{method}: (value, PostgreSQL, expected): {wrong[:5]}"


@pytest.mark.parametrize("method", METHODS)
def test_edge_cases(conn: psycopg.Connection, method: str) -> None:
    check(conn, method, EDGE_CASES)


@pytest.mark.parametrize("method", METHODS)
@SETTINGS
@given(values=st.lists(VALUE, min_size=20, max_size=80))
def test_equal_to_python(conn: psycopg.Connection, method: str,
                         values: list[str | None]) -> None:
    check(conn, method, values)


def test_pan_examples(conn: psycopg.Connection) -> None:
    values = ["1234567890123", "4111-1111-1111-1111", "****-****-****-1111", "**** 1234",
              "123456789012", "4111 1111 1111 111" + AR1]
    assert [m for _, m in evaluate(conn, "pan", values)] == [
        "*********0123", "****-****-****-1111", "****-****-****-1111", "**** ****",
        "************", "*" * 19]


def test_email_examples(conn: psycopg.Connection) -> None:
    values = ["@", "a@", "@b", "a@b@c", "alice@example.com", "nobody"]
    assert [m for _, m in evaluate(conn, "email", values)] == [
        "***@", "a***@", "***@b", "a***@c", "a***@example.com", "***"]


def test_type_and_collation_kept_for_varchar_and_nondeterministic_columns(
        conn: psycopg.Connection) -> None:
    """Every expression is text; on a column with a nondeterministic collation (which rejects
    `strpos` and regular expressions) it still works, and keeps the column's collation."""
    try:
        conn.execute("CREATE COLLATION IF NOT EXISTS pg_temp.mask_sql_ci "
                     "(provider = icu, locale = 'und-u-ks-level2', deterministic = false)")
    except psycopg.errors.Error as exc:  # a server built without ICU
        pytest.skip(f"no ICU collation: {exc}")
    conn.execute("CREATE TEMP TABLE mask_sql_cols (n int, t text, vc varchar(60), "
                 "ci text COLLATE pg_temp.mask_sql_ci)")
    values = list(EDGE_CASES)
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO mask_sql_cols VALUES (%s, %s, %s, %s)",
                        [(n, v, v, v) for n, v in enumerate(values)])
    for method in METHODS:
        for column in ("t", "vc", "ci"):
            expr = mask_sql(method, f'o."{column}"')
            rows = conn.execute(
                f"SELECT {expr}, pg_typeof({expr})::text, pg_collation_for({expr}) "
                "FROM mask_sql_cols AS o ORDER BY o.n").fetchall()
            assert [m for m, _, _ in rows] == [expected(method, v) for v in values], (
                method, column)
            assert {t for _, t, _ in rows} == {"text"}
            collation = {c for _, _, c in rows}
            if method in ("pan", "last4", "email"):
                assert collation == ({'pg_temp.mask_sql_ci'} if column == "ci"
                                     else {'"default"'}), (method, column)
    conn.execute("DROP TABLE mask_sql_cols")


def test_standard_conforming_strings_off(conn: psycopg.Connection) -> None:
    conn.execute("SET standard_conforming_strings = off")
    try:
        for method in METHODS:
            check(conn, method, EDGE_CASES)
    finally:
        conn.execute("RESET standard_conforming_strings")


def test_any_expression_is_parenthesised(conn: psycopg.Connection) -> None:
    expr = mask_sql("last4", "'ab' || t.v")
    rows = conn.execute(f"SELECT {expr}, {expr} IS NULL FROM (VALUES ('cdefgh')) AS t(v)")
    assert rows.fetchall() == [("****efgh", False)]


@pytest.mark.parametrize("method", ["hash", "nope", "PAN"])
def test_methods_without_an_sql_form(method: str) -> None:
    with pytest.raises(ValueError, match="cannot be applied by PostgreSQL"):
        mask_sql(method, "v")
    assert "hash" not in SQL_METHODS
    assert {"pan", "last4", "redact", "null", "email"} == SQL_METHODS
