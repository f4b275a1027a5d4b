"""The proxy's upstream role with only what users need: the SQL of docs/postgres-proxy.md ("The
upstream role") run as written on a throwaway database, `ordinance proxy postgres` run with
that role (psql through it), and the start-up line that names the role and warns when it is a
superuser."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.postgres.test_enforcement_cli import Running, proxy_args, psql

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[2]


def documented_sql() -> str:
    doc = (REPO / "docs" / "postgres-proxy.md").read_text()
    section = doc.split("## The upstream role", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sql\n(.*?)```", section, re.DOTALL)
    assert block is not None, "docs/postgres-proxy.md lost its upstream role SQL"
    return block.group(1)


@pytest.fixture(scope="module")
def least_privilege(pg_dsn: str) -> Iterator[tuple[str, str]]:
    """A database with the walk-through's table, and the documented role for it: (the
    superuser's DSN, the role's DSN)."""
    name = "lp_" + uuid.uuid4().hex[:12]
    role = "ordinance_proxy_" + uuid.uuid4().hex[:8]
    password = uuid.uuid4().hex
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(pg_dsn)
    params["dbname"] = name
    owner = make_conninfo(**params)
    sql = (documented_sql().replace("ordinance_proxy", role).replace("'change-me'",
                                                                      f"'{password}'")
           .replace("DATABASE payments", f'DATABASE "{name}"'))
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute("CREATE TABLE cards (id serial PRIMARY KEY, pan text, cvv text)")
        conn.execute("INSERT INTO cards (pan, cvv) VALUES ('4111111111111112', '123')")
        conn.execute(sql)  # as documented
    params.update(user=role, password=password)
    try:
        yield owner, make_conninfo(**params)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def line_after_ready(running: Running) -> dict[str, object]:
    assert running.process.stdout is not None
    return dict(json.loads(running.process.stdout.readline()))


def test_the_documented_role_is_enough_for_users_and_no_more(
        least_privilege: tuple[str, str], tmp_path: Path) -> None:
    owner, role_dsn = least_privilege
    args = proxy_args(tmp_path, role_dsn, "--policies", str(REPO / "policies"))
    args[args.index("env=prod")] = "env=dev"  # the policies let DROP through: the role does not
    running = Running(args, REPO)
    try:
        assert line_after_ready(running) == {
            "event": "upstream_role", "proxy": "postgres",
            "role": conninfo_to_dict(role_dsn)["user"], "superuser": False}
        port = int(running.ready["listen"].rsplit(":", 1)[1])
        dbname = str(conninfo_to_dict(role_dsn)["dbname"])
        read = psql(port, dbname, "SELECT id, pan, cvv FROM cards WHERE id = 1")
        assert read.returncode == 0 and read.stdout.split() == ["1|************1112|[REDACTED]"]
        write = psql(port, dbname, "INSERT INTO cards (id) VALUES (DEFAULT) RETURNING id")
        assert write.returncode == 0, write.stderr
        assert write.stdout.split() == ["2", "INSERT", "0", "1"]
        assert psql(port, dbname, "UPDATE cards SET id = 3 WHERE id = 2").returncode == 0
        assert psql(port, dbname, "DELETE FROM cards WHERE id = 3").returncode == 0
        masked_write = psql(port, dbname, "UPDATE cards SET pan = 'y' WHERE id = 1")
        assert "masked column pan of cards would be written" in masked_write.stderr
        for sql, refusal in [
            ("DROP TABLE cards", "must be owner of table cards"),
            ("SELECT pg_read_file('PG_VERSION')", "permission denied for function pg_read_file"),
            ("CREATE TABLE loot (x text)", "permission denied for schema public"),
            ("CREATE TEMP TABLE loot AS SELECT 1 AS x",  # (from cards: held by the pack)
             "permission denied to create temporary tables"),
            ("ALTER TABLE cards DISABLE ROW LEVEL SECURITY", "must be owner of table cards"),
        ]:
            out = psql(port, dbname, sql)
            assert out.returncode != 0 and refusal in out.stderr, (sql, out.stderr)
    finally:
        code, err = running.stop()
    assert code == 0, err
    with psycopg.connect(owner) as conn:
        assert conn.execute("SELECT count(*) FROM cards").fetchone() == (1,)


def test_a_superuser_upstream_role_is_warned_about(least_privilege: tuple[str, str],
                                                   tmp_path: Path) -> None:
    owner, _ = least_privilege
    running = Running(proxy_args(tmp_path, owner, "--policies", str(REPO / "policies")), REPO)
    try:
        line = line_after_ready(running)
    finally:
        running.stop()
    superuser = conninfo_to_dict(owner)["user"]
    assert line["event"] == "upstream_role" and line["superuser"] is True
    assert line["role"] == superuser
    assert f"the upstream role {superuser} is a superuser" in str(line["warning"])
