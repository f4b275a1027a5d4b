"""Authentication, both ways: clients to the proxy, and the proxy to the upstream server.

Owns: the interfaces the proxy needs from identity (`UserDirectory`, `DirectoryUser`,
`TokenVerifier`), the server side of SCRAM-SHA-256 (`ScramServerExchange`, on scramp, with
PostgreSQL's mock exchange for unknown users so user names cannot be probed), the client side
of the upstream login (`UpstreamLogin`: trust, cleartext, md5, SCRAM-SHA-256), and the exact
PostgreSQL error for a failed login. Sans-IO: the proxy loop moves the messages.
Must not: read user files or verify tokens itself (the injected directory and verifier do),
or decide anything about what an authenticated user may run.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from scramp import ScramClient, ScramException, ScramMechanism  # type: ignore[import-untyped]

from adapters.postgres.messages import (
    Authentication,
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationOther,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendMessage,
    ErrorResponse,
    FrontendMessage,
    PasswordMessage,
    SASLInitialResponse,
    SASLResponse,
)

SCRAM_SHA_256 = "SCRAM-SHA-256"
AuthInfo = tuple[bytes, bytes, bytes, int]


class DirectoryUser(Protocol):
    """A user the proxy can authenticate with SCRAM (e.g. `engine.identity.users.StaticUser`)."""

    @property
    def name(self) -> str: ...

    @property
    def groups(self) -> tuple[str, ...]: ...

    def scram_auth_info(self) -> AuthInfo | None:
        """(salt, stored_key, server_key, iterations) as scramp's `make_auth_info` returns;
        None for a user without a SCRAM verifier (SSH keys or MySQL verifiers only: the login
        fails)."""
        ...


class UserDirectory(Protocol):
    def lookup(self, name: str) -> DirectoryUser | None: ...


class TokenSubject(Protocol):
    """What a token verifier returns (e.g. `engine.identity.Subject`)."""

    @property
    def id(self) -> str: ...

    @property
    def groups(self) -> tuple[str, ...]: ...


TokenVerifier = Callable[[str], "TokenSubject | Awaitable[TokenSubject]"]
"""`verify_token(token) -> subject`; raises when the token is not acceptable."""


class AuthFailed(Exception):
    """A client failed to authenticate; `error` is what it is told."""

    def __init__(self, error: ErrorResponse) -> None:
        super().__init__(error.message)
        self.error = error


def password_failed(user: str) -> ErrorResponse:
    """PostgreSQL's exact answer to an unknown user or a wrong password."""
    return ErrorResponse.build("28P01", f'password authentication failed for user "{user}"',
                               severity="FATAL")


def is_loopback(address: Any) -> bool:
    """Whether a peer address (socket peername) is on the loopback interface."""
    if isinstance(address, tuple) and address:
        address = address[0]
    if isinstance(address, str | bytes) and not address:
        return True  # Unix-domain socket
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def mock_auth_info(secret: bytes, user: str) -> AuthInfo:
    """Credentials no password matches, stable per user name (so a prober sees the same salt
    on every attempt, as for a real user); PostgreSQL's scram_mock_salt in spirit."""
    digest = hmac.new(secret, b"salt:" + user.encode("utf-8", "surrogateescape"),
                      "sha256").digest()
    keys = hmac.new(secret, b"keys:" + user.encode("utf-8", "surrogateescape"),
                    "sha512").digest()
    return digest[:16], keys[:32], keys[32:], 4096


class ScramServerExchange:
    """The server side of one SCRAM-SHA-256 exchange, on scramp.

    libpq sends an empty user name in client-first-message (`n=,`), since the start-up packet
    carries it; scramp refuses an empty attribute, so scramp is shown `n=*` and then the
    original client-first-message-bare is restored for the proof computation, which must use
    the bytes the client signed.
    """

    def __init__(self, user: str, auth_info: AuthInfo | None, mock_secret: bytes) -> None:
        self.user = user
        self._known = auth_info is not None
        info = auth_info if auth_info is not None else mock_auth_info(mock_secret, user)
        self._server = ScramMechanism(SCRAM_SHA_256).make_server(lambda _name: info)

    def first(self, initial: SASLInitialResponse) -> AuthenticationSASLContinue:
        if initial.mechanism != SCRAM_SHA_256:
            raise AuthFailed(ErrorResponse.build(
                "08P01", "client selected an invalid SASL authentication mechanism",
                severity="FATAL"))
        try:
            text = (initial.data or b"").decode("utf-8")
            header, sep, bare = _split_gs2(text)
            shown = bare
            if bare.startswith("n=,"):
                shown = "n=*," + bare[3:]
            self._server.set_client_first(header + sep + shown)
            self._server.client_first_bare = bare
            return AuthenticationSASLContinue(self._server.get_server_first().encode("utf-8"))
        except (ScramException, UnicodeDecodeError, ValueError):
            raise AuthFailed(password_failed(self.user)) from None

    def final(self, response: SASLResponse) -> AuthenticationSASLFinal:
        try:
            self._server.set_client_final(response.data.decode("utf-8"))
            final = self._server.get_server_final()
        except (ScramException, UnicodeDecodeError, ValueError):
            raise AuthFailed(password_failed(self.user)) from None
        if not self._known:  # unreachable in practice: mock keys match no password
            raise AuthFailed(password_failed(self.user))
        return AuthenticationSASLFinal(final.encode("utf-8"))


def _split_gs2(text: str) -> tuple[str, str, str]:
    """(gs2 header without its last comma, ",", client-first-message-bare)."""
    first = text.index(",")
    second = text.index(",", first + 1)
    return text[:second], ",", text[second + 1:]


class UpstreamAuthError(Exception):
    """The proxy could not log in to the upstream server."""


def md5_password(user: str, password: str, salt: bytes) -> str:
    inner = hashlib.md5((password + user).encode("utf-8")).hexdigest()
    return "md5" + hashlib.md5(inner.encode("ascii") + salt).hexdigest()


class UpstreamLogin:
    """The proxy's side of logging in upstream: feed each Authentication message to
    `receive()`, send what it returns; `done` once AuthenticationOk arrived. A server that
    claims success before finishing the SCRAM exchange it started is refused."""

    def __init__(self, user: str, password: str | None) -> None:
        self.user = user
        self.password = password
        self.done = False
        self._scram: ScramClient | None = None
        self._scram_verified = False

    def _need_password(self, method: str) -> str:
        if self.password is None:
            raise UpstreamAuthError(f"upstream asks for {method} authentication but the "
                                    "upstream URL has no password")
        return self.password

    def receive(self, message: BackendMessage) -> Sequence[FrontendMessage]:
        if isinstance(message, AuthenticationOther):
            raise UpstreamAuthError(f"unsupported upstream authentication request (code "
                                    f"{message.auth_code}: Kerberos, GSSAPI or SSPI)")
        if not isinstance(message, Authentication):
            raise UpstreamAuthError(f"unexpected {type(message).__name__} during login")
        if isinstance(message, AuthenticationOk):
            if self._scram is not None and not self._scram_verified:
                raise UpstreamAuthError("upstream reported success before completing SCRAM")
            self.done = True
            return ()
        if isinstance(message, AuthenticationCleartextPassword):
            return (PasswordMessage(self._need_password("cleartext password")),)
        if isinstance(message, AuthenticationMD5Password):
            return (PasswordMessage(md5_password(self.user, self._need_password("md5"),
                                                 message.salt)),)
        try:
            if isinstance(message, AuthenticationSASL):
                if SCRAM_SHA_256 not in message.mechanisms:
                    raise UpstreamAuthError(f"upstream offers SASL mechanisms "
                                            f"{list(message.mechanisms)}, not {SCRAM_SHA_256}")
                self._scram = ScramClient([SCRAM_SHA_256], self.user,
                                          self._need_password("SCRAM"))
                first = self._scram.get_client_first().encode("utf-8")
                return (SASLInitialResponse(SCRAM_SHA_256, first),)
            if isinstance(message, AuthenticationSASLContinue) and self._scram is not None:
                self._scram.set_server_first(message.data.decode("utf-8"))
                return (SASLResponse(self._scram.get_client_final().encode("utf-8")),)
            if isinstance(message, AuthenticationSASLFinal) and self._scram is not None:
                self._scram.set_server_final(message.data.decode("utf-8"))
                self._scram_verified = True
                return ()
        except (ScramException, UnicodeDecodeError) as exc:
            raise UpstreamAuthError(f"SCRAM exchange with upstream failed: {exc}") from None
        raise UpstreamAuthError(f"unsupported upstream authentication request "
                                f"{type(message).__name__} (code {message.code})")
