"""One decision-service process: runtime + policy watcher + gRPC and HTTP servers.

`Service(config).start()` checks the listen addresses against the security settings, opens
the decision log, binds both ports (health NOT_SERVING), loads the policy directory, starts
the watcher and returns; `stop()` drains in reverse order. `run_service()` is the blocking
form used by `ordinance serve` and by each worker of `--workers N` (`engine.service.workers`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.audit.durability import Durability
from engine.facts import DEFAULT_MAX_STATEMENT_BYTES
from engine.policy.snapshot import DEFAULT_SETTLE_SECONDS
from engine.service.decision_log import DecisionLogger, LogMode, open_decision_log
from engine.service.grpc_server import DEFAULT_MAX_MESSAGE_BYTES, GrpcService, start_grpc_server
from engine.service.http_api import HttpService, start_http_server
from engine.service.http_server import HttpLimits
from engine.service.metrics import ServiceMetrics
from engine.service.reload import PolicyWatcher
from engine.service.runtime import ServiceRuntime
from engine.service.tls import BearerToken, TLSConfig, check_listen_address

log = logging.getLogger(__name__)

OFF = ("", "off", "none")


def split_host_port(address: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ServiceConfig:
    policies: Path
    grpc_address: str | None = "127.0.0.1:9191"
    http_address: str | None = "127.0.0.1:8181"
    audit_url: str | None = None
    decision_log_path: Path | None = None
    decision_log_mode: LogMode = "durable"
    audit_durability: Durability = "fsync"
    """`durable`: an answer leaves once its record is committed; `async`: records are written
    after the answer (a crash loses the ones not yet written)."""
    workers: int = 1
    tls: TLSConfig | None = None
    token_file: Path | None = None
    insecure_listen: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_statement_bytes: int = DEFAULT_MAX_STATEMENT_BYTES
    """A command text over this is not parsed (`parse_error`) and never cached."""
    reload_interval: float = 1.0
    reload_settle: float = DEFAULT_SETTLE_SECONDS
    """A plain directory without a `.manifest` is loaded once quiet this long."""
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    """Connections and timeouts of every HTTP listener of the process."""
    reuse_port: bool = False
    extensions: tuple[Any, ...] = ()
    """More services for each process, e.g. `adapters.envoy.service.EnvoyOptions` (Envoy
    ext_authz). Each is picklable configuration (`--workers` spawns processes with it) whose
    `start(runtime, tls=, token=)` returns an object with `grpc_handlers` ((service name,
    generic handler) pairs), `http_routes` (path prefix -> endpoint with `max_body_bytes` and
    `handle(HttpRequest) -> HttpResponse`),
    `describe()` and `stop()`, and optionally `grpc_self_authenticated` (names of its services
    that authenticate every call themselves, so the service token is not demanded of them),
    e.g. `engine.service.approvals.ApprovalServiceOptions`."""

    def addresses(self) -> list[tuple[str, str, int]]:
        """(transport, host, port) of the enabled listeners."""
        out = []
        for name, address in (("gRPC", self.grpc_address), ("HTTP", self.http_address)):
            if address is not None and address.lower() not in OFF:
                host, port = split_host_port(address)
                out.append((name, host, port))
        return out

    def check_security(self) -> None:
        """Raise InsecureListenError for an unprotected non-loopback listener."""
        for name, host, _ in self.addresses():
            check_listen_address(host, tls=self.tls is not None,
                                 token=self.token_file is not None,
                                 insecure=self.insecure_listen, what=name)


class Service:
    """A started service in this process (tests and benchmarks use it directly)."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.runtime: ServiceRuntime | None = None
        self.watcher: PolicyWatcher | None = None
        self.grpc: GrpcService | None = None
        self.http: HttpService | None = None
        self.decision_log: DecisionLogger | None = None
        self.extensions: list[Any] = []

    @property
    def grpc_port(self) -> int | None:
        return self.grpc.port if self.grpc else None

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http else None

    def start(self) -> Service:
        config = self.config
        config.check_security()
        token = BearerToken(config.token_file) if config.token_file else None
        metrics = ServiceMetrics()

        written = metrics.decision_log_records.labels("written")
        failed = metrics.decision_log_records.labels("failed")

        def count_batch(size: int, ok: bool) -> None:
            (written if ok else failed).inc(size)

        self.decision_log = open_decision_log(config.audit_url, config.decision_log_path,
                                              config.decision_log_mode, on_batch=count_batch,
                                              durability=config.audit_durability)
        runtime = self.runtime = ServiceRuntime(
            decision_log=self.decision_log, metrics=metrics,
            max_statement_bytes=config.max_statement_bytes)
        try:
            for extension in config.extensions:
                self.extensions.append(extension.start(runtime, tls=config.tls, token=token))
            grpc_handlers = [h for e in self.extensions for h in e.grpc_handlers]
            self_authenticated = [name for e in self.extensions
                                  for name in getattr(e, "grpc_self_authenticated", ())]
            http_routes = {p: r for e in self.extensions for p, r in e.http_routes.items()}
            for name, host, port in config.addresses():
                if name == "gRPC":
                    self.grpc = start_grpc_server(
                        runtime, join_host_port(host, port), tls=config.tls, token=token,
                        max_message_bytes=config.max_message_bytes,
                        reuse_port=config.reuse_port, extra_handlers=grpc_handlers,
                        self_authenticated=self_authenticated)
                else:
                    self.http = start_http_server(
                        runtime, host, port, tls=config.tls, token=token,
                        max_body_bytes=config.max_message_bytes,
                        reuse_port=config.reuse_port, routes=http_routes,
                        limits=config.http_limits)
            self.watcher = PolicyWatcher(config.policies, on_loaded=runtime.activate,
                                         on_rejected=runtime.reject,
                                         interval=config.reload_interval,
                                         settle=config.reload_settle)
            self.watcher.load_now()
            self.watcher.start()
        except BaseException:
            self.stop()
            raise
        return self

    def describe(self) -> dict[str, Any]:
        """The ready line's content: where it listens and what it serves."""
        out: dict[str, Any] = {"event": "serving", "pid": os.getpid()}
        for name, host, _ in self.config.addresses():
            port = self.grpc_port if name == "gRPC" else self.http_port
            out[name.lower()] = join_host_port(host, port or 0)
        for extension in self.extensions:
            out.update(extension.describe())
        if self.runtime is not None:
            out["policy_revision"] = self.runtime.status.revision
            out["policy_errors"] = self.runtime.status.last_errors
        return out

    def stop(self, grace: float = 5.0) -> None:
        if self.grpc is not None:
            self.grpc.stop(grace)
        if self.http is not None:
            self.http.stop()
        if self.watcher is not None:
            self.watcher.stop()
        for extension in self.extensions:
            extension.stop()
        self.extensions = []
        if self.decision_log is not None:
            self.decision_log.close()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=1.0)


def run_service(config: ServiceConfig,
                on_ready: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; `on_ready(describe())` once both ports are up."""
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    service = Service(config)
    try:
        service.start()
        ready = service.describe()
        if on_ready is None:
            print(json.dumps(ready), flush=True)
        else:
            on_ready(ready)
        while not stop.wait(3600):
            pass
    finally:
        service.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        stream=sys.stderr, level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
