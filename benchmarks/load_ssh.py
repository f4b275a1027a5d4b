"""One-run report for the SSH gateway: OpenSSH's `ssh` straight to a target vs through
`ordinance proxy ssh`.

    python -m benchmarks.load_ssh [--runs 30] [--exec-runs 200] [--megabytes 100] [--cat-runs 3]

Everything is started by this script and stopped by it, on errors and Ctrl-C too: a throwaway
sshd (`tests/support/sshd.py`) as the target, and `ordinance proxy ssh` with the shipped PCI
pack (`--policies policies`), an SQLite audit trail in a temporary directory, a users file
holding `alice` (her generated key) and one target `bench` labelled `env=dev`.

In ONE run, interleaved (direct, gateway, direct, ...):

- exec round trip: `ssh … true`, a new connection each time (key exchange, authentication,
  the exec, its exit status), `--runs` times per way: median and p99 of the wall time;
- exec on an open connection: `--exec-runs` `true` execs over one asyncssh connection per way
  (what each further command costs once logged in): median and p99;
- throughput: `ssh … cat FILE` of a `--megabytes` MB text file (log-like lines with numbers,
  so the gateway's card-number detector has digits to look at) into a counter, `--cat-runs`
  times per way: MB/s; every byte must arrive.

The gateway's CPU time per exec and per MB comes from /proc. Every exec through the gateway
must have been decided and recorded: the trail's command records are counted against the
runs. The goals (issue 16): exec latency at most 2x direct, throughput at least 0.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.load_common import cpu_seconds, percentile

REPO = Path(__file__).resolve().parents[1]
GOAL_EXEC = 2.0
GOAL_THROUGHPUT = 0.5


def _ssh(port: int, key: str, known_hosts: Path, login: str, *remote: str) -> list[str]:
    return ["ssh", "-p", str(port), "-i", key, "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", f"{login}@127.0.0.1", *remote]


def _write_log_file(path: Path, megabytes: int) -> int:
    """A text file of log-like lines (digits, no card numbers), readable by the target user."""
    line = (b"2026-12-08T02:50:00.123Z INFO api GET /v1/orders/48213 status=200 "
            b"bytes=5127 took=0.0123s trace=8f3a9c1e77d2\n")
    size = megabytes * 1_000_000
    block = line * (1_000_000 // len(line) + 1)
    with path.open("wb") as f:
        written = 0
        while written < size:
            chunk = block[:size - written]
            f.write(chunk)
            written += len(chunk)
    path.chmod(0o644)
    return size


@contextlib.contextmanager
def _gateway(tmp: Path, sshd: Any, alice_pub: str) -> Iterator[tuple[subprocess.Popen[str], int,
                                                                     Path, str]]:
    import asyncssh

    users = tmp / "users.yaml"
    users.write_text(f"users:\n  - {{name: alice, groups: [dev], ssh_keys: "
                     f"[{json.dumps(alice_pub)}]}}\n")
    targets = tmp / "targets.yaml"
    targets.write_text(
        "targets:\n  - name: bench\n"
        f"    host: {sshd.host}\n    port: {sshd.port}\n    user: {sshd.user}\n"
        f"    key: {sshd.client_key}\n"
        f"    known_hosts: [{json.dumps(sshd.host_public_key)}]\n"
        "    labels: {env: dev}\n")
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key_file = tmp / "gateway_host_key"
    host_key.write_private_key(str(host_key_file))
    audit = f"sqlite:///{tmp / 'audit.db'}"
    with (tmp / "gateway.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "proxy", "ssh", "--listen", "127.0.0.1:0",
             "--host-key", str(host_key_file), "--targets", str(targets),
             "--policies", str(REPO / "policies"), "--audit", audit, "--users", str(users)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline() or "{}")
        if ready.get("event") != "listening":
            raise RuntimeError("the gateway did not start: "
                               + (tmp / "gateway.log").read_text()[-800:])
        port = int(ready["listen"].rsplit(":", 1)[1])
        known = tmp / "gateway_known_hosts"
        known.write_text(f"[127.0.0.1]:{port} "
                         f"{host_key.export_public_key().decode().strip()}\n")
        yield proc, port, known, audit
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _timed(command: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, check=False, timeout=120)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[-1]!r} failed ({done.returncode}): "
                           f"{done.stderr.decode(errors='replace')[-400:]}")
    return took, len(done.stdout)


async def _open_connection_execs(port: int, user: str, key: str, known_hosts: Path,
                                 runs: int) -> list[float]:
    import asyncssh

    times: list[float] = []
    async with asyncssh.connect("127.0.0.1", port, username=user, client_keys=[key],
                                known_hosts=str(known_hosts), agent_path=None) as conn:
        await conn.run("true", check=True)  # warm-up
        for _ in range(runs):
            started = time.perf_counter()
            await conn.run("true", check=True)
            times.append(time.perf_counter() - started)
    return times


def _stats(samples: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(samples) * 1e3, 2),
            "p99_ms": round(percentile(samples, 0.99) * 1e3, 2), "n": len(samples)}


def _recorded_execs(audit: str) -> dict[str, int]:
    path = audit.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT payload FROM ordinance_audit WHERE kind = 'statement'")
        counts: dict[str, int] = {}
        for (payload,) in rows:
            p = json.loads(payload)
            key = f"{p.get('request')}:{p.get('effect')}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="new-connection execs per way")
    parser.add_argument("--exec-runs", type=int, default=200,
                        help="execs per way on one open connection")
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--cat-runs", type=int, default=3)
    args = parser.parse_args(argv)
    if shutil.which("ssh") is None:
        print("load_ssh: OpenSSH's ssh client is needed (Debian: openssh-client)",
              file=sys.stderr)
        return 2
    from tests.support.sshd import key_pair, start_sshd

    tmp = Path(tempfile.mkdtemp(prefix="ordinance-load-ssh-"))
    sshd = start_sshd()
    try:
        alice_key, alice_pub = key_pair(str(tmp), "alice_key")
        data_dir = Path(tempfile.mkdtemp(prefix="ordinance-load-ssh-data-"))
        data_dir.chmod(0o755)
        big = data_dir / "big.log"
        size = _write_log_file(big, args.megabytes)
        with _gateway(tmp, sshd, alice_pub) as (proc, port, gw_known, audit):
            direct = _ssh(sshd.port, sshd.client_key, Path(sshd.known_hosts), sshd.user)
            via = _ssh(port, alice_key, gw_known, "alice+bench")
            for prefix in (direct, via):  # warm-up: first connections, policy caches
                _timed([*prefix, "true"])
            report: dict[str, Any] = {"machine_load": os.getloadavg()}
            # exec round trip, a new connection each
            times: dict[str, list[float]] = {"direct": [], "gateway": []}
            cpu0 = cpu_seconds([proc.pid])
            for _ in range(args.runs):
                times["direct"].append(_timed([*direct, "true"])[0])
                times["gateway"].append(_timed([*via, "true"])[0])
            gw_cpu = cpu_seconds([proc.pid]) - cpu0
            report["exec_new_connection"] = {
                way: _stats(t) for way, t in times.items()}
            report["exec_new_connection"]["ratio_median"] = round(
                statistics.median(times["gateway"]) / statistics.median(times["direct"]), 2)
            report["exec_new_connection"]["gateway_cpu_ms_per_exec"] = round(
                gw_cpu / args.runs * 1e3, 2)
            # execs on an open connection
            cpu0 = cpu_seconds([proc.pid])
            on_gw = asyncio.run(_open_connection_execs(port, "alice+bench", alice_key,
                                                       gw_known, args.exec_runs))
            gw_cpu = cpu_seconds([proc.pid]) - cpu0
            on_direct = asyncio.run(_open_connection_execs(
                sshd.port, sshd.user, sshd.client_key, Path(sshd.known_hosts), args.exec_runs))
            report["exec_open_connection"] = {"direct": _stats(on_direct),
                                              "gateway": _stats(on_gw)}
            report["exec_open_connection"]["ratio_median"] = round(
                statistics.median(on_gw) / statistics.median(on_direct), 2)
            report["exec_open_connection"]["gateway_cpu_ms_per_exec"] = round(
                gw_cpu / args.exec_runs * 1e3, 2)
            # throughput
            rates: dict[str, list[float]] = {"direct": [], "gateway": []}
            cpu_cat = 0.0
            for _ in range(args.cat_runs):
                took, got = _timed([*direct, "cat", str(big)])
                if got != size:
                    raise RuntimeError(f"direct cat delivered {got} of {size} bytes")
                rates["direct"].append(size / took / 1e6)
                cpu0 = cpu_seconds([proc.pid])
                took, got = _timed([*via, "cat", str(big)])
                cpu_cat += cpu_seconds([proc.pid]) - cpu0
                if got != size:
                    raise RuntimeError(f"gateway cat delivered {got} of {size} bytes")
                rates["gateway"].append(size / took / 1e6)
            report["cat"] = {way: {"median_MB_s": round(statistics.median(r), 1),
                                   "runs": [round(x, 1) for x in r]}
                             for way, r in rates.items()}
            report["cat"]["ratio_median"] = round(
                statistics.median(rates["gateway"]) / statistics.median(rates["direct"]), 2)
            report["cat"]["gateway_cpu_ms_per_MB"] = round(
                cpu_cat * 1e3 / (args.cat_runs * size / 1e6), 2)
        recorded = _recorded_execs(audit)
        expected = 1 + args.runs + args.exec_runs + 1 + args.cat_runs  # (warm-ups included)
        report["recorded_statements"] = recorded
        report["goals"] = {
            "exec_latency_at_most_2x": report["exec_new_connection"]["ratio_median"] <= GOAL_EXEC,
            "throughput_at_least_0.5x": report["cat"]["ratio_median"] >= GOAL_THROUGHPUT}
        print(json.dumps(report, indent=2))
        if recorded.get("exec:allow", 0) != expected:
            print(f"load_ssh: {recorded.get('exec:allow', 0)} allowed exec records, expected "
                  f"{expected}", file=sys.stderr)
            return 1
        return 0
    finally:
        sshd.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(NameError):
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
