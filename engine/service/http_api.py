"""The HTTP transport: OPA's Data API, health and metrics on one port (default 8181).

Endpoints (OPA semantics, so OPA clients and sidecars work unchanged):

- `POST /v1/data[/{path}]` with `{"input": ...}` and `GET /v1/data[/{path}][?input=JSON]`:
  `{"result": ..., "decision_id": ...}`; `result` is omitted when the document is undefined;
  a POST without `input` gets OPA's `api_usage_warning`.
- Errors are OPA's `{"code", "message"[, "errors"]}`: 400 `invalid_parameter` for malformed
  JSON, 401 `unauthorized`, 404 `resource_not_found` for unknown routes, 413
  `invalid_parameter` for a body over the limit (OPA answers 400 there; 413 is the precise
  status and what proxies expect), 500 `internal_error` for evaluation errors or an
  unwritable decision log, 503 `internal_error` while no policy set is loaded.
- `GET /health`: 200 `{}` once the server runs; `?bundles` is 500 `{"error": ...}` until a
  policy set is active; `?plugins` is 500 while the decision log is failing.
- `GET /v1/status`: reload detail (active revision, last rejected change with `file:line`).
- `GET /metrics`: Prometheus text.

Mounted routes (`routes`: path prefix -> endpoint, e.g. Envoy's ext_authz HTTP-service mode
under `/envoy`) take every method on their prefix and answer (and authenticate) themselves.

With `--token-file`, everything but `GET /health` needs `Authorization: Bearer <token>`.
TLS handshakes run in the connection's thread, never in the accept loop. This module
translates; it decides nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from engine.service.http_server import TLSThreadingHTTPServer
from engine.service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from engine.service.runtime import DecisionNotRecorded, NotReady, ServiceRuntime
from engine.service.tls import BearerToken, TLSConfig

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
JSON_TYPE = "application/json"


class _BodyTooLarge(Exception):
    pass


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, tuple):
        return list(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return str(value)


def _error(code: str, message: str, errors: list[dict[str, Any]] | None = None
           ) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if errors:
        body["errors"] = errors
    return body


class DataAPIHandler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"
    server_version = "ordinance"
    sys_version = ""
    timeout = 60  # idle keep-alive connections are closed after this many seconds
    server: DecisionHTTPServer

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- responses ------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str = JSON_TYPE,
              close: bool = False) -> None:
        head = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}",
                f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
        if close:
            head.append("Connection: close")
            self.close_connection = True
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        self.log_request(status, len(body))

    def _send_json(self, status: int, doc: Any, pretty: bool = False, close: bool = False
                   ) -> None:
        if pretty:
            text = json.dumps(doc, indent=2, default=_json_default)
        else:
            text = json.dumps(doc, separators=(",", ":"), default=_json_default)
        self._send(status, text.encode(), close=close)

    # -- request plumbing -----------------------------------------------------------------

    def _authorized(self) -> bool:
        token = self.server.token
        if token is None or token.check_header(self.headers.get("Authorization")):
            return True
        self.server.runtime.metrics.rejected.labels("http", "unauthenticated").inc()
        self._send_json(401, _error("unauthorized", "missing or invalid bearer token"))
        return False

    def _read_body(self) -> bytes:
        limit = self.server.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        length_header = self.headers.get("Content-Length")
        if not length_header:
            return b""
        length = int(length_header)
        if length < 0:
            raise ValueError("negative Content-Length")
        if length > limit:
            raise _BodyTooLarge
        return self.rfile.read(length)

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1026)
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > limit:
                raise _BodyTooLarge
            parts.append(self.rfile.read(size))
            self.rfile.readline(3)

    # -- routes ---------------------------------------------------------------------------

    def _mounted(self) -> bool:
        """Hand the request to a mounted route if its prefix matches; True when handled."""
        for prefix, endpoint in self.server.routes.items():
            if self.path == prefix or self.path.startswith((prefix + "/", prefix + "?")):
                endpoint.handle(self)
                return True
        return False

    def __getattr__(self, name: str) -> Any:
        """`do_PUT`, `do_DELETE`, … exist only for mounted routes (else 501 as before)."""
        if name.startswith("do_") and name[3:].isalpha() and self.server.routes:
            def dispatch() -> None:
                if not self._mounted():
                    self._not_found(urlsplit(self.path).path)
            return dispatch
        raise AttributeError(name)

    def do_GET(self) -> None:
        if self.server.routes and self._mounted():
            return
        url = urlsplit(self.path)
        params = parse_qs(url.query, keep_blank_values=True)
        if url.path == "/health":
            self._health(params)
        elif not self._authorized():
            return
        elif url.path == "/v1/data" or url.path.startswith("/v1/data/"):
            self._data(url.path, params, body=None)
        elif url.path == "/metrics":
            self._send(200, self.server.runtime.metrics.render(), METRICS_CONTENT_TYPE)
        elif url.path == "/v1/status":
            self._status()
        else:
            self._not_found(url.path)

    def do_POST(self) -> None:
        if self.server.routes and self._mounted():
            return
        url = urlsplit(self.path)
        if not self._authorized():
            return
        if not (url.path == "/v1/data" or url.path.startswith("/v1/data/")):
            self._not_found(url.path)
            return
        try:
            body = self._read_body()
        except _BodyTooLarge:
            self.server.runtime.metrics.rejected.labels("http", "too_large").inc()
            self._send_json(413, _error("invalid_parameter", "request body too large"),
                            close=True)
            return
        except (ValueError, OSError) as exc:
            self._send_json(400, _error("invalid_parameter", f"cannot read body: {exc}"),
                            close=True)
            return
        self._data(url.path, parse_qs(url.query, keep_blank_values=True), body)

    def _not_found(self, path: str) -> None:
        self._send_json(404, _error("resource_not_found", f"no route for {path}"))

    def _health(self, params: dict[str, list[str]]) -> None:
        runtime = self.server.runtime
        if ("bundles" in params or "bundle" in params) and not runtime.ready:
            self._send_json(500, {"error": "policy set not loaded yet"})
        elif ("plugins" in params and runtime.decision_log is not None
              and runtime.decision_log.broken):
            self._send_json(500, {"error": f"decision log unavailable: "
                                           f"{runtime.decision_log.broken}"})
        else:
            self._send_json(200, {})

    def _status(self) -> None:
        runtime = self.server.runtime
        s = runtime.status
        broken = runtime.decision_log.broken if runtime.decision_log is not None else None
        self._send_json(200, {"result": {
            "policy": {"revision": s.revision, "active": runtime.ready,
                       "last_activation": s.last_activation, "reloads": s.reloads,
                       "reload_failures": s.failures, "last_reload_errors": s.last_errors,
                       "last_reload_error_time": s.last_error_time},
            "decision_log": {"healthy": broken is None, "error": broken},
        }})

    def _data(self, path: str, params: dict[str, list[str]], body: bytes | None) -> None:
        started = time.perf_counter()
        runtime = self.server.runtime
        pretty = "pretty" in params and params["pretty"][-1].lower() not in ("false", "0")
        doc_path = "/".join(unquote(p) for p in path[len("/v1/data"):].split("/") if p)
        warning = None
        input_doc: Any = None
        try:
            if body is not None:
                if body.strip():
                    request = json.loads(body)
                    if not isinstance(request, dict):
                        raise ValueError(f"request must be a JSON object, not "
                                         f"{type(request).__name__}")
                    if "input" in request:
                        input_doc = request["input"]
                    else:
                        warning = {"code": "api_usage_warning",
                                   "message": "'input' key missing from the request"}
                else:
                    warning = {"code": "api_usage_warning",
                               "message": "'input' key missing from the request"}
            elif "input" in params:
                try:
                    input_doc = json.loads(params["input"][-1])
                except ValueError as exc:
                    runtime.metrics.rejected.labels("http", "invalid_argument").inc()
                    self._send_json(400, _error(
                        "invalid_parameter", f"parameter contains malformed input document: "
                                             f"{exc}"))
                    return
        except (ValueError, RecursionError) as exc:
            runtime.metrics.rejected.labels("http", "invalid_argument").inc()
            self._send_json(400, _error("invalid_parameter",
                                        f"body contains malformed input document: {exc}"))
            return
        try:
            decision_id, defined, value = runtime.query(doc_path, input_doc, "http")
        except NotReady as exc:
            self._send_json(503, _error("internal_error", str(exc)))
            return
        except DecisionNotRecorded as exc:
            self._send_json(500, _error("internal_error", str(exc)))
            return
        except Exception as exc:  # EvaluationError or worse: an error, never a result
            self._send_json(500, _error(
                "internal_error", "error(s) occurred while evaluating query",
                [{"code": "eval_error", "message": str(exc)}]))
            return
        response: dict[str, Any] = {"decision_id": decision_id}
        if defined:
            response["result"] = value
        if warning:
            response["warning"] = warning
        self._send_json(200, response, pretty=pretty)
        runtime.metrics.decision_latency.labels("http").observe(time.perf_counter() - started)


class DecisionHTTPServer(TLSThreadingHTTPServer):
    """The Data API's server: the runtime, routes and limits its handler reads."""

    def __init__(self, host: str, port: int, runtime: ServiceRuntime, *,
                 tls: TLSConfig | None = None, token: BearerToken | None = None,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, reuse_port: bool = False,
                 routes: dict[str, Any] | None = None) -> None:
        self.runtime = runtime
        self.routes = dict(routes or {})
        self.token = token
        self.max_body_bytes = max_body_bytes
        rejected = runtime.metrics.rejected.labels("http", "tls_handshake")
        super().__init__(host, port, DataAPIHandler, tls=tls, reuse_port=reuse_port,
                         on_tls_failure=rejected.inc)


class HttpService:
    """A running HTTP server; `port` is the bound port."""

    def __init__(self, server: DecisionHTTPServer) -> None:
        self.server = server
        self.port: int = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={
            "poll_interval": 0.25}, name="http-accept", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def start_http_server(runtime: ServiceRuntime, host: str, port: int, *,
                      tls: TLSConfig | None = None, token: BearerToken | None = None,
                      max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                      reuse_port: bool = False,
                      routes: dict[str, Any] | None = None) -> HttpService:
    server = DecisionHTTPServer(host, port, runtime, tls=tls, token=token,
                                max_body_bytes=max_body_bytes, reuse_port=reuse_port,
                                routes=routes)
    service = HttpService(server)
    log.info("HTTP listening on %s:%d (tls=%s)", host, service.port, tls is not None)
    return service
