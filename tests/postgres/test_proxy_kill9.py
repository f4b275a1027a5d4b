"""kill -9 of `ordinance proxy postgres` while clients run statements: every statement whose
result a client received is in the audit trail, and `ordinance audit verify` passes; with the
default `--audit-durability fsync` and with `os` (the record is written to the OS before the
result, which a killed proxy cannot lose)."""

from __future__ import annotations

import random
import threading
from functools import partial
from pathlib import Path

import psycopg
import pytest

from engine.audit import open_audit_log
from tests.postgres.test_enforcement_cli import REPO, Running, dbname_of, ordinance, proxy_args
from tests.postgres.test_enforcement_cli import database as database  # the fixture
from tests.support.kill9 import kill_under_load

pytestmark = pytest.mark.postgres
KILLS = 3


def _client(port: int, dbname: str, tag: str, stop: threading.Event, acked: list[str]) -> None:
    try:
        with psycopg.connect(f"host=127.0.0.1 port={port} dbname={dbname} user=alice "
                             "password=alice-secret sslmode=disable", autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                text = f"SELECT '{tag}-{i}' AS n"
                i += 1
                row = conn.execute(text).fetchone()
                assert row == (f"{tag}-{i - 1}",)
                acked.append(text)
    except psycopg.OperationalError:
        return  # the proxy is gone


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_kill_9_loses_no_acknowledged_statement(database: str, tmp_path: Path,
                                                durability: str) -> None:
    rng = random.Random(19)
    acked: list[str] = []
    args = [*proxy_args(tmp_path, database, "--policies", str(REPO / "policies")),
            "--audit-durability", durability]
    for kill in range(KILLS):
        running = Running(args, REPO)
        assert running.ready["audit_durability"] == durability
        port = int(running.ready["listen"].rsplit(":", 1)[1])
        clients = [partial(_client, port, dbname_of(database), f"k{kill}c{c}")
                   for c in range(4)]
        acked += kill_under_load(running.process, clients, rng, after=0.8)
    audit = f"sqlite:///{tmp_path / 'audit.db'}"
    with open_audit_log(audit) as log:
        recorded = {r.payload["text"] for r in log.iter_records(kind="statement")
                    if r.payload.get("error") is None}
    missing = set(acked) - recorded
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged statements not recorded"
    verify = ordinance("audit", "verify", "--audit", audit)
    assert verify.returncode == 0, verify.stdout + verify.stderr
