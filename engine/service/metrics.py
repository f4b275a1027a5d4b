"""Prometheus metrics of the decision service, exposed as text on `GET /metrics`.

Each `ServiceMetrics` has its own registry, so several services can live in one process
(tests). With `--workers N` the supervisor sets `PROMETHEUS_MULTIPROC_DIR` for its workers;
prometheus-client then keeps values in shared files and `render()` aggregates all workers, so
any worker answering a scrape reports the whole service.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ServiceMetrics:
    """The service's counters and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decisions = Counter(
            "ordinance_decisions", "Decisions made, by effect and transport.",
            ["effect", "transport"], registry=r)
        self.decision_latency = Histogram(
            "ordinance_decision_duration_seconds",
            "Time from request decoded to answer encoded, by transport.",
            ["transport"], buckets=LATENCY_BUCKETS, registry=r)
        self.rejected = Counter(
            "ordinance_requests_rejected",
            "Requests refused before evaluation, by transport and reason.",
            ["transport", "reason"], registry=r)
        self.reloads = Counter(
            "ordinance_policy_reloads", "Policy sets compiled and swapped in.", registry=r)
        self.reload_failures = Counter(
            "ordinance_policy_reload_failures",
            "Policy changes rejected (the previous set kept serving).", registry=r)
        self.policy_loaded = Gauge(
            "ordinance_policy_loaded", "1 when a policy set is active.", registry=r,
            multiprocess_mode="min")
        self.decision_log_records = Counter(
            "ordinance_decision_log_records", "Decision log records by outcome.",
            ["outcome"], registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of this service (all workers when multi-process)."""
        directory = multiprocess_dir()
        if directory:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)
            return generate_latest(registry)
        return generate_latest(self.registry)


def worker_restarts_counter() -> Counter:
    """`ordinance_worker_restarts_total`, counted by a worker that replaces a dead one. It
    lives in the workers' multiprocess directory, so every worker's `/metrics` reports it."""
    return Counter("ordinance_worker_restarts",
                   "Worker processes that died and were restarted, by how they ended.",
                   ["ended"], registry=CollectorRegistry())
