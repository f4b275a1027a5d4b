"""What the service and Envoy load drivers share: percentiles, a server's CPU time, a gRPC
caller loop, and running driver processes against a server for one measurement window.

A driver is a module-level function `driver(threads, duration, tag, start_at, out, *args)`
run in a spawned process; it starts `threads` callers, each on its own connection, that wait
for `start_at`, call for `duration` seconds, and it puts `(calls, errors)` on `out`, or
`(calls, errors, latencies_ms)` when its callers time their calls (the window then reports
their median and p99).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU time of the processes, from /proc."""
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / CLK_TCK


def grpc_calls(address: str, method: str, payloads: Sequence[bytes], start_at: float,
               duration: float, latencies: list[float] | None = None) -> tuple[int, int]:
    """One caller on its own channel: warm up, wait for `start_at`, then call `method` with
    the payloads in turn for `duration` seconds. Returns (calls, errors); appends each
    successful call's milliseconds to `latencies` when given."""
    import grpc

    channel = grpc.insecure_channel(address, [("grpc.use_local_subchannel_pool", 1)])
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    call(payloads[0], timeout=30)
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + duration
    calls = errors = i = 0
    while time.time() < end:
        started = time.perf_counter()
        try:
            call(payloads[i % len(payloads)], timeout=30)
            calls += 1
            if latencies is not None:
                latencies.append((time.perf_counter() - started) * 1e3)
        except grpc.RpcError:
            errors += 1
        i += 1
    channel.close()
    return calls, errors


def throughput(driver: Callable[..., None], args: tuple[Any, ...], pids: Sequence[int],
               concurrency: int, procs: int, duration: float, tag: str,
               warmup: float = 6.0) -> dict[str, float]:
    """Run `concurrency` callers spread over `procs` driver processes for one window of
    `duration` seconds; calls per second and the CPU the server processes spent per call."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + warmup  # time for the drivers to start and prepare payloads
    per_proc = [concurrency // procs + (1 if i < concurrency % procs else 0)
                for i in range(procs)]
    drivers = [ctx.Process(target=driver, args=(n, duration, f"{tag}{i}", start_at, out,
                                                *args))
               for i, n in enumerate(per_proc) if n]
    for d in drivers:
        d.start()
    while time.time() < start_at:
        time.sleep(0.01)
    cpu_before = cpu_seconds(pids)
    time.sleep(duration)
    cpu_after = cpu_seconds(pids)
    results = [out.get(timeout=60 + duration) for _ in drivers]
    for d in drivers:
        d.join(30)
    calls = sum(r[0] for r in results)
    report = {"calls_per_s": calls / duration, "errors": sum(r[1] for r in results),
              "server_cpu_us_per_call": (cpu_after - cpu_before) * 1e6 / max(1, calls),
              "server_cores_used": (cpu_after - cpu_before) / duration}
    latencies = [ms for r in results if len(r) > 2 for ms in r[2]]
    if latencies:
        report["p50_ms"] = percentile(latencies, 0.5)
        report["p99_ms"] = percentile(latencies, 0.99)
    return report


def run_callers(caller: Callable[[int], tuple[Any, ...]], threads: int, out: Any) -> None:
    """Run `caller(t)` on `threads` threads and put the summed (calls, errors) on `out`, and
    all latencies when the callers return `(calls, errors, latencies_ms)`."""
    import threading

    results: list[tuple[Any, ...]] = [(0, 0)] * threads

    def run(t: int) -> None:
        results[t] = caller(t)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    summed = (sum(r[0] for r in results), sum(r[1] for r in results))
    if any(len(r) > 2 for r in results):
        out.put((*summed, [ms for r in results if len(r) > 2 for ms in r[2]]))
    else:
        out.put(summed)
