"""One run's measurements of the engine against the bare regopy query it wraps.

Every figure is taken in the same process and run, so ratios hold on a noisy machine:
`bare_query` (set the input and query the compiled PCI bundle's decision entrypoint with an
already enriched document: what regopy alone costs), `engine_cached_parse` (Engine.decide with
parsed facts cached and the decision cache off), `engine_decision_cache` (a repeated input)
and `cold_parse` (sqlglot on text never seen).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import regopy

from benchmarks.commands import COMMANDS, input_for
from engine.engine import Engine
from engine.facts import clear_caches, enrich_command
from engine.policy import load_policy_set
from engine.policy.rego import DECISION_ENTRYPOINT


def _timings(fn: Callable[[int], object], rounds: int) -> list[float]:
    out = []
    for i in range(rounds):
        t = time.perf_counter_ns()
        fn(i)
        out.append((time.perf_counter_ns() - t) / 1000)
    return out


def measure(rounds: int = 2000, policies: str = "policies") -> dict[str, dict[str, float]]:
    policy_set = load_policy_set(policies)
    docs = [input_for(raw) for raw in COMMANDS]
    enriched = []
    for doc in docs:
        d = dict(doc)
        d["command"] = enrich_command(doc["command"], doc["resource"])
        enriched.append(d)
    interp = regopy.Interpreter()
    bundle = policy_set.rego.bundle

    def bare(i: int) -> None:
        interp.set_input(regopy.Input(enriched[i % len(enriched)]))
        interp.query_bundle_entrypoint(bundle, DECISION_ENTRYPOINT)

    uncached = Engine(policy_set, cache_size=0)
    cached = Engine(policy_set)
    for doc in docs:  # warm the facts cache and the decision cache
        uncached.decide(doc)
        cached.decide(doc)

    def engine_cached_parse(i: int) -> None:
        uncached.decide(docs[i % len(docs)])

    def engine_decision_cache(i: int) -> None:
        cached.decide(docs[i % len(docs)])

    cold_rounds = max(50, rounds // 20)
    cold_texts = [f"SELECT pan FROM cards WHERE id = {i} AND note = 'n{i}'"
                  for i in range(cold_rounds)]
    clear_caches()

    def cold_parse(i: int) -> None:
        enrich_command({"raw": cold_texts[i]}, {"type": "postgres"})

    results = {}
    for name, fn, n in (("bare_query", bare, rounds),
                        ("engine_cached_parse", engine_cached_parse, rounds),
                        ("engine_decision_cache", engine_decision_cache, rounds),
                        ("cold_parse", cold_parse, cold_rounds)):
        fn(0)
        samples = sorted(_timings(fn, n))
        results[name] = {"median_us": statistics.median(samples),
                         "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))]}
    return results
