"""Envoy ext_authz inside a decision-service process (`ordinance serve`, `ordinance envoy`).

`EnvoyOptions` is the picklable configuration (`--workers` hands it to spawned processes);
`EnvoyOptions.start(runtime, …)` builds, in the serving process, what it needs: the OIDC
verifier, the approvals store (opened on the audit URL), an `AuthorizationServicer` that reads
`runtime.engine` on every call (so a live reload is picked up at once) and records every Check
in the runtime's decision log, and, when asked, the HTTP-service listener. The returned
`EnvoyExtension` hands its gRPC handler to the service's gRPC server and is stopped with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from adapters.envoy.approvals import EnvoyApprovals
from adapters.envoy.authz import SERVICE_NAME, AuthorizationServicer
from adapters.envoy.http_service import (
    DEFAULT_MAX_BODY_BYTES,
    HttpCheckEndpoint,
    HttpCheckServer,
    start_http_check_server,
)
from adapters.envoy.translate import DEFAULT_MAX_BODY
from engine.service.http_server import HttpLimits

log = logging.getLogger(__name__)

DEFAULT_ENVOY_QUERY = "data.envoy.authz.allow"
"""opa-envoy-plugin's default decision path (`envoy/authz/allow`)."""


@dataclass(frozen=True)
class EnvoyOptions:
    query: str | None = DEFAULT_ENVOY_QUERY
    failure_mode_allow: bool = False
    oidc_jwks: str | None = None
    """A JWKS file, or an https:// URL (plain http only on loopback)."""
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    require_subject: bool = False
    approvals_url: str | None = None
    """The approvals store (and its audit trail); normally the service's `--audit` URL."""
    max_body: int = DEFAULT_MAX_BODY
    """Bodies longer than this are not parsed (`truncated_body`)."""
    http_address: str | None = None
    """A listener of its own for the HTTP-service mode (`ordinance envoy --http`)."""
    http_prefix: str | None = None
    """Mount the HTTP-service mode under this path on the service's HTTP API."""
    http_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    http_limits: HttpLimits | None = None
    """Connections and timeouts of the listener of its own (default `HttpLimits()`)."""

    def check(self) -> None:
        """Raise ValueError for an inconsistent configuration (before anything starts)."""
        oidc = (self.oidc_jwks, self.oidc_issuer, self.oidc_audience)
        if any(oidc) and not all(oidc):
            raise ValueError("--oidc-jwks, --oidc-issuer and --oidc-audience go together")
        if self.require_subject and not self.oidc_jwks:
            raise ValueError("requiring a subject needs --oidc-jwks/--oidc-issuer/"
                             "--oidc-audience")
        if self.http_prefix is not None and not self.http_prefix.startswith("/"):
            raise ValueError(f"the HTTP prefix must start with '/': {self.http_prefix!r}")

    def start(self, runtime: Any, *, tls: Any = None, token: Any = None) -> EnvoyExtension:
        return EnvoyExtension(self, runtime, tls=tls, token=token)


def _verifier(options: EnvoyOptions) -> Any:
    """The OIDC verifier, its keys loaded now: a JWKS file that cannot be read stops the start
    (RuntimeError); an unreachable JWKS URL is retried on the first token."""
    if not options.oidc_jwks:
        return None
    from engine.identity import IdentityError
    from engine.identity.oidc import OidcVerifier

    source = options.oidc_jwks
    remote = source.startswith(("https://", "http://"))
    try:
        verifier = OidcVerifier(str(options.oidc_issuer), str(options.oidc_audience),
                                jwks_url=source if remote else None,
                                jwks_file=None if remote else source)
        verifier.refresh(force=True)
    except ValueError as exc:
        raise RuntimeError(f"OIDC verifier: {exc}") from exc
    except IdentityError as exc:
        if not remote:
            raise RuntimeError(str(exc)) from exc
        log.warning("%s; retrying on the first token", exc)
    return verifier


class EnvoyExtension:
    """The running ext_authz service of one process."""

    def __init__(self, options: EnvoyOptions, runtime: Any, *, tls: Any = None,
                 token: Any = None) -> None:
        options.check()
        self.options = options
        self.runtime = runtime
        self._closers: list[Any] = []
        self.http: HttpCheckServer | None = None
        approvals = None
        try:
            if options.approvals_url:
                from engine.approvals import ApprovalError, open_approval_store
                from engine.audit import AuditError, open_audit_log

                try:
                    audit = open_audit_log(options.approvals_url)
                    self._closers.append(audit)
                    store = open_approval_store(options.approvals_url, audit=audit)
                    self._closers.append(store)
                except (AuditError, ApprovalError) as exc:
                    raise RuntimeError(f"approvals store: {exc}") from exc
                approvals = EnvoyApprovals(store)
            verifier = _verifier(options)
        except BaseException:
            self.stop()
            raise
        metrics = runtime.metrics
        decision_log = runtime.decision_log

        def record(entry: dict[str, Any]) -> bool:
            if decision_log is None:
                return True
            if decision_log.submit(entry):
                return True
            metrics.decision_log_records.labels("refused").inc()
            return False

        def servicer(transport: str) -> AuthorizationServicer:
            latency = metrics.decision_latency.labels(transport)

            def observe(outcome: str, seconds: float) -> None:
                metrics.decisions.labels(outcome, transport).inc()
                latency.observe(seconds)

            return AuthorizationServicer(
                lambda: runtime.engine, query=options.query, verifier=verifier,
                require_subject=options.require_subject,
                request_approval=approvals.request if approvals else None,
                consume_approval=approvals.consume if approvals else None,
                max_body=options.max_body, failure_mode_allow=options.failure_mode_allow,
                record=record, observe=observe, transport=transport)

        self.grpc_servicer = servicer("envoy-grpc")
        self.http_servicer = servicer("envoy-http")
        self.http_endpoint = HttpCheckEndpoint(
            self.http_servicer, path_prefix=options.http_prefix or "",
            max_body_bytes=options.http_max_body_bytes, token=token)
        if options.http_address:
            from engine.service.server import split_host_port

            host, port = split_host_port(options.http_address)
            own = HttpCheckEndpoint(self.http_servicer, max_body_bytes=options.http_max_body_bytes,
                                    token=token)
            try:
                self.http = start_http_check_server(own, host, port, tls=tls,
                                                    limits=options.http_limits)
            except BaseException:
                self.stop()
                raise

    @property
    def grpc_handlers(self) -> list[tuple[str, Any]]:
        """(service name, generic handler) pairs for the gRPC server."""
        return [(SERVICE_NAME, self.grpc_servicer.generic_handler())]

    @property
    def http_routes(self) -> dict[str, Any]:
        """Path prefix -> endpoint for the service's HTTP API (when mounted there)."""
        if self.options.http_prefix is None:
            return {}
        return {self.options.http_prefix.rstrip("/"): self.http_endpoint}

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"envoy_query": self.options.query}
        if self.http is not None and self.options.http_address:
            from engine.service.server import join_host_port, split_host_port

            host, _ = split_host_port(self.options.http_address)
            out["envoy_http"] = join_host_port(host, self.http.port)
        if self.options.http_prefix is not None:
            out["envoy_http_prefix"] = self.options.http_prefix
        return out

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None
        for closer in reversed(self._closers):
            try:
                closer.close()
            except Exception:
                log.exception("closing %r", closer)
        self._closers = []
