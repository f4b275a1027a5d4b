"""sql_names: which cursor or prepared statement each statement of a text defines, uses or
drops (so a FETCH or EXECUTE carries the row budget of what made its rows)."""

from __future__ import annotations

import pytest

from adapters.postgres.sql_names import name_actions


@pytest.mark.parametrize(("sql", "expected"), [
    ("DECLARE c CURSOR FOR SELECT * FROM cards", [("cursor", "define", "c")]),
    ('declare "My C" binary no scroll cursor with hold for select 1',
     [("cursor", "define", "My C")]),
    ("/* x */ -- y\n DECLARE Cur INSENSITIVE CURSOR FOR SELECT 1", [("cursor", "define", "cur")]),
    ("FETCH FORWARD 2000 FROM \"bulk\"", [("cursor", "use", "bulk")]),
    ("FETCH c", [("cursor", "use", "c")]),
    ("fetch next in C", [("cursor", "use", "c")]),
    ('FETCH ALL FROM "a""b"', [("cursor", "use", 'a"b')]),
    ("MOVE 10 IN c", [("cursor", "use", "c")]),
    ("FETCH ALL", []),  # no cursor named: the server refuses it
    ("CLOSE c", [("cursor", "drop", "c")]),
    ("CLOSE ALL", [("cursor", "drop_all", "")]),
    ("PREPARE p(int) AS SELECT $1", [("statement", "define", "p")]),
    ("EXECUTE p(1)", [("statement", "use", "p")]),
    ("DEALLOCATE PREPARE p", [("statement", "drop", "p")]),
    ("DEALLOCATE ALL", [("statement", "drop_all", "")]),
    ("DISCARD ALL", [(None, "drop_all", "")]),
    ("SELECT 'declare c cursor for x'; SELECT 1", []),
    ("SELECT 1; DECLARE c CURSOR FOR SELECT 2; FETCH 5 FROM c",
     [("cursor", "define", "c"), ("cursor", "use", "c")]),
])
def test_name_actions(sql: str, expected: list[tuple[str | None, str, str]]) -> None:
    assert [(a.kind, a.action, a.name) for a in name_actions(sql)] == expected


def test_each_action_keeps_its_statement_text() -> None:
    define, use = name_actions("DECLARE c CURSOR FOR SELECT 2; FETCH 5 FROM c")
    assert define.statement == "DECLARE c CURSOR FOR SELECT 2"
    assert use.statement.strip() == "FETCH 5 FROM c"
