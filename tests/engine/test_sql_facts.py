"""SQL facts from fixture pairs (fixtures/sql_facts.yaml) and properties of the parser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.facts import enrich_command, sql_facts
from engine.facts.sql import STATEMENT_KINDS

CASES = yaml.safe_load((Path(__file__).parent / "fixtures" / "sql_facts.yaml").read_text())
PARSE_ERROR_EXPECTED = {
    "SELEC FROM", "SELEC x", "PREPARE p AS SELEC 1",
    "EXPLAIN ANALYZE DELETE FROM cards USING WHERE",
    "CREATE RULE r AS ON UPDATE TO t DO INSTEAD SELECC 1",
    "SELECT U&\"d\\0062link\"('a', 'b')",
}


@pytest.mark.parametrize("case", CASES, ids=[c["sql"][:50] for c in CASES])
def test_sql_fixture(case: dict[str, Any]) -> None:
    facts = sql_facts(case["sql"], "postgres")
    for key, want in case["expect"].items():
        if key == "statements":
            assert len(facts["statements"]) >= len(want), facts["statements"]
            for got_st, want_st in zip(facts["statements"], want, strict=False):
                for k, v in want_st.items():
                    assert got_st.get(k) == v, (k, got_st)
        else:
            assert facts[key] == want, (key, facts)
    if case["sql"] in PARSE_ERROR_EXPECTED:
        assert facts["parse_error"]
    for st_facts in facts["statements"]:
        assert st_facts["kind"] in STATEMENT_KINDS


def test_command_is_enriched_by_resource_dialect() -> None:
    cmd = enrich_command({"raw": "DROP TABLE `cards`"}, {"type": "mysql"})
    assert cmd["protocol"] == "mysql"
    assert cmd["kinds"] == ["drop"] and cmd["tables"] == ["cards"]


def test_adapter_supplied_facts_are_overwritten() -> None:
    cmd = enrich_command({"raw": "DROP TABLE x", "kinds": ["select"]}, {"type": "postgres"})
    assert cmd["kinds"] == ["drop"]


@pytest.mark.parametrize("raw", ["$x'';", "$B'';"])
def test_text_sqlglot_cannot_write_back_is_a_parse_error(raw: str) -> None:
    # (found by hypothesis: sqlglot raised ValueError writing an empty hex / bit string)
    assert sql_facts(raw, "postgres")["parse_error"]


def test_non_string_raw_is_a_parse_error() -> None:
    cmd = enrich_command({"protocol": "postgres", "raw": 42}, {})
    assert cmd["parse_error"] == "command.raw must be a string"


def test_huge_statement_is_reported_not_parsed() -> None:
    cmd = enrich_command({"raw": "SELECT " + "1," * 600_000 + "1"}, {"type": "postgres"})
    assert "too large" in cmd["parse_error"]


def test_shell_and_http_facts() -> None:
    shell = enrich_command({"protocol": "shell", "raw": "FOO=1 rm -rf /tmp/x && ls | wc -l"}, {})
    assert shell["program"] == "rm" and shell["argv"] == ["rm", "-rf", "/tmp/x"]
    assert shell["programs"] == ["rm", "ls", "wc"]
    broken = enrich_command({"protocol": "shell", "raw": "echo 'unterminated"}, {})
    assert broken["parse_error"]
    http = enrich_command({"protocol": "http", "method": "post", "path": "/v1/x?a=1&a=2",
                           "headers": {"X-Trace": "t"}}, {})
    assert http["method"] == "POST" and http["path"] == "/v1/x"
    assert http["query"] == {"a": ["1", "2"]} and http["headers"] == {"x-trace": "t"}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_parser_never_raises(raw: str) -> None:
    facts = sql_facts(raw, "postgres")
    assert set(facts) == {"statements", "kinds", "tables", "parse_error"}
    assert all(s["kind"] in STATEMENT_KINDS for s in facts["statements"])


@pytest.mark.parametrize("sql", [
    "INSERT INTO t (a, b) VALUES ($1,$2),($3,$4)",  # pgjdbc reWriteBatchedInserts, `(?,?)`
    "SELECT id FROM cards WHERE id IN ($1,$2)",  # psycopg `(%s,%s)`, node-postgres
    "SELECT $1::int,$2::int",
    "SELECT $1,$2",
])
def test_parameters_without_space_between_them_parse(sql: str) -> None:
    facts = sql_facts(sql, "postgres")
    assert facts["parse_error"] is None, facts


def test_a_statement_between_parameters_is_not_read_as_a_dollar_quoted_string() -> None:
    # PostgreSQL: `$1` (a parameter of PREPARE a), then a DROP that runs. A tag cannot begin
    # with a digit, so nothing here is dollar-quoted; sqlglot alone read one string.
    tag = "1;COMMIT;DROP/**/TABLE/**/victim;COMMIT;PREPARE/**/b/**/AS/**/SELECT/**/"
    facts = sql_facts(f"PREPARE a AS SELECT ${tag}$2;PREPARE c AS SELECT ${tag}$3", "postgres")
    assert "drop" in facts["kinds"] and "victim" in facts["tables"], facts
    assert len([s for s in facts["statements"] if not s["nested"]]) > 1


@pytest.mark.parametrize("sql", ["SELECT $ab$1$ab$", "SELECT $$1,$$", "SELECT $_x$ $1,$ $_x$"])
def test_dollar_quoted_strings_that_hold_digits_still_parse(sql: str) -> None:
    facts = sql_facts(sql, "postgres")
    assert facts["parse_error"] is None and facts["kinds"] == ["select"], facts


@pytest.mark.parametrize("sql", [
    "BEGIN READ ONLY",  # pgjdbc setReadOnly(true), psycopg read_only
    "START TRANSACTION READ ONLY",
    "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
    "begin isolation level repeatable read read only;",
])
def test_transaction_modes_parse_as_begin(sql: str) -> None:
    facts = sql_facts(sql, "postgres")
    assert facts["parse_error"] is None and facts["kinds"] == ["begin"], facts


def test_only_whole_transaction_mode_lists_are_rewritten() -> None:
    assert sql_facts("BEGIN READ ONLY DROP TABLE x", "postgres")["parse_error"]
    facts = sql_facts("BEGIN READ ONLY; DROP TABLE x", "postgres")
    assert facts["kinds"] == ["begin", "drop"] and facts["tables"] == ["x"]


@pytest.mark.parametrize(("sql", "tables"), [
    ("COPY cards TO STDOUT (FORMAT csv)", ["cards"]),
    ("COPY (SELECT id, pan FROM cards WHERE id = 1) TO STDOUT (FORMAT csv, HEADER, "
     "FORCE_QUOTE (id))", ["cards"]),
    ("copy scratch (id, note) from stdin (format csv);", ["scratch"]),
])
def test_copy_options_without_with_parse(sql: str, tables: list[str]) -> None:
    facts = sql_facts(sql, "postgres")
    assert facts["parse_error"] is None and "copy" in facts["kinds"], facts
    assert facts["tables"] == tables
