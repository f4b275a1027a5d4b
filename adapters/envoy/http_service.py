"""ext_authz in HTTP-service mode: Envoy forwards the request, the status of our answer decides.

Envoy's `http_service` variant of the ext_authz filter sends the client's method, path
(prefixed with `path_prefix`), allowed headers and (with `with_request_body`) the body to an
HTTP server; a 200 answer lets the request through, with the answer's headers that match
`allowed_upstream_headers` added to the upstream request and those matching
`allowed_client_headers_on_success` added to the client's response; any other status is sent
to the client as the denial, with the body and the headers matching `allowed_client_headers`.

This module maps that exchange onto the same `AuthorizationServicer` as the gRPC mode, so
policies see the same input document and give the same answers:

* `http_to_check_request` (pure): method, target minus the path prefix, lower-cased headers
  (repeated ones joined with `,` as Envoy does), body (`body` when UTF-8, else `raw_body`),
  peer and local addresses -> a v3 CheckRequest. A body cut at our limit is marked as Envoy
  marks a partial one (`x-envoy-auth-partial-body: true`), so it is `truncated_body`.
* `check_response_to_http` (pure): CheckResponse -> (status, headers, body). An allow is 200
  with the result's `headers` and `response_headers_to_add`, and the names of
  `request_headers_to_remove` in `x-envoy-auth-headers-to-remove`. Query-parameter changes
  cannot be expressed in this mode: such a result is refused (`UnrepresentableResponse`)
  and the caller denies, rather than letting the request through unchanged.
* `HttpCheckEndpoint`: one request (`engine.service.http_server.HttpRequest`) in, the answer
  out; `start_http_check_server` serves it on its own port (`ordinance envoy --http`), where
  every path is a check. With a service token, Envoy must send `x-ordinance-authorization: Bearer
  <token>` (`authorization_request.headers_to_add`); the client's own `Authorization` header
  is the policy's business and travels untouched. The token header is never shown to policies.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2  # type: ignore[import-untyped]
from google.rpc import code_pb2  # type: ignore[import-untyped]

from adapters.envoy.authz import AuthorizationServicer
from adapters.envoy.translate import (
    DECISION_ID_HEADER,
    PARTIAL_BODY_HEADER,
    CheckRequest,
    CheckResponse,
    error_response,
)
from engine.service.http_server import HttpLimits, HttpRequest, HttpResponse, HttpServer
from engine.service.tls import BearerToken, TLSConfig

log = logging.getLogger(__name__)

TOKEN_HEADER = "x-ordinance-authorization"
HEADERS_TO_REMOVE_HEADER = "x-envoy-auth-headers-to-remove"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "upgrade",
                         "proxy-connection", "trailer"})
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[\x00\r\n]")


class UnrepresentableResponse(ValueError):
    """The CheckResponse asks for something an HTTP answer cannot carry."""


# ---------------------------------------------------------------------------------------------
# pure translation


def strip_prefix(target: str, prefix: str) -> str:
    """`/envoy/people?x=1` -> `/people?x=1` for prefix `/envoy`; the target when it has none."""
    prefix = prefix.rstrip("/")
    if prefix and (target == prefix or target.startswith((prefix + "/", prefix + "?"))):
        rest = target[len(prefix):]
        return rest if rest.startswith("/") else "/" + rest
    return target


def http_to_check_request(method: str, target: str, headers: Iterable[tuple[str, str]],
                          body: bytes, *, path_prefix: str = "", partial: bool = False,
                          peer: tuple[str, int] | None = None,
                          local: tuple[str, int] | None = None,
                          protocol: str = "HTTP/1.1") -> CheckRequest:
    """The CheckRequest Envoy would have sent over gRPC for this forwarded request."""
    req = external_auth_pb2.CheckRequest()
    attributes = req.attributes
    http = attributes.request.http
    merged: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key in _HOP_BY_HOP or key == TOKEN_HEADER:
            continue
        merged[key] = f"{merged[key]},{value}" if key in merged else value
    path = strip_prefix(target, path_prefix)
    if partial:
        merged[PARTIAL_BODY_HEADER] = "true"
    host = merged.get("host", merged.get(":authority", ""))
    http.method = method.upper()
    http.path = path
    http.host = host
    http.protocol = protocol
    http.size = len(body)
    for key, value in merged.items():
        http.headers[key] = value
    if body:
        try:
            http.body = body.decode("utf-8")
        except UnicodeDecodeError:
            http.raw_body = body
    attributes.request.time.GetCurrentTime()
    if peer is not None:
        attributes.source.address.socket_address.address = str(peer[0])
        attributes.source.address.socket_address.port_value = int(peer[1])
    if local is not None:
        attributes.destination.address.socket_address.address = str(local[0])
        attributes.destination.address.socket_address.port_value = int(local[1])
    return req


def _pairs(options: Any) -> list[tuple[str, str]]:
    return [(o.header.key, o.header.value or o.header.raw_value.decode("utf-8", "replace"))
            for o in options]


def _check_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    for name, value in headers:
        if not _TOKEN.match(name) or _BAD_VALUE.search(value):
            raise UnrepresentableResponse(f"header {name!r} is not a valid HTTP header")
    return headers


def check_response_to_http(response: CheckResponse) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of the HTTP answer for a CheckResponse."""
    decision_id = response.dynamic_metadata.fields["decision_id"].string_value \
        if "decision_id" in response.dynamic_metadata.fields else ""
    if response.status.code == code_pb2.OK:
        ok = response.ok_response
        if ok.query_parameters_to_set or ok.query_parameters_to_remove:
            raise UnrepresentableResponse("query parameter changes cannot be made in the "
                                          "HTTP service mode of ext_authz")
        headers = _pairs(ok.headers) + _pairs(ok.response_headers_to_add)
        if ok.headers_to_remove:
            headers.append((HEADERS_TO_REMOVE_HEADER, ", ".join(ok.headers_to_remove)))
        status, body = 200, b""
    else:
        denied = response.denied_response
        headers = _pairs(denied.headers)
        status = int(denied.status.code) or 403
        body = denied.body.encode("utf-8")
    if decision_id and not any(k.lower() == DECISION_ID_HEADER for k, _ in headers):
        headers.append((DECISION_ID_HEADER, decision_id))
    return status, _check_headers(headers), body


# ---------------------------------------------------------------------------------------------
# the endpoint


class HttpCheckEndpoint:
    """Answers one forwarded request (`HttpRequest`, its body cut at `max_body_bytes` by the
    server) with a decision."""

    def __init__(self, servicer: AuthorizationServicer, *, path_prefix: str = "",
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 token: BearerToken | None = None) -> None:
        self.servicer = servicer
        self.path_prefix = path_prefix
        self.max_body_bytes = max_body_bytes
        self.token = token

    def body_limit(self, target: str) -> int:
        return self.max_body_bytes

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.handle(request)

    def handle(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        if self.token is not None and not self.token.check_header(request.header(TOKEN_HEADER)):
            return HttpResponse(401, [("content-type", "application/json")],
                                b'{"error":"unauthorized","message":"missing or invalid '
                                b'service token"}')
        check = http_to_check_request(
            request.method, request.target, request.headers, request.body,
            path_prefix=self.path_prefix, partial=request.truncated, peer=request.peer,
            local=request.local, protocol=request.http_version)
        response = self.servicer.check(check)
        try:
            status, headers, out = check_response_to_http(response)
        except UnrepresentableResponse as exc:
            decision_id = response.dynamic_metadata.fields["decision_id"].string_value
            log.warning("decision %s: %s; denying", decision_id, exc)
            status, headers, out = check_response_to_http(error_response(str(exc),
                                                                         decision_id))
        log.debug("ext_authz HTTP %s %s -> %d in %.1f ms", request.method, request.target,
                  status, (time.perf_counter() - started) * 1e3)
        # A body not read to its end leaves the connection unusable: the server closes it.
        return HttpResponse(status, headers, out, close=request.truncated)


# ---------------------------------------------------------------------------------------------
# a server of its own (`ordinance envoy --http`), where every method on every path is a check


class HttpCheckServer:
    """A running ext_authz HTTP service; `port` is the bound port."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server.start()
        self.port: int = server.port

    def stop(self) -> None:
        self.server.stop()


def start_http_check_server(endpoint: HttpCheckEndpoint, host: str, port: int, *,
                            tls: TLSConfig | None = None,
                            limits: HttpLimits | None = None) -> HttpCheckServer:
    running = HttpCheckServer(HttpServer(host, port, endpoint, limits=limits or HttpLimits(),
                                         tls=tls, name="ext-authz-http"))
    log.info("ext_authz HTTP service listening on %s:%d (tls=%s)", host, running.port,
             tls is not None)
    return running
