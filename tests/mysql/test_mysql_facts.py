"""SQL facts in the mysql dialect and the decision cache: what MySQL reads in a literal (the
statement of a quoted PREPARE / EXECUTE IMMEDIATE, sql_mode values) is never answered from a
decision taken for another literal, and executable comments are read as the SQL they hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.engine import Engine
from engine.facts import enrich_command
from engine.facts.fingerprint import literal_fingerprint
from engine.policy import load_policy_set

REPO = Path(__file__).resolve().parents[2]
PROD = {"type": "mysql", "labels": {"env": "prod"}}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_policy_set(str(REPO / "policies")))


def decide(engine: Engine, raw: str) -> str:
    decision = engine.decide({"subject": {"id": "alice", "groups": ["dev"]}, "resource": PROD,
                              "command": {"protocol": "mysql", "raw": raw}})
    return decision.effect


@pytest.mark.parametrize(("first", "then"), [
    ("PREPARE s FROM 'SELECT 1'", "PREPARE s FROM 'DROP TABLE cards'"),
    ("EXECUTE IMMEDIATE 'SELECT 1'", "EXECUTE IMMEDIATE 'DROP TABLE cards'"),
    ("SET sql_mode = 'STRICT_ALL_TABLES'", "SET sql_mode = 'ANSI_QUOTES'"),
])
def test_literals_that_are_sql_are_never_answered_from_the_cache(engine: Engine, first: str,
                                                                  then: str) -> None:
    assert decide(engine, first) == "allow"
    assert decide(engine, then) != "allow"
    assert literal_fingerprint(then) is None


def test_a_backslash_leaves_no_fingerprint() -> None:
    # MySQL reads `\'` inside a string as a quote, the fingerprint's lexer would not
    assert literal_fingerprint("SELECT 'a\\' , 1 FROM t WHERE x = 'b'") is None


def test_a_plain_statement_still_has_a_fingerprint() -> None:
    assert literal_fingerprint("SELECT id FROM orders WHERE id = 7") == (
        "SELECT id FROM orders WHERE id = ?")


@pytest.mark.parametrize("raw", ["SELECT 1 /*!50000 , pan FROM cards */",
                                 "SELECT 1 /*M!100100 , pan FROM cards */",
                                 "SELECT 1 /*! , pan FROM cards */"])
def test_executable_comments_are_read_as_sql(raw: str) -> None:
    facts = enrich_command({"protocol": "mysql", "raw": raw}, {"type": "mysql"})
    assert facts["tables"] == ["cards"]
    assert "pan" in facts["statements"][0]["columns"]


def test_the_protocol_decides_the_dialect() -> None:
    # backquoted names are MySQL's; the resource's type does not override the protocol
    facts = enrich_command({"protocol": "mysql", "raw": "SELECT `pan` FROM `shop`.`cards`"},
                           {"type": "postgres"})
    assert facts["parse_error"] is None and facts["tables"] == ["shop.cards"]
