"""pytest-benchmark suite for the engine on the PCI pack: pytest benchmarks --benchmark-only."""

from __future__ import annotations

import itertools

import pytest
import regopy

from benchmarks.commands import COMMANDS, input_for
from engine.engine import Engine
from engine.facts import enrich_command
from engine.policy import load_policy_set
from engine.policy.rego import DECISION_ENTRYPOINT


@pytest.fixture(scope="module")
def policy_set():
    return load_policy_set("policies")


@pytest.mark.parametrize("raw", COMMANDS, ids=[c[:40] for c in COMMANDS])
def test_decide_cached_parse(benchmark, policy_set, raw: str) -> None:
    engine = Engine(policy_set, cache_size=0)
    doc = input_for(raw)
    engine.decide(doc)
    decision = benchmark(engine.decide, doc)
    assert decision.effect in ("allow", "deny", "review")


def test_decide_decision_cache_hit(benchmark, policy_set) -> None:
    engine = Engine(policy_set)
    docs = itertools.cycle([input_for(raw) for raw in COMMANDS])
    for _ in COMMANDS:
        engine.decide(next(docs))
    assert benchmark(lambda: engine.decide(next(docs))).cached


def test_bare_regopy_query(benchmark, policy_set) -> None:
    doc = input_for(COMMANDS[0])
    doc["command"] = enrich_command(doc["command"], doc["resource"])
    interp = regopy.Interpreter()

    def query() -> object:
        interp.set_input(regopy.Input(doc))
        return interp.query_bundle_entrypoint(policy_set.rego.bundle, DECISION_ENTRYPOINT)

    assert benchmark(query).ok()


def test_cold_parse(benchmark) -> None:
    counter = itertools.count()
    facts = benchmark(lambda: enrich_command(
        {"raw": f"SELECT pan FROM cards WHERE id = {next(counter)}"}, {"type": "postgres"}))
    assert facts["kinds"] == ["select"]
