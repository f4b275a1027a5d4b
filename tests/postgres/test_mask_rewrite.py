"""`mask_rewrite` on its own: where a statement is rewritten, where it is left as sent, and what
is denied. (What the rewritten statements compute is checked against a real server in
test_masking_semantics.py.)"""

from __future__ import annotations

import pytest

from adapters.postgres.copy_statement import parse_copy
from adapters.postgres.mask_rewrite import (
    MaskedColumn,
    MaskedSchema,
    MaskUseDenied,
    SourceTable,
    mask_expression,
    rewrite_statement,
)
from adapters.postgres.mask_sql import mask_sql

PAN = MaskedColumn("pan", True)
CVV = MaskedColumn("redact", True)
EXPIRY = MaskedColumn("redact", False)  # a date: NULL
CARDS = SourceTable((("id", None), ("pan", PAN), ("cvv", CVV), ("expiry", EXPIRY),
                     ("holder_id", None)))
HOLDERS = SourceTable((("id", None), ("name", None)))
SCHEMA = MaskedSchema(
    {"pan": PAN, "cvv": CVV, "expiry": EXPIRY},
    {"cards": (CARDS,), "public.cards": (CARDS,), "holders": (HOLDERS,)},
    frozenset({"id", "pan", "cvv", "expiry", "holder_id", "name"}))


def masked(reference: str, column: MaskedColumn = PAN) -> str:
    return f"({mask_expression(reference, column)})"


@pytest.mark.parametrize("sql", [
    "SELECT id, pan, cvv FROM cards WHERE id = 1",
    "SELECT c.pan AS card, h.name FROM cards c JOIN holders h ON h.id = c.holder_id "
    "WHERE c.id = $1 ORDER BY c.id",
    "SELECT * FROM cards WHERE id BETWEEN 1 AND 10000",
    "SELECT c.* FROM cards c WHERE id > 0 ORDER BY 1",
    "SELECT *, 1 FROM cards c JOIN holders h ON true WHERE c.id > 0 ORDER BY 7, 1",
    "UPDATE cards SET holder_id = 2 WHERE id = 1 RETURNING pan, cvv",
    "INSERT INTO cards (id, holder_id) VALUES (3, 1) RETURNING *",
    "DELETE FROM cards WHERE id = 3 RETURNING pan",
    "SELECT count(*) FROM cards WHERE id > 0",
    "SELECT name FROM holders WHERE name LIKE 'A%'",
    "DECLARE c CURSOR FOR SELECT id, pan FROM cards WHERE id = 1",
    "PREPARE p (int) AS SELECT pan FROM cards WHERE id = $1",
])
def test_plain_result_columns_run_as_sent(sql: str) -> None:
    assert rewrite_statement(sql, SCHEMA).text is None


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT count(*) FROM cards WHERE id = 1 AND substr(pan, 3, 1) = 'd'",
     "SELECT count(*) FROM cards WHERE id = 1 AND substr({pan}, 3, 1) = 'd'"),
    ("SELECT id FROM cards c WHERE c.pan LIKE $1 AND id = $2",
     "SELECT id FROM cards c WHERE {c.pan} LIKE $1 AND id = $2"),
    ("SELECT id FROM cards WHERE id=$1AND pan=$2", "SELECT id FROM cards WHERE id=$1AND {pan}=$2"),
    ("SELECT id, pan FROM cards ORDER BY pan", "SELECT id, pan FROM cards ORDER BY {pan}"),
    ("SELECT id, pan FROM cards ORDER BY 2", 'SELECT id, {pan} AS "pan" FROM cards ORDER BY 2'),
    ("SELECT c.*, pan FROM cards c ORDER BY 6",
     'SELECT c.*, {pan} AS "pan" FROM cards c ORDER BY 6'),
    ("SELECT id, pan AS x FROM cards ORDER BY x",
     "SELECT id, {pan} AS x FROM cards ORDER BY x"),
    ("SELECT DISTINCT PAN FROM cards", 'SELECT DISTINCT {PAN} AS "pan" FROM cards'),
    ("SELECT pan, count(*) FROM cards GROUP BY pan",
     'SELECT {pan} AS "pan", count(*) FROM cards GROUP BY {pan}'),
    ("SELECT pan FROM cards UNION SELECT 'x'", "SELECT {pan} AS \"pan\" FROM cards UNION "
     "SELECT 'x'"),
    ("SELECT expiry > now() FROM cards", "SELECT {expiry} > now() FROM cards"),
    ("SELECT set_config('x.y', cvv, false) FROM cards",
     "SELECT set_config('x.y', {cvv}, false) FROM cards"),
    ("CREATE TEMP TABLE t AS SELECT id, pan AS x FROM cards",
     "CREATE TEMP TABLE t AS SELECT id, {pan} AS x FROM cards"),
    ("INSERT INTO loot(note) SELECT reverse(pan) FROM cards",
     "INSERT INTO loot(note) SELECT reverse({pan}) FROM cards"),
    ("UPDATE cards SET holder_id = length(pan) WHERE cvv = '1' RETURNING pan",
     "UPDATE cards SET holder_id = length({pan}) WHERE {cvv} = '1' RETURNING pan"),
    ("DECLARE c CURSOR FOR SELECT lower(pan) FROM cards",
     "DECLARE c CURSOR FOR SELECT lower({pan}) FROM cards"),
    ("PREPARE p (text) AS SELECT id FROM cards WHERE pan = $1",
     "PREPARE p (text) AS SELECT id FROM cards WHERE {pan} = $1"),
    ("SELECT 1; SELECT pan FROM cards WHERE pan > '3'",
     "SELECT 1; SELECT pan FROM cards WHERE {pan} > '3'"),
    ("WITH d AS (DELETE FROM cards WHERE id = 1 RETURNING pan) SELECT pan FROM d",
     'WITH d AS (DELETE FROM cards WHERE id = 1 RETURNING {pan} AS "pan") SELECT pan FROM d'),
    ("SELECT 1 FROM cards WHERE (now() AT TIME ZONE pan) IS NULL",
     "SELECT 1 FROM cards WHERE (now() AT TIME ZONE {pan}) IS NULL"),
    ("SELECT id FROM cards WHERE id=1 AND pan/*x*/LIKE '3%'",
     "SELECT id FROM cards WHERE id=1 AND {pan}/*x*/LIKE '3%'"),
    ("WITH x AS (SELECT pan FROM cards) SELECT pan FROM x",
     'WITH x AS (SELECT {pan} AS "pan" FROM cards) SELECT pan FROM x'),
    ("CREATE VIEW v AS SELECT pan FROM cards WHERE pan LIKE '4%'",
     "CREATE VIEW v AS SELECT pan FROM cards WHERE {pan} LIKE '4%'"),
    ("INSERT INTO cards (id, holder_id) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET "
     "holder_id = excluded.holder_id WHERE cards.pan <> 'y'",
     "INSERT INTO cards (id, holder_id) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET "
     "holder_id = excluded.holder_id WHERE {cards.pan} <> 'y'"),
])
def test_masked_uses_are_replaced_in_the_text_as_sent(sql: str, expected: str) -> None:
    got = rewrite_statement(sql, SCHEMA).text
    columns = {"pan": PAN, "cvv": CVV, "expiry": EXPIRY}
    want = expected
    for reference in ("cards.pan", "c.pan", "PAN", "pan", "cvv", "expiry"):
        column = columns[reference.rpartition(".")[2].lower()]
        want = want.replace("{" + reference + "}", masked(reference, column))
    assert got == want


def test_star_outside_the_result_is_expanded_with_the_masks() -> None:
    got = rewrite_statement("SELECT * INTO TEMP t FROM cards c JOIN holders h ON true", SCHEMA)
    pan, cvv, expiry = (masked(f'c."{name}"', column) for name, column in (
        ("pan", PAN), ("cvv", CVV), ("expiry", EXPIRY)))
    assert got.text == (
        f'SELECT c."id", {pan} AS "pan", {cvv} AS "cvv", {expiry} AS "expiry", c."holder_id", '
        "h.* INTO TEMP t FROM cards c JOIN holders h ON true")
    assert set(got.columns) == {"pan", "cvv", "expiry"}


def test_ordinals_make_the_answer_depend_on_literals() -> None:
    assert rewrite_statement("SELECT id, pan FROM cards ORDER BY 1", SCHEMA).literal_dependent
    assert not rewrite_statement("SELECT id, pan FROM cards ORDER BY id", SCHEMA
                                 ).literal_dependent


def test_the_query_of_a_copy_is_rewritten_in_place() -> None:
    from adapters.postgres.bridge import PolicyBridge

    sql = ("COPY /* (SELECT pan FROM cards) */ ( SELECT id, pan FROM cards WHERE pan > '3' ) "
           "TO STDOUT")
    copy = parse_copy(sql)
    assert copy is not None
    got = PolicyBridge._copy_rewrite(sql, copy, SCHEMA)
    assert got == sql.replace("WHERE pan", f"WHERE {masked('pan')}")
    to_file = "COPY (SELECT pan FROM cards) TO '/tmp/x'"
    copy = parse_copy(to_file)
    assert copy is not None
    assert PolicyBridge._copy_rewrite(to_file, copy, SCHEMA) == (
        f"COPY (SELECT {masked('pan')} AS \"pan\" FROM cards) TO '/tmp/x'")


@pytest.mark.parametrize(("sql", "reason"), [
    ("SELECT c::text FROM cards c", "whole-row reference c"),
    ("SELECT 1 FROM cards WHERE cards::text LIKE '%4%'", "whole-row reference cards"),
    ("SELECT row(c.*) FROM cards c", "inside an expression"),
    ("SELECT (c).pan FROM cards c", "whole-row reference c"),
    ("SELECT a FROM cards AS c(a, b)", "column aliases"),
    ("SELECT 1 FROM cards JOIN holders USING (pan)", "USING (pan)"),
    ("SELECT 1 FROM cards NATURAL JOIN holders", "NATURAL JOIN"),
    ("CREATE TABLE t AS SELECT * FROM cards JOIN holders USING (id)", "USING or NATURAL"),
    ("EXPLAIN ANALYZE SELECT 1 FROM cards WHERE pan = 'x'", "EXPLAIN"),
    ("CREATE INDEX ON cards ((1/(ascii(pan)-52)))", "masked column pan"),
    ("INSERT INTO cards (id, pan) VALUES (1, 'x') ON CONFLICT (pan) DO NOTHING", "ON CONFLICT"),
    ("MERGE INTO holders h USING cards c ON c.pan = h.name WHEN MATCHED THEN DELETE",
     "masked column pan"),
    ("DECLARE c CURSOR FOR SELECT 1; SELECT pan FROM cards", "cannot be read with certainty"),
    ("SELECT 1 FROM cards WHERE pan = ", "cannot be parsed"),
    ('SELECT 1 FROM cards WHERE U&"p\\0061n" LIKE \'4%\'', "Unicode escapes"),
    ("SELECT 1; PREPARE x AS SELECT 1 FROM cards c WHERE c::text LIKE '%4%'", "on its own"),
    ("DO $$BEGIN PERFORM 1 FROM cards; END$$", "DO statement"),
    ("CREATE TABLE t AS TABLE cards", "position"),
    ("INSERT INTO cards (id, pan) VALUES (3, '4111')", "masked column pan of cards would be"),
    ("INSERT INTO cards VALUES (3, '4111')", "an INSERT without a column list"),
    ("UPDATE cards SET pan = pan || '' WHERE id = 1", "masked column pan of cards would be"),
    ("UPDATE cards c SET (holder_id, cvv) = (1, '2') WHERE id = 1", "masked column cvv"),
    ("INSERT INTO cards (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET pan = excluded.pan",
     "masked column pan of cards would be"),
    ("WITH x AS (INSERT INTO cards (id, pan) VALUES (1, '4') RETURNING 1) SELECT * FROM x",
     "masked column pan of cards would be"),
    ("MERGE INTO cards c USING holders h ON h.id = c.id WHEN NOT MATCHED THEN INSERT VALUES "
     "(h.id, '4')", "an INSERT without a column list"),
])
def test_what_cannot_be_rewritten_with_certainty_is_denied(sql: str, reason: str) -> None:
    with pytest.raises(MaskUseDenied, match=reason.replace("(", r"\(").replace(")", r"\)")):
        rewrite_statement(sql, SCHEMA)


def test_a_method_without_sql_form_is_denied_outside_the_result() -> None:
    hashed = MaskedColumn("hash", True)
    schema = MaskedSchema({"pan": hashed}, {"cards": (SourceTable((("pan", hashed),)),)},
                          frozenset({"pan"}))
    assert rewrite_statement("SELECT pan FROM cards", schema).text is None
    with pytest.raises(MaskUseDenied, match="masked column pan is used outside the result"):
        rewrite_statement("SELECT 1 FROM cards WHERE pan = 'x'", schema)


def test_the_rewritten_text_holds_the_mask_expression() -> None:
    text = rewrite_statement("SELECT id FROM cards WHERE pan LIKE '4%' OR cvv = '1'", SCHEMA).text
    assert text is not None
    assert mask_sql("pan", "(pan)::pg_catalog.text") in text
