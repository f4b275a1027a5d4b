"""MySQL authentication without a server: scrambles cross-checked against PyMySQL's client
side, the server exchange state machine (fast path, plugin switch, full authentication,
tokens only over TLS), and the users file's MySQL verifiers."""

from __future__ import annotations

import pytest
from pymysql import _auth as pymysql_auth

from adapters.mysql import auth
from adapters.mysql.messages import OK, AuthMoreData, AuthSwitchRequest
from engine.identity.users import (
    StaticUser,
    UsersFileError,
    mysql_native_verifier,
    mysql_sha2_verifier,
    parse_mysql_native,
    parse_mysql_sha2,
    parse_users,
)

SCRAMBLE = bytes(range(1, 21))


def test_scrambles_match_pymysql() -> None:
    assert auth.native_token("s3cret", SCRAMBLE) == pymysql_auth.scramble_native_password(
        b"s3cret", SCRAMBLE)
    assert auth.sha2_token("s3cret", SCRAMBLE) == pymysql_auth.scramble_caching_sha2(
        b"s3cret", SCRAMBLE)
    assert auth.check_native(auth.native_verifier("s3cret"), SCRAMBLE,
                             auth.native_token("s3cret", SCRAMBLE))
    assert not auth.check_native(auth.native_verifier("s3cret"), SCRAMBLE,
                                 auth.native_token("other", SCRAMBLE))
    assert auth.check_sha2(auth.sha2_verifier("s3cret"), SCRAMBLE,
                           auth.sha2_token("s3cret", SCRAMBLE))
    assert not auth.check_sha2(auth.sha2_verifier("s3cret"), SCRAMBLE, b"")


def test_verifier_text_formats() -> None:
    # MySQL's own authentication_string for mysql_native_password of "password"
    assert mysql_native_verifier("password") == "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
    assert parse_mysql_native(mysql_native_verifier("x")) == auth.native_verifier("x")
    assert parse_mysql_sha2(mysql_sha2_verifier("x")) == auth.sha2_verifier("x")
    with pytest.raises(ValueError, match="40 hex digits"):
        parse_mysql_native("*ABC")
    with pytest.raises(ValueError, match="SHA2"):
        parse_mysql_sha2("deadbeef")


def test_users_file_with_mysql_verifiers() -> None:
    directory = parse_users(f"""users:
  - {{name: nat, mysql_native_password: "{mysql_native_verifier('n')}", groups: [dev]}}
  - {{name: sha, caching_sha2_password: "{mysql_sha2_verifier('s')}"}}
""")
    nat, sha = directory.lookup("nat"), directory.lookup("sha")
    assert nat is not None and sha is not None
    assert nat.verify_password("n") and not nat.verify_password("s")
    assert sha.verify_password("s") and sha.mysql_native() is None
    assert nat.scram_auth_info() is None  # no PostgreSQL login for a MySQL-only user
    with pytest.raises(UsersFileError, match="a password or verifiers"):
        parse_users("users:\n  - {name: x, password: p, mysql_native_password: '*'}\n")
    with pytest.raises(UsersFileError, match="40 hex digits"):
        parse_users("users:\n  - {name: x, mysql_native_password: 'plain'}\n")


def _exchange(user: StaticUser | None, **kwargs: object) -> auth.ClientAuth:
    class Directory:
        def lookup(self, name: str) -> StaticUser | None:
            return user if user is not None and name == user.name else None

    options = {"secure": False, "loopback": False, "token_login": False, **kwargs}
    return auth.ClientAuth(Directory(), user=user.name if user else "ghost", host="h",
                           scramble=SCRAMBLE, **options)  # type: ignore[arg-type]


def test_fast_path_and_wrong_password() -> None:
    user = StaticUser("a", password="pw")
    exchange = _exchange(user)
    replies = exchange.start(auth.CACHING_SHA2, auth.sha2_token("pw", SCRAMBLE))
    assert replies == [AuthMoreData(auth.FAST_AUTH_OK), OK()] and exchange.done
    exchange = _exchange(user)
    assert exchange.start(auth.CACHING_SHA2, auth.sha2_token("no", SCRAMBLE)) == [
        AuthMoreData(auth.PERFORM_FULL_AUTH)]
    with pytest.raises(auth.AuthDenied, match="needs TLS"):  # cleartext off loopback
        exchange.receive(b"pw\x00")


def test_switch_to_the_plugin_of_the_verifier() -> None:
    user = StaticUser("n", native=auth.native_verifier("pw"))
    exchange = _exchange(user)
    (switch,) = exchange.start(auth.CACHING_SHA2, b"\x00" * 32)
    assert isinstance(switch, AuthSwitchRequest) and switch.plugin == auth.NATIVE
    scramble = switch.data[:20]
    assert exchange.receive(auth.native_token("pw", scramble)) == [OK()]


def test_full_authentication_over_loopback_and_rsa() -> None:
    from functools import cache

    from cryptography.hazmat.primitives import serialization

    user = StaticUser("s", sha2=auth.sha2_verifier("pw"))
    exchange = _exchange(user, loopback=True)
    exchange.start(auth.CACHING_SHA2, b"\x00" * 32)
    assert exchange.receive(b"pw\x00") == [OK()]
    key = cache(auth.RsaKey)
    exchange = _exchange(user, rsa_key=key)
    exchange.start(auth.CACHING_SHA2, b"\x00" * 32)
    (pem,) = exchange.receive(auth.REQUEST_PUBLIC_KEY)
    assert isinstance(pem, AuthMoreData)
    public = serialization.load_pem_public_key(pem.data)
    encrypted = pymysql_auth.sha2_rsa_encrypt(b"pw", SCRAMBLE, pem.data)
    assert public is not None and exchange.receive(encrypted) == [OK()]


def test_unknown_user_fails_like_a_wrong_password() -> None:
    exchange = _exchange(None, loopback=True)
    assert exchange.start(auth.CACHING_SHA2, b"\x01" * 32) == [
        AuthMoreData(auth.PERFORM_FULL_AUTH)]
    with pytest.raises(auth.AuthDenied) as exc:
        exchange.receive(b"anything\x00")
    assert exc.value.error.code == 1045 and "'ghost'@'h'" in exc.value.error.message


def test_clear_password_token_only_over_tls() -> None:
    exchange = _exchange(None, token_login=True, secure=False)
    # without TLS the cleartext plugin is not accepted: the client is switched away from it
    (switch,) = exchange.start(auth.CLEAR, b"token\x00")
    assert isinstance(switch, AuthSwitchRequest) and switch.plugin == auth.CACHING_SHA2
    assert exchange.token is None
    exchange = _exchange(None, token_login=True, secure=True)
    (switch,) = exchange.start(auth.CACHING_SHA2, b"\x00" * 32)
    assert isinstance(switch, AuthSwitchRequest) and switch.plugin == auth.CLEAR
    assert exchange.receive(b"eyJ.token\x00") == [] and exchange.token == "eyJ.token"
