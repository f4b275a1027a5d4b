"""CheckRequests shaped as Envoy's ext_authz filter sends them, and a client for both modes.

Envoy cannot run here; this module plays its part with the official protos (xds-protos): the
`headers` map carries the pseudo-headers (`:authority`, `:method`, `:path`) next to the
others, `http` repeats method, path, host, scheme and protocol, `size` is the body length (or
-1), the body is a string (bytes in `raw_body` with `pack_as_bytes`), the peer addresses and
mesh principals are set, and `context_extensions` / `metadata_context` carry per-route data.
"""

from __future__ import annotations

import http.client
import itertools
import json
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

_ids = itertools.count(13519049518330544501)


def envoy_check_request(method: str, path: str, *, headers: dict[str, str] | None = None,
                        body: str | bytes = b"", host: str = "api.example.com",
                        content_length: int | None = None,
                        context_extensions: dict[str, str] | None = None,
                        filter_metadata: dict[str, dict[str, Any]] | None = None,
                        source_principal: str = "",
                        partial_body: bool = False) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    attributes = req.attributes
    attributes.source.address.socket_address.address = "10.1.2.3"
    attributes.source.address.socket_address.port_value = 51234
    if source_principal:
        attributes.source.principal = source_principal
    attributes.destination.address.socket_address.address = "10.1.2.4"
    attributes.destination.address.socket_address.port_value = 8000
    attributes.destination.principal = "spiffe://cluster.local/ns/default/sa/api"
    attributes.request.time.GetCurrentTime()
    http = attributes.request.http
    http.id = str(next(_ids))
    http.method, http.path, http.host = method, path, host
    http.scheme, http.protocol = "http", "HTTP/1.1"
    raw = body.encode() if isinstance(body, str) else body
    all_headers = {":authority": host, ":method": method, ":path": path,
                   "x-forwarded-proto": "http", "x-request-id": f"req-{http.id}",
                   "user-agent": "curl/8.5.0", "accept": "*/*"}
    if raw:
        all_headers["content-length"] = str(len(raw) if content_length is None
                                            else content_length)
    if partial_body:
        all_headers["x-envoy-auth-partial-body"] = "true"
    all_headers.update({k.lower(): v for k, v in (headers or {}).items()})
    for key, value in all_headers.items():
        http.headers[key] = value
    http.size = len(raw) if raw else -1
    if raw:
        http.body = raw.decode("utf-8")
    for key, value in (context_extensions or {}).items():
        attributes.context_extensions[key] = value
    for namespace, values in (filter_metadata or {}).items():
        struct = struct_pb2.Struct()
        struct.update(values)
        attributes.metadata_context.filter_metadata[namespace].CopyFrom(struct)
    return req


@dataclass
class Answer:
    """What Envoy does with a CheckResponse: the client's status, headers, body."""

    allowed: bool
    status: int
    headers: dict[str, str]
    """Denied: headers for the client. Allowed: headers added to the upstream request."""
    response_headers: dict[str, str]
    """Allowed: headers added to the client's response."""
    headers_to_remove: list[str]
    body: str
    metadata: dict[str, Any]
    grpc_code: int = 0

    def json(self) -> Any:
        return json.loads(self.body)


def answer_from_check_response(response: external_auth_pb2.CheckResponse) -> Answer:
    from google.protobuf.json_format import MessageToDict

    metadata = MessageToDict(response.dynamic_metadata)
    if response.status.code == 0:
        ok = response.ok_response
        return Answer(True, 200, {o.header.key: o.header.value for o in ok.headers},
                      {o.header.key: o.header.value for o in ok.response_headers_to_add},
                      list(ok.headers_to_remove), "", metadata)
    denied = response.denied_response
    return Answer(False, denied.status.code or 403,
                  {o.header.key: o.header.value for o in denied.headers}, {}, [],
                  denied.body, metadata, response.status.code)


class EnvoyGrpc:
    """The ext_authz gRPC client Envoy would be, on one channel."""

    def __init__(self, target: str, token: str | None = None) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = external_auth_pb2_grpc.AuthorizationStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def raw(self, request: external_auth_pb2.CheckRequest) -> external_auth_pb2.CheckResponse:
        return self.stub.Check(request, timeout=10, metadata=self.metadata)

    def check(self, method: str, path: str, **kwargs: Any) -> Answer:
        return answer_from_check_response(self.raw(envoy_check_request(method, path,
                                                                       **kwargs)))

    def serving(self, service: str = "") -> bool:
        status = self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return bool(status.status == health_pb2.HealthCheckResponse.SERVING)

    def close(self) -> None:
        self.channel.close()


class EnvoyHttp:
    """Envoy's ext_authz HTTP-service client: forwards method, path (prefixed), headers, body."""

    def __init__(self, address: str, path_prefix: str = "") -> None:
        host, _, port = address.rpartition(":")
        self.conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=10)
        self.prefix = path_prefix

    def check(self, method: str, path: str, *, headers: dict[str, str] | None = None,
              body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        all_headers = {"host": "api.example.com", "x-forwarded-proto": "http",
                       "x-request-id": "req-http", **(headers or {})}
        self.conn.request(method, self.prefix + path, body=body or None, headers=all_headers)
        response = self.conn.getresponse()
        out = response.read()
        if response.getheader("connection", "").lower() == "close":
            self.conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, out

    def close(self) -> None:
        self.conn.close()
