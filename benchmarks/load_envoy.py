"""One-run report for Envoy ext_authz: `Check` against an empty gRPC call, and throughput.

    python -m benchmarks.load_envoy [--rounds 3000] [--duration 5] [--concurrency 16]

Runs a real `ordinance envoy` subprocess (client and server never share a GIL) and, in one
run, on one channel, with the calls interleaved so machine noise hits them alike:

1. `grpc.health.v1.Health/Check` (an empty call: the floor of a gRPC round trip here) and
   `envoy.service.auth.v3.Authorization/Check` with CheckRequests shaped as Envoy sends them
   (pseudo-headers, request id, peer addresses, time: every request is unique, as in real
   traffic), for three policies:
   - `rules`: an opa-envoy-plugin style policy on method, path and a header (deterministic);
   - `object`: the same rules returning the plugin's object result (headers, status, body);
   - `jwt`: the plugin tutorial's policy (`io.jwt.decode_verify`, `time.now_ns`: never
     cached), with the tutorial's tokens.
   Median, p99 and the ratio of medians to the empty call.
2. Throughput of the empty call and of `Check` (`rules`) at `--concurrency` callers
   (default 16), each on its own connection, from `--driver-procs` processes, with the
   server's CPU time per call. On a 2-core machine the drivers compete with the server for
   CPU, so compare the two rows rather than reading either as the server's capacity.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import load_common
from benchmarks.load_common import grpc_calls, percentile, run_callers

CHECK = "/envoy.service.auth.v3.Authorization/Check"
HEALTH = "/grpc.health.v1.Health/Check"

RULES = """\
package envoy.authz

import rego.v1

default allow := false

allow if {
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "people"
}

allow if {
	input.attributes.request.http.method == "POST"
	input.parsed_path == ["people"]
	input.attributes.request.http.headers["x-role"] == "admin"
}
"""

OBJECT = """\
package envoy.authz

import rego.v1

default allow := {"allowed": false, "http_status": 403, "body": "Unauthorized Request",
                  "headers": {"x-ext-auth-allow": "no"}}

allow := {"allowed": true, "headers": {"x-ext-auth-allow": "yes"}} if {
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "people"
}
"""


def _policies(kind: str, directory: Path) -> Path:
    from tests.envoy.policies import TUTORIAL_STANDALONE

    text = {"rules": RULES, "object": OBJECT, "jwt": TUTORIAL_STANDALONE}[kind]
    (directory / kind).mkdir(parents=True, exist_ok=True)
    (directory / kind / "policy.rego").write_text(text)
    return directory / kind


@contextlib.contextmanager
def sidecar(policies: Path) -> Iterator[dict[str, Any]]:
    """`ordinance envoy` on an ephemeral port; yields its ready line."""
    with tempfile.TemporaryDirectory(prefix="ordinance-envoy-bench-") as tmp:
        cmd = [sys.executable, "-m", "engine.cli", "envoy", "--policies",
               str(policies.resolve()), "--grpc", "127.0.0.1:0", "--decision-log-file",
               str(Path(tmp) / "decisions.jsonl")]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, cwd=tmp,
                                env={**os.environ, "PYTHONPATH": os.getcwd()})
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("{"):
            proc.kill()
            raise SystemExit(f"ordinance envoy did not start: {line!r}")
        ready = json.loads(line)
        try:
            yield ready
        finally:
            proc.terminate()
            proc.wait(30)


def check_payloads(kind: str, count: int, tag: str) -> list[bytes]:
    """Serialised CheckRequests, every one unique (request id, time), mostly allowed."""
    from tests.envoy.envoy_requests import envoy_check_request
    from tests.envoy.policies import tutorial_token

    headers: dict[str, str] = {}
    if kind == "jwt":
        headers["authorization"] = f"Bearer {tutorial_token('guest', 'alice')}"
    out = []
    for i in range(count):
        method, path = ("GET", f"/people/{i % 50}") if i % 4 else ("POST", "/people")
        extra = {"x-role": "admin" if i % 8 else "guest", "x-request-id": f"{tag}-{i}"}
        out.append(envoy_check_request(method, path if kind != "jwt" else "/people",
                                       headers={**headers, **extra}).SerializeToString())
    return out


def latency(target: str, kind: str, rounds: int) -> dict[str, dict[str, float]]:
    import grpc
    from grpc_health.v1 import health_pb2

    channel = grpc.insecure_channel(target)
    health = channel.unary_unary(HEALTH, request_serializer=None, response_deserializer=None)
    check = channel.unary_unary(CHECK, request_serializer=None, response_deserializer=None)
    empty = health_pb2.HealthCheckRequest().SerializeToString()
    payloads = check_payloads(kind, rounds + 300, "lat")
    for i in range(300):  # warm up: connection, thread pool, interpreters
        health(empty)
        check(payloads[rounds + i])
    samples: dict[str, list[float]] = {"empty_call": [], f"check_{kind}": []}
    for i in range(rounds):
        for name, payload, method in (("empty_call", empty, health),
                                      (f"check_{kind}", payloads[i], check)):
            started = time.perf_counter()
            method(payload, timeout=10)
            samples[name].append((time.perf_counter() - started) * 1e6)
    channel.close()
    return {name: {"median_us": statistics.median(s), "p99_us": percentile(s, 0.99)}
            for name, s in samples.items()}


def _driver(threads: int, duration: float, tag: str, start_at: float, out: Any,
            address: str, method: str) -> None:
    """One load-driver process (see `load_common`)."""
    from grpc_health.v1 import health_pb2

    if method == HEALTH:
        payloads = [[health_pb2.HealthCheckRequest().SerializeToString()] * 2000
                    for _ in range(threads)]
    else:
        payloads = [check_payloads("rules", 2000, f"{tag}-{t}") for t in range(threads)]
    run_callers(lambda t: grpc_calls(address, method, payloads[t], start_at, duration),
                threads, out)


def throughput(address: str, pid: int, concurrency: int, procs: int, duration: float,
               method: str = CHECK) -> dict[str, float]:
    return load_common.throughput(_driver, (address, method), [pid], concurrency, procs,
                                  duration, "tp")


def run(rounds: int, duration: float, concurrency: int, procs: int,
        kinds: tuple[str, ...] = ("rules", "object", "jwt")) -> dict[str, Any]:
    report: dict[str, Any] = {"cpus": os.cpu_count(), "concurrency": concurrency,
                              "driver_procs": procs, "latency": {}, "latency_ratio": {}}
    with tempfile.TemporaryDirectory(prefix="ordinance-envoy-policies-") as tmp:
        for kind in kinds:
            with sidecar(_policies(kind, Path(tmp))) as ready:
                lat = latency(ready["grpc"], kind, rounds)
                if kind == "rules":
                    report["throughput"] = {
                        "empty_call": throughput(ready["grpc"], ready["pid"], concurrency,
                                                 procs, duration, HEALTH),
                        "check_rules": throughput(ready["grpc"], ready["pid"], concurrency,
                                                  procs, duration)}
            report["latency"][f"empty_call ({kind} run)"] = lat["empty_call"]
            report["latency"][f"check_{kind}"] = lat[f"check_{kind}"]
            report["latency_ratio"][f"check_{kind}"] = (
                lat[f"check_{kind}"]["median_us"] / lat["empty_call"]["median_us"])
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"cpus={report['cpus']} concurrency={report['concurrency']} "
             f"driver_procs={report['driver_procs']}"]
    for name, v in report["latency"].items():
        ratio = report["latency_ratio"].get(name)
        extra = f"  ratio {ratio:.2f}x empty call" if ratio else ""
        lines.append(f"{name:22s} median {v['median_us']:8.1f} us  p99 {v['p99_us']:8.1f} us"
                     f"{extra}")
    for name, v in report.get("throughput", {}).items():
        lines.append(f"{name} x{report['concurrency']:<3d}".ljust(22)
                     + f" {v['calls_per_s']:8.0f} calls/s  server "
                     f"{v['server_cpu_us_per_call']:6.0f} cpu-us/call  "
                     f"{v['server_cores_used']:.2f} cores  errors {v['errors']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--driver-procs", type=int, default=2)
    parser.add_argument("--policy", action="append", choices=("rules", "object", "jwt"),
                        help="measure only these policies (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the raw report as JSON")
    args = parser.parse_args(argv)
    report = run(args.rounds, args.duration, args.concurrency, args.driver_procs,
                 tuple(args.policy or ("rules", "object", "jwt")))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
