"""`adapters.envoy.protojson.message_to_dict` gives exactly `MessageToDict`'s output."""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.json_format import MessageToDict
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.envoy.protojson import message_to_dict

text = st.text(max_size=12)
json_leaf = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(
    allow_nan=False, allow_infinity=False, width=32) | text
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(text, inner, max_size=3), max_leaves=8)


def full_request() -> external_auth_pb2.CheckRequest:
    """Every field of the v3 AttributeContext set, including the rare ones."""
    req = external_auth_pb2.CheckRequest()
    a = req.attributes
    a.source.address.socket_address.CopyFrom(address_pb2.SocketAddress(
        protocol=address_pb2.SocketAddress.UDP, address="10.0.0.1", port_value=5353,
        resolver_name="r", ipv4_compat=True))
    a.source.service, a.source.principal, a.source.certificate = "svc", "spiffe://x", "PEM"
    a.source.labels["app"] = "web"
    a.destination.address.pipe.path, a.destination.address.pipe.mode = "/tmp/sock", 0o600
    a.request.time.FromNanoseconds(1_700_000_000_123_456_789)
    h = a.request.http
    h.id, h.method, h.path, h.host = "18446744073709551615", "POST", "/a?b=c#d", "h"
    h.scheme, h.query, h.fragment, h.protocol = "https", "b=c", "d", "HTTP/2"
    h.size, h.body, h.raw_body = 2**40, "{}", b"\x00\xff binary"
    h.headers["x"] = "1"
    h.header_map.headers.add(key="k", value="v")
    h.header_map.headers.add(key="raw", raw_value=b"\xfe")
    a.context_extensions["label.team"] = "payments"
    a.metadata_context.filter_metadata["jwt"].update(
        {"claims": {"sub": "u", "n": 1.5, "l": [1, "x", None, True]}})
    packed = any_pb2.Any()
    packed.Pack(duration_pb2.Duration(seconds=3, nanos=5000))
    a.metadata_context.typed_filter_metadata["typed"].CopyFrom(packed)
    a.route_metadata_context.filter_metadata["route"].update({"name": "r1"})
    a.tls_session.sni = "api.example.com"
    return req


def test_every_field() -> None:
    req = full_request()
    assert message_to_dict(req) == MessageToDict(req)


def test_empty_and_default_values_are_omitted() -> None:
    req = external_auth_pb2.CheckRequest()
    req.attributes.request.http.method = ""
    req.attributes.source.address.socket_address.port_value = 0
    assert message_to_dict(req) == MessageToDict(req)


def test_other_messages_fall_back_where_needed() -> None:
    # A double field (float precision rules) and well-known types round-trip identically.
    value = struct_pb2.Value(number_value=0.1)
    assert message_to_dict(struct_pb2.Struct(fields={"x": value})) == {"x": 0.1}
    stamp = timestamp_pb2.Timestamp(seconds=1, nanos=10)
    option = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="k", value="v"))
    for message in (stamp, option, base_pb2.Metadata()):
        assert message_to_dict(message) == MessageToDict(message)


@settings(max_examples=150, deadline=None)
@given(method=text, path=text, headers=st.dictionaries(text, text, max_size=4),
       body=text, raw=st.binary(max_size=16), size=st.integers(-1, 2**62),
       port=st.integers(0, 65535), extensions=st.dictionaries(text, text, max_size=3),
       metadata=st.dictionaries(text, st.dictionaries(text, json_value, max_size=3),
                                max_size=2),
       nanos=st.integers(0, 2**62))
def test_generated_requests(method: str, path: str, headers: dict[str, str], body: str,
                            raw: bytes, size: int, port: int, extensions: dict[str, str],
                            metadata: dict[str, dict[str, Any]], nanos: int) -> None:
    req = external_auth_pb2.CheckRequest()
    a = req.attributes
    a.source.address.socket_address.address = "127.0.0.1"
    a.source.address.socket_address.port_value = port
    a.request.time.FromNanoseconds(nanos)
    h = a.request.http
    h.method, h.path, h.body, h.raw_body, h.size = method, path, body, raw, size
    for key, value in headers.items():
        h.headers[key] = value
    for key, value in extensions.items():
        a.context_extensions[key] = value
    for namespace, values in metadata.items():
        a.metadata_context.filter_metadata[namespace].update(values)
    assert message_to_dict(req) == MessageToDict(req)
