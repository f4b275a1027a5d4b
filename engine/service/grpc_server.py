"""The gRPC transport: `ordinance.v1.DecisionService`, `grpc.health.v1.Health`, reflection.

Requests are decoded inside the handlers (the method handlers take raw bytes), so a message
that does not parse is INVALID_ARGUMENT with the parser's reason rather than grpc's generic
INTERNAL. Oversized messages are refused by grpc itself (`grpc.max_receive_message_length`:
RESOURCE_EXHAUSTED). A caller whose deadline has already passed when its request reaches a
handler thread is answered DEADLINE_EXCEEDED without evaluating. Until a policy set is
loaded, Decide is UNAVAILABLE (retryable: another replica may be ready; clients deny once
their retries are spent). With a bearer token, every
method but `grpc.health.v1.Health` and the services that authenticate each caller themselves
(`ordinance.v1.ApprovalService`) needs `authorization: Bearer <token>` metadata.

Health reports NOT_SERVING (overall and for the DecisionService) until a policy set is
active, and NOT_SERVING again while shutting down. This module translates; it decides nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from engine.api import decision_pb2
from engine.service.convert import InputError, decision_to_proto, input_to_dict
from engine.service.runtime import ServiceRuntime
from engine.service.tls import BearerToken, TLSConfig

log = logging.getLogger(__name__)

SERVICE_NAME = decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name
HEALTH_SERVICE = health.SERVICE_NAME
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_THREADS = 16


def _decode_input(request: decision_pb2.DecideRequest | decision_pb2.DecideStreamRequest
                  ) -> dict[str, Any]:
    if not request.HasField("input"):
        raise InputError("request has no input document")
    return input_to_dict(request.input)


class DecisionServicer:
    """The DecisionService methods over a `ServiceRuntime`."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self._latency = runtime.metrics.decision_latency.labels("grpc")
        self._rejected = runtime.metrics.rejected

    def _expired(self, context: grpc.ServicerContext) -> bool:
        remaining = context.time_remaining()
        return remaining is not None and remaining <= 0

    def decide(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        started = time.perf_counter()
        if self._expired(context):
            self._rejected.labels("grpc", "deadline").inc()
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before evaluation")
        try:
            request = decision_pb2.DecideRequest.FromString(raw)
            doc = _decode_input(request)
        except (DecodeError, InputError) as exc:
            self._rejected.labels("grpc", "invalid_argument").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed DecideRequest: {exc}")
        if not self.runtime.ready:
            self._rejected.labels("grpc", "not_ready").inc()
            context.abort(grpc.StatusCode.UNAVAILABLE, "no policy set loaded yet")
        decision_id, decision = self.runtime.decide(doc, "grpc")
        response = decision_pb2.DecideResponse()
        decision_to_proto(decision, decision_id, response.decision)
        out = response.SerializeToString()
        self._latency.observe(time.perf_counter() - started)
        return out

    def decide_stream(self, requests: Iterator[bytes],
                      context: grpc.ServicerContext) -> Iterator[bytes]:
        for raw in requests:
            started = time.perf_counter()
            response = decision_pb2.DecideStreamResponse()
            try:
                request = decision_pb2.DecideStreamRequest.FromString(raw)
            except DecodeError as exc:
                self._rejected.labels("grpc", "invalid_argument").inc()
                response.error.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                response.error.message = f"malformed DecideStreamRequest: {exc}"
                yield response.SerializeToString()
                continue
            response.correlation_id = request.correlation_id
            if self._expired(context):
                self._rejected.labels("grpc", "deadline").inc()
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              "deadline passed before evaluation")
            try:
                doc = _decode_input(request)
            except InputError as exc:
                self._rejected.labels("grpc", "invalid_argument").inc()
                response.error.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                response.error.message = str(exc)
                yield response.SerializeToString()
                continue
            if not self.runtime.ready:
                response.error.code = grpc.StatusCode.UNAVAILABLE.value[0]
                response.error.message = "no policy set loaded yet"
                yield response.SerializeToString()
                continue
            decision_id, decision = self.runtime.decide(doc, "grpc")
            decision_to_proto(decision, decision_id, response.decision)
            yield response.SerializeToString()
            self._latency.observe(time.perf_counter() - started)

    def get_status(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        s = self.runtime.status
        return decision_pb2.ServiceStatus(
            policy_revision=s.revision, last_activation=s.last_activation,
            last_reload_errors=s.last_errors, last_reload_error_time=s.last_error_time,
            reloads=s.reloads, reload_failures=s.failures).SerializeToString()

    def generic_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Decide": grpc.unary_unary_rpc_method_handler(self.decide),
            "DecideStream": grpc.stream_stream_rpc_method_handler(self.decide_stream),
            "GetStatus": grpc.unary_unary_rpc_method_handler(self.get_status),
        })


def _unauthenticated(request: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuse calls without `authorization: Bearer <token>`. Health checks are exempt, and so
    are the `self_authenticated` services, which authenticate every caller themselves (the
    ApprovalService: its callers present an ID token in that same header)."""

    def __init__(self, token: BearerToken, on_reject: Callable[[], None],
                 self_authenticated: Sequence[str] = ()) -> None:
        self._token = token
        self._on_reject = on_reject
        self._exempt = tuple(f"/{name}/" for name in (HEALTH_SERVICE, *self_authenticated))
        self._deny_unary = grpc.unary_unary_rpc_method_handler(_unauthenticated)
        self._deny_stream = grpc.stream_stream_rpc_method_handler(_unauthenticated)

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        if details.method.startswith(self._exempt):
            return continuation(details)
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and self._token.check_header(value):
                return continuation(details)
        self._on_reject()
        handler = continuation(details)
        if handler is not None and (handler.request_streaming or handler.response_streaming):
            return self._deny_stream
        return self._deny_unary


class GrpcService:
    """A started grpc server for one runtime; `port` is the bound port."""

    def __init__(self, server: grpc.Server, health_servicer: health.HealthServicer,
                 port: int) -> None:
        self.server = server
        self.health = health_servicer
        self.port = port

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait(grace + 1)


def start_grpc_server(runtime: ServiceRuntime, address: str, *, tls: TLSConfig | None = None,
                      token: BearerToken | None = None,
                      max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                      reuse_port: bool = False, threads: int = DEFAULT_THREADS,
                      extra_handlers: Sequence[tuple[str, grpc.GenericRpcHandler]] = (),
                      self_authenticated: Sequence[str] = ()) -> GrpcService:
    """Bind `address` (`host:port`, port 0 picks one) and start serving.

    `extra_handlers` are `(full service name, generic handler)` pairs served on the same
    port (e.g. Envoy's ext_authz); they get reflection and a per-service health status that
    follows policy readiness like the DecisionService's. `self_authenticated` names those of
    them that authenticate each call themselves: the service token is not demanded of them.
    """
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    interceptors: list[grpc.ServerInterceptor] = []
    if token is not None:
        rejected = runtime.metrics.rejected.labels("grpc", "unauthenticated")
        interceptors.append(BearerTokenInterceptor(token, rejected.inc, self_authenticated))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads,
                                                    thread_name_prefix="grpc"),
                         options=options, interceptors=interceptors)
    servicer = DecisionServicer(runtime)
    server.add_generic_rpc_handlers(
        (servicer.generic_handler(), *(handler for _, handler in extra_handlers)))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    served = (SERVICE_NAME, *(name for name, _ in extra_handlers))
    reflection.enable_server_reflection(
        (*served, HEALTH_SERVICE, reflection.SERVICE_NAME), server)

    def on_ready(ready: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", *served):
            health_servicer.set(name, status)

    runtime.add_ready_listener(on_ready)
    if tls is not None:
        port = server.add_secure_port(address, tls.grpc_credentials())  # type: ignore[arg-type]
    else:
        port = server.add_insecure_port(address)
    server.start()
    log.info("gRPC listening on %s (port %d, tls=%s)", address, port, tls is not None)
    return GrpcService(server, health_servicer, port)
