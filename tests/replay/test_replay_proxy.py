"""Real traffic through `ordinance proxy postgres` (a subprocess, real PostgreSQL, psql), then
`ordinance replay` of its trail with a changed policy: counts and examples exactly, the record
the trail had to scrub reported instead of guessed, and the recorded decisions (masks too)
matching a re-decision with the proxy's own policies."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from engine.policy import load_policy_set
from tests.postgres.conftest import PSQL, psql_env
from tests.postgres.test_enforcement_cli import Running, dbname_of, proxy_args

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {"alice": "alice-secret", "pat": "pat-secret"}
NO_DELETE = """package ordinance.change
import rego.v1

deny contains {"msg": "no DELETE on scratch", "rule": "no_scratch_delete"} if {
    some s in input.command.statements
    s.kind == "delete"
    "scratch" in s.tables
}
"""
TRAFFIC = [
    ("alice", "SELECT id, pan FROM cards WHERE id = 1"),
    ("alice", "SELECT id, pan FROM cards WHERE id = 2"),
    ("alice", "DELETE FROM scratch WHERE id = 1"),
    ("alice", "DROP TABLE scratch"),
    ("alice", "SELECT id FROM cards WHERE id = 4111111111111111"),  # scrubbed in the trail
    ("pat", "SELECT id, pan FROM cards WHERE id = 1"),
]


@pytest.fixture(scope="module")
def database(pg_dsn: str) -> Iterator[str]:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = "r_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(pg_dsn)
    params["dbname"] = name
    dsn = make_conninfo(**params)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE cards (id numeric PRIMARY KEY, pan text, cvv text)")
        conn.execute("INSERT INTO cards VALUES (1, '4111111111111112', '123')")
        conn.execute("CREATE TABLE scratch (id int)")
    yield dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def psql(port: int, dbname: str, user: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PSQL, "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(port), "-U",
                           user, "-d", dbname, "-c", sql], env=psql_env(PASSWORDS[user]),
                          capture_output=True, text=True, timeout=60, check=False)


def replay(*args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "engine.cli", "replay", *args, "--format",
                           "json"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


@pytest.fixture(scope="module")
def recorded(database: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The trail of TRAFFIC through the proxy (PCI pack, env=prod)."""
    tmp = tmp_path_factory.mktemp("replay-proxy")
    running = Running(proxy_args(tmp, database, "--policies", str(REPO / "policies")), REPO)
    try:
        port = int(running.ready["listen"].rsplit(":", 1)[1])
        outputs = [psql(port, dbname_of(database), user, sql) for user, sql in TRAFFIC]
    finally:
        code, err = running.stop()
    assert code == 0, err
    assert outputs[0].stdout.strip() == "1|************1112"  # alice: masked
    assert outputs[5].stdout.strip() == "1|4111111111111112"  # pat may see PANs
    assert "DROP is not allowed on production resources" in outputs[3].stderr
    return f"sqlite:///{tmp / 'audit.db'}"


@pytest.fixture(scope="module")
def proposed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pack with CVV no longer masked, and DELETE on scratch denied."""
    root = tmp_path_factory.mktemp("proposed") / "policies"
    shutil.copytree(REPO / "policies", root)
    masking = root / "ordinance" / "pci" / "masking.yaml"
    text = masking.read_text()
    assert "      - {column: cvv, method: redact}\n" in text
    masking.write_text(text.replace("      - {column: cvv, method: redact}\n", ""))
    (root / "ordinance" / "change.rego").write_text(NO_DELETE)
    return root


def test_replay_of_proxy_traffic_against_the_pack(recorded: str, proposed: Path) -> None:
    code, report = replay("--audit", recorded, "--policies", str(proposed), "--baseline",
                          str(REPO / "policies"))
    assert code == 1
    assert (report["records"], report["replayed"], report["changed"],
            report["not_replayed"]) == (6, 5, 5, 1)
    assert report["kinds"] == {"statement": 6}
    assert report["changes"] == {"unmask cvv": 5, "allow->deny": 1}
    rules = {g["rule"]: g for g in report["by_rule"]}
    assert set(rules) == {"ordinance.change.no_scratch_delete", "mask-cvv-and-expiry"}
    cvv = rules["mask-cvv-and-expiry"]
    assert (cvv["count"], cvv["subjects"]) == (5, 2)
    delete = rules["ordinance.change.no_scratch_delete"]
    assert delete["count"] == 1 and delete["changes"] == {"allow->deny": 1, "unmask cvv": 1}
    [example] = delete["examples"]
    assert (example["subject"], example["resource"], example["text"]) == (
        "alice", "payments", "DELETE FROM scratch WHERE id = 1")
    assert example["before"]["effect"] == "allow" and example["after"]["effect"] == "deny"
    assert "cvv:redact" in example["before"]["masks"]
    assert "cvv:redact" not in example["after"]["masks"]
    assert [e["text"] for e in cvv["examples"]] == [t for _, t in TRAFFIC[:3]]
    subjects = {(g["subject"], g["resource"]): g["count"] for g in report["by_subject"]}
    assert subjects == {("alice", "payments"): 4, ("pat", "payments"): 1}
    [skipped] = report["not_replayed_reasons"]
    assert skipped["reason"] == ("the trail masked a card number in the text, and the "
                                 "baseline policies could see it")
    assert skipped["examples"][0]["text"] == "SELECT id FROM cards WHERE id = ************1111"


def test_recorded_decisions_match_the_proxy_policies(recorded: str, proposed: Path) -> None:
    code, report = replay("--audit", recorded, "--policies", str(REPO / "policies"))
    assert (code, report["replayed"], report["changed"], report["not_replayed"]) == (0, 5, 0, 1)
    revision = load_policy_set(str(REPO / "policies")).revision
    code, report = replay("--audit", recorded, "--policies", str(proposed),
                          "--baseline-revision", revision, "--fail-on", "unmask")
    assert (code, report["replayed"], report["changes"]) == (
        1, 5, {"unmask cvv": 5, "allow->deny": 1})
    code, report = replay("--audit", recorded, "--policies", str(proposed),
                          "--baseline-revision", "0000", "--fail-on", "deny")
    assert (code, report["replayed"], report["not_replayed"]) == (0, 0, 6)


def test_a_proxy_asking_the_service_is_replayed_once_per_decision(
        database: str, tmp_path: Path, proposed: Path) -> None:
    """Proxy and service write one trail: each statement has a statement record and the
    service's decision record, with one decision id."""
    audit = f"sqlite:///{tmp_path / 'audit.db'}"
    serve = Running(["serve", "--policies", str(REPO / "policies"), "--grpc", "127.0.0.1:0",
                     "--http", "off", "--audit", audit], REPO)
    try:
        proxy = Running(proxy_args(tmp_path, database, "--decision-service",
                                   serve.ready["grpc"]), REPO)
        try:
            port = int(proxy.ready["listen"].rsplit(":", 1)[1])
            for user, sql in (TRAFFIC[0], TRAFFIC[2]):
                assert psql(port, dbname_of(database), user, sql).returncode == 0
        finally:
            code, err = proxy.stop()
        assert code == 0, err
    finally:
        serve.stop()
    code, report = replay("--audit", audit, "--policies", str(proposed), "--baseline",
                          str(REPO / "policies"))
    assert (code, report["kinds"], report["duplicates"], report["replayed"]) == (
        1, {"decision": 2, "statement": 2}, 2, 2)
    assert report["changes"] == {"unmask cvv": 2, "allow->deny": 1}
