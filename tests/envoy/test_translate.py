"""Envoy ext_authz translation: CheckRequest -> input document, results -> CheckResponse.

Expected values follow opa-envoy-plugin (`envoyauth/request.go`, `envoyauth/response.go`,
`internal/internal.go`) and Go's net/url, which the plugin uses for paths and queries.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf.json_format import MessageToDict
from google.rpc import code_pb2
from hypothesis import given
from hypothesis import strategies as st

from adapters.envoy.translate import (
    APPROVAL_ID_HEADER,
    DECISION_ID_HEADER,
    RequestParseError,
    ResultError,
    bearer_token,
    check_request_to_input,
    decision_to_check_response,
    parse_path,
    parse_query,
    response_http_status,
    result_to_check_response,
    unauthenticated_response,
)
from engine.decision import Decision, Reason
from engine.facts.http import http_facts
from engine.identity import Subject


def make_request(path: str = "/api/v1/cards?limit=10&limit=20&q=a+b", method: str = "GET",
                 headers: dict[str, str] | None = None, body: str = "",
                 raw_body: bytes = b"", extensions: dict[str, str] | None = None
                 ) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    attributes = req.attributes
    attributes.source.address.socket_address.address = "10.1.2.3"
    attributes.source.address.socket_address.port_value = 51234
    attributes.source.principal = "spiffe://cluster.local/ns/shop/sa/frontend"
    attributes.destination.address.socket_address.address = "10.9.9.9"
    attributes.destination.address.socket_address.port_value = 8080
    http = attributes.request.http
    http.id = "req-1"
    http.method = method
    http.path = path
    http.host = "payments.internal"
    http.scheme = "https"
    http.protocol = "HTTP/1.1"
    for key, value in (headers if headers is not None else {
            ":method": method, ":path": path, ":authority": "payments.internal",
            "user-agent": "curl/8"}).items():
        http.headers[key] = value
    http.body = body
    http.raw_body = raw_body
    http.size = len(body or raw_body)
    for key, value in (extensions or {}).items():
        attributes.context_extensions[key] = value
    attributes.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"].update(
        {"jwt_payload": {"sub": "alice"}})
    return req


# --- CheckRequest -> input ------------------------------------------------------------------

def test_input_document_has_the_plugin_shape() -> None:
    req = make_request(extensions={"resource_name": "payments-api", "label.env": "prod"})
    doc = check_request_to_input(req)
    attributes = doc["attributes"]
    assert attributes == MessageToDict(req)["attributes"]
    http = attributes["request"]["http"]
    assert (http["method"], http["path"], http["host"]) == (
        "GET", "/api/v1/cards?limit=10&limit=20&q=a+b", "payments.internal")
    assert http["headers"]["user-agent"] == "curl/8"
    assert "size" not in http and "body" not in http                  # defaults omitted
    assert attributes["source"]["address"]["socketAddress"] == {"address": "10.1.2.3",
                                                                "portValue": 51234}
    assert attributes["source"]["principal"] == "spiffe://cluster.local/ns/shop/sa/frontend"
    assert attributes["contextExtensions"] == {"resource_name": "payments-api",
                                               "label.env": "prod"}
    assert attributes["metadataContext"]["filterMetadata"][
        "envoy.filters.http.jwt_authn"] == {"jwt_payload": {"sub": "alice"}}
    assert doc["version"] == {"encoding": "protojson", "ext_authz": "v3"}
    assert doc["parsed_path"] == ["api", "v1", "cards"]
    assert doc["parsed_query"] == {"limit": ["10", "20"], "q": ["a b"]}
    assert doc["parsed_body"] is None and doc["truncated_body"] is False
    json.dumps(doc)                                                   # plain JSON data


def test_raw_body_is_base64_as_protojson() -> None:
    doc = check_request_to_input(make_request(raw_body=b"\x00\x01binary"))
    assert doc["attributes"]["request"]["http"]["rawBody"] == "AAFiaW5hcnk="


def test_ordinance_members() -> None:
    subject = Subject("alice@example.com", ("dev",), {"sub": "u1"})
    req = make_request(method="post", extensions={
        "resource_name": "payments-api", "resource_type": "http-api", "label.env": "prod",
        "label.team": "payments", "other": "x"})
    doc = check_request_to_input(req, subject=subject)
    assert doc["subject"] == {"id": "alice@example.com", "groups": ["dev"],
                              "claims": {"sub": "u1"}}
    assert doc["resource"] == {"type": "http-api", "name": "payments-api",
                               "labels": {"env": "prod", "team": "payments"}}
    command = doc["command"]
    assert command == {
        "protocol": "http", "method": "POST", "path": "/api/v1/cards",
        "query": {"limit": ["10", "20"], "q": ["a b"]},
        "headers": {":method": "post", ":path": "/api/v1/cards?limit=10&limit=20&q=a+b",
                    ":authority": "payments.internal", "user-agent": "curl/8"},
        "host": "payments.internal", "raw": "POST /api/v1/cards?limit=10&limit=20&q=a+b",
    }
    facts = http_facts(command)                   # what the engine derives agrees
    assert (facts["method"], facts["path"], facts["query"]) == (
        "POST", "/api/v1/cards", command["query"])


def test_defaults_without_subject_or_extensions() -> None:
    doc = check_request_to_input(make_request())
    assert doc["subject"] is None
    assert doc["resource"] == {"type": "http", "name": "payments.internal", "labels": {}}


def test_header_map_is_read_when_headers_are_empty() -> None:
    req = make_request(headers={})
    for key, value in (("Content-Type", "application/json"), ("X-Forwarded-For", "1.1.1.1"),
                       ("x-forwarded-for", "2.2.2.2")):
        header = req.attributes.request.http.header_map.headers.add()
        header.key, header.raw_value = key, value.encode()
    req.attributes.request.http.body = '{"a": 1}'
    doc = check_request_to_input(req)
    assert doc["command"]["headers"] == {"content-type": "application/json",
                                         "x-forwarded-for": "1.1.1.1,2.2.2.2"}
    assert doc["parsed_body"] == {"a": 1}


def test_missing_http_attributes() -> None:
    with pytest.raises(RequestParseError, match="missing required attributes"):
        check_request_to_input(external_auth_pb2.CheckRequest())


@pytest.mark.parametrize(("path", "segments"), [
    ("/", [""]),
    ("", [""]),
    ("/a/b", ["a", "b"]),
    ("/a/b/", ["a", "b", ""]),
    ("///a", ["a"]),                    # leading slashes trimmed (never an authority here)
    ("/a//b", ["a", "", "b"]),
    ("/a%2Fb/c", ["a", "b", "c"]),      # Go decodes %2F into the path
    ("/caf%C3%A9/a%20b/x+y", ["café", "a b", "x+y"]),
    ("/a/b?x=1#frag", ["a", "b"]),
    ("/a#frag?x", ["a"]),
    ("/%ff", ["\ufffd"]),
])
def test_parsed_path(path: str, segments: list[str]) -> None:
    doc = check_request_to_input(make_request(path=path))
    assert doc["parsed_path"] == segments


@pytest.mark.parametrize("path", ["/a%zz", "/a%2", "/a\x00b", "/a\nb", "/x?y=\x7f"])
def test_unparseable_paths(path: str) -> None:
    with pytest.raises(RequestParseError):
        check_request_to_input(make_request(path=path))


@pytest.mark.parametrize(("query", "parsed"), [
    ("", {}),
    ("a=1&a=2&b", {"a": ["1", "2"], "b": [""]}),
    ("x=a+b%20c&y=%2B", {"x": ["a b c"], "y": ["+"]}),
    ("a=1;b=2&c=3", {"c": ["3"]}),             # Go drops pairs with ';'
    ("a=%zz&b=1", {"b": ["1"]}),               # and pairs with bad escapes
    ("&&a=1&", {"a": ["1"]}),
    ("=v&k==", {"": ["v"], "k": ["="]}),
    ("k%5B%5D=1", {"k[]": ["1"]}),
])
def test_parsed_query(query: str, parsed: dict[str, list[str]]) -> None:
    assert parse_query(query) == parsed
    assert check_request_to_input(make_request(path=f"/p?{query}"))["parsed_query"] == parsed


# --- bodies -----------------------------------------------------------------------------------

def body_doc(content_type: str | None, body: str = "", raw_body: bytes = b"",
             content_length: str | None = None, **kwargs: Any) -> dict[str, Any]:
    headers = {":method": "POST", ":path": "/p"}
    if content_type is not None:
        headers["content-type"] = content_type
    if content_length is not None:
        headers["content-length"] = content_length
    req = make_request(path="/p", method="POST", headers=headers, body=body, raw_body=raw_body)
    return check_request_to_input(req, **kwargs)


def test_json_body() -> None:
    doc = body_doc("application/json; charset=utf-8", '{"amount": 10, "pan": "x"}',
                   content_length="26")
    assert doc["parsed_body"] == {"amount": 10, "pan": "x"}
    assert doc["truncated_body"] is False
    assert doc["attributes"]["request"]["http"]["size"] == "26"          # int64 as a string


def test_json_body_from_raw_body() -> None:
    assert body_doc("application/json", raw_body=b'[1, 2]')["parsed_body"] == [1, 2]


def test_truncated_json_body_is_not_parsed() -> None:
    doc = body_doc("application/json", '{"amount": 1', content_length="100")
    assert doc["parsed_body"] is None and doc["truncated_body"] is True


def test_content_length_counts_bytes() -> None:
    body = '{"name": "é"}'                      # 14 bytes, 13 characters
    assert body_doc("application/json", body, content_length="14")["truncated_body"] is False


def test_partial_body_flag_and_max_body() -> None:
    req = make_request(path="/p", headers={"content-type": "application/json",
                                           "x-envoy-auth-partial-body": "true"}, body="{}")
    assert check_request_to_input(req)["truncated_body"] is True
    doc = body_doc("application/json", json.dumps({"k": "v" * 100}), max_body=50)
    assert doc["parsed_body"] is None and doc["truncated_body"] is True


@pytest.mark.parametrize(("content_type", "body", "content_length", "message"), [
    ("application/json", "{not json", None, "invalid JSON body"),
    ("application/json", "{}", "ten", "invalid content-length"),
    ("application/x-www-form-urlencoded", "a=1;b=2", None, "semicolon"),
    ("application/x-www-form-urlencoded", "a=%zz", None, "invalid URL escape"),
])
def test_bad_bodies(content_type: str, body: str, content_length: str | None,
                    message: str) -> None:
    with pytest.raises(RequestParseError, match=message):
        body_doc(content_type, body, content_length=content_length)


def test_bodies_that_are_not_parsed() -> None:
    assert body_doc(None, '{"a": 1}')["parsed_body"] is None
    assert body_doc("text/plain", "hello")["parsed_body"] is None
    assert body_doc("application/json", "")["parsed_body"] is None
    assert body_doc("application/grpc", raw_body=b"\x00\x00\x00\x00\x00")["parsed_body"] is None


def test_form_body() -> None:
    doc = body_doc("application/x-www-form-urlencoded", "user=alice&roles=a&roles=b+c")
    assert doc["parsed_body"] == {"user": ["alice"], "roles": ["a", "b c"]}


def test_multipart_body() -> None:
    body = ("--XYZ\r\n"
            'Content-Disposition: form-data; name="meta"\r\n'
            "Content-Type: application/json\r\n\r\n"
            '{"kind": "export"}\r\n'
            "--XYZ\r\n"
            'Content-Disposition: form-data; name="note"\r\n\r\n'
            "first\r\n"
            "--XYZ\r\n"
            'Content-Disposition: form-data; name="note"\r\n\r\n'
            "second\r\n"
            "--XYZ--\r\n")
    doc = body_doc("multipart/form-data; boundary=XYZ", body)
    assert doc["parsed_body"] == {"meta": [{"kind": "export"}], "note": ["first", "second"]}
    assert body_doc("multipart/form-data", body)["parsed_body"] is None      # no boundary


def test_bearer_token() -> None:
    assert bearer_token(make_request(headers={"authorization": "Bearer abc.def"})) == "abc.def"
    assert bearer_token(make_request(headers={"authorization": "bearer  t "})) == "t"
    assert bearer_token(make_request(headers={"authorization": "Basic eDp5"})) is None
    assert bearer_token(make_request(headers={"authorization": "Bearer "})) is None
    assert bearer_token(make_request(headers={})) is None


@given(st.dictionaries(st.text(max_size=8), st.lists(st.text(max_size=8), min_size=1,
                                                     max_size=3), max_size=4))
def test_query_round_trip(params: dict[str, list[str]]) -> None:
    encoded = urllib.parse.urlencode(params, doseq=True)
    assert parse_query(encoded) == {k: v for k, v in params.items()}


@given(st.lists(st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs",)),
                        max_size=6), min_size=1, max_size=5).filter(lambda s: s[0] != ""))
def test_path_round_trip(segments: list[str]) -> None:
    path = "/" + "/".join(urllib.parse.quote(s, safe="") for s in segments)
    assert parse_path(path) == segments


@given(st.text(max_size=40), st.text(max_size=40),
       st.sampled_from(["application/json", "application/x-www-form-urlencoded",
                        "multipart/form-data; boundary=b", "text/plain"]),
       st.one_of(st.none(), st.text(max_size=5)))
def test_any_request_gives_a_document_or_a_parse_error(path: str, body: str,
                                                       content_type: str,
                                                       content_length: str | None) -> None:
    headers = {"content-type": content_type}
    if content_length is not None:
        headers["content-length"] = content_length
    try:
        doc = check_request_to_input(make_request(path=path, headers=headers, body=body))
    except RequestParseError:
        return
    json.dumps(doc)
    assert isinstance(doc["parsed_path"], list) and isinstance(doc["truncated_body"], bool)


# --- result -> CheckResponse (the plugin's mapping) -------------------------------------------

def headers_of(options: Any) -> list[tuple[str, str]]:
    return [(o.header.key, o.header.value) for o in options]


def test_boolean_results() -> None:
    allowed = result_to_check_response(True, "d-1")
    assert allowed.status.code == code_pb2.OK
    assert allowed.WhichOneof("http_response") is None
    assert allowed.dynamic_metadata.fields["decision_id"].string_value == "d-1"
    denied = result_to_check_response(False, "d-2")
    assert denied.status.code == code_pb2.PERMISSION_DENIED
    assert denied.WhichOneof("http_response") is None


def test_allowed_object_result() -> None:
    response = result_to_check_response({
        "allowed": True,
        "headers": [{"x-user": "alice"}, {"x-groups": ["dev", "dba"]}],
        "request_headers_to_remove": ["authorization"],
        "response_headers_to_add": {"x-trace": "t1"},
        "query_parameters_to_set": {"tenant": "acme", "tag": ["a", "b"]},
        "query_parameters_to_remove": ["debug"],
        "dynamic_metadata": {"risk": 3, "tags": ["x"]},
        "body": "ignored when allowed",
    }, "d-3")
    assert response.status.code == code_pb2.OK
    ok = response.ok_response
    assert headers_of(ok.headers) == [("x-user", "alice"), ("x-groups", "dev"),
                                      ("x-groups", "dba")]
    assert list(ok.headers_to_remove) == ["authorization"]
    assert headers_of(ok.response_headers_to_add) == [("x-trace", "t1")]
    assert [(p.key, p.value) for p in ok.query_parameters_to_set] == [
        ("tenant", "acme"), ("tag", "a"), ("tag", "b")]
    assert list(ok.query_parameters_to_remove) == ["debug"]
    assert MessageToDict(response.dynamic_metadata) == {"risk": 3, "tags": ["x"],
                                                        "decision_id": "d-3"}


def test_denied_object_result() -> None:
    response = result_to_check_response({
        "allowed": False, "http_status": 401, "body": "who are you?",
        "headers": {"www-authenticate": "Bearer"},
        "response_headers_to_add": {"ignored": "on deny"},
    }, "d-4")
    assert response.status.code == code_pb2.PERMISSION_DENIED
    denied = response.denied_response
    assert (denied.status.code, denied.body) == (401, "who are you?")
    assert headers_of(denied.headers) == [("www-authenticate", "Bearer")]
    default = result_to_check_response({"allowed": False}, "d-5").denied_response
    assert (default.status.code, default.body, list(default.headers)) == (403, "", [])


@pytest.mark.parametrize(("result", "message"), [
    ({}, 'missing "allowed" key'),
    ({"allowed": "yes"}, "allowed to be a boolean"),
    ("allow", "illegal value"),
    (None, "illegal value"),
    ([True], "illegal value"),
    ({"allowed": True, "headers": "x"}, "headers to be an object"),
    ({"allowed": True, "headers": {"x": 1}}, "invalid value type int for header 'x'"),
    ({"allowed": True, "headers": {"x": [1]}}, "invalid value type int for header 'x'"),
    ({"allowed": True, "request_headers_to_remove": "authorization"}, "list of strings"),
    ({"allowed": True, "query_parameters_to_remove": [1]}, "values to be strings"),
    ({"allowed": True, "query_parameters_to_set": {"a": 1}}, "string or a list"),
    ({"allowed": True, "dynamic_metadata": []}, "dynamic_metadata to be an object"),
    ({"allowed": False, "http_status": 999}, "invalid HTTP status code 999"),
    ({"allowed": False, "http_status": 0}, "invalid HTTP status code 0"),
    ({"allowed": False, "http_status": 99}, "invalid HTTP status code 99"),
    ({"allowed": False, "http_status": 600}, "invalid HTTP status code 600"),
    ({"allowed": False, "http_status": -404}, "invalid HTTP status code -404"),
    ({"allowed": False, "http_status": "401"}, "http_status to be an integer"),
    ({"allowed": False, "http_status": True}, "http_status to be an integer"),
    ({"allowed": False, "http_status": 401.5}, "http_status to be an integer"),
    ({"allowed": False, "body": {"a": 1}}, "body to be a string"),
])
def test_malformed_results(result: Any, message: str) -> None:
    with pytest.raises(ResultError, match=message):
        result_to_check_response(result, "d")


@pytest.mark.parametrize("code", [100, 103, 226, 299, 418, 425, 451, 499, 530, 599])
def test_every_status_from_100_to_599_passes_through(code: int) -> None:
    """opa-envoy-plugin passes any status (proto3 enums are open), named in `StatusCode` or not."""
    response = result_to_check_response({"allowed": False, "http_status": code}, "d")
    assert response.denied_response.status.code == code
    assert response_http_status(response) == code


def test_integral_float_status_is_accepted() -> None:
    response = result_to_check_response({"allowed": False, "http_status": 429.0}, "d")
    assert response.denied_response.status.code == 429


# --- Ordinance decisions ----------------------------------------------------------------------

def body_of(response: Any) -> Any:
    return json.loads(response.denied_response.body)


def test_allow_decision() -> None:
    response = decision_to_check_response(Decision("allow", policy_revision="r1"), "d-10")
    assert response.status.code == code_pb2.OK
    assert headers_of(response.ok_response.headers) == [(DECISION_ID_HEADER, "d-10")]
    assert headers_of(response.ok_response.response_headers_to_add) == [
        (DECISION_ID_HEADER, "d-10")]
    assert MessageToDict(response.dynamic_metadata) == {
        "decision_id": "d-10", "effect": "allow", "policy_revision": "r1"}


def test_deny_decision() -> None:
    decision = Decision("deny", reasons=(
        Reason("ordinance.http.deny", "DELETE is not allowed on /cards"),
        Reason("ordinance.http.review", "needs approval", effect="review",
               approvers=("leads",))))
    response = decision_to_check_response(decision, "d-11")
    assert response.status.code == code_pb2.PERMISSION_DENIED
    assert response.denied_response.status.code == 403
    assert body_of(response) == {"effect": "deny", "decision_id": "d-11", "reasons": [
        {"message": "DELETE is not allowed on /cards", "effect": "deny"},
        {"message": "needs approval", "effect": "review"}]}
    assert "ordinance.http" not in response.denied_response.body      # policy names stay in
    assert (DECISION_ID_HEADER, "d-11") in headers_of(response.denied_response.headers)


def test_review_decision() -> None:
    decision = Decision("review", reasons=(Reason(
        "ordinance.pci.review", "bulk export of cards", effect="review",
        approvers=("dba-leads",), window="1h"),))
    response = decision_to_check_response(decision, "d-12", approval_id="apr-7")
    assert response.denied_response.status.code == 403
    assert body_of(response) == {
        "effect": "review", "decision_id": "d-12", "approval_id": "apr-7",
        "reasons": [{"message": "bulk export of cards", "effect": "review",
                     "approvers": ["dba-leads"], "window": "1h"}]}
    assert (APPROVAL_ID_HEADER, "apr-7") in headers_of(response.denied_response.headers)
    without = decision_to_check_response(decision, "d-13")
    assert body_of(without)["approval_id"] is None
    assert APPROVAL_ID_HEADER not in dict(headers_of(without.denied_response.headers))


def test_unauthenticated() -> None:
    response = unauthenticated_response("token expired", "d-14")
    assert response.status.code == code_pb2.UNAUTHENTICATED
    assert response.denied_response.status.code == 401
    assert body_of(response)["message"] == "token expired"
    assert ("www-authenticate", 'Bearer error="invalid_token"') in headers_of(
        response.denied_response.headers)
