"""Envoy ext_authz v3 <-> Ordinance: pure translation functions, no I/O, no policy logic.

`check_request_to_input` builds the input document opa-envoy-plugin gives its policies
(`envoyauth/request.go`), so OPA Envoy policies run unchanged, plus Ordinance's own members:

* `attributes`: the CheckRequest's AttributeContext in protojson (camelCase, int64 as strings,
  bytes as base64, defaults omitted), exactly as the plugin's `protojson.Marshal`.
* `parsed_path`: Go `url.Parse(path).Path` (percent-decoded), leading slashes trimmed, split on
  "/": `/` -> `[""]`, `/a/b/` -> `["a", "b", ""]`.
* `parsed_query`: Go `url.Query()`: split on "&", pairs holding ";" or a bad escape dropped,
  `+` is a space, every value a list.
* `parsed_body` / `truncated_body`: JSON, `application/x-www-form-urlencoded` and
  `multipart/form-data` bodies by content-type (`body`, else `raw_body`); when
  `content-length` exceeds the bytes received the body is truncated and not parsed.
* `version`: `{"encoding": "protojson", "ext_authz": "v3"}`.
* Ordinance: `subject`, `resource` (from context extensions) and `command`
  (`protocol: "http"`, `method`, `path`, `query`, `headers` with lower-case keys, `host`, `raw`).

Deliberate differences from the plugin, all on the safe side: a path starting with `//` is a
path, never an authority (Go would drop its first segment); `truncated_body` is also true when
Envoy flags a partial body (`x-envoy-auth-partial-body: true`) or the body exceeds `max_body`
(Ordinance does not parse it); `header_map` (Envoy's `encode_raw_headers`) is read when the
`headers` map is empty. A request the plugin cannot parse raises `RequestParseError`, which the
servicer answers with 400 as the plugin does.

`result_to_check_response` maps the result of an OPA-style decision query (a boolean or an
object with `allowed`, `headers`, `response_headers_to_add`, `request_headers_to_remove`,
`query_parameters_to_set`, `query_parameters_to_remove`, `body`, `http_status`,
`dynamic_metadata`) exactly as the plugin's `internal.go` does. `decision_to_check_response`
maps Ordinance's own Decision when that query is undefined. `error_response` (500) and
`failure_allowed_response` answer an evaluation failure; `redact_for_log` blanks credentials
before an input document is logged.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from envoy.config.core.v3 import base_pb2  # type: ignore[import-untyped]
from envoy.service.auth.v3 import external_auth_pb2  # type: ignore[import-untyped]
from envoy.type.v3 import http_status_pb2  # type: ignore[import-untyped]
from google.protobuf import struct_pb2  # type: ignore[import-untyped]
from google.rpc import code_pb2, status_pb2  # type: ignore[import-untyped]

from adapters.envoy.protojson import message_to_dict
from engine.decision import Decision
from engine.identity import Subject

if TYPE_CHECKING:  # the generated Envoy modules carry no type information
    CheckRequest: TypeAlias = Any
    CheckResponse: TypeAlias = Any
else:
    CheckRequest = external_auth_pb2.CheckRequest
    CheckResponse = external_auth_pb2.CheckResponse

VERSION = {"encoding": "protojson", "ext_authz": "v3"}
DEFAULT_MAX_BODY = 1 << 20
"""Bodies longer than this (bytes) are not parsed: `parsed_body` null, `truncated_body` true."""

DECISION_ID_HEADER = "x-ordinance-decision-id"
APPROVAL_ID_HEADER = "x-ordinance-approval-id"
APPROVAL_USED_HEADER = "x-ordinance-approval-used"
FAILURE_MODE_HEADER = "x-ordinance-failure-mode-allowed"
"""Added to the upstream request when an evaluation failure was let through
(`--envoy-failure-mode-allow`), like Envoy's own `x-envoy-auth-failure-mode-allowed`."""
SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
"""Header values `redact_for_log` replaces: credentials never reach the decision log."""
REDACTED = "[redacted]"
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
RESOURCE_LABEL_PREFIX = "label."
"""Context extensions `label.<name>: <value>` become `resource.labels[<name>]`."""

_STATUS_RANGE = range(100, 600)
"""Every HTTP status a policy may return: proto3 enums are open, so a code the `StatusCode`
enum does not name (418, 599) passes through to Envoy, as with opa-envoy-plugin."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEX = frozenset("0123456789abcdefABCDEF")


class RequestParseError(ValueError):
    """The CheckRequest cannot be turned into an input document (the plugin answers 400)."""


class ResultError(ValueError):
    """The decision query's result has a shape the plugin would refuse."""


# ---------------------------------------------------------------------------------------------
# Go net/url semantics


def _unescape(text: str, *, plus_is_space: bool) -> str:
    """Go `url.PathUnescape` / `url.QueryUnescape`: strict %XX, UTF-8 decoded leniently."""
    if "%" not in text and not (plus_is_space and "+" in text):
        return text
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "%":
            pair = text[i + 1:i + 3]
            if len(pair) != 2 or not set(pair) <= _HEX:
                raise RequestParseError(f"invalid URL escape {text[i:i + 3]!r}")
            out.append(int(pair, 16))
            i += 3
            continue
        out.extend(b" " if plus_is_space and ch == "+" else ch.encode("utf-8"))
        i += 1
    return out.decode("utf-8", errors="replace")


def _split_target(target: str) -> tuple[str, str]:
    """(raw path, raw query) of a request target; the fragment is dropped."""
    if _CONTROL.search(target):
        raise RequestParseError("invalid control character in URL")
    target = target.split("#", 1)[0]
    path, _, query = target.partition("?")
    return path, query


def parse_path(raw_path: str) -> list[str]:
    """The plugin's `parsed_path` for the path part of a request target."""
    decoded = _unescape(raw_path, plus_is_space=False)
    return decoded.lstrip("/").split("/")


def parse_query(raw_query: str, *, strict: bool = False) -> dict[str, list[str]]:
    """Go `url.ParseQuery`: bad pairs are skipped, or raise `RequestParseError` when strict."""
    out: dict[str, list[str]] = {}
    for pair in raw_query.split("&"):
        if not pair:
            continue
        if ";" in pair:
            if strict:
                raise RequestParseError("invalid semicolon separator in query")
            continue
        key, _, value = pair.partition("=")
        try:
            key = _unescape(key, plus_is_space=True)
            value = _unescape(value, plus_is_space=True)
        except RequestParseError:
            if strict:
                raise
            continue
        out.setdefault(key, []).append(value)
    return out


# ---------------------------------------------------------------------------------------------
# CheckRequest -> input document


def request_headers(http: Any) -> dict[str, str]:
    """The request's headers with lower-case names (`headers`, else `header_map`)."""
    if http.headers:
        headers = dict(http.headers)
        names = "".join(headers)
        if names.islower() or names == names.lower():  # Envoy sends lower-case names
            return headers
        return {k.lower(): v for k, v in headers.items()}
    merged: dict[str, str] = {}
    for header in http.header_map.headers:
        value = header.value or header.raw_value.decode("utf-8", errors="replace")
        key = header.key.lower()
        merged[key] = f"{merged[key]},{value}" if key in merged else value
    return merged


def _content_length_exceeds(headers: Mapping[str, str], received: int) -> bool:
    value = headers.get("content-length")
    if value is None:
        return False
    try:
        length = int(value.strip())
    except ValueError:
        raise RequestParseError(f"invalid content-length {value!r}") from None
    return length != -1 and length > received


def _parse_multipart(content_type: str, payload: bytes) -> dict[str, list[Any]] | None:
    if "boundary=" not in content_type:
        return None
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", errors="replace") + b"\r\n\r\n"
        + payload)
    if not message.is_multipart():
        raise RequestParseError("multipart body without parts")
    values: dict[str, list[Any]] = {}
    for part in message.iter_parts():
        if part.get_content_disposition() != "form-data":
            continue
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            continue
        raw = part.get_payload(decode=True)
        data = raw if isinstance(raw, bytes) else b""
        if "application/json" in (part.get("content-type") or ""):
            try:
                values.setdefault(name, []).append(json.loads(data))
            except ValueError as exc:
                raise RequestParseError(f"multipart part {name!r}: invalid JSON: {exc}") \
                    from None
        else:
            values.setdefault(name, []).append(data.decode("utf-8", errors="replace"))
    return values


def parse_body(headers: Mapping[str, str], body: str, raw_body: bytes, *,
               max_body: int = DEFAULT_MAX_BODY) -> tuple[Any, bool]:
    """(parsed_body, truncated_body) as the plugin computes them, `max_body` aside."""
    partial = headers.get(PARTIAL_BODY_HEADER, "").lower() == "true"
    content_type = headers.get("content-type")
    if content_type is None:
        return None, partial
    payload = body.encode("utf-8") if body else raw_body
    kind = next((k for k in ("application/json", "application/x-www-form-urlencoded",
                             "multipart/form-data") if k in content_type), None)
    if kind is None or not payload:
        return None, partial
    if partial or _content_length_exceeds(headers, len(payload)) or len(payload) > max_body:
        return None, True
    if kind == "application/json":
        try:
            return json.loads(payload), False
        except ValueError as exc:
            raise RequestParseError(f"invalid JSON body: {exc}") from None
    if kind == "application/x-www-form-urlencoded":
        return parse_query(payload.decode("utf-8", errors="replace"), strict=True), False
    return _parse_multipart(content_type, payload), False


def resource_from_extensions(extensions: Mapping[str, str], host: str) -> dict[str, Any]:
    """`resource` from context extensions `resource_type`, `resource_name`, `label.<k>`."""
    return {
        "type": extensions.get("resource_type", "http"),
        "name": extensions.get("resource_name", host),
        "labels": {k[len(RESOURCE_LABEL_PREFIX):]: v for k, v in extensions.items()
                   if k.startswith(RESOURCE_LABEL_PREFIX)},
    }


def check_request_to_input(req: CheckRequest, *, subject: Subject | None = None,
                           max_body: int = DEFAULT_MAX_BODY,
                           headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The policy input document for one CheckRequest (see the module docstring);
    `headers`: `request_headers(req.attributes.request.http)` when the caller has it."""
    if not req.attributes.request.HasField("http"):
        raise RequestParseError("missing required attributes in v3 CheckRequest")
    http = req.attributes.request.http
    input_doc: dict[str, Any] = message_to_dict(req)
    raw_path, raw_query = _split_target(http.path)
    parsed_path = parse_path(raw_path)
    parsed_query = parse_query(raw_query)
    if headers is None:
        headers = request_headers(http)
    parsed_body, truncated = parse_body(headers, http.body, http.raw_body, max_body=max_body)
    host = http.host or headers.get(":authority", "")
    method = http.method or headers.get(":method", "")
    input_doc.update({
        "version": dict(VERSION),
        "parsed_path": parsed_path,
        "parsed_query": parsed_query,
        "parsed_body": parsed_body,
        "truncated_body": truncated,
        "subject": subject.to_input() if subject is not None else None,
        "resource": resource_from_extensions(req.attributes.context_extensions, host),
        "command": {
            "protocol": "http",
            "method": method.upper(),
            "path": raw_path,
            "query": parsed_query,
            "headers": headers,
            "host": host,
            "raw": f"{method.upper()} {http.path}",
        },
    })
    return input_doc


def bearer_token(req: CheckRequest, headers: dict[str, str] | None = None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if any."""
    if headers is None:
        headers = request_headers(req.attributes.request.http)
    value = headers.get("authorization", "")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


# ---------------------------------------------------------------------------------------------
# Decision query result -> CheckResponse (the plugin's mapping)


def _header_options(pairs: Iterable[tuple[str, str]]) -> list[base_pb2.HeaderValueOption]:
    return [base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v))
            for k, v in pairs]


def _headers_map(field: str, value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, dict):
        raise ResultError(f"expected {field} to be an object, got {type(value).__name__}")
    out: list[tuple[str, str]] = []
    for key, item in value.items():
        if isinstance(item, str):
            out.append((key, item))
        elif isinstance(item, list):
            for element in item:
                if not isinstance(element, str):
                    raise ResultError(f"invalid value type {type(element).__name__} for "
                                      f"header {key!r}")
                out.append((key, element))
        else:
            raise ResultError(f"invalid value type {type(item).__name__} for header {key!r}")
    return out


def _headers(result: Mapping[str, Any], field: str) -> list[tuple[str, str]]:
    """The plugin's `transformAnyInputToHeadersBag`: an object, or a list of objects."""
    if field not in result:
        return []
    value = result[field]
    if isinstance(value, list):
        return [pair for item in value for pair in _headers_map(field, item)]
    return _headers_map(field, value)


def _strings(result: Mapping[str, Any], field: str) -> list[str]:
    value = result.get(field)
    if value is None and field not in result:
        return []
    if not isinstance(value, list):
        raise ResultError(f"expected {field} to be a list of strings, got "
                          f"{type(value).__name__}")
    for item in value:
        if not isinstance(item, str):
            raise ResultError(f"expected {field} values to be strings, got "
                              f"{type(item).__name__}")
    return list(value)


def _query_parameters(result: Mapping[str, Any]) -> list[base_pb2.QueryParameter]:
    if "query_parameters_to_set" not in result:
        return []
    value = result["query_parameters_to_set"]
    if not isinstance(value, dict):
        raise ResultError("expected query_parameters_to_set to be an object")
    out: list[base_pb2.QueryParameter] = []
    for key, item in value.items():
        items = item if isinstance(item, list) else [item]
        for element in items:
            if not isinstance(element, str):
                raise ResultError(f"expected query parameter {key!r} to be a string or a "
                                  "list of strings")
            out.append(base_pb2.QueryParameter(key=key, value=element))
    return out


def _http_status(result: Mapping[str, Any]) -> int:
    if "http_status" not in result:
        return int(http_status_pb2.Forbidden)
    value = result["http_status"]
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ResultError(f"expected http_status to be an integer, got {value!r}")
    if int(value) not in _STATUS_RANGE:
        raise ResultError(f"invalid HTTP status code {value} (must be 100-599)")
    return int(value)


def _struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    try:
        out.update(value)
    except (TypeError, ValueError) as exc:
        raise ResultError(f"dynamic_metadata is not JSON-like: {exc}") from None
    return out


def is_allowed(result: Any) -> bool:
    """The plugin's `IsAllowed`: a boolean, or an object's boolean `allowed`."""
    if isinstance(result, bool):
        return result
    if isinstance(result, dict):
        if "allowed" not in result:
            raise ResultError('unable to determine evaluation result due to missing "allowed" '
                              "key")
        allowed = result["allowed"]
        if not isinstance(allowed, bool):
            raise ResultError("expected allowed to be a boolean, got "
                              f"{type(allowed).__name__}")
        return allowed
    raise ResultError(f"illegal value for policy evaluation result: {type(result).__name__}")


def result_to_check_response(result: Any, decision_id: str) -> CheckResponse:
    """The CheckResponse for a decision query's result, as the plugin builds it.

    A boolean gives only the gRPC status (Envoy then answers 403 on deny). An object also
    gives headers, body, HTTP status and dynamic metadata. `decision_id` is always added to the
    dynamic metadata. Raises `ResultError` for any shape the plugin would refuse.
    """
    allowed = is_allowed(result)
    response = external_auth_pb2.CheckResponse(status=status_pb2.Status(
        code=code_pb2.OK if allowed else code_pb2.PERMISSION_DENIED))
    if isinstance(result, dict):
        headers = _header_options(_headers(result, "headers"))
        if "dynamic_metadata" in result:
            metadata = result["dynamic_metadata"]
            if not isinstance(metadata, dict):
                raise ResultError("expected dynamic_metadata to be an object, got "
                                  f"{type(metadata).__name__}")
            response.dynamic_metadata.CopyFrom(_struct(metadata))
        if allowed:
            response.ok_response.CopyFrom(external_auth_pb2.OkHttpResponse(
                headers=headers,
                headers_to_remove=_strings(result, "request_headers_to_remove"),
                response_headers_to_add=_header_options(
                    _headers(result, "response_headers_to_add")),
                query_parameters_to_set=_query_parameters(result),
                query_parameters_to_remove=_strings(result, "query_parameters_to_remove"),
            ))
        else:
            body = result.get("body", "")
            if not isinstance(body, str):
                raise ResultError(f"expected body to be a string, got {type(body).__name__}")
            response.denied_response.CopyFrom(external_auth_pb2.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=_http_status(result)),
                headers=headers, body=body))
    response.dynamic_metadata.fields["decision_id"].string_value = decision_id
    return response


# ---------------------------------------------------------------------------------------------
# Ordinance's own answers


def _denied(grpc_code: int, http_code: int, body: Mapping[str, Any],
            headers: Iterable[tuple[str, str]], metadata: Mapping[str, Any]) -> CheckResponse:
    response = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=grpc_code))
    response.denied_response.CopyFrom(external_auth_pb2.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=http_code),
        headers=_header_options([("content-type", "application/json"), *headers]),
        body=json.dumps(body, separators=(",", ":"), sort_keys=True)))
    response.dynamic_metadata.update(dict(metadata))
    return response


def decision_to_check_response(decision: Decision, decision_id: str,
                               approval_id: str | None = None) -> CheckResponse:
    """Ordinance's Decision as a CheckResponse.

    allow -> OK, with `x-ordinance-decision-id` on the upstream request and the client response;
    deny -> 403 with a JSON body `{"effect", "decision_id", "reasons": [{"message"}]}`;
    review -> 403, the body also holding `approval_id` (and each reason's approvers/window),
    with an `x-ordinance-approval-id` header when an approval request exists.
    Policy names stay out of the body (they are in the audit record).
    """
    metadata: dict[str, Any] = {"decision_id": decision_id, "effect": decision.effect,
                                "policy_revision": decision.policy_revision}
    id_header = [(DECISION_ID_HEADER, decision_id)]
    if decision.effect == "allow":
        response = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))
        response.ok_response.CopyFrom(external_auth_pb2.OkHttpResponse(
            headers=_header_options(id_header),
            response_headers_to_add=_header_options(id_header)))
        response.dynamic_metadata.update(metadata)
        return response
    reasons = []
    for reason in decision.reasons:
        item: dict[str, Any] = {"message": reason.message, "effect": reason.effect}
        if decision.effect == "review" and reason.approvers:
            item["approvers"] = list(reason.approvers)
        if decision.effect == "review" and reason.window:
            item["window"] = reason.window
        reasons.append(item)
    body: dict[str, Any] = {"effect": decision.effect, "decision_id": decision_id,
                            "reasons": reasons}
    headers = list(id_header)
    if decision.effect == "review":
        body["approval_id"] = approval_id
        if approval_id:
            headers.append((APPROVAL_ID_HEADER, approval_id))
            metadata["approval_id"] = approval_id
    return _denied(code_pb2.PERMISSION_DENIED, http_status_pb2.Forbidden, body, headers,
                   metadata)


def approval_used_response(decision: Decision, decision_id: str) -> CheckResponse:
    """OK for a `review` decision that an approved request covers (and that was just used):
    like an allow, plus `x-ordinance-approval-used: true` on the upstream request."""
    response = decision_to_check_response(
        Decision(effect="allow", policy_revision=decision.policy_revision), decision_id)
    response.ok_response.headers.extend(_header_options([(APPROVAL_USED_HEADER, "true")]))
    response.dynamic_metadata.fields["approval_used"].bool_value = True
    return response


def unauthenticated_response(message: str, decision_id: str) -> CheckResponse:
    """401 for a missing or invalid bearer token where a subject is needed."""
    return _denied(code_pb2.UNAUTHENTICATED, http_status_pb2.Unauthorized,
                   {"error": "unauthenticated", "message": message,
                    "decision_id": decision_id},
                   [(DECISION_ID_HEADER, decision_id),
                    ("www-authenticate", 'Bearer error="invalid_token"')],
                   {"decision_id": decision_id, "effect": "deny"})


def bad_request_response(message: str, decision_id: str) -> CheckResponse:
    """400 for a CheckRequest that cannot be parsed (as the plugin: denied, body = error)."""
    return _denied(code_pb2.PERMISSION_DENIED, http_status_pb2.BadRequest,
                   {"error": "bad request", "message": message, "decision_id": decision_id},
                   [(DECISION_ID_HEADER, decision_id)],
                   {"decision_id": decision_id, "effect": "deny"})


def error_response(message: str, decision_id: str, status: int = 500) -> CheckResponse:
    """500 when the policy failed or returned a malformed result (503: no policy set yet).

    The plugin returns a gRPC error here and leaves the outcome to Envoy's `failure_mode_allow`;
    Ordinance answers an explicit deny (gRPC OK, status INTERNAL in the CheckResponse), so that
    Envoy setting cannot turn a policy error into an allow; `failure_allowed_response` is the
    operator's explicit opt-in. The message stays out of the body (it can show policy
    internals to any client); it is in the decision log under the same decision id.
    """
    return _denied(code_pb2.INTERNAL if status == 500 else code_pb2.UNAVAILABLE, status,
                   {"error": "policy error" if status == 500 else "unavailable",
                    "decision_id": decision_id},
                   [(DECISION_ID_HEADER, decision_id)],
                   {"decision_id": decision_id, "effect": "deny", "error": message})


def failure_allowed_response(message: str, decision_id: str) -> CheckResponse:
    """OK despite an evaluation failure (`--envoy-failure-mode-allow`): the upstream request
    carries `x-ordinance-failure-mode-allowed: true` and the decision id."""
    response = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))
    response.ok_response.CopyFrom(external_auth_pb2.OkHttpResponse(headers=_header_options([
        (DECISION_ID_HEADER, decision_id), (FAILURE_MODE_HEADER, "true")])))
    response.dynamic_metadata.update({"decision_id": decision_id, "effect": "allow",
                                      "failure_mode_allowed": True, "error": message})
    return response


def is_allowed_response(response: CheckResponse) -> bool:
    return bool(response.status.code == code_pb2.OK)


def response_http_status(response: CheckResponse) -> int:
    """The HTTP status Envoy gives the client: 200 on OK, else the denied status (403)."""
    if response.status.code == code_pb2.OK:
        return 200
    code = response.denied_response.status.code if response.HasField("denied_response") else 0
    return int(code) or int(http_status_pb2.Forbidden)


# ---------------------------------------------------------------------------------------------
# Decision log


def _redact_headers(headers: Any) -> Any:
    if not isinstance(headers, dict) or not SENSITIVE_HEADERS.intersection(
            k.lower() for k in headers):
        return headers
    return {k: REDACTED if k.lower() in SENSITIVE_HEADERS else v for k, v in headers.items()}


DERIVED_MEMBERS = ("parsed_path", "parsed_query", "parsed_body", "truncated_body", "version",
                   "command")
"""Input members computed from `attributes`: the decision log leaves them out (they follow
from the logged attributes, and would double the record's size and writing cost)."""


def redact_for_log(input_doc: dict[str, Any]) -> dict[str, Any]:
    """The input document as the decision log keeps it: `attributes` with credential headers
    replaced by `[redacted]`, `subject` and `resource`; derived members left out.

    Only the dicts on the way to a header map are copied; the rest is shared with `input_doc`
    (read-only). The verified `subject` stays: who asked is what an audit record needs.
    """
    out = {k: v for k, v in input_doc.items() if k not in DERIVED_MEMBERS}
    http = (((input_doc.get("attributes") or {}).get("request") or {}).get("http"))
    if isinstance(http, dict):
        new_http = dict(http)
        new_http["headers"] = _redact_headers(http.get("headers"))
        header_map = http.get("headerMap")
        if isinstance(header_map, dict) and isinstance(header_map.get("headers"), list):
            new_http["headerMap"] = {**header_map, "headers": [
                {**h, **({"value": REDACTED} if "value" in h else {}),
                 **({"rawValue": REDACTED} if "rawValue" in h else {})}
                if isinstance(h, dict) and str(h.get("key", "")).lower() in SENSITIVE_HEADERS
                else h for h in header_map["headers"]]}
        if new_http.get("headers") is None:
            new_http.pop("headers")
        attributes = dict(input_doc["attributes"])
        attributes["request"] = {**attributes["request"], "http": new_http}
        out["attributes"] = attributes
    return out
