"""Generated statements that hide a call of a function the PCI pack denies (dblink_exec,
query_to_xml, pg_read_file, set_config('role', ...)) in the ways SQL allows: any case, quoted,
schema-qualified, in subqueries, CTEs, CASE, function arguments, set operations, DEFAULTs,
VALUES, UPDATE ... SET, PREPARE, EXPLAIN ANALYZE, DECLARE, CALL and EXECUTE arguments, COPY,
nested in one another. Each is either unparseable or has the call in its facts, and the pack
denies it on production."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.engine import Engine
from engine.facts import sql_facts
from engine.policy import load_policy_set

REPO = Path(__file__).resolve().parents[2]
DENIED = ["dblink_exec", "dblink", "query_to_xml", "table_to_xml", "pg_read_file", "lo_import"]
ARGUMENTS = {"dblink_exec": "'c', 'drop table cards'", "dblink": "'c', 'select pan from cards'",
             "query_to_xml": "'select pan from cards', true, true, ''",
             "table_to_xml": "'cards', true, true, ''", "pg_read_file": "'/etc/passwd'",
             "lo_import": "'/etc/passwd'"}
# {} is the expression that holds the call; each wrapper is still an expression
EXPRESSIONS = ["{}", "({})", "coalesce(NULL, {})", "CASE WHEN id > 0 THEN {} END",
               "length({})::text", "(SELECT {} LIMIT 1)", "(SELECT x FROM (SELECT {} AS x) s)",
               "ARRAY[{}]::text"]
# {} is an expression; each wrapper is a whole statement
STATEMENTS = ["SELECT {}", "SELECT id FROM holders WHERE name = {}",
              "SELECT 1 WHERE EXISTS (SELECT {})", "WITH c AS (SELECT {} AS x) SELECT x FROM c",
              "SELECT 1 UNION ALL SELECT {}", "INSERT INTO notes (x) VALUES ({})",
              "UPDATE notes SET x = {} WHERE id = 1", "CREATE TABLE t (x text DEFAULT {})",
              "PREPARE q AS SELECT {}", "EXPLAIN ANALYZE SELECT {}",
              "DECLARE c CURSOR FOR SELECT {}", "CALL note({})", "EXECUTE q({})",
              "COPY (SELECT {}) TO STDOUT", "SELECT * FROM holders h JOIN LATERAL (SELECT {} AS x) "
              "s ON true WHERE h.id = 1"]
SCHEMAS = ["", "public.", "pg_catalog.", '"public".', "PUBLIC."]


@cache
def engine() -> Engine:
    return Engine(load_policy_set(str(REPO / "policies")))


@st.composite
def hidden_call(draw: st.DrawFn) -> tuple[str, str]:
    function = draw(st.sampled_from(DENIED))
    quoted = draw(st.booleans())
    name = f'"{function}"' if quoted else "".join(
        c.upper() if draw(st.booleans()) else c for c in function)
    expression = f"{draw(st.sampled_from(SCHEMAS))}{name}({ARGUMENTS[function]})"
    for wrapper in draw(st.lists(st.sampled_from(EXPRESSIONS), max_size=3)):
        expression = wrapper.format(expression)
    return function, draw(st.sampled_from(STATEMENTS)).format(expression)


@settings(max_examples=150, deadline=None)
@given(hidden_call())
def test_a_hidden_call_is_in_the_facts_and_denied(case: tuple[str, str]) -> None:
    function, sql = case
    facts = sql_facts(sql, "postgres")
    assert facts["parse_error"] is not None or any(
        function in s["functions"] for s in facts["statements"]), (sql, facts)
    decision = engine().decide({
        "subject": {"id": "alice", "groups": ["dev"]},
        "resource": {"type": "postgres", "name": "payments", "labels": {"env": "prod"}},
        "command": {"protocol": "postgres", "raw": sql}})
    assert decision.effect == "deny", (sql, decision.reasons)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(EXPRESSIONS), st.sampled_from(STATEMENTS), st.sampled_from(SCHEMAS),
       st.sampled_from(["role", "ROLE", "session_authorization", "Role"]))
def test_a_hidden_set_config_of_the_role_is_denied(wrapper: str, statement: str, schema: str,
                                                   setting: str) -> None:
    sql = statement.format(wrapper.format(f"{schema}set_config('{setting}', 'postgres', false)"))
    decision = engine().decide({
        "subject": {"id": "alice", "groups": ["dev"]},
        "resource": {"type": "postgres", "name": "payments", "labels": {"env": "prod"}},
        "command": {"protocol": "postgres", "raw": sql}})
    assert decision.effect == "deny", (sql, decision.reasons)
    assert any("role" in r.message or "unparseable" in r.message for r in decision.reasons)
