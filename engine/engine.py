"""The Engine: one input document in, one Decision out.

It enriches the command with parsed facts, evaluates the active PolicySet, combines what fired
(deny beats review beats allow) and never raises for an evaluation problem: a policy error, a
bad mask or an input it cannot read is a deny with the problem as reason (fail closed).

Decisions are cached in a bounded LRU keyed by the canonical JSON of the part of the input
document the policies can read (`PolicySet.decision_input`: `command`, `resource`, the variables
CEL rules name, and what the Rego modules read of the rest), so sessions that differ only in
fields no policy reads (a session id, a client address) share decisions. The cache belongs to
one policy set (a swap starts an empty one) and is bypassed when the set calls time, random or
network builtins, so a cached answer is exactly what evaluating would give.
When no policy can see literal values, PostgreSQL's SQL is keyed by its literal fingerprint
instead of its text (other dialects lex literals otherwise: `engine.facts.fingerprint`), so
`WHERE id = 1` and `WHERE id = 2` share one evaluation. OPA-style queries are cached the same
way, keyed by the path and the part of the input the Rego modules can read (exactly
what regopy is given), so requests that differ only in fields no policy mentions (an Envoy
request id, a timestamp) share one evaluation.

A command text over `max_statement_bytes` (default 256 KiB) is not parsed (`parse_error`, see
`engine.facts`) and bypasses both caches, so no cache ever holds such a text or its facts.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from engine.decision import Decision, Reason, combine_effect
from engine.errors import EvaluationError
from engine.facts import (
    DEFAULT_MAX_STATEMENT_BYTES,
    enrich_command,
    statement_too_large,
)
from engine.facts.fingerprint import FINGERPRINT_PROTOCOLS, literal_fingerprint
from engine.policy import PolicySet

ENGINE_POLICY = "ordinance.engine"
DEFAULT_CACHE_SIZE = 10_000
DEFAULT_CACHE_KEY_CHARS = 64 << 20


class DecisionCache:
    """A bounded, thread-safe LRU of Decisions for one policy set: at most `size` entries and
    `max_key_chars` characters of keys (ASCII JSON of the inputs, so long statements cannot
    make it hold gigabytes)."""

    def __init__(self, size: int, max_key_chars: int = DEFAULT_CACHE_KEY_CHARS):
        self.size = size
        self.max_key_chars = max_key_chars
        self._chars = 0
        self._items: OrderedDict[str, Decision] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Decision | None:
        with self._lock:
            decision = self._items.get(key)
            if decision is not None:
                self._items.move_to_end(key)
            return decision

    def put(self, key: str, decision: Decision) -> None:
        if len(key) > self.max_key_chars:
            return
        with self._lock:
            if key not in self._items:
                self._chars += len(key)
            self._items[key] = decision
            self._items.move_to_end(key)
            while len(self._items) > self.size or self._chars > self.max_key_chars:
                old, _ = self._items.popitem(last=False)
                self._chars -= len(old)

    def __len__(self) -> int:
        return len(self._items)


class QueryCache(DecisionCache):
    """The same LRU for `(defined, value)` query results (values are shared: read-only)."""

    def get(self, key: str) -> Any:  # type: ignore[override]
        return super().get(key)

    def put(self, key: str, value: Any) -> None:  # type: ignore[override]
        super().put(key, value)


class Engine:
    def __init__(self, policy_set: PolicySet, *, cache_size: int = DEFAULT_CACHE_SIZE,
                 max_statement_bytes: int = DEFAULT_MAX_STATEMENT_BYTES):
        if max_statement_bytes < 1:
            raise ValueError("max_statement_bytes must be positive")
        self.max_statement_bytes = max_statement_bytes
        self._cache_size = cache_size
        self._state = (policy_set, DecisionCache(cache_size))
        self._queries = (policy_set, QueryCache(cache_size))

    @property
    def policy_set(self) -> PolicySet:
        return self._state[0]

    @property
    def cache_size(self) -> int:
        """How many decisions the cache keeps (0: decisions are not cached)."""
        return self._cache_size

    def swap(self, policy_set: PolicySet) -> None:
        """Make `policy_set` the active one. Decisions already running finish on the old one."""
        self._state = (policy_set, DecisionCache(self._cache_size))
        self._queries = (policy_set, QueryCache(self._cache_size))

    def decide(self, input_doc: Any) -> Decision:
        started = time.perf_counter_ns()
        policy_set, cache = self._state  # one read: a swap mid-decision cannot mix two sets
        if not isinstance(input_doc, dict):
            return _deny(f"input must be a JSON object, not {type(input_doc).__name__}",
                         policy_set.revision, {}, started)
        key = None
        if policy_set.cacheable and cache.size > 0 and not self.oversized(input_doc):
            raw, cache_doc = _cache_document(input_doc, policy_set)
            try:
                key = canonical_json(cache_doc)
            except (TypeError, ValueError) as err:
                return _deny(f"input is not JSON-serialisable: {err}", policy_set.revision,
                             {}, started)
            hit = cache.get(key)
            if hit is not None:
                command = hit.command if raw is None else {**hit.command, "raw": raw}
                return Decision(effect=hit.effect, reasons=hit.reasons, masks=hit.masks,
                                policy_revision=hit.policy_revision, command=command,
                                eval_ns=time.perf_counter_ns() - started, cached=True)
        command = enrich_command(input_doc.get("command"), input_doc.get("resource"),
                                 max_statement_bytes=self.max_statement_bytes)
        doc = dict(input_doc)
        doc["command"] = command
        try:
            reasons, masks = policy_set.evaluate(doc)
        except EvaluationError as err:
            return _deny(f"policy evaluation error: {err}", policy_set.revision, command, started)
        except (TypeError, ValueError, OverflowError, RecursionError) as err:
            return _deny(f"input could not be evaluated: {type(err).__name__}: {err}",
                         policy_set.revision, command, started)
        reasons_t = tuple(reasons)
        decision = Decision(
            effect=combine_effect(reasons_t), reasons=reasons_t, masks=tuple(masks),
            policy_revision=policy_set.revision, command=command,
            eval_ns=time.perf_counter_ns() - started,
        )
        if key is not None:
            cache.put(key, decision)
        return decision

    def oversized(self, input_doc: Any) -> bool:
        """Whether the input's `command.raw` is over `max_statement_bytes` (not parsed, not
        cached)."""
        command = input_doc.get("command") if isinstance(input_doc, dict) else None
        raw = command.get("raw") if isinstance(command, dict) else None
        return isinstance(raw, str) and statement_too_large(raw, self.max_statement_bytes)

    def defines(self, path: str) -> bool:
        """Whether the active policy set has a package, rule or data document on `path`."""
        return self._queries[0].defines(path)

    def query(self, path: str, input_doc: Any) -> tuple[bool, Any]:
        """OPA-style data query: (defined, value). Raises EvaluationError on a policy error
        (errors are never cached). A cached value is shared: callers must not change it."""
        policy_set, cache = self._queries
        if not policy_set.cacheable or cache.size <= 0 or self.oversized(input_doc):
            return policy_set.query(path, input_doc)
        readable = policy_set.rego.prune(input_doc)
        try:
            key = path + "\0" + canonical_json(readable)
        except (TypeError, ValueError):
            return policy_set.query(path, input_doc)
        hit = cache.get(key)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        result = policy_set.query(path, readable)
        cache.put(key, result)
        return result


_KEY_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
_encoders = threading.local()


def canonical_json(doc: Any) -> str:
    """`json.dumps(doc, sort_keys=True, separators=(",", ":"))`, with the C encoder made once
    per thread instead of once per call (a third of the time for a small document). Raises
    TypeError / ValueError like json.dumps."""
    encode = getattr(_encoders, "encode", None)
    if encode is None:
        encode = _make_encoder()
        _encoders.encode = encode
    return encode(doc)  # type: ignore[no-any-return]


def _make_encoder() -> Any:
    def dumps(doc: Any) -> str:
        return _KEY_ENCODER.encode(doc)

    if c_make_encoder is None:  # no C accelerator
        return dumps
    markers: dict[int, Any] = {}
    try:
        iterencode = c_make_encoder(markers, _KEY_ENCODER.default, encode_basestring_ascii,
                                    None, ":", ",", True, False, True)
        probe = {"b": [1, 2.5, None, True], "a": {"\u00e9": "x"}}
        if "".join(iterencode(probe, 0)) != _KEY_ENCODER.encode(probe):
            return dumps
    except Exception:  # another Python's signature: the plain way
        return dumps

    def encode(doc: Any) -> str:
        markers.clear()  # an encoding that failed half-way may have left entries
        return "".join(iterencode(doc, 0))

    return encode


def _cache_document(input_doc: dict[str, Any],
                    policy_set: PolicySet) -> tuple[str | None, dict[str, Any]]:
    """The document a decision is cached under: the part of the input the policies can read
    (`PolicySet.decision_input`), with the raw text replaced by its literal fingerprint when
    it was safe (only for policy sets that cannot see literals; see fingerprint.py), and then
    that raw text."""
    doc = policy_set.decision_input(input_doc)
    command = doc.get("command")
    if not isinstance(command, dict) or not policy_set.literal_insensitive:
        return None, doc
    raw = command.get("raw")
    protocol = str(command.get("protocol") or (doc.get("resource") or {}).get("type")
                   or "").lower()
    if not isinstance(raw, str) or protocol not in FINGERPRINT_PROTOCOLS:
        return None, doc  # (other dialects lex literals otherwise: fingerprint.py)
    fingerprint = literal_fingerprint(raw)
    if fingerprint is None:
        return None, doc
    return raw, {**doc, "command": {**command, "raw": "\0literals:" + fingerprint}}


def _deny(message: str, revision: str, command: dict[str, Any], started: int) -> Decision:
    return Decision(
        effect="deny",
        reasons=(Reason(policy=ENGINE_POLICY, message=message, effect="deny"),),
        policy_revision=revision, command=command,
        eval_ns=time.perf_counter_ns() - started,
    )
