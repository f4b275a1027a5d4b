"""Masked values where neither the rewrite nor the result masks reach (issue 13, the rest):
objects a DBA made before `alice` came (views, triggers, rules, constraints, defaults,
generated columns, row security policies, composite types), the server's statistics and
activity, and the unique-index oracle of writes. The shipped PCI pack decided in-process, a
real PostgreSQL, psycopg and psql, as `alice` (group `dev`, `pan` masked, `cvv` redacted).

Each attack is first shown to work on the server directly (so the test would fail if the
proxy let it through), then denied through the proxy with a reason naming the object, or
answered on the masked values. An attacker's list of other constructs closes the module:
each either is denied or gives what `alice` sees (the same statement on `cards_seen`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
import pytest

from tests.postgres.masking_stack import (
    CVV,
    PANS,
    SEEN,
    Setup,
    assert_nothing_clear,
    open_masking_stack,
)

pytestmark = pytest.mark.postgres

EXTRA = [
    # views whose definitions compute on pan (a DBA's, made outside the proxy)
    "CREATE VIEW v_plain AS SELECT id, holder, pan FROM cards",
    "CREATE VIEW v_where AS SELECT id, holder FROM cards WHERE pan LIKE '3%'",
    "CREATE VIEW v_bin AS SELECT id, substr(pan, 1, 6) AS bin FROM cards",
    "CREATE VIEW v_error AS SELECT id, 1 / (ascii(pan) - 51) AS x FROM cards",
    "CREATE VIEW v_rows AS SELECT id, generate_series(1, substr(pan, 1, 1)::int) AS n "
    "FROM cards",
    "CREATE VIEW v_join AS SELECT c.id FROM cards c JOIN wallet w ON w.pan = c.pan",
    "CREATE VIEW v_first AS SELECT id FROM cards ORDER BY pan LIMIT 1",
    "CREATE VIEW v_grouped AS SELECT substr(pan, 1, 1) AS d, count(*) AS n FROM cards "
    "GROUP BY 1",
    "CREATE VIEW v_distinct AS SELECT DISTINCT pan FROM cards",
    "CREATE VIEW v_exists AS SELECT id FROM loot WHERE EXISTS (SELECT 1 FROM cards "
    "WHERE pan LIKE '3%')",
    "CREATE VIEW v_over_view AS SELECT id FROM v_plain WHERE pan LIKE '3%'",
    "CREATE VIEW v_over_where AS SELECT id, holder FROM v_where",
    "CREATE MATERIALIZED VIEW mv_where AS SELECT id, holder FROM cards WHERE pan LIKE '3%'",
    "CREATE MATERIALIZED VIEW mv_plain AS SELECT id, pan FROM cards",
    "CREATE VIEW v_stats AS SELECT tablename, histogram_bounds::text AS h FROM pg_stats",
    "CREATE VIEW v_activity AS SELECT pid, query FROM pg_stat_activity",
    "CREATE VIEW v_activity_function AS SELECT pid, query FROM pg_stat_get_activity(NULL)",
    # code attached to tables
    "CREATE TABLE card_audit (id serial PRIMARY KEY, row_data jsonb)",
    "CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN "
    "INSERT INTO card_audit(row_data) VALUES (to_jsonb(OLD)); RETURN NEW; END$$",
    "CREATE TABLE audited (id int PRIMARY KEY, holder text, pan text)",
    f"INSERT INTO audited VALUES (1, 'holder 1', '{PANS[1]}')",
    "CREATE TRIGGER audited_update AFTER UPDATE OR DELETE ON audited FOR EACH ROW "
    "EXECUTE FUNCTION audit_row()",
    "CREATE VIEW v_audited AS SELECT id, holder FROM audited",
    "CREATE TABLE ruled (id serial PRIMARY KEY, note text)",
    "CREATE RULE ruled_log AS ON INSERT TO ruled DO ALSO INSERT INTO card_audit(row_data) "
    "SELECT to_jsonb(c) FROM cards c",
    "ALTER TABLE wallet ADD CONSTRAINT wallet_pan_key UNIQUE (pan)",
    "CREATE TABLE payments (id int PRIMARY KEY, amount int, card_pan text "
    "REFERENCES wallet(pan))",
    "INSERT INTO payments VALUES (1, 10, NULL)",
    f"INSERT INTO payments VALUES (2, 20, '{PANS[1]}')",
    "CREATE TABLE checked (id int PRIMARY KEY, holder text, pan text, "
    "CONSTRAINT holder_not_bin CHECK (holder IS DISTINCT FROM substr(pan, 1, 4)))",
    f"INSERT INTO checked VALUES (1, 'holder 1', '{PANS[1]}')",
    "CREATE TABLE unvalidated (id int PRIMARY KEY, holder text, pan text)",
    f"INSERT INTO unvalidated VALUES (1, 'holder 1', '{PANS[1]}')",
    "ALTER TABLE unvalidated ADD CONSTRAINT no_3 CHECK (pan NOT LIKE '3%') NOT VALID",
    "CREATE TABLE plain_check (id int PRIMARY KEY, holder text, pan text "
    "CHECK (length(pan) >= 13))",
    f"INSERT INTO plain_check VALUES (1, 'holder 1', '{PANS[1]}')",
    "CREATE TABLE generated (id int PRIMARY KEY, pan text, "
    "first6 text GENERATED ALWAYS AS (substr(pan, 1, 6)) STORED)",
    f"INSERT INTO generated (id, pan) VALUES (1, '{PANS[1]}')",
    "CREATE TABLE defaulted (id int PRIMARY KEY, note text DEFAULT get_pan(1))",
    "CREATE TYPE card_t AS (pan text, cvv text)",
    "CREATE TABLE orders (id int PRIMARY KEY, card card_t, rows_of_cards cards[])",
    f"INSERT INTO orders VALUES (1, ROW('{PANS[1]}', '{CVV[1]}'), "
    "ARRAY(SELECT c FROM cards c WHERE id = 1))",
    "CREATE TABLE parent_t (id int PRIMARY KEY, note text)",
    "CREATE TABLE child_t () INHERITS (parent_t)",
    "INSERT INTO child_t VALUES (1, 'c')",
    "CREATE TRIGGER child_audit AFTER UPDATE ON child_t FOR EACH ROW "
    "EXECUTE FUNCTION audit_row()",
    "CREATE TABLE pairs (id int PRIMARY KEY, holder text, pan text, UNIQUE (holder, pan))",
    f"INSERT INTO pairs VALUES (1, 'a', '{PANS[1]}'), (2, 'b', '{PANS[1]}')",
    "CREATE FUNCTION is_stored(text) RETURNS bool LANGUAGE sql IMMUTABLE AS "
    "'SELECT EXISTS (SELECT 1 FROM public.cards WHERE pan = $1)'",
    "CREATE DOMAIN unknown_card AS text CHECK (NOT is_stored(VALUE))",
    "CREATE TABLE guesses (id int PRIMARY KEY, guess unknown_card)",
    "CREATE TABLE indexed (id int PRIMARY KEY, note text)",
    "CREATE UNIQUE INDEX indexed_stored ON indexed (id) WHERE is_stored(note)",
    "CREATE TABLE accounts (id int PRIMARY KEY, pan text)",
    f"INSERT INTO accounts VALUES (1, '{PANS[1]}')",
    "CREATE TABLE account_notes (id int PRIMARY KEY, account_id int REFERENCES accounts (id) "
    "ON DELETE CASCADE, note text)",
    "INSERT INTO account_notes VALUES (1, 1, 'n')",
    "CREATE TRIGGER account_notes_audit AFTER DELETE ON account_notes FOR EACH ROW "
    "EXECUTE FUNCTION audit_row()",
    "CREATE TABLE items (id int PRIMARY KEY, label text)",
    "INSERT INTO items VALUES (1, 'one')",
    "ANALYZE cards",
]


@pytest.fixture(scope="module")
def setup(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with open_masking_stack(pg_dsn, tmp_path_factory.mktemp("unseen"), EXTRA) as stack:
        yield stack


def denied(setup: Setup, sql: str, reason: str, *, psql: bool = True) -> None:
    with setup.connect() as conn, pytest.raises(psycopg.Error) as exc:
        conn.execute(sql)
    assert exc.value.sqlstate == "42501", exc.value
    assert reason in str(exc.value), exc.value
    assert_nothing_clear(str(exc.value), set())
    if psql:
        out = setup.psql(sql)
        assert "permission denied by policy" in out.stderr and reason in out.stderr, out


# ------------------------------------------------------------------------------------------
# 1. Views made outside the proxy that compute on a masked column


@pytest.mark.parametrize(("sql", "clear"), [
    ("SELECT id, holder FROM v_where", [(1, "holder 1")]),
    ("SELECT count(*) FROM v_where", [(1,)]),
    ("SELECT bin FROM v_bin WHERE id = 1", [(PANS[1][:6],)]),
    ("SELECT id FROM v_error WHERE id = 2", None),  # (the error is the answer)
    ("SELECT count(*) FROM v_rows", [(7,)]),  # 3 + 4 rows: the first digits
    ("SELECT count(*) FROM v_join", [(2,)]),
    ("SELECT id FROM v_first", [(1,)]),  # masked order would give 2
    ("SELECT n FROM v_grouped ORDER BY 1", [(1,), (1,)]),
    ("SELECT count(*) FROM v_distinct", [(2,)]),
    ("SELECT count(*) FROM v_exists", [(0,)]),
    ("SELECT id FROM v_over_view", [(1,)]),
    ("SELECT id, holder FROM v_over_where", [(1, "holder 1")]),
    ("SELECT id, holder FROM mv_where", [(1, "holder 1")]),
    ("SELECT count(*) FROM loot l JOIN v_where w ON w.id = l.id", [(0,)]),
    ("SELECT (SELECT count(*) FROM v_where)", [(1,)]),
    ("WITH w AS (SELECT * FROM public.v_where) SELECT count(*) FROM w", [(1,)]),
    ('SELECT count(*) FROM "V_WHERE"', None),  # (names are matched in any case: denied)
])
def test_views_computing_on_masked_columns_are_denied(setup: Setup, sql: str,
                                                      clear: list[tuple[object, ...]] | None
                                                      ) -> None:
    if clear is not None:
        assert setup.clear(sql) == clear  # the view answers on the clear values
    with setup.connect() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
        conn.execute(sql)
    message = str(exc.value)
    assert "cannot be read by a session with masks" in message
    assert "masked column pan" in message or "pan" in message, message
    assert " view public." in message, message
    out = setup.psql(sql)
    assert "cannot be read by a session with masks" in out.stderr


def test_views_and_materialized_views_passing_masked_columns_through_are_masked(
        setup: Setup) -> None:
    with setup.connect() as conn:
        assert conn.execute("SELECT id, holder, pan FROM v_plain ORDER BY id").fetchall() == [
            (1, "holder 1", SEEN[1]), (2, "holder 2", SEEN[2])]
        assert conn.execute("SELECT count(*) FROM v_plain WHERE pan LIKE '3%'").fetchall(
            ) == [(0,)]
        assert conn.execute("SELECT id, pan FROM mv_plain ORDER BY pan").fetchall() == [
            (2, SEEN[2]), (1, SEEN[1])]
    out = setup.psql("SELECT pan FROM v_plain WHERE id = 1")
    assert out.stdout.split() == [SEEN[1]], out.stderr


# ------------------------------------------------------------------------------------------
# 2. Statistics and other sessions' statement texts


@pytest.mark.parametrize(("sql", "reason"), [
    ("SELECT histogram_bounds::text FROM pg_stats WHERE tablename = 'cards'", "pg_stats"),
    ("SELECT most_common_vals::text FROM pg_catalog.pg_stats", "pg_stats"),
    ('SELECT count(*) FROM "pg_catalog"."pg_stats"', "pg_stats"),
    ("SELECT count(*) FROM PG_CATALOG.PG_STATS", "pg_stats"),
    ("SELECT count(*) FROM pg_statistic", "pg_statistic"),
    ("SELECT count(*) FROM pg_stats_ext", "pg_stats_ext"),
    ("SELECT count(*) FROM pg_stats_ext_exprs", "pg_stats_ext_exprs"),
    ("SELECT count(*) FROM pg_statistic_ext_data", "pg_statistic_ext_data"),
    ("SELECT h FROM v_stats", "pg_stats"),
    ("SELECT query FROM pg_stat_activity", "pg_stat_activity"),
    ("SELECT query FROM v_activity", "pg_stat_activity"),
    ("SELECT count(*) FROM (SELECT 1 FROM pg_stat_activity) s", "pg_stat_activity"),
    ("SELECT pg_stat_get_backend_activity(1)", "pg_stat_get_backend_activity"),
    ("SELECT query FROM pg_stat_get_activity(NULL)", "pg_stat_get_activity"),
    ("SELECT count(*) FROM pg_largeobject", "pg_largeobject"),
    ("SELECT lo_get(1)", "lo_get"),
])
def test_statistics_and_statement_texts_are_denied(setup: Setup, sql: str, reason: str) -> None:
    denied(setup, sql, reason)


def test_system_views_without_values_stay_readable(setup: Setup) -> None:
    """pg_stat_ssl is built on pg_stat_get_activity, but shows no statement text."""
    with setup.connect() as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                            ).fetchall() == [(False,)]
        assert conn.execute("SELECT count(*) > 0 FROM pg_stat_user_tables").fetchall() == [
            (True,)]
    denied(setup, "SELECT count(*) FROM v_activity_function", "function pg_stat_get_activity")


def test_the_statistics_hold_the_clear_values(setup: Setup) -> None:
    """What the denial above keeps from alice (ANALYZE ran on cards)."""
    (bounds,) = setup.clear("SELECT histogram_bounds::text FROM pg_stats WHERE tablename = "
                            "'cards' AND attname = 'pan'")[0]
    assert PANS[1] in bounds


def test_own_prepared_statements_and_cursors_show_only_what_ran(setup: Setup) -> None:
    """pg_prepared_statements and pg_cursors show this session's own texts, as they ran:
    rewritten to the masked values."""
    with setup.connect() as conn:
        conn.execute("PREPARE probe AS SELECT count(*) FROM cards WHERE pan LIKE '3%'")
        with conn.transaction():
            conn.execute("DECLARE c CURSOR FOR SELECT id FROM cards WHERE pan LIKE '4%'")
            texts = conn.execute("SELECT statement FROM pg_cursors UNION ALL "
                                 "SELECT statement FROM pg_prepared_statements").fetchall()
    joined = " ".join(t for (t,) in texts)
    assert "pg_catalog.right" in joined and "probe" in joined
    assert_nothing_clear(joined, set())


# ------------------------------------------------------------------------------------------
# 3. The unique-index oracle: a session with masks may not write a masked column


def test_the_unique_index_oracle_exists_on_the_server(setup: Setup) -> None:
    with psycopg.connect(setup.direct, autocommit=True) as conn, pytest.raises(
            psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO wallet (id, pan) VALUES (9, %s)", (PANS[1],))


@pytest.mark.parametrize("sql", [
    f"INSERT INTO wallet (id, pan) VALUES (9, '{PANS[1]}')",
    f"INSERT INTO wallet VALUES (9, '{PANS[1]}')",
    f"INSERT INTO wallet (id, pan) VALUES (9, '{PANS[1]}') ON CONFLICT (id) DO NOTHING",
    f"INSERT INTO wallet (id, pan) VALUES (9, '{PANS[1]}') ON CONFLICT DO NOTHING",
    f"INSERT INTO wallet (id, pan) SELECT 9, '{PANS[1]}' WHERE true",
    f"INSERT INTO wallet (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET pan = '{PANS[1]}'",
    f"UPDATE wallet SET pan = '{PANS[2]}' WHERE id = 1",
    "UPDATE wallet SET pan = pan WHERE id = 1",
    f"UPDATE wallet SET (id, pan) = (1, '{PANS[2]}') WHERE id = 1",
    f"UPDATE wallet w SET pan = s.p FROM (SELECT '{PANS[2]}' AS p) s WHERE w.id = 1",
    f"WITH x AS (UPDATE wallet SET pan = '{PANS[2]}' WHERE id = 1 RETURNING 1) "
    "SELECT count(*) FROM x",
    f"WITH x AS (INSERT INTO wallet (id, pan) VALUES (9, '{PANS[1]}') ON CONFLICT DO NOTHING "
    "RETURNING 1) SELECT count(*) FROM x",
    f"WITH x AS (INSERT INTO wallet VALUES (9, '{PANS[1]}') RETURNING id) "
    "INSERT INTO items (id, label) SELECT id, 'x' FROM x",
    f"INSERT INTO v_plain (id, holder, pan) VALUES (9, 'x', '{PANS[1]}')",
    f"UPDATE public.WALLET SET \"pan\" = '{PANS[2]}' WHERE id = 1",
])
def test_writes_of_masked_columns_are_denied(setup: Setup, sql: str) -> None:
    denied(setup, sql, "would be written")


@pytest.mark.parametrize(("sql", "reason"), [
    (f"MERGE INTO wallet w USING (SELECT 9 AS id) s ON w.id = s.id WHEN NOT MATCHED THEN "
     f"INSERT VALUES (9, '{PANS[1]}')", "would be written"),
    (f"MERGE INTO wallet w USING (SELECT 9 AS id) s ON w.id = s.id WHEN NOT MATCHED THEN "
     f"INSERT (id, pan) VALUES (9, '{PANS[1]}')", "masked column pan"),
    (f"MERGE INTO wallet w USING (SELECT '{PANS[1]}' AS p) s ON w.pan = s.p WHEN MATCHED "
     "THEN UPDATE SET id = w.id", "masked column pan"),
    (f"MERGE INTO items i USING wallet w ON w.id = i.id AND w.pan = '{PANS[1]}' WHEN MATCHED "
     "THEN UPDATE SET label = 'hit'", "masked column pan"),
])
def test_merge_naming_or_writing_a_masked_column_is_denied(setup: Setup, sql: str,
                                                           reason: str) -> None:
    denied(setup, sql, reason)


def test_copy_from_into_masked_columns_is_denied(setup: Setup) -> None:
    with setup.connect() as conn:
        for sql in ("COPY wallet (id, pan) FROM STDIN", "COPY wallet FROM STDIN",
                    "copy public.wallet(pan, id) from stdin (format csv)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="would be written"
                               ), conn.cursor().copy(sql) as copy:
                copy.write(f"9\t{PANS[1]}\n")
        with conn.cursor().copy("COPY items (id, label) FROM STDIN") as copy:
            copy.write("5\tfive\n")
        assert conn.execute("SELECT label FROM items WHERE id = 5").fetchone() == ("five",)


def test_writes_that_leave_masked_columns_alone_still_work(setup: Setup) -> None:
    with setup.connect() as conn:
        conn.execute("INSERT INTO wallet (id) VALUES (20)")
        assert conn.execute("UPDATE wallet SET id = 21 WHERE id = 20 AND pan IS NULL "
                            "RETURNING id, pan").fetchall() == [(21, None)]
        assert conn.execute("DELETE FROM wallet WHERE id = 21 AND pan IS NULL").rowcount == 1
        assert conn.execute("UPDATE plain_check SET holder = 'x' WHERE id = 1").rowcount == 1
        assert conn.execute("UPDATE payments SET amount = 11 WHERE id = 1").rowcount == 1
        assert conn.execute("DELETE FROM payments WHERE id = 99").rowcount == 0


# ------------------------------------------------------------------------------------------
# 4. Code the server runs with the rows: triggers, rules, constraints, defaults


def test_a_trigger_copying_rows_to_a_readable_table_is_not_fired(setup: Setup) -> None:
    """The DBA's audit trigger copies the clear row into card_audit (jsonb: no mask names
    it), which alice may read: so a session with masks may not fire it."""
    with psycopg.connect(setup.direct) as conn:  # the attack, directly (rolled back)
        conn.execute("UPDATE audited SET holder = holder WHERE id = 1")
        (copied,) = conn.execute("SELECT row_data::text FROM card_audit").fetchone()
        conn.rollback()
    assert PANS[1] in copied
    for sql in ("UPDATE audited SET holder = 'x' WHERE id = 1",
                "DELETE FROM audited WHERE id = 1",
                "WITH d AS (DELETE FROM audited WHERE id = 1 RETURNING id) "
                "SELECT count(*) FROM d",
                "MERGE INTO audited a USING (SELECT 1 AS id) s ON a.id = s.id WHEN MATCHED "
                "THEN UPDATE SET holder = 'x'",
                "UPDATE v_audited SET holder = 'x' WHERE id = 1",
                "UPDATE public.AUDITED SET holder = 'x' WHERE id = 1",
                "UPDATE ONLY audited SET holder = 'x' WHERE id = 1"):
        denied(setup, sql, "trigger audited_update on public.audited runs on")
    denied(setup, "INSERT INTO audited (id, holder) VALUES (1, 'x') ON CONFLICT (id) DO "
                  "UPDATE SET holder = excluded.holder", "trigger audited_update")
    with setup.connect() as conn:  # INSERT fires no trigger of it, and is allowed
        conn.execute("INSERT INTO audited (id, holder) VALUES (2, 'new')")
        conn.execute("INSERT INTO audited (id, holder) VALUES (2, 'new') ON CONFLICT DO NOTHING")
        assert conn.execute("SELECT count(*) FROM card_audit").fetchone() == (0,)


def test_a_rule_reading_cards_is_not_fired(setup: Setup) -> None:
    denied(setup, "INSERT INTO ruled (note) VALUES ('x')", "rule ruled_log on public.ruled")
    with setup.connect() as conn:
        assert conn.execute("SELECT count(*) FROM card_audit").fetchone() == (0,)


def test_a_foreign_key_to_a_masked_column_is_no_oracle(setup: Setup) -> None:
    with psycopg.connect(setup.direct) as conn, pytest.raises(
            psycopg.errors.ForeignKeyViolation):  # a guess that is not stored
        conn.execute("INSERT INTO payments VALUES (9, 1, '3000000000000003')")
    for sql in (f"INSERT INTO payments (id, amount, card_pan) VALUES (9, 1, '{PANS[1]}')",
                f"UPDATE payments SET card_pan = '{PANS[1]}' WHERE id = 1"):
        denied(setup, sql, "foreign key payments_card_pan_fkey on public.payments references "
                           "masked column wallet.pan")


@pytest.mark.parametrize(("table", "reason"), [
    ("checked", "CHECK constraint holder_not_bin on public.checked reads masked column "
                "checked.pan"),
    ("unvalidated", "CHECK constraint no_3 on public.unvalidated reads masked column"),
    ("generated", "generated column first6 on public.generated computes from masked column"),
])
def test_constraints_and_generated_columns_are_no_error_oracle(setup: Setup, table: str,
                                                               reason: str) -> None:
    column = "id" if table == "generated" else "holder"
    value = "1" if table == "generated" else "'3000'"
    sql = f"UPDATE {table} SET {column} = {value} WHERE id = 1"
    if table != "generated":
        with psycopg.connect(setup.direct) as conn, pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(sql)  # the error answers on the clear value
    denied(setup, sql, reason)


def test_a_default_calling_a_defined_function_is_not_run(setup: Setup) -> None:
    denied(setup, "INSERT INTO defaulted (id) VALUES (1)",
           "the DEFAULT of column note on public.defaulted calls function get_pan")


def test_domain_checks_and_indexes_calling_defined_functions_are_not_run(setup: Setup) -> None:
    with psycopg.connect(setup.direct) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO guesses VALUES (1, %s)", (PANS[1],))  # the oracle
    denied(setup, f"INSERT INTO guesses (id, guess) VALUES (1, '{PANS[1]}')",
           "domain CHECK constraint unknown_card_check on public.guesses calls function "
           "is_stored")
    denied(setup, f"INSERT INTO indexed (id, note) VALUES (1, '{PANS[1]}')",
           "index indexed_stored on public.indexed calls function is_stored")


def test_an_inheritance_child_s_trigger_fires_through_its_parent(setup: Setup) -> None:
    denied(setup, "UPDATE parent_t SET note = 'x' WHERE id = 1",
           "trigger child_t.child_audit on public.parent_t runs on UPDATE")


def test_a_cascading_foreign_key_fires_the_referencing_table_s_triggers(setup: Setup) -> None:
    denied(setup, "DELETE FROM accounts WHERE id = 1",
           "trigger account_notes.account_notes_audit on public.accounts runs on DELETE")
    with setup.connect() as conn:  # what cascades nowhere with triggers stays allowed
        assert conn.execute("UPDATE accounts SET id = id WHERE id = 2").rowcount == 0


def test_a_unique_index_over_a_masked_column_and_another_is_no_oracle(setup: Setup) -> None:
    with psycopg.connect(setup.direct) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("UPDATE pairs SET holder = 'a' WHERE id = 2")  # rows 1 and 2 share a pan
    denied(setup, "UPDATE pairs SET holder = 'a' WHERE id = 2",
           "index pairs_holder_pan_key on public.pairs is unique over masked column pan")
    with setup.connect() as conn:
        assert conn.execute("UPDATE pairs SET id = 3 WHERE id = 2").rowcount == 1


def test_a_foreign_key_error_on_delete_withholds_the_masked_key(setup: Setup) -> None:
    with setup.connect() as conn, pytest.raises(psycopg.errors.ForeignKeyViolation) as exc:
        conn.execute("DELETE FROM wallet WHERE id = 1")
    text = f"{exc.value} {exc.value.diag.message_detail}"
    assert_nothing_clear(text, set())


def test_generated_columns_of_masked_columns_are_masked(setup: Setup) -> None:
    assert setup.clear("SELECT first6 FROM generated") == [(PANS[1][:6],)]
    with setup.connect() as conn:
        assert conn.execute("SELECT first6, pan FROM generated").fetchall() == [
            ("[REDACTED]", SEEN[1])]
        assert conn.execute("SELECT count(*) FROM generated WHERE first6 LIKE '3%'"
                            ).fetchall() == [(0,)]


def test_composite_values_holding_masked_fields_are_withheld(setup: Setup) -> None:
    assert PANS[1] in setup.clear("SELECT card::text FROM orders")[0][0]
    with setup.connect() as conn:
        assert conn.execute("SELECT id, card, rows_of_cards FROM orders").fetchall() == [
            (1, None, None)]
        for sql in ("SELECT count(*) FROM orders WHERE (card).pan LIKE '3%'",
                    "SELECT count(*) FROM orders WHERE card::text LIKE '%3000%'",
                    "SELECT count(*) FROM orders WHERE rows_of_cards[1]::text LIKE '%3000%'",
                    "SELECT count(*) FROM orders WHERE (rows_of_cards[1]).cvv = '123'"):
            with contextlib.suppress(psycopg.errors.InsufficientPrivilege):  # (or denied)
                assert conn.execute(sql).fetchall() == [(0,)], sql
        (text,) = conn.execute("SELECT card::text FROM orders").fetchone()
    assert text is None


def test_a_write_to_a_table_without_attached_code_is_not_denied(setup: Setup) -> None:
    with setup.connect() as conn:
        conn.execute("INSERT INTO items (id, label) VALUES (2, 'two')")
        assert conn.execute("UPDATE items SET label = 'deux' WHERE id = 2").rowcount == 1


# ------------------------------------------------------------------------------------------
# Row security policies apply to a proxy role that is no superuser and owns no table

POLICY_SCHEMA = [
    "CREATE TABLE guarded (id int PRIMARY KEY, note text)",
    f"INSERT INTO guarded VALUES (1, '{PANS[1]}'), (2, 'not a card')",
    "ALTER TABLE guarded ENABLE ROW LEVEL SECURITY",
    "CREATE POLICY guess ON guarded USING (EXISTS (SELECT 1 FROM cards c "
    "WHERE c.pan = guarded.note))",
    "CREATE TABLE fenced (id int PRIMARY KEY, note text)",
    "INSERT INTO fenced VALUES (1, 'a'), (2, 'b')",
    "ALTER TABLE fenced ENABLE ROW LEVEL SECURITY",
    "CREATE POLICY small ON fenced USING (id < 2)",
]


@pytest.fixture(scope="module")
def least(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with open_masking_stack(pg_dsn, tmp_path_factory.mktemp("rls"), POLICY_SCHEMA,
                            least_privilege=True) as stack:
        yield stack


def test_a_row_security_policy_reading_masked_columns_is_denied(least: Setup) -> None:
    """The policy shows a row of `guarded` only when its note is a stored card number:
    alice could write guesses there and read which come back."""
    denied(least, "SELECT count(*) FROM guarded", "row security policy guess on "
                                                  "public.guarded is in force and reads "
                                                  "masked column cards.pan")
    denied(least, "UPDATE guarded SET note = 'x' WHERE id = 2", "row security policy guess")
    with least.connect() as conn:  # a policy on other columns applies, and is allowed
        assert conn.execute("SELECT id FROM fenced").fetchall() == [(1,)]
        assert conn.execute("SELECT pan FROM cards WHERE id = 1").fetchall() == [(SEEN[1],)]


# ------------------------------------------------------------------------------------------
# 5. An attacker's list: each is denied or answers on what alice sees

SAME_AS_SEEN = [
    "SELECT id, lag(pan) OVER (ORDER BY id) FROM cards WHERE id > 0 ORDER BY id",
    "SELECT id, first_value(pan) OVER (ORDER BY pan) FROM cards WHERE id > 0 ORDER BY id",
    "SELECT DISTINCT ON (pan) id FROM cards WHERE id > 0 ORDER BY pan",
    "SELECT count(*) FROM cards TABLESAMPLE BERNOULLI (100) WHERE pan LIKE '3%'",
    "SELECT substr(pan, 1, 1) AS d, count(*) FROM cards WHERE id > 0 "
    "GROUP BY GROUPING SETS ((substr(pan, 1, 1)), ()) ORDER BY 1 NULLS FIRST",
    "SELECT substr(pan, 1, 2), count(*) FROM cards WHERE id > 0 GROUP BY ROLLUP (1) "
    "ORDER BY 1 NULLS FIRST",
    "SELECT format('%I', pan) FROM cards WHERE id = 1",
    "SELECT format('%s-%L', pan, cvv) FROM cards WHERE id = 1",
    "SELECT (SELECT pan) FROM cards WHERE id = 1",
    "SELECT ARRAY[pan, cvv] FROM cards WHERE id = 1",
    "SELECT ROW(pan, holder)::text FROM cards WHERE id = 1",
    "SELECT to_jsonb(pan) FROM cards WHERE id = 1",
    "SELECT jsonb_build_object('p', pan)::text FROM cards WHERE id = 1",
    "SELECT count(*) FROM cards WHERE id > 0 AND pan = ANY (ARRAY['3000000000000002'])",
    "SELECT count(*) FROM cards a, LATERAL (SELECT a.pan LIKE '3%' AS hit) l "
    "WHERE a.id > 0 AND l.hit",
    "SELECT * FROM cards WHERE id = 1 FOR UPDATE",
    "TABLE cards",
    "SELECT pan FROM ONLY cards WHERE id = 1",
    "SELECT count(*) FROM (VALUES (1)) v(x) WHERE EXISTS (SELECT 1 FROM cards "
    "WHERE pan LIKE '3%')",
    "SELECT string_agg(pan, ',' ORDER BY pan) FROM cards WHERE id > 0",
    "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY pan) FROM cards WHERE id > 0",
    "SELECT pan FROM cards WHERE id > 0 ORDER BY pan COLLATE \"C\" LIMIT 1",
    "SELECT max(pan) FROM cards WHERE id > 0",
    "SELECT md5(pan) = md5('3000000000000002') FROM cards WHERE id = 1",
    "SELECT encode(sha256(convert_to(pan, 'UTF8')), 'hex') FROM cards WHERE id = 1",
    "SELECT pan::bytea FROM cards WHERE id = 1",
    "SELECT octet_length(pan), bit_length(pan) FROM cards WHERE id = 1",
    "SELECT regexp_replace(pan, '(.)', '\\1 ', 'g') FROM cards WHERE id = 1",
    "SELECT count(*) FROM cards WHERE id > 0 AND pan SIMILAR TO '3%'",
    "SELECT count(*) FROM cards WHERE id > 0 AND to_tsvector(pan) @@ to_tsquery('3000')",
    "SELECT count(*) FROM cards WHERE id > 0 AND starts_with(pan, '3')",
    "SELECT id FROM cards WHERE id > 0 AND pan IS NOT NULL ORDER BY pan NULLS LAST",
    "SELECT count(*) FROM cards WHERE id > 0 GROUP BY CUBE (substr(pan, 1, 1))",
    "SELECT count(*) FILTER (WHERE pan > '3') OVER () FROM cards WHERE id = 1",
]


@pytest.mark.parametrize("sql", SAME_AS_SEEN)
def test_attacker_constructs_answer_on_the_masked_values(setup: Setup, sql: str) -> None:
    expected = setup.seen(sql)
    with setup.connect() as conn:
        try:
            got = conn.execute(sql).fetchall()
        except psycopg.errors.InsufficientPrivilege as exc:  # denied: fine, if it says why
            assert "permission denied by policy" in str(exc)
            return
    assert got == expected, sql


@pytest.mark.parametrize("sql", [
    "SELECT c FROM cards c WHERE id = 1",
    "SELECT cards::text FROM cards WHERE id = 1",
    "SELECT to_jsonb(c) FROM cards c WHERE id = 1",
    "SELECT row_to_json(cards) FROM cards WHERE id = 1",
    "SELECT hstore(c) FROM cards c WHERE id = 1",
    "SELECT jsonb_populate_record(NULL::cards, to_jsonb(c)) FROM cards c WHERE id = 1",
    "SELECT (jsonb_each_text(to_jsonb(c))).value FROM cards c WHERE id = 1",
    "SELECT json_agg(c) FROM cards c WHERE id = 1",
    "SELECT x.p FROM cards c, LATERAL (SELECT c.pan AS p) x WHERE c.id = 1",
    "WITH RECURSIVE r(n, s) AS (SELECT 1, (SELECT pan FROM cards WHERE id = 1) UNION ALL "
    "SELECT n + 1, s FROM r WHERE n < 2) SELECT s FROM r",
    "VALUES ((SELECT pan FROM cards WHERE id = 1))",
    "EXPLAIN (VERBOSE) SELECT pan FROM cards WHERE pan = '3000000000000002'",
    "EXPLAIN (ANALYZE, COSTS OFF) SELECT 1 FROM cards WHERE pan LIKE '3%'",
    "COPY (SELECT pan FROM cards) TO PROGRAM 'cat'",
    "DO $$BEGIN RAISE NOTICE '%', (SELECT pan FROM cards WHERE id = 1); END$$",
    "SELECT query_to_xml('select pan from cards', true, false, '')",
    "SELECT * FROM cards NATURAL JOIN wallet",
    "CREATE RULE r AS ON INSERT TO items DO ALSO NOTIFY ch",
    "CREATE TRIGGER t AFTER INSERT ON items FOR EACH ROW EXECUTE FUNCTION audit_row()",
    "SELECT set_config('role', 'postgres', false)",
])
def test_attacker_constructs_are_denied(setup: Setup, sql: str) -> None:
    with setup.connect() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
        conn.execute(sql)
    assert "permission denied by policy" in str(exc.value)
    assert_nothing_clear(str(exc.value), set())


def test_current_query_and_view_definitions_show_no_clear_value(setup: Setup) -> None:
    with setup.connect() as conn:
        (ran,) = conn.execute("SELECT current_query() FROM cards WHERE id = 1 AND "
                              "pan LIKE '%'").fetchone()
        (definition,) = conn.execute("SELECT pg_get_viewdef('v_where')").fetchone()
    assert "pg_catalog.right" in ran
    assert_nothing_clear(ran + definition, set())
    assert "pan" in definition  # (a definition is the DBA's text, not a value)
