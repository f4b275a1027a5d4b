"""Transport security of the service: TLS/mTLS material, bearer tokens, listen-address policy.

- `TLSConfig`: server certificate and key, optionally a client CA (then clients must present a
  certificate it signed: mTLS). Builds gRPC server credentials and an `ssl.SSLContext` for
  HTTP from the same files.
- `BearerToken`: the shared secret of `--token-file`; compared in constant time, re-read when
  the file changes (rotation without restart).
- `check_listen_address`: a non-loopback address is refused unless TLS or a token protects it,
  or the operator said `--insecure-listen`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class InsecureListenError(ValueError):
    """Refusing to expose the service unauthenticated on a network address."""


@dataclass(frozen=True)
class TLSConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def grpc_credentials(self) -> object:
        import grpc

        root = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=root, require_client_auth=root is not None)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert), str(self.key))
        if self.client_ca:
            ctx.load_verify_locations(cafile=str(self.client_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def tls_config(cert: str | None, key: str | None, client_ca: str | None) -> TLSConfig | None:
    """Validate the `--tls-*` flags together; None when TLS is off."""
    if not cert and not key:
        if client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cert and key):
        raise ValueError("--tls-cert and --tls-key go together")
    paths = [Path(cert), Path(key)] + ([Path(client_ca)] if client_ca else [])
    for path in paths:
        if not path.is_file():
            raise ValueError(f"TLS file not found: {path}")
    config = TLSConfig(Path(cert), Path(key), Path(client_ca) if client_ca else None)
    config.ssl_context()  # fail at start-up, not on the first connection
    return config


class BearerToken:
    """The expected `Authorization: Bearer <token>`; the file is re-read when it changes."""

    RECHECK_SECONDS = 1.0

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime = -1
        self._checked = 0.0
        self._expected = b""
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.RECHECK_SECONDS:
            return
        with self._lock:
            self._checked = now
            try:
                mtime = self.path.stat().st_mtime_ns
                if mtime == self._mtime and not force:
                    return
                token = self.path.read_text().strip()
            except OSError as exc:
                if force:
                    raise ValueError(f"cannot read token file {self.path}: {exc}") from exc
                log.error("cannot re-read token file %s, keeping the old token: %s",
                          self.path, exc)
                return
            if not token:
                if force:
                    raise ValueError(f"token file {self.path} is empty")
                log.error("token file %s is empty, keeping the old token", self.path)
                return
            self._mtime = mtime
            self._expected = token.encode()

    def check_header(self, value: str | None) -> bool:
        """True when `value` is `Bearer <the token>` (scheme case-insensitive)."""
        if not value:
            return False
        scheme, _, presented = value.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        self._refresh()
        return hmac.compare_digest(presented.strip().encode(), self._expected)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen_address(host: str, *, tls: bool, token: bool, insecure: bool,
                         what: str) -> None:
    """Raise InsecureListenError for an unprotected non-loopback listen address."""
    if is_loopback(host):
        return
    if not (tls or token):
        if insecure:
            log.warning("%s listens on %s without TLS or token (--insecure-listen)", what, host)
            return
        raise InsecureListenError(
            f"refusing to listen on non-loopback address {host or '*'} for {what} without TLS "
            "(--tls-cert/--tls-key) or a bearer token (--token-file); pass --insecure-listen "
            "to do it anyway")
    if token and not tls:
        log.warning("%s on %s: bearer token travels in clear text without TLS", what, host)
