"""`--workers N`: N server processes sharing the gRPC and HTTP ports through SO_REUSEPORT.

Decisions are CPU-bound Python; one process serialises them on its GIL. The supervisor
(this module, in the parent process) starts N workers with the multiprocessing *spawn*
method (fresh interpreters: grpc must never be forked after it started threads), each binding
the same ports with SO_REUSEPORT so the kernel spreads connections over them. Each worker
loads and watches the policy directory itself. The supervisor:

- resolves port 0 once and holds that port bound (not listening) so all workers share it;
- gives the workers one Prometheus multiprocess directory, so a scrape of any worker reports
  the whole service;
- waits for every worker to report ready, prints one ready line, restarts a worker that dies
  (at most once per `RESTART_BACKOFF` seconds per worker; a JSON `worker.restarted` line on
  stderr once the new worker serves, and `ordinance_worker_restarts_total{ended=...}`, counted
  by the new worker, in `/metrics`), and forwards
  SIGTERM/SIGINT to all workers on shutdown (SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from engine.service.server import ServiceConfig, join_host_port

log = logging.getLogger(__name__)

READY_TIMEOUT = 120.0
STOP_GRACE = 15.0
RESTART_BACKOFF = 2.0


def _worker_main(config: ServiceConfig, conn: Connection, verbose: bool,
                 replaces: str | None = None) -> None:
    """One worker. `replaces` says how the worker it replaces ended (`SIGKILL`, `exit 1`)."""
    from engine.service.server import configure_logging, run_service

    configure_logging(verbose)

    def report(ready: dict[str, Any]) -> None:
        conn.send(ready)
        conn.close()
        if replaces is not None:
            from engine.service.metrics import worker_restarts_counter

            worker_restarts_counter().labels(ended=replaces).inc()

    try:
        run_service(config, on_ready=report)
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send({"event": "failed", "error": f"{type(exc).__name__}: {exc}"})
        raise


def _reserve(host: str, port: int) -> tuple[int, socket.socket | None]:
    """For port 0: bind a free port with SO_REUSEPORT and keep it bound (not listening)."""
    if port != 0:
        return port, None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock.getsockname()[1], sock


class Supervisor:
    def __init__(self, config: ServiceConfig, workers: int, verbose: bool = False) -> None:
        self.config = config
        self.count = workers
        self.verbose = verbose
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: dict[int, multiprocessing.process.BaseProcess] = {}
        self.started_at: dict[int, float] = {}
        self.stop_event = threading.Event()
        self.reserved: list[socket.socket] = []
        self.metrics_dir: str | None = None

    def _worker_config(self) -> ServiceConfig:
        config = self.config
        grpc_address, http_address = config.grpc_address, config.http_address
        for name, host, port in config.addresses():
            port, sock = _reserve(host, port)
            if sock is not None:
                self.reserved.append(sock)
            if name == "gRPC":
                grpc_address = join_host_port(host, port)
            else:
                http_address = join_host_port(host, port)
        return replace(config, grpc_address=grpc_address, http_address=http_address,
                       workers=1, reuse_port=True)

    def _spawn(self, index: int, config: ServiceConfig, replaces: str | None = None
               ) -> Connection:
        parent_conn, child_conn = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_worker_main,
                                args=(config, child_conn, self.verbose, replaces),
                                name=f"ordinance-worker-{index}", daemon=False)
        proc.start()
        child_conn.close()
        self.procs[index] = proc
        self.started_at[index] = time.monotonic()
        return parent_conn

    def run(self) -> int:
        self.config.check_security()
        self.metrics_dir = tempfile.mkdtemp(prefix="ordinance-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            worker_config = self._worker_config()
            conns = [self._spawn(i, worker_config) for i in range(self.count)]
            readies = []
            deadline = time.monotonic() + READY_TIMEOUT
            for conn in conns:
                if not conn.poll(max(0.0, deadline - time.monotonic())):
                    log.error("a worker did not become ready in %.0f s", READY_TIMEOUT)
                    return 1
                try:
                    message = conn.recv()
                except EOFError:
                    log.error("a worker exited during start-up")
                    return 1
                if message.get("event") != "serving":
                    log.error("a worker failed to start: %s", message.get("error"))
                    return 1
                readies.append(message)
            summary = dict(readies[0])
            summary.update(pid=os.getpid(), workers=[r["pid"] for r in readies])
            print(json.dumps(summary), flush=True)
            self._supervise(worker_config)
            return 0
        finally:
            self._stop_all()
            for sock in self.reserved:
                sock.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _on_signal(self, signum: int, frame: object) -> None:
        log.info("signal %d: stopping %d worker(s)", signum, len(self.procs))
        self.stop_event.set()

    def _supervise(self, worker_config: ServiceConfig) -> None:
        from prometheus_client import multiprocess

        starting: dict[int, tuple[Connection, int | None, str]] = {}  # restarted, not ready
        while not self.stop_event.wait(0.5):
            for index, (conn, old_pid, ended) in list(starting.items()):
                self._restart_reported(index, conn, old_pid, ended, starting)
            for index, proc in list(self.procs.items()):
                if proc.is_alive() or index in starting:
                    continue
                ended = _how_it_ended(proc.exitcode)
                if proc.pid is not None:
                    multiprocess.mark_process_dead(proc.pid)
                if time.monotonic() - self.started_at[index] < RESTART_BACKOFF:
                    time.sleep(RESTART_BACKOFF)
                if self.stop_event.is_set():
                    continue
                starting[index] = (self._spawn(index, worker_config, ended), proc.pid, ended)
        for index, (conn, old_pid, ended) in list(starting.items()):  # reported, not yet logged
            self._restart_reported(index, conn, old_pid, ended, starting)

    def _restart_reported(self, index: int, conn: Connection, old_pid: int | None, ended: str,
                          starting: dict[int, tuple[Connection, int | None, str]]) -> None:
        """Log a restarted worker's outcome once it reports (or dies before it could)."""
        new = self.procs[index]
        try:
            message = conn.recv() if conn.poll() else None
        except EOFError:
            message = {"event": "failed", "error": f"exited with {new.exitcode}"}
        if message is None:
            return
        del starting[index]
        conn.close()
        event = "worker.restarted" if message.get("event") == "serving" else "worker.failed"
        log.error("%s", json.dumps({"event": event, "worker": index, "pid": old_pid,
                                    "ended": ended, "new_pid": new.pid,
                                    **({"error": message["error"]} if "error" in message
                                       else {})}))

    def _stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.is_alive():
                proc.terminate()  # SIGTERM: graceful stop in the worker
        deadline = time.monotonic() + STOP_GRACE
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker pid %s ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.join(5)


def _how_it_ended(exitcode: int | None) -> str:
    """`exit 1`, or the signal's name (`SIGKILL`, `SIGABRT`) for a worker killed by one."""
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-exitcode).name
    return f"exit {exitcode}"


def run_workers(config: ServiceConfig, workers: int, verbose: bool = False) -> int:
    """Serve with `workers` processes until SIGTERM/SIGINT."""
    return Supervisor(config, workers, verbose).run()
