"""pytest-benchmark suite for the decision service (`pytest benchmarks --benchmark-only`).

The server is a real `ordinance serve` subprocess with the shipped PCI pack; the calls go
over one gRPC channel (or one keep-alive HTTP connection). Compare `decide_*` with
`empty_call` (Health.Check on the same channel): the difference is what the service and
the engine add to a gRPC round trip. Every test runs against both decision-log modes
(`durable`, the default, and `async`). `python -m benchmarks.load_service` prints the same
comparison as ratios, plus throughput for `--workers 1` and `--workers 2`.
"""

from __future__ import annotations

import http.client
import itertools
import json
import tempfile
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from benchmarks.commands import COMMANDS, input_for
from benchmarks.load_service import DECIDE, HEALTH, HTTP_PATH, decide_bytes, serve, unique_doc


@pytest.fixture(scope="module", params=["durable", "async"])
def server(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="ordinance-bench-") as log_dir, \
            serve("policies", 1, request.param, log_dir) as ready:
        yield ready


@pytest.fixture(scope="module")
def channel(server: dict[str, Any]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server["grpc"]) as ch:
        yield ch


def _raw(channel: grpc.Channel, method: str) -> Any:
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def test_empty_call(benchmark: Any, channel: grpc.Channel) -> None:
    check = _raw(channel, HEALTH)
    request = health_pb2.HealthCheckRequest().SerializeToString()
    check(request)
    assert health_pb2.HealthCheckResponse.FromString(benchmark(check, request)).status == 1


def test_decide_cached(benchmark: Any, channel: grpc.Channel) -> None:
    decide = _raw(channel, DECIDE)
    payloads = itertools.cycle([decide_bytes(input_for(raw)) for raw in COMMANDS])
    for _ in COMMANDS:
        decide(next(payloads))
    assert benchmark(lambda: decide(next(payloads)))


def test_decide_unique(benchmark: Any, channel: grpc.Channel) -> None:
    decide = _raw(channel, DECIDE)
    counter = itertools.count()
    payloads = [decide_bytes(unique_doc(i, "bench")) for i in range(20_000)]
    decide(payloads[0])
    assert benchmark(lambda: decide(payloads[next(counter) % len(payloads)]))


def test_http_post_data(benchmark: Any, server: dict[str, Any]) -> None:
    host, port = server["http"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    counter = itertools.count()
    bodies = [json.dumps({"input": unique_doc(i, "http")}).encode() for i in range(20_000)]

    def post() -> int:
        conn.request("POST", HTTP_PATH, bodies[next(counter) % len(bodies)],
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status

    assert benchmark(post) == 200
    conn.close()
