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

Request bodies are read as OPA reads them: JSON whatever the Content-Type, YAML with
`Content-Type: application/x-yaml` (or `application/yaml`), `Content-Encoding: gzip`
decompressed up to the body limit (413 beyond), any other encoding 415. `NaN`, `Infinity` and
numbers too large for a double are refused (400), as the gRPC transport refuses them.

With `--token-file`, everything but `GET /health` needs `Authorization: Bearer <token>`.
Connections, timeouts and TLS belong to `engine.service.http_server`. This module translates;
it decides nothing.
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from engine.service.http_server import HttpLimits, HttpRequest, HttpResponse, HttpServer
from engine.service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from engine.service.runtime import DecisionNotRecorded, NotReady, ServiceRuntime
from engine.service.tls import BearerToken, TLSConfig

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
JSON_TYPE = "application/json"
YAML_TYPES = ("application/x-yaml", "application/yaml")
MAX_YAML_NODES = 1_000_000
"""A YAML document expanding (through aliases) to more values than this is refused."""


class BadInput(ValueError):
    """The request's input document cannot be used; the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


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


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range for a double")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str | bytes) -> Any:
    """JSON as the gRPC transport accepts it: no NaN, no Infinity, no number beyond a double."""
    return json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)


def parse_yaml(text: bytes) -> Any:
    """A YAML document as JSON values: finite numbers, string keys, no cycles, bounded size
    after alias expansion (a "billion laughs" document is refused, not expanded)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(" ".join(str(exc).split())[:300]) from None
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        if isinstance(node, float) and not math.isfinite(node):
            raise ValueError(f"{node} is not a JSON number")
        if isinstance(node, bool | int | float | str) or node is None:
            return 1
        if not isinstance(node, dict | list):
            raise ValueError(f"YAML value of type {type(node).__name__} has no JSON form")
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ValueError("the YAML document refers to itself")
        active.add(key)
        if isinstance(node, dict):
            if not all(isinstance(k, str) for k in node):
                raise ValueError("YAML mapping keys must be strings")
            total = 1 + sum(size(v) for v in node.values())
        else:
            total = 1 + sum(size(v) for v in node)
        active.discard(key)
        if total > MAX_YAML_NODES:
            raise ValueError(f"the YAML document expands to more than {MAX_YAML_NODES} values")
        sizes[key] = total
        return total

    size(document)
    return document


def decode_body(request: HttpRequest, limit: int) -> bytes:
    """The body after `Content-Encoding` (gzip, at most `limit` bytes once inflated)."""
    encoding = (request.header("content-encoding") or "identity").strip().lower()
    if encoding in ("identity", ""):
        return request.body
    if encoding not in ("gzip", "x-gzip"):
        raise BadInput(f"unsupported Content-Encoding {encoding!r} (gzip or none)", 415)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(request.body, limit + 1)
    except zlib.error as exc:
        raise BadInput(f"body is not valid gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise BadInput("request body too large", 413)
    if not inflater.eof:
        raise BadInput("body is not valid gzip: the stream is cut short")
    return out


def parse_input_body(request: HttpRequest, body: bytes) -> Any:
    """The request document: YAML for a YAML Content-Type, else JSON (as OPA does)."""
    content_type = (request.header("content-type") or "").split(";", 1)[0].strip().lower()
    if content_type in YAML_TYPES:
        return parse_yaml(body)
    return parse_json(body)


def _json(status: int, doc: Any, pretty: bool = False, close: bool = False) -> HttpResponse:
    if pretty:
        text = json.dumps(doc, indent=2, default=_json_default)
    else:
        text = json.dumps(doc, separators=(",", ":"), default=_json_default)
    return HttpResponse(status, [("Content-Type", JSON_TYPE)], text.encode(), close=close)


class DataAPI:
    """The application behind the HTTP port: routes, authentication, OPA semantics."""

    def __init__(self, runtime: ServiceRuntime, *, token: BearerToken | None = None,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 routes: dict[str, Any] | None = None) -> None:
        self.runtime = runtime
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.routes = dict(routes or {})

    def _route(self, target: str) -> Any:
        """The mounted endpoint whose prefix `target` is under, or None."""
        for prefix, endpoint in self.routes.items():
            if target == prefix or target.startswith((prefix + "/", prefix + "?")):
                return endpoint
        return None

    def body_limit(self, target: str) -> int:
        endpoint = self._route(target)
        return int(endpoint.max_body_bytes) if endpoint is not None else self.max_body_bytes

    def __call__(self, request: HttpRequest) -> HttpResponse:
        endpoint = self._route(request.target)
        if endpoint is not None:
            return endpoint.handle(request)  # it answers and authenticates itself
        url = urlsplit(request.target)
        params = parse_qs(url.query, keep_blank_values=True)
        is_data = url.path == "/v1/data" or url.path.startswith("/v1/data/")
        read = request.method in ("GET", "HEAD")  # HEAD: the same answer, without its body
        if read and url.path == "/health":
            return self._health(params)
        if not self._authorized(request):
            self.runtime.metrics.rejected.labels("http", "unauthenticated").inc()
            return _json(401, _error("unauthorized", "missing or invalid bearer token"))
        if read:
            if is_data:
                return self._data(url.path, params, None)
            if url.path == "/metrics":
                return HttpResponse(200, [("Content-Type", METRICS_CONTENT_TYPE)],
                                    self.runtime.metrics.render())
            if url.path == "/v1/status":
                return self._status()
            return self._not_found(url.path)
        if request.method == "POST" and is_data:
            return self._post_data(request, url.path, params)
        if is_data or url.path in ("/health", "/metrics", "/v1/status"):
            return _json(405, _error("invalid_parameter",
                                     f"method {request.method} not allowed on {url.path}"))
        return self._not_found(url.path)

    def _authorized(self, request: HttpRequest) -> bool:
        return self.token is None or self.token.check_header(request.header("authorization"))

    def _post_data(self, request: HttpRequest, path: str, params: dict[str, list[str]]
                   ) -> HttpResponse:
        try:
            if request.truncated:
                raise BadInput("request body too large", 413)
            body = decode_body(request, self.max_body_bytes)
        except BadInput as exc:
            reason = {413: "too_large", 415: "unsupported_encoding"}.get(exc.status,
                                                                          "invalid_argument")
            self.runtime.metrics.rejected.labels("http", reason).inc()
            return _json(exc.status, _error("invalid_parameter", str(exc)),
                         close=exc.status == 413)
        return self._data(path, params, body, request)

    def _not_found(self, path: str) -> HttpResponse:
        return _json(404, _error("resource_not_found", f"no route for {path}"))

    def _health(self, params: dict[str, list[str]]) -> HttpResponse:
        runtime = self.runtime
        if ("bundles" in params or "bundle" in params) and not runtime.ready:
            return _json(500, {"error": "policy set not loaded yet"})
        if ("plugins" in params and runtime.decision_log is not None
                and runtime.decision_log.broken):
            return _json(500, {"error": f"decision log unavailable: "
                                        f"{runtime.decision_log.broken}"})
        return _json(200, {})

    def _status(self) -> HttpResponse:
        runtime = self.runtime
        s = runtime.status
        broken = runtime.decision_log.broken if runtime.decision_log is not None else None
        return _json(200, {"result": {
            "policy": {"revision": s.revision, "active": runtime.ready,
                       "last_activation": s.last_activation, "reloads": s.reloads,
                       "reload_failures": s.failures, "last_reload_errors": s.last_errors,
                       "last_reload_error_time": s.last_error_time},
            "decision_log": {"healthy": broken is None, "error": broken},
        }})

    def _data(self, path: str, params: dict[str, list[str]], body: bytes | None,
              request: HttpRequest | None = None) -> HttpResponse:
        started = time.perf_counter()
        runtime = self.runtime
        pretty = "pretty" in params and params["pretty"][-1].lower() not in ("false", "0")
        doc_path = "/".join(unquote(p) for p in path[len("/v1/data"):].split("/") if p)
        warning = None
        input_doc: Any = None
        try:
            if body is not None and request is not None:
                if body.strip():
                    document = parse_input_body(request, body)
                    if not isinstance(document, dict):
                        raise ValueError(f"request must be a JSON object, not "
                                         f"{type(document).__name__}")
                    if "input" in document:
                        input_doc = document["input"]
                    else:
                        warning = {"code": "api_usage_warning",
                                   "message": "'input' key missing from the request"}
                else:
                    warning = {"code": "api_usage_warning",
                               "message": "'input' key missing from the request"}
            elif "input" in params:
                try:
                    input_doc = parse_json(params["input"][-1])
                except ValueError as exc:
                    runtime.metrics.rejected.labels("http", "invalid_argument").inc()
                    return _json(400, _error(
                        "invalid_parameter", f"parameter contains malformed input document: "
                                             f"{exc}"))
        except (ValueError, RecursionError) as exc:
            runtime.metrics.rejected.labels("http", "invalid_argument").inc()
            return _json(400, _error("invalid_parameter",
                                     f"body contains malformed input document: {exc}"))
        try:
            decision_id, defined, value = runtime.query(doc_path, input_doc, "http")
        except NotReady as exc:
            return _json(503, _error("internal_error", str(exc)))
        except DecisionNotRecorded as exc:
            return _json(500, _error("internal_error", str(exc)))
        except Exception as exc:  # EvaluationError or worse: an error, never a result
            return _json(500, _error(
                "internal_error", "error(s) occurred while evaluating query",
                [{"code": "eval_error", "message": str(exc)}]))
        response: dict[str, Any] = {"decision_id": decision_id}
        if defined:
            response["result"] = value
        if warning:
            response["warning"] = warning
        answer = _json(200, response, pretty=pretty)
        runtime.metrics.decision_latency.labels("http").observe(time.perf_counter() - started)
        return answer


class HttpService:
    """A running HTTP server; `port` is the bound port."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server.start()
        self.port: int = server.port

    def stop(self) -> None:
        self.server.stop()


def start_http_server(runtime: ServiceRuntime, host: str, port: int, *,
                      tls: TLSConfig | None = None, token: BearerToken | None = None,
                      max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                      reuse_port: bool = False,
                      routes: dict[str, Any] | None = None,
                      limits: HttpLimits | None = None) -> HttpService:
    app = DataAPI(runtime, token=token, max_body_bytes=max_body_bytes, routes=routes)
    rejected = runtime.metrics.rejected

    def count(reason: str) -> None:
        rejected.labels("http", reason).inc()

    service = HttpService(HttpServer(host, port, app, limits=limits or HttpLimits(), tls=tls,
                                     reuse_port=reuse_port, on_event=count, name="http"))
    log.info("HTTP listening on %s:%d (tls=%s)", host, service.port, tls is not None)
    return service
