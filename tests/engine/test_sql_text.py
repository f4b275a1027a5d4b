"""`sql_text`: the SQL of a sqlglot tree as `Expr.sql` writes it, without the 56 bytes the
compiled sqlglot leaks for every Generator it builds (one per `Expr.sql` call), and the
callers that print trees per statement (facts of a Command, the proxy's lineage trace) use it.

Memory is measured with tracemalloc (bytes still allocated after many calls of one statement,
so no cache grows), never with time."""

from __future__ import annotations

import gc
import threading
import tracemalloc
from collections.abc import Callable

import pytest
import sqlglot

from adapters.postgres.column_masks import _trace_statement, trace_statement
from engine.facts.sql import parse_sql, sql_text

STATEMENTS = [
    "SELECT id AS c1, holder FROM cards WHERE id = 1",
    "WITH x AS (SELECT 1 AS a) SELECT * FROM x",
    "UPDATE t SET a = 1 WHERE b IN (SELECT c FROM u)",
    "SELECT 'a b', CAST(x AS TEXT) FROM t ORDER BY 1 LIMIT 3",
    "SELECT a FROM t QUALIFY ROW_NUMBER() OVER (PARTITION BY b) = 1",
]
CALLS = 4000
MAX_BYTES_PER_CALL = 8  # a Generator built per call keeps 56


def retained_per_call(fn: Callable[[], object]) -> float:
    """Bytes still allocated per call, over calls after the first 2000 traced ones: by then
    the bounded caches that keep churning (`re`'s, sqlglot's strings: ~500 entries each) have
    had their untraced entries replaced by traced ones, so what grows after is kept per call."""
    fn()
    tracemalloc.start()
    try:
        for _ in range(2000):
            fn()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(CALLS):
            fn()
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / CALLS
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("dialect", ["postgres", "mysql", "bigquery", None])
@pytest.mark.parametrize("sql", STATEMENTS)
def test_same_text_as_expr_sql(sql: str, dialect: str | None) -> None:
    tree = sqlglot.parse_one(sql, read=dialect)
    assert sql_text(tree, dialect) == tree.sql(dialect=dialect)
    assert sql_text(tree, dialect) == sql_text(tree, dialect)  # a reused Generator: same text


def test_tree_is_not_changed() -> None:
    tree = sqlglot.parse_one(STATEMENTS[1], read="postgres")
    before = repr(tree)
    sql_text(tree, "postgres")
    assert repr(tree) == before


def test_each_thread_its_own_generator() -> None:
    trees = [sqlglot.parse_one(s, read="postgres") for s in STATEMENTS]
    want = [t.sql(dialect="postgres") for t in trees]
    got: list[list[str]] = []

    def run() -> None:
        got.append([sql_text(t, "postgres") for _ in range(50) for t in trees][-len(trees):])

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == [want] * 4


def test_sql_text_retains_nothing_per_call() -> None:
    tree = sqlglot.parse_one(STATEMENTS[0], read="postgres")
    assert retained_per_call(lambda: sql_text(tree, "postgres")) < MAX_BYTES_PER_CALL


def test_facts_of_a_command_retain_nothing_per_statement() -> None:
    # EXPLAIN is a sqlglot Command: its facts are read from the tree printed back
    assert parse_sql("EXPLAIN SELECT 1", "postgres")["statements"]
    assert retained_per_call(lambda: parse_sql("EXPLAIN SELECT 1", "postgres")
                             ) < MAX_BYTES_PER_CALL


def test_proxy_lineage_trace_retains_nothing_per_statement() -> None:
    # the proxy traces every new statement text (its cache is keyed by text): what one trace
    # keeps grew `ordinance proxy postgres` by the statement (benchmarks/soak_memory.py)
    schema = {"cards": {"id": "INT", "holder": "TEXT"}}
    trace = _trace_statement.__wrapped__  # the trace itself, not its cache
    frozen = tuple(sorted((t, tuple(c.items())) for t, c in schema.items()))
    assert trace_statement(STATEMENTS[0], schema)
    assert retained_per_call(lambda: trace(STATEMENTS[0], frozen)) < MAX_BYTES_PER_CALL
