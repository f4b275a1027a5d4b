"""The HTTP server under idle, slow and malformed clients, and OPA's ways of sending bodies.

Real sockets against a real `Service`: 500 idle connections must not cost a thread each, a
slow-loris head or body is cut at its timeout, the connection limit holds, and bodies are
read as OPA reads them (JSON whatever the type, YAML, gzip; NaN and Infinity refused).
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.service.http_server import HttpLimits
from engine.service.server import Service
from tests.service.test_http_api import call

DENY_BAD = {"input": {"command": {"raw": "bad"}}}


def os_threads() -> int:
    """Threads of this process as the kernel counts them (gRPC's C threads included)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


@contextmanager
def sockets(port: int, n: int) -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        for _ in range(n):
            opened.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        yield opened
    finally:
        for s in opened:
            s.close()


def read_all(s: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    s.settimeout(timeout)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def timed_post(port: int, path: str, doc: object) -> tuple[int, object, float]:
    started = time.monotonic()
    status, body, _ = call(port, "POST", path, json.dumps(doc).encode(),
                           {"Content-Type": "application/json"})
    return status, body, time.monotonic() - started


def test_500_idle_connections_cost_no_threads(service: Service) -> None:
    port = service.http_port
    assert port and service.http is not None
    assert timed_post(port, "/v1/data/ordinance/test/deny", DENY_BAD)[0] == 200  # warm
    before_py, before_os = threading.active_count(), os_threads()
    with sockets(port, 500) as held:
        # a fifth of them are slow-loris clients in the middle of a request head
        for s in held[:100]:
            s.sendall(b"POST /v1/data/ordinance/test/deny HTTP/1.1\r\nHost: x\r\n")
        deadline = time.monotonic() + 10
        while service.http.server.open_connections < 500 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.http.server.open_connections == 500  # held, not refused
        status, body, elapsed = timed_post(port, "/v1/data/ordinance/test/deny", DENY_BAD)
        assert status == 200 and body["result"] == ["x"]  # type: ignore[index]
        assert elapsed < 2.0, f"a normal request took {elapsed:.2f} s next to 500 idle ones"
        assert threading.active_count() - before_py <= 2
        assert os_threads() - before_os <= 2
    # the server notices the 500 closes and is back to its own connections only
    deadline = time.monotonic() + 10
    while service.http.server.open_connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.http.server.open_connections == 0


def test_slow_body_is_dropped_after_the_body_timeout(
        policy_dir: Path, service_factory: Callable[..., Service]) -> None:
    svc = service_factory(policy_dir, http_limits=HttpLimits(body_timeout=1.0))
    assert svc.http_port
    with socket.create_connection(("127.0.0.1", svc.http_port)) as s:
        started = time.monotonic()
        s.sendall(b"POST /v1/data/ordinance/test/deny HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"input\":")
        answer = read_all(s)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"body timeout" in answer
    assert 0.9 <= elapsed < 5.0, elapsed
    metrics = call(svc.http_port, "GET", "/metrics")[1]
    assert 'reason="body_timeout"' in metrics and 'transport="http"' in metrics


def test_slow_loris_head_is_dropped_after_the_header_timeout(
        policy_dir: Path, service_factory: Callable[..., Service]) -> None:
    svc = service_factory(policy_dir, http_limits=HttpLimits(header_timeout=1.0))
    assert svc.http_port
    with socket.create_connection(("127.0.0.1", svc.http_port)) as s:
        started = time.monotonic()
        s.sendall(b"GET /health HTTP/1.1\r\n")
        closed_at = None
        for i in range(40):  # one header byte every 0.1 s: never a whole head
            try:
                s.sendall(b"X-a: b\r\n"[i % 8:i % 8 + 1])
            except OSError:
                closed_at = time.monotonic()
                break
            time.sleep(0.1)
        answer = read_all(s) if closed_at is None else b"HTTP/1.1 408 (seen as reset)"
        elapsed = (closed_at or time.monotonic()) - started
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert elapsed < 4.5, elapsed


def test_idle_keep_alive_is_closed_and_keep_alive_works(
        policy_dir: Path, service_factory: Callable[..., Service]) -> None:
    svc = service_factory(policy_dir, http_limits=HttpLimits(idle_timeout=0.5))
    assert svc.http_port
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", svc.http_port, timeout=10)
    for _ in range(3):  # three requests on one connection
        conn.request("POST", "/v1/data/ordinance/test/deny", body=json.dumps(DENY_BAD))
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["result"] == ["x"]
    first = conn.sock
    conn.request("GET", "/health")
    assert conn.getresponse().read() == b"{}" and conn.sock is first
    with socket.create_connection(("127.0.0.1", svc.http_port)) as s:
        started = time.monotonic()
        assert read_all(s) == b""  # closed without a word
        assert 0.4 <= time.monotonic() - started < 3.0
    conn.close()


def test_connection_limit(policy_dir: Path, service_factory: Callable[..., Service]) -> None:
    svc = service_factory(policy_dir, http_limits=HttpLimits(max_connections=5))
    assert svc.http_port and svc.http is not None
    with sockets(svc.http_port, 5) as held:
        deadline = time.monotonic() + 10
        while svc.http.server.open_connections < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", svc.http_port)) as extra:
            answer = read_all(extra)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"too many connections" in answer
        held[0].close()
        deadline = time.monotonic() + 10
        while svc.http.server.open_connections >= 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert call(svc.http_port, "GET", "/health")[0] == 200


def test_malformed_and_oversized_heads(service: Service) -> None:
    assert service.http_port
    with socket.create_connection(("127.0.0.1", service.http_port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        assert read_all(s).startswith(b"HTTP/1.1 400 ")
    with socket.create_connection(("127.0.0.1", service.http_port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        assert read_all(s).startswith(b"HTTP/1.1 431 ")
    with socket.create_connection(("127.0.0.1", service.http_port)) as s:
        s.sendall(b"POST /v1/data HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
        assert read_all(s).startswith(b"HTTP/1.1 400 ")
    assert call(service.http_port, "GET", "/health")[0] == 200


# --- bodies as OPA reads them ---------------------------------------------------------------


def post_raw(port: int, body: bytes, headers: dict[str, str],
             path: str = "/v1/data/ordinance/test/deny") -> tuple[int, object]:
    status, parsed, _ = call(port, "POST", path, body, headers)
    return status, parsed


def test_json_whatever_the_content_type_and_yaml(service: Service) -> None:
    port = service.http_port
    assert port
    body = json.dumps(DENY_BAD).encode()
    for content_type in ("application/json", "text/plain",
                         "application/x-www-form-urlencoded", ""):
        status, parsed = post_raw(port, body, {"Content-Type": content_type})
        assert status == 200 and parsed["result"] == ["x"], content_type  # type: ignore[index]
    yaml_body = b"input:\n  command:\n    raw: bad\n"
    status, parsed = post_raw(port, yaml_body, {"Content-Type": "application/x-yaml"})
    assert status == 200 and parsed["result"] == ["x"]  # type: ignore[index]


def test_curl_d_works(service: Service) -> None:
    """`curl -d` sends application/x-www-form-urlencoded and `Expect` for large bodies."""
    assert service.http_port
    url = f"http://127.0.0.1:{service.http_port}/v1/data/ordinance/test/deny"
    out = subprocess.run(["curl", "-sS", "--max-time", "20", "-d", json.dumps(DENY_BAD), url],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["result"] == ["x"]
    big = json.dumps({"input": {"command": {"raw": "bad"}, "pad": "p" * 2_000_000}})
    out = subprocess.run(["curl", "-sS", "--max-time", "20", "-H", "Expect: 100-continue",
                          "--data-binary", "@-", url], input=big, capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out)["result"] == ["x"]


def test_gzip_bodies(policy_dir: Path, service_factory: Callable[..., Service]) -> None:
    svc = service_factory(policy_dir, max_message_bytes=64 * 1024)
    port = svc.http_port
    assert port
    body = gzip.compress(json.dumps(DENY_BAD).encode())
    status, parsed = post_raw(port, body, {"Content-Encoding": "gzip",
                                           "Content-Type": "application/json"})
    assert status == 200 and parsed["result"] == ["x"]  # type: ignore[index]
    bomb = gzip.compress(b'{"input": {"pad": "' + b"a" * 50_000_000 + b'"}}')
    assert len(bomb) < 64 * 1024
    status, parsed = post_raw(port, bomb, {"Content-Encoding": "gzip"})
    assert (status, parsed["message"]) == (413, "request body too large")  # type: ignore[index]
    status, parsed = post_raw(port, body[:-8], {"Content-Encoding": "gzip"})
    assert status == 400 and "gzip" in parsed["message"]  # type: ignore[index]
    status, parsed = post_raw(port, body, {"Content-Encoding": "br"})
    assert status == 415 and "Content-Encoding" in parsed["message"]  # type: ignore[index]


@pytest.mark.parametrize("text", [
    b'{"input": {"n": NaN}}', b'{"input": {"n": Infinity}}', b'{"input": {"n": -Infinity}}',
    b'{"input": {"n": 1e999}}'])
def test_non_finite_json_numbers_are_refused(service: Service, text: bytes) -> None:
    assert service.http_port
    status, parsed = post_raw(service.http_port, text, {"Content-Type": "application/json"})
    assert status == 400 and parsed["code"] == "invalid_parameter"  # type: ignore[index]
    status, parsed, _ = call(service.http_port, "GET", "/v1/data/ordinance/test/deny?input="
                             + text.decode()[10:-1].replace(" ", "%20"))
    assert status == 400  # the GET form too


@pytest.mark.parametrize("text", [
    b"input: {n: .nan}", b"input: {n: .inf}", b"input: &a [*a]",
    b"a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n"
    b"e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e]\n"
    b"input: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n",
    b"input: {1: one}", b"input: !!binary aGVsbG8=", b"input: [unclosed"])
def test_bad_yaml_is_refused(service: Service, text: bytes) -> None:
    assert service.http_port
    started = time.monotonic()
    status, parsed = post_raw(service.http_port, text, {"Content-Type": "application/x-yaml"})
    assert status == 400 and "malformed input" in parsed["message"]  # type: ignore[index]
    assert time.monotonic() - started < 5


def test_envoy_standalone_server_holds_idle_clients_too(tmp_path: Path) -> None:
    """`ordinance envoy --http` runs on the same server: its slow bodies time out as well."""
    from adapters.envoy.service import EnvoyOptions
    from engine.service.server import ServiceConfig

    policies = tmp_path / "p"
    policies.mkdir()
    (policies / "authz.rego").write_text("package envoy.authz\nimport rego.v1\n\n"
                                         "default allow := true\n")
    config = ServiceConfig(policies=policies, grpc_address="127.0.0.1:0", http_address=None,
                           decision_log_path=tmp_path / "decisions.jsonl",
                           extensions=(EnvoyOptions(http_address="127.0.0.1:0",
                                                    http_limits=HttpLimits(body_timeout=0.5)),))
    with Service(config) as svc:
        own = svc.extensions[0].http
        assert own is not None
        before = os_threads()
        with sockets(own.port, 50) as held:
            for s in held:
                s.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n123")
            assert read_all(held[0]).startswith(b"HTTP/1.1 408 ")
            assert os_threads() - before <= 2
        with socket.create_connection(("127.0.0.1", own.port)) as s:
            s.sendall(b"GET /anything HTTP/1.1\r\nHost: a\r\n\r\n")
            s.settimeout(10)
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
    assert os.path.exists(tmp_path / "decisions.jsonl")


def test_pipelined_requests_and_head(service: Service) -> None:
    assert service.http_port
    body = json.dumps(DENY_BAD).encode()
    with socket.create_connection(("127.0.0.1", service.http_port)) as s:
        s.sendall(b"POST /v1/data/ordinance/test/deny HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                  + b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
                  + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = read_all(s)
    first, second, third = answer.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert b'"result":["x"]' in first
    assert second.endswith(b"\r\n\r\n")  # HEAD: the head only
    assert third.endswith(b"\r\n\r\n{}")


def test_body_bytes_in_flight_are_bounded(policy_dir: Path,
                                          service_factory: Callable[..., Service]) -> None:
    """Many slow bodies cannot add up without bound: past the budget, 503 and closed."""
    svc = service_factory(policy_dir, http_limits=HttpLimits(max_body_bytes_in_flight=1000))
    assert svc.http_port and svc.http is not None
    head = (b"POST /v1/data/ordinance/test/deny HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 900\r\n\r\n")
    with sockets(svc.http_port, 2) as (first, second):
        first.sendall(head + b"x" * 600)  # held: 600 of the 1000
        time.sleep(0.3)
        second.sendall(head + b"y" * 600)  # would make 1200
        answer = read_all(second)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"server busy" in answer
        first.sendall(b" " * 300)  # the first body completes (it is not valid JSON: 400)
        first.settimeout(10)
        assert first.recv(65536).startswith(b"HTTP/1.1 400 ")
    deadline = time.monotonic() + 5
    while svc.http.server.body_bytes_in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert svc.http.server.body_bytes_in_flight == 0
    assert post_raw(svc.http_port, json.dumps(DENY_BAD).encode(), {})[0] == 200
