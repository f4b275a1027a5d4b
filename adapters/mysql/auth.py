"""MySQL authentication, both ways: clients to the proxy, and the proxy to the server.

Owns: the scrambles of `mysql_native_password` and `caching_sha2_password`, checked against
verifiers (`engine.identity.users`: SHA1(SHA1(pw)) and SHA256(SHA256(pw)), never passwords);
the server side of a client's login (`ClientAuth`, sans-IO: feed the client's packets, send
what it answers) with caching_sha2's fast path, its full authentication (the password in clear
over TLS or loopback, or RSA-encrypted with the proxy's own key, which a client may fetch), a
switch to the plugin the user's verifier needs, and `mysql_clear_password` for an OIDC ID token
over TLS only; the client side of the proxy's own login upstream (`UpstreamAuth`). Must not:
read files, verify tokens itself (the injected verifier does), or decide what a user may run.

An unknown user goes through the same exchange as a known one with a wrong password, and both
get MySQL's exact answer (1045 `Access denied for user 'x'@'host' (using password: YES)`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from adapters.mysql.messages import (
    ER_ACCESS_DENIED_ERROR,
    ERR,
    OK,
    AuthMoreData,
    AuthSwitchRequest,
)

NATIVE = "mysql_native_password"
CACHING_SHA2 = "caching_sha2_password"
CLEAR = "mysql_clear_password"
SCRAMBLE_BYTES = 20

FAST_AUTH_OK = b"\x03"
PERFORM_FULL_AUTH = b"\x04"
REQUEST_PUBLIC_KEY = b"\x02"


def new_scramble() -> bytes:
    """20 random bytes without NUL (clients read the greeting's part 2 as a C string)."""
    out = bytearray()
    while len(out) < SCRAMBLE_BYTES:
        out += bytes(b for b in os.urandom(SCRAMBLE_BYTES) if b not in (0, ord("$")))
    return bytes(out[:SCRAMBLE_BYTES])


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def native_verifier(password: str) -> bytes:
    """SHA1(SHA1(password)): what MySQL stores for mysql_native_password."""
    return hashlib.sha1(hashlib.sha1(password.encode()).digest()).digest()


def sha2_verifier(password: str) -> bytes:
    """SHA256(SHA256(password)): what caching_sha2_password's fast path checks against."""
    return hashlib.sha256(hashlib.sha256(password.encode()).digest()).digest()


def native_token(password: str, scramble: bytes) -> bytes:
    """The client's mysql_native_password answer: SHA1(pw) XOR SHA1(scramble + SHA1(SHA1(pw)))."""
    if not password:
        return b""
    stage1 = hashlib.sha1(password.encode()).digest()
    return _xor(stage1, hashlib.sha1(scramble + hashlib.sha1(stage1).digest()).digest())


def sha2_token(password: str, scramble: bytes) -> bytes:
    """The client's caching_sha2_password answer: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) +
    scramble)."""
    if not password:
        return b""
    stage1 = hashlib.sha256(password.encode()).digest()
    stage2 = hashlib.sha256(stage1).digest()
    return _xor(stage1, hashlib.sha256(stage2 + scramble).digest())


def check_native(verifier: bytes, scramble: bytes, token: bytes) -> bool:
    if len(token) != 20 or len(verifier) != 20:
        return False
    stage1 = _xor(token, hashlib.sha1(scramble + verifier).digest())
    return hmac.compare_digest(hashlib.sha1(stage1).digest(), verifier)


def check_sha2(verifier: bytes, scramble: bytes, token: bytes) -> bool:
    if len(token) != 32 or len(verifier) != 32:
        return False
    stage1 = _xor(token, hashlib.sha256(verifier + scramble).digest())
    return hmac.compare_digest(hashlib.sha256(stage1).digest(), verifier)


class DirectoryUser(Protocol):
    """A user the proxy can authenticate (`engine.identity.users.StaticUser`)."""

    @property
    def name(self) -> str: ...

    @property
    def groups(self) -> tuple[str, ...]: ...

    def mysql_native(self) -> bytes | None: ...

    def mysql_sha2(self) -> bytes | None: ...

    def verify_password(self, password: str) -> bool: ...


class UserDirectory(Protocol):
    def lookup(self, name: str) -> DirectoryUser | None: ...


class RsaKey:
    """The proxy's RSA key pair for caching_sha2 full authentication over plain connections
    (made once per process; a client fetches its public key with 0x02)."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def decrypt(self, data: bytes) -> bytes:
        return self._key.decrypt(data, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()),
                                                    algorithm=hashes.SHA1(), label=None))


@dataclass(frozen=True)
class LoggedIn:
    """A successful login: the user (a directory user's name, or a token's subject) and how."""

    user: str
    groups: tuple[str, ...]
    method: str
    claims: dict[str, Any]


class AuthDenied(Exception):
    """The login failed; `error` is what the client is told."""

    def __init__(self, error: ERR) -> None:
        super().__init__(error.message)
        self.error = error


def access_denied(user: str, host: str, with_password: bool = True) -> ERR:
    return ERR(ER_ACCESS_DENIED_ERROR, "28000",
               f"Access denied for user '{user}'@'{host}' (using password: "
               f"{'YES' if with_password else 'NO'})")


Reply = list[AuthSwitchRequest | AuthMoreData | OK]
"""What the proxy sends next, in order; empty when the exchange needs the token verifier
(then `token` holds the token) before it can answer."""


class ClientAuth:
    """The server side of one client login (sans-IO). `start()` with the HandshakeResponse's
    plugin and data, then `receive(data)` with each later client packet; each returns the
    packet to send. `done` once the login succeeded (`result`); failures raise AuthDenied.

    `secure` is the connection's TLS; `loopback` allows caching_sha2's cleartext full
    authentication without it. `token_login` says OIDC tokens are accepted (over TLS only)."""

    def __init__(self, directory: UserDirectory | None, *, user: str, host: str,
                 scramble: bytes, secure: bool, loopback: bool, token_login: bool,
                 rsa_key: Callable[[], RsaKey] | None = None) -> None:
        self.directory = directory
        self.user_name = user
        self.host = host
        self.scramble = scramble
        self.secure = secure
        self.loopback = loopback
        self.token_login = token_login
        self._rsa_key = rsa_key
        self._user = directory.lookup(user) if directory is not None else None
        self._plugin = ""
        self._state = "start"
        self.result: LoggedIn | None = None
        self.token: str | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    def _deny(self) -> AuthDenied:
        return AuthDenied(access_denied(self.user_name, self.host))

    def _ok(self, method: str) -> Reply:
        user = self._user
        assert user is not None
        self.result = LoggedIn(user.name, tuple(user.groups), method, {})
        self._state = "done"
        return [OK()]

    def _switch(self, plugin: str) -> Reply:
        self.scramble = new_scramble()
        self._plugin = plugin
        self._state = "switched"
        return [AuthSwitchRequest(plugin, self.scramble + b"\0")]

    def start(self, plugin: str, data: bytes) -> Reply:
        """The plugin the client chose and its first answer (from HandshakeResponse41)."""
        if self._user is None and self.token_login and self.secure:
            return self._switch(CLEAR) if plugin != CLEAR else self._clear(data)
        if self._user is None:  # an unknown user: a caching_sha2 exchange that fails
            return self._switch(CACHING_SHA2) if plugin != CACHING_SHA2 else self._sha2(data)
        if plugin == NATIVE and (self._user.mysql_native() is not None):
            return self._native(data)
        if plugin == CACHING_SHA2 and (self._user.mysql_sha2() is not None
                                       or self._user.mysql_native() is None):
            return self._sha2(data)
        return self._switch(NATIVE if self._user.mysql_sha2() is None
                            and self._user.mysql_native() is not None else CACHING_SHA2)

    def receive(self, data: bytes) -> Reply:
        """The client's next packet of the exchange."""
        state = self._state
        if state == "switched":
            if self._plugin == NATIVE:
                return self._native(data)
            if self._plugin == CLEAR:
                return self._clear(data)
            return self._sha2(data)
        if state == "full":
            return self._full(data)
        if state == "key_sent":
            if self._rsa_key is None:
                raise self._deny()
            try:
                plain = self._rsa_key().decrypt(data)
            except ValueError:
                raise self._deny() from None
            return self._password(_xor(plain, (self.scramble * (len(plain) // 20 + 1))
                                       [:len(plain)]))
        raise self._deny()

    def _native(self, data: bytes) -> Reply:
        user = self._user
        verifier = user.mysql_native() if user is not None else None
        if verifier is None or not check_native(verifier, self.scramble, data):
            raise self._deny()
        return self._ok(NATIVE)

    def _sha2(self, data: bytes) -> Reply:
        user = self._user
        verifier = user.mysql_sha2() if user is not None else None
        if verifier is not None and check_sha2(verifier, self.scramble, data):
            return [AuthMoreData(FAST_AUTH_OK), *self._ok(CACHING_SHA2)]
        self._state = "full"
        return [AuthMoreData(PERFORM_FULL_AUTH)]

    def _full(self, data: bytes) -> Reply:
        if data == REQUEST_PUBLIC_KEY:
            if self._rsa_key is None:
                raise AuthDenied(ERR(ER_ACCESS_DENIED_ERROR, "28000",
                                     "the proxy does not hand out an RSA public key: connect "
                                     "with TLS for caching_sha2_password full authentication"))
            self._state = "key_sent"
            return [AuthMoreData(self._rsa_key().public_pem)]
        if not (self.secure or self.loopback):
            # the client sent its password in clear over an untrusted network: refuse it
            raise AuthDenied(ERR(ER_ACCESS_DENIED_ERROR, "28000",
                                 "caching_sha2_password full authentication needs TLS (or "
                                 "RSA key exchange); the password was not accepted in clear"))
        return self._password(data)

    def _password(self, data: bytes) -> Reply:
        password = data[:-1] if data.endswith(b"\0") else data
        user = self._user
        try:
            text = password.decode("utf-8")
        except UnicodeDecodeError:
            raise self._deny() from None
        if user is None or not text or not user.verify_password(text):
            raise self._deny()
        return self._ok(CACHING_SHA2)

    def _clear(self, data: bytes) -> Reply:
        if not self.secure:
            raise AuthDenied(ERR(ER_ACCESS_DENIED_ERROR, "28000",
                                 "mysql_clear_password is accepted over TLS only"))
        token = data[:-1] if data.endswith(b"\0") else data
        try:
            self.token = token.decode("ascii")
        except UnicodeDecodeError:
            raise self._deny() from None
        self._state = "token"
        return []

    def token_verified(self, subject: Any) -> Reply:
        """The OIDC verifier accepted `self.token` as `subject`."""
        self.result = LoggedIn(str(subject.id), tuple(subject.groups), "oidc-token",
                               dict(getattr(subject, "claims", {}) or {}))
        self._state = "done"
        return [OK()]

    def token_refused(self) -> AuthDenied:
        return self._deny()


class UpstreamAuthError(Exception):
    """The proxy could not log in to the upstream server."""


class UpstreamAuth:
    """The proxy's side of its own login upstream: `first(plugin, scramble)` gives the
    HandshakeResponse's auth data, then `receive(reply)` for each AuthSwitchRequest /
    AuthMoreData gives what to send (None: nothing, wait for the next packet)."""

    def __init__(self, user: str, password: str, *, secure: bool) -> None:
        self.user = user
        self.password = password
        self.secure = secure
        self.plugin = ""
        self.scramble = b""
        self._awaiting_key = False

    def first(self, plugin: str, scramble: bytes) -> tuple[str, bytes]:
        plugin = plugin if plugin in (NATIVE, CACHING_SHA2) else NATIVE
        self.plugin, self.scramble = plugin, scramble[:SCRAMBLE_BYTES]
        return plugin, self._token()

    def _token(self) -> bytes:
        if self.plugin == NATIVE:
            return native_token(self.password, self.scramble)
        if self.plugin == CACHING_SHA2:
            return sha2_token(self.password, self.scramble)
        if self.plugin == CLEAR:
            if not self.secure:
                raise UpstreamAuthError("the server asks for mysql_clear_password over a "
                                        "connection without TLS: refused")
            return self.password.encode() + b"\0"
        raise UpstreamAuthError(f"the server asks for the {self.plugin} authentication "
                                "plugin, which the proxy does not support (use "
                                "mysql_native_password or caching_sha2_password for its user)")

    def receive(self, reply: AuthSwitchRequest | AuthMoreData) -> bytes | None:
        if isinstance(reply, AuthSwitchRequest):
            self.plugin, self.scramble = reply.plugin, reply.data[:SCRAMBLE_BYTES]
            return self._token()
        if self.plugin != CACHING_SHA2:
            raise UpstreamAuthError(f"unexpected AuthMoreData for {self.plugin}")
        if self._awaiting_key:
            key = serialization.load_pem_public_key(reply.data)
            assert isinstance(key, rsa.RSAPublicKey)
            plain = self.password.encode() + b"\0"
            mixed = _xor(plain, (self.scramble * (len(plain) // 20 + 1))[:len(plain)])
            return key.encrypt(mixed, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()),
                                                   algorithm=hashes.SHA1(), label=None))
        if reply.data == FAST_AUTH_OK:
            return None
        if reply.data == PERFORM_FULL_AUTH:
            if self.secure:
                return self.password.encode() + b"\0"
            self._awaiting_key = True
            return REQUEST_PUBLIC_KEY
        raise UpstreamAuthError(f"unexpected caching_sha2_password data {reply.data[:8]!r}")
