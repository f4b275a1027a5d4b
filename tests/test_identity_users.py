"""Static users: the YAML file, SCRAM verifiers with a real scramp exchange, the CLI helper."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest
from scramp import ScramClient, ScramException, ScramMechanism

from engine.cli import main as cli_main
from engine.identity import Subject
from engine.identity.users import (
    StaticUser,
    UserDirectory,
    UsersFileError,
    format_verifier,
    load_users,
    parse_users,
    parse_verifier,
    scram_auth_info,
)

DANA_VERIFIER = format_verifier(scram_auth_info("dana-secret", salt=b"0123456789abcdef"))


def users_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "users.yaml"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def directory(tmp_path: Path) -> UserDirectory:
    return load_users(users_file(tmp_path, f"""\
        users:
          - {{name: alice, password: alice-secret, groups: [dev]}}
          - {{name: dana, scram: "{DANA_VERIFIER}", groups: [dba-leads, dev]}}
          - name: ci
            password: "ci token with spaces"
        """))


def scram_exchange(user: StaticUser, username: str, password: str) -> None:
    """A full SCRAM-SHA-256 exchange: scramp client against scramp server using our info."""
    server = ScramMechanism("SCRAM-SHA-256").make_server(lambda _name: user.scram_auth_info())
    client = ScramClient(["SCRAM-SHA-256"], username, password)
    server.set_client_first(client.get_client_first())
    client.set_server_first(server.get_server_first())
    server.set_client_final(client.get_client_final())
    client.set_server_final(server.get_server_final())


def test_lookup_and_subject(directory: UserDirectory) -> None:
    assert len(directory) == 3
    dana = directory.lookup("dana")
    assert dana is not None and dana.groups == ("dba-leads", "dev")
    assert dana.subject() == Subject(id="dana", groups=("dba-leads", "dev"), claims={})
    assert dana.subject().to_input() == {"id": "dana", "groups": ["dba-leads", "dev"],
                                         "claims": {}}
    ci = directory.lookup("ci")
    assert ci is not None and ci.groups == ()
    assert directory.lookup("mallory") is None
    assert "secret" not in repr(directory.lookup("alice"))


@pytest.mark.parametrize("name", ["alice", "dana", "ci"])
def test_verify_password(directory: UserDirectory, name: str) -> None:
    user = directory.lookup(name)
    assert user is not None
    password = {"alice": "alice-secret", "dana": "dana-secret",
                "ci": "ci token with spaces"}[name]
    assert user.verify_password(password)
    assert not user.verify_password(password + "x")
    assert not user.verify_password("")


@pytest.mark.parametrize("name", ["alice", "dana"])
def test_scram_exchange_with_the_file_secret(directory: UserDirectory, name: str) -> None:
    user = directory.lookup(name)
    assert user is not None
    scram_exchange(user, name, f"{name}-secret")
    with pytest.raises(ScramException):
        scram_exchange(user, name, "wrong password")


def test_plaintext_auth_info_is_derived_once(directory: UserDirectory) -> None:
    alice = directory.lookup("alice")
    assert alice is not None
    assert alice.scram_auth_info() is alice.scram_auth_info()


def test_auth_info_is_what_scramp_makes() -> None:
    salt = b"sixteen byte slt"
    for password in ("pencil", "päss wörd", "\u2168"):   # Ⅸ: SASLprep maps it to "IX"
        ours = scram_auth_info(password, iterations=4096, salt=salt)
        theirs = ScramMechanism("SCRAM-SHA-256").make_auth_info(password, 4096, salt)
        assert ours == theirs


def test_verifier_round_trip() -> None:
    info = scram_auth_info("x", iterations=8192)
    assert parse_verifier(format_verifier(info)) == info
    assert format_verifier(info).startswith("SCRAM-SHA-256$8192:")


@pytest.mark.parametrize(("verifier", "message"), [
    ("md5abc", "must look like"),
    ("SCRAM-SHA-1$4096:c2FsdA==$" + "A" * 44 + ":" + "A" * 44, "mechanism is 'SCRAM-SHA-1'"),
    ("SCRAM-SHA-256$0:c2FsdA==$" + "A" * 44 + ":" + "A" * 44, "not a positive integer"),
    ("SCRAM-SHA-256$x:c2FsdA==$" + "A" * 44 + ":" + "A" * 44, "not a positive integer"),
    ("SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + ":" + "A" * 44, "invalid base64"),
    ("SCRAM-SHA-256$4096:c2FsdA==$QUJD:QUJD", "must be 32 bytes"),
    ("SCRAM-SHA-256$4096:$" + "A" * 44 + ":" + "A" * 44, "salt is empty"),
])
def test_bad_verifiers(verifier: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_verifier(verifier)


@pytest.mark.parametrize(("body", "message"), [
    ("users:\n  - {password: x}\n", r"users\.yaml:2: users\[0\]: missing name"),
    ("users:\n  - {name: a, password: x}\n  - {name: b}\n",
     r":3: users\[1\] \(b\): needs a password or verifiers .*, or ssh_keys"),
    ("users:\n  - {name: a, password: x, scram: y}\n", "a password or verifiers .*, not both"),
    ("users:\n  - {name: a, pasword: x}\n",
     r"unknown key\(s\): pasword \(allowed: caching_sha2_password, groups"),
    ("users:\n  - {name: a, password: x}\n  - {name: a, password: y}\n",
     r":3: users\[1\] \(a\): duplicate name, first defined at line 2"),
    ("users:\n  - {name: a, password: x, groups: dev}\n", "groups must be a list"),
    ("users:\n  - {name: a, password: 12}\n", "password must be a non-empty string"),
    ("users:\n  - {name: a, scram: 'SCRAM-SHA-256$1:AA'}\n",
     r":2: users\[0\] \(a\): scram verifier must look like"),
    ("users:\n  - {name: '', password: x}\n", "name must be a non-empty string"),
    ("users:\n  - just-a-name\n", "expected a mapping"),
    ("users: {alice: x}\n", "'users' must be a list"),
    ("people: []\n", r"unknown top-level key\(s\): people"),
    ("", "expected a mapping"),
    ("users: [\n", "not valid YAML"),
])
def test_malformed_files_say_where(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(UsersFileError, match=message):
        load_users(users_file(tmp_path, body))


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="cannot read users file"):
        load_users(tmp_path / "missing.yaml")


def test_empty_user_list_is_valid() -> None:
    assert len(parse_users("users: []\n")) == 0


# --- PostgreSQL compatibility -----------------------------------------------------------------

@pytest.mark.postgres
def test_a_verifier_made_by_postgresql_is_accepted(pg_database: str) -> None:
    import psycopg

    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute("DROP ROLE IF EXISTS ordinance_scram_probe")
        conn.execute("CREATE ROLE ordinance_scram_probe PASSWORD 'probe-secret'")
        try:
            row = conn.execute("SELECT rolpassword FROM pg_authid "
                               "WHERE rolname = 'ordinance_scram_probe'").fetchone()
        finally:
            conn.execute("DROP ROLE ordinance_scram_probe")
    assert row is not None
    directory = parse_users(f'users:\n  - {{name: probe, scram: "{row[0]}"}}\n')
    probe = directory.lookup("probe")
    assert probe is not None
    assert probe.verify_password("probe-secret")
    assert not probe.verify_password("probe-secreT")
    scram_exchange(probe, "probe", "probe-secret")


# --- CLI --------------------------------------------------------------------------------------

def test_cli_hash_password(monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret pass\n"))
    assert cli_main(["users", "hash-password", "--stdin"]) == 0
    verifier = capsys.readouterr().out.strip()
    user = parse_users(f'users:\n  - {{name: eve, scram: "{verifier}"}}\n').lookup("eve")
    assert user is not None and user.verify_password("s3cret pass")
    scram_exchange(user, "eve", "s3cret pass")


def test_cli_hash_password_refuses_weak_input(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert cli_main(["users", "hash-password", "--stdin"]) == 1
    assert cli_main(["users", "hash-password", "--stdin", "--iterations", "100"]) == 2
    assert "at least 4096" in capsys.readouterr().err


def test_cli_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = users_file(tmp_path, f'users:\n  - {{name: dana, scram: "{DANA_VERIFIER}"}}\n')
    assert cli_main(["users", "check", str(good)]) == 0
    out = capsys.readouterr()
    assert out.out == "dana\tscram\t-\n" and "1 user(s) OK" in out.err
    bad = tmp_path / "bad.yaml"
    bad.write_text("users:\n  - {password: x}\n")
    assert cli_main(["users", "check", str(bad)]) == 1
    assert "bad.yaml:2: users[0]: missing name" in capsys.readouterr().err


def test_hash_password_mysql_methods() -> None:
    import subprocess
    import sys

    from engine.identity.users import parse_mysql_native, parse_mysql_sha2

    def run(method: str) -> str:
        out = subprocess.run([sys.executable, "-m", "engine.cli", "users", "hash-password",
                              "--stdin", "--method", method], input="pw\n",
                             capture_output=True, text=True, timeout=60, check=True)
        return out.stdout.strip()

    native, sha2 = run("mysql_native_password"), run("caching_sha2_password")
    assert parse_mysql_native(native) and parse_mysql_sha2(sha2)
    directory = parse_users(f"users:\n  - {{name: m, mysql_native_password: '{native}', "
                            f"caching_sha2_password: '{sha2}'}}\n")
    user = directory.lookup("m")
    assert user is not None and user.verify_password("pw") and not user.verify_password("p")
