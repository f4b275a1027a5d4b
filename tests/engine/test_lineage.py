"""Output-column lineage through the parsed statement (what the proxy masks by)."""

from __future__ import annotations

import pytest

from engine.lineage import trace_output_columns

SCHEMA = {"cards": {"id": "int", "pan": "text", "cvv": "text", "owner": "text"},
          "orders": {"id": "int", "card_id": "int", "amount": "int"}}


def summary(sql: str, schema=SCHEMA) -> list[tuple[str, list[str], bool, bool]]:
    columns = trace_output_columns(sql, "postgres", schema)
    assert columns is not None
    return [(c.name, sorted(c.sources), c.direct, c.opaque) for c in columns]


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT pan AS x FROM cards", [("x", ["cards.pan"], True, False)]),
    ("SELECT substr(pan, 1, 6) AS bin FROM cards c", [("bin", ["cards.pan"], False, False)]),
    ("SELECT lower(pan) FROM cards", [("_col_0", ["cards.pan"], False, False)]),
    ("SELECT o.id, c.pan || '' FROM orders o JOIN cards c ON c.id = o.card_id",
     [("id", ["orders.id"], True, False), ("_col_1", ["cards.pan"], False, False)]),
    ("WITH t AS (SELECT pan AS p FROM cards) SELECT upper(p) FROM t",
     [("_col_0", ["cards.pan"], False, False)]),
    ("SELECT s.* FROM (SELECT pan, id FROM cards) s",
     [("pan", ["cards.pan"], True, False), ("id", ["cards.id"], True, False)]),
    ("SELECT pan FROM cards UNION SELECT owner FROM cards",
     [("pan", ["cards.owner", "cards.pan"], True, False)]),
    ("SELECT count(*) FROM cards", [("_col_0", [], False, False)]),
    ("SELECT row_to_json(c) FROM cards c", [("_col_0", [], False, True)]),
    ("SELECT c::text FROM cards c", [("c", [], False, True)]),
])
def test_traced_columns(sql: str, expected: list) -> None:
    assert summary(sql) == expected


def test_star_expands_with_a_schema_and_is_opaque_without() -> None:
    # in the table's column order (the schema's), as PostgreSQL expands `*`
    assert [c[0] for c in summary("SELECT * FROM cards")] == ["id", "pan", "cvv", "owner"]
    assert [c[0] for c in summary("SELECT *, lower(pan) FROM cards")] == [
        "id", "pan", "cvv", "owner", "_col_4"]
    assert summary("SELECT * FROM cards", schema=None) == [("*", [], False, True)]


def test_whole_row_read_without_schema_is_opaque() -> None:
    assert summary("SELECT row_to_json(c) FROM cards c", schema=None)[0][3] is True


def test_ambiguous_column_without_schema_is_opaque() -> None:
    assert summary("SELECT pan FROM a JOIN b ON a.id = b.id", schema=None)[0][3] is True


@pytest.mark.parametrize("sql", ["DELETE FROM x", "SELECT 1; SELECT 2", "SELEC pan"])
def test_not_a_single_query(sql: str) -> None:
    assert trace_output_columns(sql, "postgres", SCHEMA) is None


def test_parameters_without_space_between_them_are_traced() -> None:
    assert summary("SELECT cvv||$1,$2::text AS p, pan FROM cards WHERE id IN ($3,$4)") == [
        ("_col_0", ["cards.cvv"], False, False), ("p", [], False, False),
        ("pan", ["cards.pan"], True, False)]
