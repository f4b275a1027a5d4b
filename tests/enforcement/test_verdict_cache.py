"""The session verdict cache on the real engine: a statement of a shape the session decided is
not asked about again while nothing the policies read can differ, and is asked again when
something could (another policy revision, literal-reading or nondeterministic policies, other
command fields); a review is never reused as an allow."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.enforcement.bridge import Enforcer
from adapters.enforcement.hooks import SessionContext, StatementVerdict
from adapters.enforcement.records import Resource
from engine.audit import open_audit_log
from engine.audit.recorder import AuditRecorder
from engine.client import InProcessDecisionClient
from engine.decision import Decision
from engine.engine import Engine
from engine.identity import Subject
from engine.policy import load_policy_set
from tests.enforcement.trail import Trail

SHAPES = """
package ordinance.cache_test

import rego.v1

deny contains "no DELETE" if {
	some s in input.command.statements
	s.kind == "delete"
}

review contains {"msg": "orders need a second person", "approvers": ["leads"]} if {
	"orders" in input.command.tables
}

deny contains "no writes over sftp" if input.command.sftp.mode == "write"
"""

READS_RAW = """
package ordinance.cache_test

import rego.v1

deny contains "secret literal" if contains(input.command.raw, "secret")
"""

CLOCK = """
package ordinance.cache_test

import rego.v1

deny contains "too late" if time.now_ns() < 0
"""


class CountingClient(InProcessDecisionClient):
    """The in-process client, counting what reaches the engine."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.asked = 0

    async def adecide(self, input_doc: dict[str, Any]) -> tuple[str, Decision]:
        self.asked += 1
        return await super().adecide(input_doc)


def policies(tmp: Path, name: str, text: str) -> str:
    directory = tmp / name
    directory.mkdir()
    (directory / "policy.rego").write_text(text)
    return str(directory)


def ctx(session: str = "s1", protocol: str = "postgres") -> SessionContext:
    return SessionContext(session, "alice", ("dev",), "shop", "app", "127.0.0.1", True,
                          "scram-sha-256", protocol=protocol)


class Point(Trail):
    def __init__(self, tmp: Path, text: str = SHAPES, *, approvals: bool = False) -> None:
        super().__init__(tmp, approvals=approvals)
        self.engine = Engine(load_policy_set(policies(tmp, "policies", text)))
        self.client = CountingClient(self.engine)
        self.enforcer = Enforcer(self.client, resource=Resource("shop", type="postgres"),
                                 recorder=self.recorder, approvals=self.gate)

    def run(self, *texts: str, session: SessionContext | None = None,
            started: bool = True) -> list[StatementVerdict]:
        context = session or ctx()

        async def scenario() -> list[StatementVerdict]:
            if started:
                await self.enforcer.session_started(context)
            return [await self.enforcer.decide(t, context) for t in texts]

        return asyncio.run(scenario())

@pytest.fixture
def point(tmp_path: Path) -> Any:
    made = Point(tmp_path)
    yield made
    made.close()


def test_one_shape_is_asked_once_per_session_with_a_decision_id_per_statement(
        point: Point) -> None:
    verdicts = point.run(*(f"SELECT name FROM users WHERE id = {i}" for i in range(5)),
                         "DELETE FROM users WHERE id = 1", "DELETE FROM users WHERE id = 2")
    assert [v.effect for v in verdicts] == ["allow"] * 5 + ["deny"] * 2
    assert point.client.asked == 2
    assert verdicts[6].message == "no DELETE"
    assert len({v.decision_id for v in verdicts}) == 7
    point.recorder.close()
    records = [r.payload for r in point.audit.iter_records(kind="statement")]
    assert [r["text"] for r in records] == ["DELETE FROM users WHERE id = 1",
                                            "DELETE FROM users WHERE id = 2"]
    assert all(r["effect"] == "deny" for r in records)


def test_other_dialects_share_only_the_exact_text(point: Point) -> None:
    """MySQL lexes literals otherwise than the fingerprint (`#`, backslash escapes): only the
    same text is the same shape there."""
    point.run("SELECT 1 FROM t WHERE a = 'x' AND b = 'y'",
              "SELECT 1 FROM t WHERE a = 'x\\' AND b = ' UNION SELECT pan FROM cards #'",
              "SELECT 1 FROM t WHERE a = 'x' AND b = 'y'", session=ctx(protocol="mysql"))
    assert point.client.asked == 2


def test_sessions_do_not_share_and_a_bare_enforcer_asks_every_time(point: Point) -> None:
    point.run("SELECT 1 FROM users WHERE id = 1", session=ctx("a"))
    point.run("SELECT 1 FROM users WHERE id = 2", session=ctx("b"))
    assert point.client.asked == 2
    point.run("SELECT 1 FROM users WHERE id = 3", "SELECT 1 FROM users WHERE id = 4",
              session=ctx("c"), started=False)
    assert point.client.asked == 4


def test_another_policy_revision_is_asked_again(tmp_path: Path, point: Point) -> None:
    async def scenario() -> list[StatementVerdict]:
        await point.enforcer.session_started(ctx())
        first = await point.enforcer.decide("SELECT 1 FROM users WHERE id = 1", ctx())
        point.engine.swap(load_policy_set(policies(
            tmp_path, "stricter", SHAPES + '\ndeny contains "users are off limits" if '
                                           '"users" in input.command.tables\n')))
        second = await point.enforcer.decide("SELECT 1 FROM users WHERE id = 2", ctx())
        return [first, second]

    first, second = asyncio.run(scenario())
    assert first.effect == "allow" and second.effect == "deny"
    assert second.message == "users are off limits" and point.client.asked == 2


def test_policies_that_read_literals_are_keyed_by_the_exact_text(tmp_path: Path) -> None:
    point = Point(tmp_path, READS_RAW)
    try:
        verdicts = point.run("SELECT 1 FROM t WHERE a = 'public'",
                             "SELECT 1 FROM t WHERE a = 'secret'",
                             "SELECT 1 FROM t WHERE a = 'secret'")
        assert [v.effect for v in verdicts] == ["allow", "deny", "deny"]
        assert point.client.asked == 2
    finally:
        point.close()


def test_nondeterministic_policies_are_asked_every_time(tmp_path: Path) -> None:
    point = Point(tmp_path, CLOCK)
    try:
        point.run("SELECT 1", "SELECT 1", "SELECT 1")
        assert point.client.reuse() is None and point.client.asked == 3
    finally:
        point.close()


def test_command_fields_are_part_of_the_key(point: Point) -> None:
    async def scenario() -> list[str]:
        await point.enforcer.session_started(ctx())
        out = []
        for mode in ("read", "write", "read", "write"):
            verdict = await point.enforcer.decide("sftp open /data/x", ctx(),
                                                  {"sftp": {"mode": mode}})
            out.append(verdict.effect)
        return out

    assert asyncio.run(scenario()) == ["allow", "deny", "allow", "deny"]
    assert point.client.asked == 2


def test_a_cached_review_is_held_and_approved_per_execution(tmp_path: Path) -> None:
    point = Point(tmp_path, approvals=True)
    dana = Subject("dana", ("leads",))

    async def notify(text: str) -> None:
        pending = point.store.list("pending")
        await asyncio.to_thread(point.store.approve, pending[0].id, dana)

    async def scenario() -> list[StatementVerdict]:
        await point.enforcer.session_started(ctx())
        out = []
        for i in (1, 2, 1):
            held = await point.enforcer.decide(f"SELECT * FROM orders WHERE id = {i}", ctx())
            assert held.effect == "review" and held.hold is not None
            out.append(await held.hold(notify))
        return out

    try:
        verdicts = asyncio.run(scenario())
        assert [v.effect for v in verdicts] == ["allow"] * 3
        assert point.client.asked == 1  # the decision was reused, the approval never
        used = point.store.list("consumed")
        assert len(used) == 3 and all(r.uses == 1 for r in used)
        assert not point.store.list("approved")
    finally:
        point.close()


TEMPLATES = [
    "SELECT holder, pan FROM cards WHERE id = {n}",
    "SELECT count(*) FROM cards WHERE holder = '{s}'",
    "DELETE FROM orders WHERE id = {n}",
    "DELETE FROM orders",
    "UPDATE cards SET holder = '{s}' WHERE id = {n}",
    "UPDATE cards SET cvv = '{s}' WHERE id = {n}",
    "DROP TABLE orders",
    "SELECT * FROM orders WHERE total > {n} LIMIT {n}",
    "INSERT INTO orders (id, note) VALUES ({n}, '{s}')",
    "SELECT '{s}' AS x",
]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(TEMPLATES), st.integers(0, 10**6),
                          st.text("abc4111 '%_\\#", max_size=12)), min_size=1, max_size=25),
       st.sampled_from(["dev", "prod"]), st.sampled_from(["postgres", "mysql"]))
def test_reused_decisions_equal_the_engines_on_the_pci_pack(
        tmp_path_factory: pytest.TempPathFactory, statements: list[tuple[str, int, str]],
        env: str, protocol: str) -> None:
    """The same session through an enforcer that reuses decisions and one that asks the
    engine every time (a decision log makes `reuse` None): the same answers."""
    tmp = tmp_path_factory.mktemp("pci")
    url = f"sqlite:///{tmp / 'audit.db'}"
    engine = Engine(load_policy_set(str(Path(__file__).resolve().parents[2] / "policies")))
    with open_audit_log(url) as audit:
        recorder = AuditRecorder(audit).start()
        try:
            resource = Resource("shop", {"env": env}, type=protocol)
            reusing = Enforcer(CountingClient(engine), resource=resource, recorder=recorder)
            asking = Enforcer(CountingClient(Engine(engine.policy_set)), resource=resource,
                              recorder=recorder)
            asking.client.reuse = lambda: None  # type: ignore[attr-defined]
            texts = [t.format(n=n, s=s.replace("'", "''")) for t, n, s in statements]

            async def answers(enforcer: Enforcer) -> list[tuple[Any, ...]]:
                session = ctx(protocol=protocol)
                await enforcer.session_started(session)
                out = []
                for text in texts:
                    statement = await enforcer.ask(text, session)
                    d = statement.decision
                    out.append((d.effect, d.reasons, d.masks, d.policy_revision,
                                {k: v for k, v in d.command.items() if k != "raw"},
                                d.command.get("raw")))
                return out

            assert asyncio.run(answers(reusing)) == asyncio.run(answers(asking))
            assert reusing.client.asked <= asking.client.asked == len(texts)
        finally:
            recorder.close()


def test_a_sessions_cache_is_bounded_by_entries_and_characters() -> None:
    from adapters.enforcement.verdict_cache import (
        MAX_ENTRIES,
        MAX_KEY_CHARS,
        MAX_TEXT,
        SessionDecisions,
        decision_key,
    )

    cache = SessionDecisions()
    decision = Decision("allow", policy_revision="r1")
    for i in range(MAX_ENTRIES * 2):
        key = decision_key(f"SELECT {i} AS n", "mysql", True, None)
        assert key is not None and cache.put(key, decision, "r1") is not None
    assert len(cache) == MAX_ENTRIES
    big = "x" * (MAX_TEXT - 20)
    for i in range(MAX_KEY_CHARS // MAX_TEXT * 2):
        key = decision_key(f"SELECT '{big}', {i}", "mysql", True, None)
        assert key is not None
        cache.put(key, decision, "r1")
    assert len(cache) <= MAX_KEY_CHARS // (MAX_TEXT - 20)
    assert decision_key("SELECT '" + "x" * MAX_TEXT + "'", "postgres", True, None) is None
    assert cache.put("k", Decision("allow", policy_revision="r0"), "r1") is None  # stale
