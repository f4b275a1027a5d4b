"""One-run report for the decision service: latency against an empty call, and throughput.

    python -m benchmarks.load_service [--policies policies] [--rounds 3000] [--duration 5]

Everything runs against real `ordinance serve` subprocesses, so client and server never share
a GIL. In one run it measures:

1. Latency, for each decision-log mode (`--decision-log async` and `durable`, one server
   each, one channel each; and `durable` with `--audit-durability os`, the record written
   before the answer and synced within 10 ms), with the calls interleaved so machine noise
   hits them alike:
   `Health.Check` (an empty call: the floor of a gRPC round trip here), `Decide` with the PCI
   pack on a repeated input (answered from the decision cache) and with a unique session id
   per call (the same policy input: session ids are not read by the pack). Reports median,
   p99 and the ratio of medians to the empty call of the same server. In the same loop it
   times one `write` + `fdatasync` of a decision-sized line to a file beside the decision
   logs, between the durable server's calls (as its own syncs are): the durable log's budget
   is the async log's latency plus that. The servers take turns in blocks of `BLOCK` rounds
   with a pause between, so that the async server's log writer (it syncs its file a few
   milliseconds after a decision) never shares the disk's journal commits with a measured
   durable call or the probe. A fourth server is the `benchmarks.blocking_serve` control:
   async, each request thread blocked (GIL released) as long as the median `write` +
   `fdatasync` measured before the run, nothing written on the answer's path: what blocking
   alone costs over async, the floor of any log that makes the answer wait.
2. Throughput at `--concurrency` callers (default 16), for `--workers 1` and `--workers 2`
   and both log modes, over gRPC `Decide` and HTTP `POST /v1/data/ordinance/pci`, every call
   a unique input.
   The load driver is `--driver-procs` processes of threads, each caller with its own
   connection (so SO_REUSEPORT can spread them), sending pre-serialised requests to keep
   the client's cost per call low. On a 2-core machine the driver still competes with the
   server for CPU, so the report also gives the server's CPU time per call (from
   /proc/PID/stat): `1e6 / server_cpu_us_per_call` is the capacity per fully used core.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
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
from benchmarks.commands import COMMANDS, input_for
from benchmarks.load_common import grpc_calls, percentile, run_callers

DECIDE = "/ordinance.v1.DecisionService/Decide"
HEALTH = "/grpc.health.v1.Health/Check"
HTTP_PATH = "/v1/data/ordinance/pci"


# -- the server ---------------------------------------------------------------------------

MODES = ("async", "durable")
DURABLE_OS = "durable-os"
"""The latency section's third server: `--decision-log durable --audit-durability os`."""
BLOCKED = "async-blocked"
"""Its fourth: the `benchmarks.blocking_serve` control, async with each request thread
blocked as long as the median `write` + `fdatasync` measured before the run."""
BLOCK = 50
PAUSE_S = 0.03


@contextlib.contextmanager
def serve(policies: str, workers: int, mode: str, log_dir: str,
          durability: str = "fsync", block_s: float | None = None
          ) -> Iterator[dict[str, Any]]:
    """`ordinance serve` on ephemeral ports, its JSON-lines decision log in `log_dir`;
    yields its ready line. `block_s`: the `benchmarks.blocking_serve` control instead (each
    decision's request thread also blocks that long)."""
    with tempfile.TemporaryDirectory(prefix="ordinance-bench-") as tmp:
        log = Path(log_dir) / f"decisions-{mode}-{workers}-{durability}-{block_s}.jsonl"
        program = (["engine.cli"] if block_s is None
                   else ["benchmarks.blocking_serve", repr(block_s)])
        cmd = [sys.executable, "-m", *program, "serve", "--policies",
               str(Path(policies).resolve()), "--grpc", "127.0.0.1:0", "--http",
               "127.0.0.1:0", "--workers", str(workers), "--decision-log", mode,
               "--decision-log-file", str(log), "--audit-durability", durability]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parent.parent),
             *filter(None, [os.environ.get("PYTHONPATH")])])}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, cwd=tmp, env=env)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("{"):
            proc.kill()
            raise SystemExit(f"server did not start: {line!r}")
        ready = json.loads(line)
        ready["pids"] = ready.get("workers") or [ready["pid"]]
        try:
            yield ready
        finally:
            proc.terminate()
            proc.wait(30)


# -- requests -----------------------------------------------------------------------------

def decide_bytes(doc: dict[str, Any]) -> bytes:
    from engine.api import decision_pb2

    request = decision_pb2.DecideRequest()
    request.input.update(doc)
    return request.SerializeToString()


def unique_doc(i: int, tag: str) -> dict[str, Any]:
    doc = input_for(COMMANDS[i % len(COMMANDS)])
    doc["session"] = {"id": f"{tag}-{i}"}
    return doc


def latency(targets: dict[str, str], rounds: int, log_dir: str, probe_with: str
            ) -> dict[str, dict[str, dict[str, float]]]:
    """For each server in `targets` (label -> gRPC address), interleaved: the empty call and
    both Decides; and one `write` + `fdatasync` on a file in `log_dir` after each round of
    the `probe_with` server."""
    import grpc
    from grpc_health.v1 import health_pb2

    channels = {label: grpc.insecure_channel(target) for label, target in targets.items()}
    methods = {label: (ch.unary_unary(HEALTH, request_serializer=None,
                                      response_deserializer=None),
                       ch.unary_unary(DECIDE, request_serializer=None,
                                      response_deserializer=None))
               for label, ch in channels.items()}
    empty = health_pb2.HealthCheckRequest().SerializeToString()
    repeated = [decide_bytes(input_for(raw)) for raw in COMMANDS]
    unique = [decide_bytes(unique_doc(i, "lat")) for i in range(rounds)]
    for health, decide in methods.values():
        for i in range(300):  # warm up: connection, decision cache, facts cache
            health(empty)
            decide(repeated[i % len(repeated)])
            decide(decide_bytes(unique_doc(i, "warm")))
    samples: dict[str, dict[str, list[float]]] = {
        label: {"empty_call": [], "decide_cached": [], "decide_unique": []}
        for label in targets}
    syncs: list[float] = []
    line = json.dumps({"decision_id": "0" * 26, "input": input_for(COMMANDS[0]),
                       "result": {"effect": "allow", "masks": ["x" * 40] * 14}}).encode()
    fd = os.open(Path(log_dir) / "fdatasync-probe", os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o600)
    try:
        for first in range(0, rounds, BLOCK):
            block = range(first, min(rounds, first + BLOCK))
            for label, (health, decide) in methods.items():
                time.sleep(PAUSE_S)
                for i in block:
                    for name, payload, method in (("empty_call", empty, health),
                                                  ("decide_cached",
                                                   repeated[i % len(repeated)], decide),
                                                  ("decide_unique", unique[i], decide)):
                        started = time.perf_counter()
                        method(payload, timeout=10)
                        samples[label][name].append((time.perf_counter() - started) * 1e6)
                    if label == probe_with:  # between its calls, as its own syncs are
                        started = time.perf_counter()
                        os.write(fd, line + b"\n")
                        os.fdatasync(fd)
                        syncs.append((time.perf_counter() - started) * 1e6)
    finally:
        os.close(fd)
        for ch in channels.values():
            ch.close()
    out = {label: {name: {"median_us": statistics.median(s), "p99_us": percentile(s, 0.99)}
                   for name, s in by_name.items()}
           for label, by_name in samples.items()}
    out["fdatasync"] = {"write_fdatasync": {"median_us": statistics.median(syncs),
                                            "p99_us": percentile(syncs, 0.99)}}
    return out


def sync_median(log_dir: str, rounds: int = 200) -> float:
    """The median µs of one `write` + `fdatasync` of a decision-sized line, before the run."""
    line = b"x" * 1200 + b"\n"
    fd = os.open(Path(log_dir) / "fdatasync-control", os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o600)
    times: list[float] = []
    try:
        for _ in range(rounds):
            time.sleep(0.001)
            started = time.perf_counter()
            os.write(fd, line)
            os.fdatasync(fd)
            times.append((time.perf_counter() - started) * 1e6)
    finally:
        os.close(fd)
    return statistics.median(times)


# -- throughput ---------------------------------------------------------------------------

def _driver(threads: int, duration: float, tag: str, start_at: float, out: Any,
            kind: str, address: str) -> None:
    """One load-driver process (see `load_common`): gRPC `Decide` or HTTP `POST`."""
    payloads: list[list[bytes]] = []
    for t in range(threads):
        docs = [unique_doc(i, f"{tag}-{t}") for i in range(4000)]
        if kind == "grpc":
            payloads.append([decide_bytes(d) for d in docs])
        else:
            payloads.append([json.dumps({"input": d}).encode() for d in docs])

    def http_caller(t: int) -> tuple[int, int, list[float]]:
        host, port = address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        headers = {"Content-Type": "application/json"}
        conn.request("POST", HTTP_PATH, payloads[t][0], headers)
        conn.getresponse().read()
        while time.time() < start_at:
            time.sleep(0.001)
        end = start_at + duration
        calls = errors = i = 0
        latencies: list[float] = []
        while time.time() < end:
            started = time.perf_counter()
            conn.request("POST", HTTP_PATH, payloads[t][i % 4000], headers)
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                calls += 1
                latencies.append((time.perf_counter() - started) * 1e3)
            else:
                errors += 1
            i += 1
        conn.close()
        return calls, errors, latencies

    def grpc_caller(t: int) -> tuple[int, int, list[float]]:
        latencies: list[float] = []
        calls, errors = grpc_calls(address, DECIDE, payloads[t], start_at, duration,
                                   latencies)
        return calls, errors, latencies

    run_callers(grpc_caller if kind == "grpc" else http_caller, threads, out)


def throughput(kind: str, address: str, pids: list[int], concurrency: int, procs: int,
               duration: float, tag: str) -> dict[str, float]:
    return load_common.throughput(_driver, (kind, address), pids, concurrency, procs,
                                  duration, tag, warmup=5.0)


# -- report -------------------------------------------------------------------------------

def run(policies: str, rounds: int, duration: float, concurrency: int, procs: int,
        repeats: int = 3, throughput_too: bool = True) -> dict[str, Any]:
    report: dict[str, Any] = {"cpus": os.cpu_count(), "concurrency": concurrency,
                              "driver_procs": procs, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="ordinance-bench-logs-") as log_dir:
        block_s = sync_median(log_dir) / 1e6
        with serve(policies, 1, "async", log_dir) as fast, \
                serve(policies, 1, "durable", log_dir) as safe, \
                serve(policies, 1, "durable", log_dir, durability="os") as written, \
                serve(policies, 1, "async", log_dir, block_s=block_s) as blocked:
            lat = latency({"async": fast["grpc"], "durable": safe["grpc"],
                           DURABLE_OS: written["grpc"], BLOCKED: blocked["grpc"]}, rounds,
                          log_dir, probe_with="durable")
        sync = lat.pop("fdatasync")["write_fdatasync"]
        report["latency"] = lat
        report["fdatasync"] = sync
        report["control_block_us"] = block_s * 1e6
        report["latency_ratio"] = {
            mode: {name: lat[mode][name]["median_us"] / lat[mode]["empty_call"]["median_us"]
                   for name in ("decide_cached", "decide_unique")} for mode in lat}
        report["durable_minus_async_us"] = {
            name: lat["durable"][name]["median_us"] - lat["async"][name]["median_us"]
            for name in ("decide_cached", "decide_unique")}
        report["blocked_minus_async_us"] = {
            name: lat[BLOCKED][name]["median_us"] - lat["async"][name]["median_us"]
            for name in ("decide_cached", "decide_unique")}
        if not throughput_too:
            return report
        # The servers run side by side and the measurement windows alternate, so a burst of
        # other load on the machine hits every configuration alike; each figure is the
        # median window.
        windows: dict[str, list[dict[str, float]]] = {}
        with contextlib.ExitStack() as stack:
            servers = {(mode, workers): stack.enter_context(serve(policies, workers, mode,
                                                                  log_dir))
                       for mode in MODES for workers in (1, 2)}
            for repeat in range(repeats):
                for kind in ("grpc", "http"):
                    for (mode, workers), ready in servers.items():
                        windows.setdefault(f"{kind}_{mode}_workers{workers}", []).append(
                            throughput(kind, ready[kind], ready["pids"], concurrency, procs,
                                       duration, f"{kind}{mode}{workers}r{repeat}"))
    report["throughput"] = {
        name: sorted(results, key=lambda r: r["calls_per_s"])[len(results) // 2]
        for name, results in windows.items()}
    report["throughput_windows"] = {name: [round(r["calls_per_s"]) for r in results]
                                    for name, results in windows.items()}
    tp = report["throughput"]
    report["scaling_workers2_over_1"] = {
        f"{kind}_{mode}": tp[f"{kind}_{mode}_workers2"]["calls_per_s"]
        / tp[f"{kind}_{mode}_workers1"]["calls_per_s"]
        for kind in ("grpc", "http") for mode in MODES}
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"cpus={report['cpus']} concurrency={report['concurrency']} "
             f"driver_procs={report['driver_procs']}"]
    for mode, by_name in report["latency"].items():
        for name, v in by_name.items():
            ratio = report["latency_ratio"][mode].get(name)
            extra = f"  ratio {ratio:.2f}x empty call" if ratio else ""
            lines.append(f"{mode:8s} {name:14s} median {v['median_us']:8.1f} us  "
                         f"p99 {v['p99_us']:8.1f} us{extra}")
    sync = report["fdatasync"]
    lines.append(f"write+fdatasync         median {sync['median_us']:8.1f} us  "
                 f"p99 {sync['p99_us']:8.1f} us")
    for name, extra in report["durable_minus_async_us"].items():
        lines.append(f"durable - async {name}: {extra:+.1f} us "
                     f"({extra / sync['median_us']:.2f} fdatasyncs)")
    block = report["control_block_us"]
    for name, extra in report["blocked_minus_async_us"].items():
        lines.append(f"control (async, each request blocked {block:.0f} us) - async {name}: "
                     f"{extra:+.1f} us = the block {extra - block:+.1f} us (what blocking "
                     f"costs beyond its own time: a durable log's floor is one fdatasync "
                     f"plus that)")
    for name, v in report.get("throughput", {}).items():
        lines.append(f"{name:22s} {v['calls_per_s']:8.0f} calls/s  server "
                     f"{v['server_cpu_us_per_call']:6.0f} cpu-us/call  "
                     f"{v['server_cores_used']:.2f} cores  errors {v['errors']}  "
                     f"p50 {v.get('p50_ms', float('nan')):.1f} ms  "
                     f"p99 {v.get('p99_ms', float('nan')):.1f} ms")
    for name, values in report.get("throughput_windows", {}).items():
        lines.append(f"{name:22s} windows (calls/s): {values}")
    for kind, ratio in report.get("scaling_workers2_over_1", {}).items():
        lines.append(f"scaling {kind}: workers 2 / workers 1 = {ratio:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="policies")
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--driver-procs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating throughput windows per configuration")
    parser.add_argument("--latency-only", action="store_true",
                        help="the latency section only (no throughput windows)")
    parser.add_argument("--json", action="store_true", help="print the raw report as JSON")
    args = parser.parse_args(argv)
    report = run(args.policies, args.rounds, args.duration, args.concurrency,
                 args.driver_procs, args.repeats, throughput_too=not args.latency_only)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
