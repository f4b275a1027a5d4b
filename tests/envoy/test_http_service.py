"""The HTTP-service mode's pure translation: forwarded request <-> CheckRequest/CheckResponse."""

from __future__ import annotations

import pytest

from adapters.envoy.http_service import (
    UnrepresentableResponse,
    check_response_to_http,
    http_to_check_request,
    strip_prefix,
)
from adapters.envoy.translate import (
    check_request_to_input,
    error_response,
    result_to_check_response,
)


@pytest.mark.parametrize(("target", "prefix", "stripped"), [
    ("/envoy/people?x=1", "/envoy", "/people?x=1"),
    ("/envoy", "/envoy", "/"),
    ("/envoy?x=1", "/envoy/", "/?x=1"),
    ("/envoyish/a", "/envoy", "/envoyish/a"),
    ("/people", "", "/people"),
])
def test_strip_prefix(target: str, prefix: str, stripped: str) -> None:
    assert strip_prefix(target, prefix) == stripped


def test_forwarded_request_gives_the_grpc_input_document() -> None:
    req = http_to_check_request(
        "post", "/envoy/people?lang=en", [("Host", "api"), ("Content-Type", "application/json"),
                                          ("X-Multi", "a"), ("x-multi", "b"),
                                          ("Connection", "keep-alive"),
                                          ("x-ordinance-authorization", "Bearer service")],
        b'{"firstname": "Charlie"}', path_prefix="/envoy", peer=("10.0.0.9", 4242))
    doc = check_request_to_input(req)
    http = doc["attributes"]["request"]["http"]
    assert (http["method"], http["path"], http["host"], http["size"]) == (
        "POST", "/people?lang=en", "api", "24")
    assert http["headers"] == {"host": "api", "content-type": "application/json",
                               "x-multi": "a,b"}
    assert doc["parsed_path"] == ["people"] and doc["parsed_query"] == {"lang": ["en"]}
    assert doc["parsed_body"] == {"firstname": "Charlie"} and not doc["truncated_body"]
    assert doc["attributes"]["source"]["address"]["socketAddress"] == {
        "address": "10.0.0.9", "portValue": 4242}


def test_cut_body_is_truncated_and_binary_body_is_raw() -> None:
    cut = http_to_check_request("POST", "/", [("content-type", "application/json")],
                                b'{"a": 1', partial=True)
    assert check_request_to_input(cut)["truncated_body"] is True
    binary = http_to_check_request("PUT", "/", [], b"\xff\xfe")
    assert binary.attributes.request.http.raw_body == b"\xff\xfe"


def test_allowed_and_denied_answers() -> None:
    status, headers, body = check_response_to_http(result_to_check_response({
        "allowed": True, "headers": {"x-up": "1"}, "response_headers_to_add": {"x-down": "2"},
        "request_headers_to_remove": ["cookie", "x-debug"]}, "d1"))
    assert (status, body) == (200, b"")
    assert headers == [("x-up", "1"), ("x-down", "2"),
                       ("x-envoy-auth-headers-to-remove", "cookie, x-debug"),
                       ("x-ordinance-decision-id", "d1")]
    status, headers, body = check_response_to_http(result_to_check_response(
        {"allowed": False, "http_status": 429, "body": "slow down"}, "d2"))
    assert (status, body) == (429, b"slow down")
    assert check_response_to_http(result_to_check_response(False, "d3"))[0] == 403
    assert check_response_to_http(error_response("boom", "d4"))[0] == 500


def test_answers_http_cannot_carry_are_refused() -> None:
    with pytest.raises(UnrepresentableResponse, match="query parameter"):
        check_response_to_http(result_to_check_response(
            {"allowed": True, "query_parameters_to_remove": ["debug"]}, "d"))
    with pytest.raises(UnrepresentableResponse, match="not a valid HTTP header"):
        check_response_to_http(result_to_check_response(
            {"allowed": False, "headers": {"x-a": "1\r\nSet-Cookie: admin=1"}}, "d"))
