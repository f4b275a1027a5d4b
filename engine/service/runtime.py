"""The transport-independent core of the decision service.

`ServiceRuntime` owns the live `Engine` (None until the first policy set loads), the reload
status, decision ids, the decision log and the metrics. Both transports (`grpc_server`,
`http_api`) call `decide()` / `query()` and only translate requests and answers. Fail closed:
an evaluation error, a missing policy set or a decision log that cannot take the record all
end as a deny (or, for raw OPA-style queries, as an error), never as an allow.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from engine.decision import Decision, Reason
from engine.facts import DEFAULT_MAX_STATEMENT_BYTES
from engine.service.decision_log import DecisionLogger, new_decision_id
from engine.service.metrics import ServiceMetrics

log = logging.getLogger(__name__)

SERVICE_POLICY = "ordinance.service"


class NotReady(RuntimeError):
    """No policy set has been loaded yet."""


class DecisionNotRecorded(RuntimeError):
    """The decision log refused the record (queue full or sink failing)."""


@dataclass
class ReloadStatus:
    revision: str = ""
    last_activation: float = 0.0
    last_errors: list[str] = field(default_factory=list)
    last_error_time: float = 0.0
    reloads: int = 0
    failures: int = 0


def deny(message: str, revision: str = "", command: dict[str, Any] | None = None) -> Decision:
    """A service-made deny (no rule fired; the service could not decide safely)."""
    return Decision(effect="deny", reasons=(Reason(policy=SERVICE_POLICY, message=message),),
                    policy_revision=revision, command=command or {})


def enriched_input(input_doc: Any,
                   max_statement_bytes: int = DEFAULT_MAX_STATEMENT_BYTES) -> Any:
    """The input as `Engine.decide` evaluates it: command facts parsed by the engine.

    OPA-style queries must see the same facts as decisions, and a caller must not be able to
    supply its own `statements` (enrich_command overwrites them). Inputs without a `command`
    object are left alone (plain OPA use).
    TODO(engine): belongs in `Engine.query`, which adapters call too.
    """
    if isinstance(input_doc, dict) and isinstance(input_doc.get("command"), dict):
        from engine.facts import enrich_command

        doc = dict(input_doc)
        doc["command"] = enrich_command(input_doc["command"], input_doc.get("resource"),
                                        max_statement_bytes=max_statement_bytes)
        return doc
    return input_doc


class ServiceRuntime:
    """Shared by the gRPC and HTTP servers of one process."""

    def __init__(self, *, decision_log: DecisionLogger | None,
                 metrics: ServiceMetrics | None = None,
                 max_statement_bytes: int = DEFAULT_MAX_STATEMENT_BYTES) -> None:
        self.metrics = metrics or ServiceMetrics()
        self.decision_log = decision_log
        self.engine: Any = None
        self.status = ReloadStatus()
        self.max_statement_bytes = max_statement_bytes
        self._lock = threading.Lock()
        self._listeners: list[Callable[[bool], None]] = []
        self._pid = os.getpid()
        self._counters: dict[tuple[str, str], Any] = {}

    # -- policy lifecycle (called from the watcher thread) --------------------------------

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def add_ready_listener(self, listener: Callable[[bool], None]) -> None:
        """`listener(ready)` now and whenever readiness changes (gRPC health uses it)."""
        self._listeners.append(listener)
        listener(self.ready)

    def activate(self, policy_set: Any) -> None:
        """Swap `policy_set` in (atomically; in-flight decisions finish on the old set)."""
        revision = str(policy_set.revision)
        with self._lock:
            if self.engine is not None and self.status.revision == revision:
                self.status.last_errors = []
                return
            first = self.engine is None
            if first:
                from engine.engine import Engine

                self.engine = Engine(policy_set, max_statement_bytes=self.max_statement_bytes)
            else:
                self.engine.swap(policy_set)
            self.status.revision = revision
            self.status.last_activation = time.time()
            self.status.last_errors = []
            self.status.reloads += 1
        self.metrics.reloads.inc()
        self.metrics.policy_loaded.set(1)
        log.info("policy set %s active", revision)
        if first:
            for listener in self._listeners:
                listener(True)

    def reject(self, errors: list[str]) -> None:
        """Record a rejected policy change; the active set (if any) keeps serving."""
        with self._lock:
            self.status.last_errors = list(errors)
            self.status.last_error_time = time.time()
            self.status.failures += 1
        self.metrics.reload_failures.inc()

    # -- decisions -------------------------------------------------------------------------

    def _record(self, record: dict[str, Any]) -> bool:
        if self.decision_log is None:
            return True
        accepted = self.decision_log.submit(record)
        if not accepted:
            self.metrics.decision_log_records.labels("refused").inc()
        return accepted

    def decide(self, input_doc: dict[str, Any], transport: str) -> tuple[str, Decision]:
        """A decision for one input document; never raises for evaluation problems."""
        decision_id = new_decision_id()
        engine = self.engine
        if engine is None:
            decision = deny("no policy set loaded")
        else:
            try:
                decision = engine.decide(input_doc)
            except Exception as exc:  # the engine fails closed itself; this is the backstop
                log.exception("engine.decide raised")
                decision = deny(f"evaluation error: {exc}", self.status.revision)
        record = {
            "decision_id": decision_id, "timestamp": time.time(), "kind": "decide",
            "transport": transport, "pid": self._pid, "input": input_doc,
            "decision": decision,  # rendered by the decision log (async: off the request path)
        }
        if not self._record(record):
            decision = replace(
                decision, effect="deny", masks=(),
                reasons=(*decision.reasons, Reason(
                    policy=SERVICE_POLICY,
                    message="decision log unavailable; denying (fail closed)")))
        self._count(decision.effect, transport)
        return decision_id, decision

    def _count(self, outcome: str, transport: str) -> None:
        """`ordinance_decisions_total{outcome, transport}` += 1, the labelled child looked up
        once per pair."""
        counter = self._counters.get((outcome, transport))
        if counter is None:
            counter = self._counters.setdefault(
                (outcome, transport), self.metrics.decisions.labels(outcome, transport))
        counter.inc()

    def query(self, path: str, input_doc: Any, transport: str) -> tuple[str, bool, Any]:
        """OPA-style `data` query: `(decision_id, defined, value)`.

        Raises NotReady, DecisionNotRecorded, or the engine's EvaluationError.
        """
        engine = self.engine
        if engine is None:
            raise NotReady("no policy set loaded")
        decision_id = new_decision_id()
        started = time.perf_counter_ns()
        defined, value = engine.query(path, enriched_input(input_doc,
                                                           self.max_statement_bytes))
        record: dict[str, Any] = {
            "decision_id": decision_id, "timestamp": time.time(), "kind": "query",
            "transport": transport, "pid": self._pid, "path": path, "input": input_doc,
            "policy_revision": self.status.revision,
            "eval_ns": time.perf_counter_ns() - started,
        }
        if defined:
            record["result"] = value
        if not self._record(record):
            raise DecisionNotRecorded("decision log unavailable; refusing to answer (fail closed)")
        self._count("query", transport)
        return decision_id, defined, value
