"""The enforcement pieces without a server: COPY statements, mask rules, statement tracing and
its denials, value transforms, result rewriting with notices and the scrub precheck, outcomes
held for the audit record, and the group-committing recorder."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from adapters.enforcement.hooks import StatementOutcome, StatementVerdict, WithheldValue
from adapters.enforcement.mask_rules import MaskRules, strongest
from adapters.enforcement.transforms import SCRUB_TEXT, SCRUB_TEXT_BINARY, mask_transform
from adapters.postgres import messages as m
from adapters.postgres.catalog import Column, Relation
from adapters.postgres.column_masks import (
    CatalogView,
    MaskingDenied,
    check_outputs,
    trace_statement,
)
from adapters.postgres.copy_statement import CopySyntaxError, parse_copy
from adapters.postgres.descriptors import CopyLayout
from adapters.postgres.results import CopyOutRewriter, RowRewriter
from adapters.postgres.session import Completion, Session, tag_rows
from engine.audit import AuditWriteError, InvalidAuditEvent
from engine.audit.recorder import AuditRecorder
from engine.decision import Decision, Mask
from tests.postgres.test_session import frame, send

PAN = b"4111111111111111"

# ------------------------------------------------------------------------------------------
# COPY statements


@pytest.mark.parametrize(("sql", "expected"), [
    ("COPY cards TO STDOUT", ("to", "stdout", "cards", None, None, "text", None, False)),
    ("copy public.cards (id, pan) to stdout with (format csv, header, delimiter ';')",
     ("to", "stdout", "public.cards", ("id", "pan"), None, "csv", b";", True)),
    ("COPY cards TO STDOUT WITH CSV HEADER DELIMITER AS '|' QUOTE '''' FORCE QUOTE *",
     ("to", "stdout", "cards", None, None, "csv", b"|", True)),
    ("COPY (SELECT pan FROM cards WHERE note = 'a)') TO STDOUT (FORMAT binary);",
     ("to", "stdout", None, None, "SELECT pan FROM cards WHERE note = 'a)'", None, None,
      False)),
    ("/* x */ COPY cards FROM STDIN", ("from", "stdin", "cards", None, None, "text", None,
                                       False)),
    ("COPY cards TO PROGRAM 'cat'", ("to", "program", "cards", None, None, "text", None,
                                     False)),
    ("COPY \"Cards\" TO STDOUT (DELIMITER E'\\t')",
     ("to", "stdout", "Cards", None, None, "text", b"\t", False)),
])
def test_copy_statements(sql: str, expected: tuple[Any, ...]) -> None:
    copy = parse_copy(sql)
    assert copy is not None
    layout = copy.layout
    assert (copy.direction, copy.target, copy.table, copy.columns, copy.query,
            layout.format if layout else None, layout.delimiter if layout else None,
            layout.header if layout else False) == expected


@pytest.mark.parametrize("sql", [
    "COPY cards TO STDOUT (FORMAT xml)", "COPY cards TO STDOUT (ENCODING 'LATIN1')",
    "COPY cards TO STDOUT (DELIMITER ';;')", "COPY cards TO STDOUT WITH FROB",
    "COPY cards TO STDOUT (HEADER maybe)", "COPY cards", "COPY cards TO STDOUT 'x",
])
def test_copy_statements_that_cannot_be_read_are_refused(sql: str) -> None:
    with pytest.raises(CopySyntaxError):
        parse_copy(sql)


def test_not_a_copy_statement() -> None:
    assert parse_copy("SELECT 1") is None


def test_the_bridge_reads_a_copy_the_facts_could_not_parse() -> None:
    from adapters.postgres.bridge import PolicyBridge

    copy = PolicyBridge._copy("/* x */\n  copy cards TO STDOUT (FORMAT binary)",
                              {"kinds": ["other"], "statements": [{"kind": "other"}]})
    assert copy is not None and copy.binary and copy.table == "cards"
    assert PolicyBridge._copy("SELECT 'copy'", {"kinds": ["select"]}) is None
    with pytest.raises(MaskingDenied):
        PolicyBridge._copy("COPY cards TO STDOUT; SELECT 1", {"kinds": ["copy", "select"]})


# ------------------------------------------------------------------------------------------
# Mask rules, views and statement tracing

CARDS = Relation(1, "public", "cards", "r", (Column(1, "id", 23), Column(2, "pan", 25),
                                             Column(3, "notes", 25)))
VIEW = Relation(2, "public", "v_cards", "v", (Column(1, "id", 23), Column(2, "card", 25)))


def catalog_view() -> CatalogView:
    from adapters.postgres.catalog import ViewColumn

    view = CatalogView({1: CARDS, 2: VIEW})
    view.views[2] = {"id": ViewColumn(((1, "id"),), False, direct=True),
                     "card": ViewColumn(((1, "pan"),), False, direct=True),
                     "up": ViewColumn(((1, "pan"),), False)}  # upper(pan)
    return view


def test_mask_rules_match_bare_table_and_schema_qualified_columns() -> None:
    rules = MaskRules([("pan", "pan"), ("cards.notes", "redact"), ("other.cards.id", "null"),
                       ("public.cards.pan", "redact")])
    assert rules.method("public", "cards", "PAN") == "redact"  # strongest of two rules
    assert rules.method("s", "anything", "pan") == "pan"
    assert rules.method("s", "cards", "notes") == "redact"
    assert rules.method("public", "cards", "id") is None
    assert rules.method("other", "cards", "id") == "null"
    assert strongest(["email", None, "last4", "hash"]) == "hash"


def test_view_columns_get_the_mask_of_what_they_read() -> None:
    rules = MaskRules([("cards.pan", "pan")])
    view = catalog_view()
    assert view.column_method(rules, VIEW, "card") == ("pan", False)
    assert view.column_method(rules, VIEW, "up") == ("redact", False)  # computed
    assert view.column_method(rules, VIEW, "id") == (None, False)
    assert view.column_method(rules, VIEW, "missing") == (None, True)
    assert view.could_mask(rules) and not view.could_mask(MaskRules([("cvv", "redact")]))


SCHEMA = {"cards": {"id": "text", "pan": "text", "notes": "text"}}
RELATIONS = {"cards": CARDS, "public.cards": CARDS, "v_cards": VIEW}


def outputs(sql: str) -> list[str | None] | None:
    masks = check_outputs(trace_statement(sql, SCHEMA), RELATIONS, catalog_view(),
                          MaskRules([("pan", "pan")]))
    return None if masks is None else [mask.method for mask in masks]


def test_computed_columns_are_traced_by_position() -> None:
    # a value computed from a masked column is computed from its masked value (the statement
    # is rewritten, `mask_rewrite`): only columns passed through are masked by the proxy
    assert outputs("SELECT id, substr(pan, 1, 6), notes || pan, lower(notes), pan FROM cards"
                   ) == [None, None, None, None, "pan"]
    assert outputs("SELECT *, lower(pan) FROM cards WHERE id = 7") == [
        None, "pan", None, None]
    assert outputs("UPDATE cards SET notes = 'x' WHERE id = 1 RETURNING upper(pan), id") == [
        None, None]
    assert outputs("SELECT p FROM (SELECT pan AS p FROM cards) s UNION SELECT notes FROM cards"
                   ) == ["pan"]
    assert outputs("SELECT 1") == [None]


@pytest.mark.parametrize("sql", [
    "SELECT row_to_json(c) FROM cards c", "SELECT c::text FROM cards c",
    "SELECT (SELECT pan FROM cards LIMIT 1)", "SELECT nosuch.x FROM cards JOIN nosuch ON true",
    "SELEC pan FROM cards",
])
def test_what_cannot_be_masked_with_certainty_is_denied(sql: str) -> None:
    with pytest.raises(MaskingDenied):
        outputs(sql)


@pytest.mark.parametrize("sql", [
    "DECLARE c CURSOR FOR SELECT lower(pan) FROM cards",
    "PREPARE p AS SELECT pan FROM cards UNION SELECT notes FROM cards",
    "SELECT 1; SELECT upper(pan) FROM cards",
])
def test_computed_columns_without_positions_need_no_mask_of_their_own(sql: str) -> None:
    # (their statements are rewritten to compute them from masked values)
    assert outputs(sql) is None


def test_direct_columns_in_cursors_and_batches_are_left_to_their_table_oids() -> None:
    assert outputs("DECLARE c CURSOR WITH HOLD FOR SELECT id, pan FROM cards") is None
    assert outputs("SELECT pan FROM cards; SELECT lower(notes) FROM cards") is None


# ------------------------------------------------------------------------------------------
# Transforms and rewriting


def test_transforms() -> None:
    assert mask_transform("pan")(PAN) == b"************1111"
    assert mask_transform("redact")(b"123") == b"[REDACTED]"
    assert SCRUB_TEXT(b"card 4111 1111 1111 1111 ok") == b"card **** **** **** 1111 ok"
    plain = b"nothing to see"
    assert SCRUB_TEXT(plain) is plain
    assert SCRUB_TEXT_BINARY.binary_safe and not SCRUB_TEXT.binary_safe


def row(*values: bytes | None) -> bytes:
    return m.DataRow(tuple(values)).encode()[5:]


def test_scrub_only_rows_are_prechecked_and_left_alone() -> None:
    rewriter = RowRewriter([SCRUB_TEXT, None], [0, 0], ["note", "n"])
    assert rewriter.precheck is not None
    body = row(b"hello", b"1")
    assert rewriter.rewrite(body) is body
    assert rewriter.rewrite(row(PAN, b"2")) == row(b"************1111", b"2")


def test_binary_masked_columns_are_null_with_one_notice_and_binary_safe_scrubs_apply() -> None:
    rewriter = RowRewriter([mask_transform("pan"), SCRUB_TEXT_BINARY], [1, 1], ["pan", "note"])
    assert rewriter.take_notices() == [
        'column "pan" is masked by policy and was requested in binary format: its values are '
        "sent as NULL"]
    assert rewriter.precheck is None
    assert rewriter.rewrite(row(PAN, PAN)) == row(None, b"************1111")


def test_withheld_values_become_null_with_a_notice_once() -> None:
    def withhold(value: bytes) -> bytes:
        raise WithheldValue("sent as NULL")

    rewriter = RowRewriter([withhold], [0])
    assert rewriter.rewrite(row(b"1")) == row(None)
    assert rewriter.rewrite(row(b"2")) == row(None)
    assert rewriter.take_notices() == ["sent as NULL"]


def test_copy_chunks_without_card_numbers_pass_untouched() -> None:
    rewriter = CopyOutRewriter([None, SCRUB_TEXT], False, CopyLayout(), 1 << 20)
    chunk = b"1\thello\n2\tworld\n"
    assert rewriter.feed(chunk) is chunk
    assert rewriter.feed(b"3\t" + PAN + b"\n") == b"3\t************1111\n"
    csv = CopyOutRewriter([SCRUB_TEXT], False, CopyLayout(format="csv"), 1 << 20)
    assert csv.feed(b'"a\n') == b""  # a quoted newline: not a record boundary
    assert csv.feed(b'4111111111111111"\n') == b'"a\n************1111"\n'


# ------------------------------------------------------------------------------------------
# Outcomes are held for the record


def test_the_end_of_a_result_is_held_for_the_completion_hook() -> None:
    async def hook(outcome: StatementOutcome) -> None:
        pass

    clock = iter([10.0, 10.25])
    session = Session(clock=lambda: next(clock))
    verdict = StatementVerdict.allow(on_complete=hook)
    send(session, m.Query("INSERT INTO t VALUES (1)"), verdict)
    out: list[bytes] = []
    done = session.server_frame(frame(m.CommandComplete("INSERT 0 1")), out)
    assert out == [] and isinstance(done, Completion)
    assert done.outcome == StatementOutcome("INSERT 0 1", 1, 0.25)
    assert done.frames == [m.CommandComplete("INSERT 0 1").encode()]
    assert session.server_frame(frame(m.ReadyForQuery("I")), out) is None


def test_errors_of_parse_and_execute_are_outcomes_too() -> None:
    async def hook(outcome: StatementOutcome) -> None:
        pass

    session = Session()
    verdict = StatementVerdict.allow(on_complete=hook)
    send(session, m.Parse("", "SELECT nope"), verdict)
    out: list[bytes] = []
    done = session.server_frame(frame(m.ErrorResponse.build("42703", "no such column")), out)
    assert isinstance(done, Completion)
    assert (done.outcome.error_code, done.outcome.error_message) == ("42703", "no such column")


def test_tag_rows() -> None:
    assert [tag_rows(t) for t in ("SELECT 3", "INSERT 0 5", "COPY 2", "CREATE TABLE", "")] == [
        3, 5, 2, None, None]


# ------------------------------------------------------------------------------------------
# The recorder


class FakeAudit:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.fail = False
        self.gate = threading.Event()
        self.entered = threading.Event()

    def append_many(self, events: list[Any]) -> list[Any]:
        self.entered.set()
        self.gate.wait(10)
        if self.fail:
            raise AuditWriteError("disk full")
        self.batches.append(len(events))
        return []


def test_recorder_commits_concurrent_events_together_and_reports_failures() -> None:
    audit = FakeAudit()
    recorder = AuditRecorder(audit).start()  # type: ignore[arg-type]

    async def main() -> None:
        first = asyncio.ensure_future(recorder.append("statement", {"n": 0}))
        await asyncio.to_thread(audit.entered.wait, 10)  # the first commit is running
        rest = [asyncio.ensure_future(recorder.append("statement", {"n": i}))
                for i in range(1, 6)]
        while recorder._queue.qsize() < 5:  # all five queued behind it
            await asyncio.sleep(0.01)
        audit.gate.set()
        await asyncio.gather(first, *rest)
        audit.fail = True
        with pytest.raises(AuditWriteError):
            await recorder.append("statement", {"n": 6})

    asyncio.run(main())
    recorder.close()
    assert audit.batches == [1, 5]


def test_recorder_hands_a_loop_iteration_over_at_once_and_close_commits_it() -> None:
    """Events appended in one pass of the loop reach the writer together (one batch); close()
    commits events that were appended but not handed over yet; later appends are refused."""
    audit = FakeAudit()
    audit.gate.set()
    recorder = AuditRecorder(audit).start()  # type: ignore[arg-type]

    async def main() -> None:
        await asyncio.gather(*(recorder.append("statement", {"n": i}) for i in range(4)))
        assert audit.batches == [4]
        with pytest.raises(InvalidAuditEvent):  # refused on the caller's loop, not queued
            await recorder.append("Not A Kind", {})
        waiting = [asyncio.ensure_future(recorder.append("statement", {"n": i}))
                   for i in range(3)]
        await asyncio.sleep(0)  # appended, the hand-over still scheduled
        assert recorder._queue.qsize() == 0
        recorder.close()
        await asyncio.gather(*waiting)
        with pytest.raises(AuditWriteError):
            await recorder.append("statement", {"n": 9})

    asyncio.run(main())
    assert audit.batches == [4, 3]


# ------------------------------------------------------------------------------------------
# Masking plans: reused for one fingerprint, never past the catalog's freshness or a DDL


class _Decisions:
    """A DecisionClient whose every decision masks `pan` (from one shared masks tuple)."""

    masks = (Mask("pan", "pan"),)

    def __init__(self) -> None:
        self.asked = 0

    async def adecide(self, doc: dict[str, Any]) -> tuple[str, Decision]:
        self.asked += 1
        return "dec-1", Decision("allow", masks=self.masks, policy_revision="r1", command={
            "kinds": ["select"], "tables": ["cards"], "parse_error": None})


class _ReusableDecisions(_Decisions):
    """As `_Decisions`, from a policy set whose decisions may be reused (deterministic,
    literal-insensitive: `InProcessDecisionClient.reuse`)."""

    def reuse(self) -> tuple[str, bool]:
        return "r1", True


class _NoRecorder:
    async def append(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.mark.parametrize("reusable", [False, True], ids=["asked-each-time", "verdict-cache"])
def test_masking_plans_are_reused_only_while_the_catalog_entries_are_fresh(
        reusable: bool) -> None:
    from adapters.enforcement.hooks import SessionContext
    from adapters.enforcement.records import Resource
    from adapters.postgres.bridge import PolicyBridge
    from adapters.postgres.catalog import Catalog, TypeInfo
    from adapters.postgres.descriptors import ColumnDescriptor

    now = [100.0]
    # Nothing listens on port 1: a lookup that is not answered from the cache fails.
    catalog = Catalog("postgresql://nobody@127.0.0.1:1/none", ttl=60, connect_timeout=1,
                      clock=lambda: now[0])
    catalog._store([(7, "public", "cards", "r", None, True, [1, 2], ["id", "pan"], [23, 25])])
    catalog._names["cards"] = (now[0], (7,))
    catalog._types.update({23: TypeInfo(23, "N"), 25: TypeInfo(25, "S")})
    catalog._types_loaded = True
    catalog._user_functions = (1e12, frozenset())  # fresh at every clock reading below
    client = _ReusableDecisions() if reusable else _Decisions()
    bridge = PolicyBridge(client, resource=Resource("db", type="postgres"), catalog=catalog,
                          recorder=_NoRecorder())  # type: ignore[arg-type]
    ctx = SessionContext("s1", "alice", ("dev",), "db", "psql", "127.0.0.1", False, "scram",
                         protocol="postgres")
    pan = ColumnDescriptor(1, "pan", 7, 2, 25, -1, 0)

    async def run(sql: str) -> StatementVerdict:
        verdict = await bridge.decide(sql, ctx)
        if verdict.effect == "allow":
            assert verdict.resolve_columns is not None and verdict.masker is not None
            await verdict.resolve_columns((pan,))
            transform = verdict.masker(pan)
            assert transform is not None and transform(PAN) == b"************1111"
        return verdict

    async def scenario() -> None:
        await bridge.session_started(ctx)  # (the verdict cache is the session's)
        first = await run("SELECT pan FROM cards WHERE id = 1")
        again = await run("SELECT pan FROM cards WHERE id = 2")  # same fingerprint
        assert first.effect == again.effect == "allow" and len(bridge._plans) == 1
        now[0] += 59.0
        assert (await run("SELECT pan FROM cards WHERE id = 3")).effect == "allow"
        now[0] += 2.0  # the entries the plan came from are stale: the catalog is asked
        stale = await run("SELECT pan FROM cards WHERE id = 4")
        assert stale.effect == "deny" and "masks cannot be applied" in stale.message
        catalog._store([(7, "public", "cards", "r", None, True, [1, 2], ["id", "pan"],
                         [23, 25])])
        catalog._names["cards"] = (now[0], (7,))
        assert (await run("SELECT pan FROM cards WHERE id = 5")).effect == "allow"
        catalog.invalidate()  # as after DDL
        dropped = await run("SELECT pan FROM cards WHERE id = 6")
        assert dropped.effect == "deny" and "masks cannot be applied" in dropped.message
        assert client.asked == (1 if reusable else 6)  # one shape, one revision
        await catalog.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("sql", [
    "SET standard_conforming_strings = off",
    "SET LOCAL standard_conforming_strings TO 'off'",
    "BEGIN; SET standard_conforming_strings = off; COMMIT",
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "SELECT set_config(lower('STANDARD_CONFORMING_STRINGS'), 'off', false)",
    "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
    "SET backslash_quote = on",
    "SET search_path = public",  # (other settings are the policies' to decide)
])
def test_statements_that_change_how_literals_are_read_are_denied(sql: str) -> None:
    """Off, a backslash escapes a quote: `'x\\' AND b = ' UNION SELECT pan FROM cards ...'`
    would read a table the facts (and the literal fingerprint) never saw."""
    from pathlib import Path

    from adapters.enforcement.hooks import SessionContext
    from adapters.enforcement.records import Resource
    from adapters.postgres.bridge import PolicyBridge
    from adapters.postgres.catalog import Catalog
    from engine.client import InProcessDecisionClient
    from engine.engine import Engine
    from engine.policy import load_policy_set

    policies = Path(__file__).resolve().parents[2] / "policies"
    catalog = Catalog("postgresql://nobody@127.0.0.1:1/none", connect_timeout=1)
    bridge = PolicyBridge(InProcessDecisionClient(Engine(load_policy_set(str(policies)))),
                          resource=Resource("db", {"env": "dev"}, type="postgres"),
                          catalog=catalog, recorder=_NoRecorder())  # type: ignore[arg-type]
    ctx = SessionContext("s1", "alice", ("dev",), "db", "psql", "127.0.0.1", False, "scram",
                         protocol="postgres")

    async def scenario() -> StatementVerdict:
        try:
            return await bridge.decide(sql, ctx)
        finally:
            await catalog.close()

    verdict = asyncio.run(scenario())
    if "search_path" in sql:  # (denied here only because this catalog is unreachable)
        assert "reads string literals" not in verdict.message
        return
    assert verdict.effect == "deny"
    assert "changes how PostgreSQL reads string literals" in verdict.message
