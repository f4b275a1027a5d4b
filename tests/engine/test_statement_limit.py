"""A command text over the engine's `max_statement_bytes` is not parsed and never cached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.engine import Engine
from engine.facts import (
    DEFAULT_MAX_STATEMENT_BYTES,
    _cached_shell,
    _cached_sql,
    enrich_command,
    statement_too_large,
)
from engine.facts.fingerprint import _fingerprint
from engine.policy import load_policy_set

PACK = Path(__file__).resolve().parents[2] / "policies"
RESOURCE = {"type": "postgres", "name": "payments", "labels": {"env": "prod"}}


def _input(raw: str, protocol: str = "postgres") -> dict[str, Any]:
    return {"subject": {"id": "alice", "groups": ["dev"]}, "resource": RESOURCE,
            "command": {"protocol": protocol, "raw": raw}}


def _cache_sizes(engine: Engine) -> tuple[int, ...]:
    return (_cached_sql.cache_info().currsize, _cached_shell.cache_info().currsize,
            _fingerprint.cache_info().currsize, len(engine._state[1]), len(engine._queries[1]))


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_policy_set(str(PACK)))


def test_default_limit_is_256_kib(engine: Engine) -> None:
    assert engine.max_statement_bytes == DEFAULT_MAX_STATEMENT_BYTES == 256 * 1024


def test_an_oversized_statement_is_denied_unparsed_and_uncached(engine: Engine) -> None:
    small = engine.decide(_input("SELECT id FROM orders WHERE id = 1"))
    assert small.command["parse_error"] is None
    before = _cache_sizes(engine)
    for n in range(3):  # distinct texts, each 1 MB: an allowed statement padded with a comment
        raw = "SELECT id FROM orders WHERE id = 1 /* " + f"{n:x}" * 1_000_000 + " */"
        decision = engine.decide(_input(raw))
        assert decision.effect == "deny"
        assert "statement too large to analyse" in decision.command["parse_error"]
        assert decision.command["kinds"] == ["other"]
        assert not decision.cached
        defined, _ = engine.query("ordinance/pci", _input(raw))
        assert defined
    assert _cache_sizes(engine) == before


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    limit = 1000
    assert not statement_too_large("x" * 1000, limit)
    assert statement_too_large("x" * 1001, limit)
    assert not statement_too_large("é" * 500, limit)  # 1000 bytes
    assert statement_too_large("é" * 501, limit)  # 501 characters, 1002 bytes
    assert statement_too_large("\U0001f600" * 251, limit)  # 4 bytes each
    assert statement_too_large("\ud800" * 400, limit)  # a lone surrogate: 3 bytes, no crash


def test_a_configured_limit_applies_to_sql_and_shell() -> None:
    engine = Engine(load_policy_set(str(PACK)), max_statement_bytes=64)
    ok = engine.decide(_input("SELECT id FROM orders WHERE id = 1"))
    assert ok.command["parse_error"] is None
    big = engine.decide(_input("SELECT id FROM orders WHERE id = 1 -- " + "é" * 20))
    assert big.effect == "deny" and "limit 64" in big.command["parse_error"]
    shell = enrich_command({"protocol": "shell", "raw": "ls " + "a" * 100}, None,
                           max_statement_bytes=64)
    assert shell["argv"] == [] and "too large" in shell["parse_error"]
    with pytest.raises(ValueError):
        Engine(load_policy_set(str(PACK)), max_statement_bytes=0)


def test_caches_are_bounded_by_the_size_of_what_they_hold() -> None:
    from engine.decision import Decision
    from engine.engine import DecisionCache
    from engine.facts import CACHED_TEXT_CHARS, sql_facts

    cache = DecisionCache(100, max_key_chars=1000)
    decision = Decision(effect="allow", reasons=())
    for i in range(10):
        cache.put(f"{i:03d}" + "k" * 297, decision)  # 300 characters each
    assert len(cache) == 3  # 900 characters: the oldest went first
    assert cache.get("009" + "k" * 297) is decision and cache.get("000" + "k" * 297) is None
    cache.put("x" * 1001, decision)  # a key over the whole budget is not kept at all
    assert len(cache) == 3 and cache.get("x" * 1001) is None
    before = _cached_sql.cache_info().currsize
    long_text = "SELECT id FROM orders WHERE id = 1 -- " + "y" * CACHED_TEXT_CHARS
    assert sql_facts(long_text, "postgres")["parse_error"] is None  # parsed, not kept
    assert _cached_sql.cache_info().currsize == before
