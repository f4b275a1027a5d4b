"""An Envoy check's input document rebuilt from its decision-log record, for `ordinance replay`.

The log keeps the CheckRequest's `attributes` (credential headers `[redacted]`), `subject` and
`resource`, and leaves out what follows from the attributes (`DERIVED_MEMBERS`); here those are
derived again exactly as `check_request_to_input` derived them. What the record cannot give
back is returned as missing paths: the redacted header values (in `attributes` and in
`command.headers`), and the parsed body of a record that does not say which body limit
applied (written before `max_body` was recorded).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import ParseDict, ParseError  # type: ignore[import-untyped]

from adapters.envoy.translate import (
    REDACTED,
    SENSITIVE_HEADERS,
    CheckRequest,
    RequestParseError,
    check_request_to_input,
)

Path = tuple[str, ...]
_HTTP = ("attributes", "request", "http")


def input_from_log(logged: dict[str, Any], max_body: int | None = None
                   ) -> tuple[dict[str, Any], list[Path]]:
    """(input document, missing paths); ValueError when the attributes are not a request."""
    request = CheckRequest()
    try:
        ParseDict({"attributes": logged.get("attributes") or {}}, request)
        doc = (check_request_to_input(request) if max_body is None
               else check_request_to_input(request, max_body=max_body))
    except (ParseError, RequestParseError, TypeError) as exc:
        raise ValueError(str(exc)) from exc
    doc["subject"] = logged.get("subject")
    if "resource" in logged:
        doc["resource"] = logged["resource"]
    missing: list[Path] = []
    headers = doc["command"]["headers"]
    for name, value in headers.items():
        if name in SENSITIVE_HEADERS and value == REDACTED:
            missing += [("command", "headers", name), (*_HTTP, "headers", name)]
    header_map = request.attributes.request.http.header_map
    for entry in header_map.headers:
        if entry.key.lower() in SENSITIVE_HEADERS:
            missing.append((*_HTTP, "headerMap"))
    http = request.attributes.request.http
    if max_body is None and (http.body or http.raw_body):
        missing += [("parsed_body",), ("truncated_body",)]
    return doc, missing
