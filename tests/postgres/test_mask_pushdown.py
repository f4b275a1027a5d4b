"""Which statements the database may mask (`mask_pushdown`), and the text it then runs. The
end-to-end behaviour (same rows as the proxy's masking) is in test_enforcement.py."""

from __future__ import annotations

import pytest

from adapters.postgres.hooks import ColumnDescriptor
from adapters.postgres.mask_pushdown import PushdownShape, select_list_size, wrapped_body
from adapters.postgres.messages import FieldDescription, RowDescription


@pytest.mark.parametrize(("sql", "size"), [
    ("SELECT id, pan FROM cards", 2),
    ("SELECT DISTINCT ON (id) id, pan FROM cards", 2),
    ("SELECT count(*), max(pan) FROM cards", 2),
    ("WITH x AS (SELECT pan FROM cards) SELECT pan, upper(pan) FROM x LIMIT 5", 2),
    ("SELECT pan FROM cards WHERE id IN (SELECT id FROM cards FOR UPDATE)", 1),
    # not wrapped: the proxy masks these
    ("SELECT * FROM cards", None),
    ("SELECT c.*, pan FROM cards c", None),
    ("SELECT pan INTO TEMP copied FROM cards", None),
    ("SELECT pan FROM cards FOR NO KEY UPDATE SKIP LOCKED", None),
    ("SELECT pan FROM cards UNION SELECT pan FROM cards", None),
    ("WITH x AS (DELETE FROM cards RETURNING pan) SELECT pan FROM x", None),
    ("TABLE cards", None),
    ("VALUES ('4111111111111111')", None),
    ("SELECT pan FROM", None),
])
def test_only_a_plain_select_list_is_wrapped(sql: str, size: int | None) -> None:
    assert select_list_size(sql) == size


@pytest.mark.parametrize(("sql", "body"), [
    ("SELECT 1;", "SELECT 1"),
    ("SELECT 1 ; ;\n", "SELECT 1"),
    ("SELECT 1 -- the end", None),  # the comment would swallow the closing parenthesis
    ("SELECT /* x */ 1", None),
    ("SELECT 1; SELECT 2", None),
    ("SELECT ';'", None),  # (conservative: any semicolon inside)
    ("  ;  ", None),
    ("SELECT " + "1 + " * 20000 + "1", None),  # longer than MAX_WRAPPED_TEXT
])
def test_the_text_must_end_where_the_wrapper_closes(sql: str, body: str | None) -> None:
    assert wrapped_body(sql) == body


def columns(*specs: tuple[str, int, int]) -> list[ColumnDescriptor]:
    return [ColumnDescriptor(i, name, 16384 if attnum else 0, attnum, type_oid, -1, 0)
            for i, (name, attnum, type_oid) in enumerate(specs)]


def test_a_shape_is_learnt_from_the_first_result_and_wraps_by_position() -> None:
    sql = "SELECT id, pan AS \"card \"\"no\"\"\", note FROM cards WHERE id = 1;"
    cols = columns(("id", 1, 23), ('card "no"', 2, 1043), ("note", 3, 25))
    shape = PushdownShape.learn(sql, cols, {0: None, 1: "pan", 2: None}, "UTF8")
    assert shape is not None
    got = shape.wrap(sql.replace("= 1", "= 2"))
    assert got is not None
    wrapped, offset = got
    assert wrapped[offset:].startswith("SELECT id, pan AS")
    assert wrapped.startswith('SELECT ordinance_masked."c1" AS "id", (CASE WHEN ')
    assert wrapped.endswith(' AS "card ""no""", ordinance_masked."c3" AS "note" FROM (\n'
                            "SELECT id, pan AS \"card \"\"no\"\"\", note FROM cards WHERE "
                            'id = 2\n) AS ordinance_masked("c1", "c2", "c3")')
    assert shape.wrap("SELECT id, pan, note FROM cards -- x") is None


@pytest.mark.parametrize(("methods", "types", "encoding"), [
    ({0: None, 1: None}, (23, 25), "UTF8"),  # nothing masked
    ({0: None, 1: "hash"}, (23, 25), "UTF8"),  # needs the key
    ({0: None, 1: "pan"}, (23, 1042), "UTF8"),  # char(n): padding
    ({0: None, 1: "redact"}, (23, 1082), "UTF8"),  # a date cannot hold "[REDACTED]"
    ({0: None, 1: "pan"}, (23, 25), "LATIN1"),
    ({0: None}, (23, 25), "UTF8"),  # not every column was seen
])
def test_what_is_not_pushed_down(methods: dict[int, str | None], types: tuple[int, int],
                                 encoding: str) -> None:
    cols = columns(("id", 1, types[0]), ("pan", 2, types[1]))
    assert PushdownShape.learn("SELECT id, pan FROM cards", cols, methods, encoding) is None


def test_the_client_sees_the_columns_it_asked_for() -> None:
    from adapters.postgres.mask_pushdown import MaskPushdown

    cols = columns(("id", 1, 23), ("pan", 2, 1043))
    shape = PushdownShape.learn("SELECT id, pan FROM cards", cols, {0: None, 1: "pan"}, "UTF8")
    assert shape is not None
    server = (FieldDescription("id", 16384, 1, 23, 4, -1, 0), FieldDescription("pan", 0, 0, 25))
    raw = RowDescription(server).encode()
    pushed = MaskPushdown("SELECT ...", shape, offset=100, length=20)
    assert [pushed.position(p) for p in (100, 101, 120, 121)] == [None, 1, 20, None]
    got = pushed.client_description(raw, server)
    assert got == RowDescription((server[0], FieldDescription("pan", 16384, 2, 1043, -1, -1, 0))
                                 ).encode()
    assert pushed.client_description(raw, server) is got  # (encoded once)
    other = RowDescription(server[:1]).encode()  # not the wrapper's answer: relayed as it is
    assert pushed.client_description(other, server[:1]) == other
