"""`pg_statement_count` against PostgreSQL itself: texts of harmless statements whose string
constants, quoted names, dollar-quoted bodies and comments hold `;`, quotes, backslashes,
`$` and comment marks are sent in one simple-protocol Query, and the server's count of
results must equal ours (and the number of statements written)."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import pq

from engine.facts.pg_statements import pg_statement_count
from engine.facts.sql import parse_sql

pytestmark = pytest.mark.postgres

_CONTENT = st.lists(st.sampled_from([";", "'", '"', "\\", "$", "$a$", "$$", "--", "/*", "*/",
                                     "x", " ", "\n", "SELECT 1", "é", "E'", "$1"]),
                    max_size=8).map("".join)


def _standard(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _escape(text: str) -> str:
    return "E'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _dollar(text: str) -> str:
    tag = "q"
    while f"${tag}$" in f"${text}$" or text.endswith("$" + tag) or text.startswith(tag + "$"):
        tag += "q"
    return f"${tag}${text}${tag}$"


def _identifier(text: str) -> str:
    return '"' + (text.replace("\x00", "") or "x").replace('"', '""') + '"'


def _block_comment(text: str) -> str:
    return "/* " + text.replace("*", "+") + " */"  # (no `*`: no comment mark inside)


def _nested_comment(text: str) -> str:
    return "/* a " + _block_comment(text) + " ; b */"


def _line_comment(text: str) -> str:
    return "--" + text.replace("\n", " ").replace("\r", " ") + "\n"


_LITERAL = st.one_of(_CONTENT.map(_standard), _CONTENT.map(_escape), _CONTENT.map(_dollar))
_NOISE = st.one_of(st.just(" "), _CONTENT.map(_block_comment), _CONTENT.map(_nested_comment),
                   _CONTENT.map(_line_comment))


@st.composite
def _statement(draw: st.DrawFn) -> str:
    value = draw(_LITERAL)
    name = draw(_CONTENT.map(_identifier))
    return f"SELECT {draw(_NOISE)}{value}{draw(_NOISE)} AS {name}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_statement(), min_size=1, max_size=4), st.lists(_NOISE, max_size=4))
def test_our_count_is_the_servers(pg_dsn: str, statements: list[str],
                                  noise: list[str]) -> None:
    sql = ";".join(s + (noise[i] if i < len(noise) else "") for i, s in enumerate(statements))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        pgconn = conn.pgconn
        pgconn.send_query(sql.encode())
        results = []
        while (result := pgconn.get_result()) is not None:
            results.append(result)
    errors = [r.error_message for r in results if r.status != pq.ExecStatus.TUPLES_OK]
    assert not errors, (sql, errors)
    assert len(results) == len(statements) == pg_statement_count(sql), sql
    facts = parse_sql(sql, "postgres")
    assert facts["parse_error"] is not None or len(facts["statements"]) == len(statements), sql
