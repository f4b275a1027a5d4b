"""Both authentication exchanges without a network: the proxy's SCRAM server against scramp's
client, and the upstream login against scramp's server, md5 and cleartext."""

from __future__ import annotations

import pytest
from scramp import ScramClient, ScramMechanism

from adapters.postgres import messages as m
from adapters.postgres.auth import (
    AuthFailed,
    ScramServerExchange,
    UpstreamAuthError,
    UpstreamLogin,
    is_loopback,
    md5_password,
    mock_auth_info,
)

INFO = ScramMechanism().make_auth_info("s3cret")


def _exchange(server: ScramServerExchange, password: str) -> m.AuthenticationSASLFinal:
    client = ScramClient(["SCRAM-SHA-256"], "alice", password)
    first = server.first(m.SASLInitialResponse("SCRAM-SHA-256",
                                               client.get_client_first().encode()))
    client.set_server_first(first.data.decode())
    final = server.final(m.SASLResponse(client.get_client_final().encode()))
    client.set_server_final(final.data.decode())  # the client verifies the server too
    return final


def test_scram_success() -> None:
    assert _exchange(ScramServerExchange("alice", INFO, b"k"), "s3cret").data.startswith(b"v=")


@pytest.mark.parametrize(("info", "password"), [(INFO, "wrong"), (None, "s3cret")])
def test_scram_failure_is_postgres_28p01(info: tuple[bytes, bytes, bytes, int] | None,
                                         password: str) -> None:
    with pytest.raises(AuthFailed) as failed:
        _exchange(ScramServerExchange("alice", info, b"k"), password)
    assert (failed.value.error.code, failed.value.error.message,
            failed.value.error.severity) == (
        "28P01", 'password authentication failed for user "alice"', "FATAL")


def test_scram_refuses_other_mechanisms_and_garbage() -> None:
    with pytest.raises(AuthFailed) as failed:
        ScramServerExchange("a", INFO, b"k").first(m.SASLInitialResponse("PLAIN", b"x"))
    assert failed.value.error.code == "08P01"
    for junk in (b"", b"garbage", b"\xff\xfe", b"p=tls-unique,,n=,r=abc"):
        with pytest.raises(AuthFailed):
            ScramServerExchange("a", INFO, b"k").first(m.SASLInitialResponse("SCRAM-SHA-256",
                                                                            junk))


def test_mock_credentials_are_stable_per_user_and_secret() -> None:
    assert mock_auth_info(b"k", "x") == mock_auth_info(b"k", "x")
    assert mock_auth_info(b"k", "x")[0] != mock_auth_info(b"k", "y")[0]
    assert mock_auth_info(b"k", "x") != mock_auth_info(b"j", "x")


def test_upstream_scram_login_against_scramp_server() -> None:
    server = ScramMechanism().make_server(lambda _user: INFO)
    login = UpstreamLogin("proxy", "s3cret")
    (initial,) = login.receive(m.AuthenticationSASL(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")))
    assert isinstance(initial, m.SASLInitialResponse) and initial.data is not None
    server.set_client_first(initial.data.decode())
    (response,) = login.receive(m.AuthenticationSASLContinue(server.get_server_first().encode()))
    assert isinstance(response, m.SASLResponse)
    server.set_client_final(response.data.decode())
    assert login.receive(m.AuthenticationSASLFinal(server.get_server_final().encode())) == ()
    assert login.receive(m.AuthenticationOk()) == () and login.done


def test_upstream_login_refuses_a_forged_server() -> None:
    server = ScramMechanism().make_server(lambda _user: ScramMechanism().make_auth_info("x"))
    login = UpstreamLogin("proxy", "s3cret")
    (initial,) = login.receive(m.AuthenticationSASL(("SCRAM-SHA-256",)))
    assert isinstance(initial, m.SASLInitialResponse) and initial.data is not None
    server.set_client_first(initial.data.decode())
    login.receive(m.AuthenticationSASLContinue(server.get_server_first().encode()))
    with pytest.raises(UpstreamAuthError, match="SCRAM exchange with upstream failed"):
        login.receive(m.AuthenticationSASLFinal(b"v=AAAA"))
    skipped = UpstreamLogin("proxy", "s3cret")
    skipped.receive(m.AuthenticationSASL(("SCRAM-SHA-256",)))
    with pytest.raises(UpstreamAuthError, match="success before completing SCRAM"):
        skipped.receive(m.AuthenticationOk())


def test_upstream_md5_cleartext_and_unsupported() -> None:
    login = UpstreamLogin("postgres", "secret")
    assert login.receive(m.AuthenticationCleartextPassword()) == (m.PasswordMessage("secret"),)
    (md5,) = login.receive(m.AuthenticationMD5Password(b"\x01\x02\x03\x04"))
    assert md5 == m.PasswordMessage(md5_password("postgres", "secret", b"\x01\x02\x03\x04"))
    assert md5_password("postgres", "secret", b"\x01\x02\x03\x04").startswith("md5")
    assert len(md5_password("u", "p", b"salt")) == 35
    with pytest.raises(UpstreamAuthError, match="Kerberos, GSSAPI or SSPI"):
        login.receive(m.AuthenticationOther(7))
    with pytest.raises(UpstreamAuthError, match="not SCRAM-SHA-256"):
        login.receive(m.AuthenticationSASL(("OAUTHBEARER",)))
    with pytest.raises(UpstreamAuthError, match="has no password"):
        UpstreamLogin("u", None).receive(m.AuthenticationCleartextPassword())
    with pytest.raises(UpstreamAuthError, match="unexpected ReadyForQuery"):
        login.receive(m.ReadyForQuery("I"))


@pytest.mark.parametrize(("address", "expected"), [
    (("127.0.0.1", 5432), True), (("::1", 5432, 0, 0), True), (("::ffff:127.0.0.1", 1), True),
    (("10.0.0.1", 5432), False), ("", True), (("not an ip", 1), False), (None, False),
])
def test_is_loopback(address: object, expected: bool) -> None:
    assert is_loopback(address) is expected
