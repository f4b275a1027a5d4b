"""TLS towards the upstream server, configured as libpq is: `sslmode`, `sslrootcert`, `sslcert`
and `sslkey` as query parameters of the upstream URL
(`postgresql://u:p@db:5432/payments?sslmode=verify-full&sslrootcert=ca.pem`).

Owns: reading those parameters, the `ssl.SSLContext` they mean, and the order in which the
proxy tries TLS and plain connections (`attempts`). Must not: do network I/O (the proxy opens
the connections and sends the SSLRequest).

The modes are libpq's, and so is the default, `prefer`:

- `disable`: never TLS.
- `allow`: a plain connection first; TLS when the server refuses that login.
- `prefer`: TLS when the server offers it; plain when it answers "N" to the SSLRequest, or
  when the TLS handshake or the login over TLS fails.
- `require`: TLS or nothing. The certificate is not checked, unless a root certificate is
  there (`sslrootcert`, or `~/.postgresql/root.crt`): then the chain is verified as with
  `verify-ca` (libpq's rule, which applies to `prefer` and `allow` too).
- `verify-ca`: TLS, and the server's certificate must chain to `sslrootcert`.
- `verify-full`: `verify-ca`, and the URL's host must match the certificate (a DNS or IP
  subject alternative name; a host name may match the common name when there is no SAN).

`sslrootcert=system` trusts the system's CAs (with `verify-full`, its default then, as in
libpq 16+).
A client certificate is sent when `sslcert` and `sslkey` are given, or when
`~/.postgresql/postgresql.crt` and `.key` exist. The `PGSSL*` environment variables are not
read: the URL says everything.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
DEFAULT_SSLMODE = "prefer"
SUPPORTED_PARAMETERS = frozenset({"sslmode", "sslrootcert", "sslcert", "sslkey"})


class UpstreamTLSError(ConnectionError):
    """TLS with the upstream server failed (refused, handshake, certificate); the message is
    fit for the client and the log."""


def _home_file(name: str) -> Path | None:
    try:
        return Path.home() / ".postgresql" / name
    except RuntimeError:  # no home directory
        return None


@dataclass(frozen=True)
class UpstreamTLS:
    """The upstream URL's TLS settings. `context` is an explicit `ssl.SSLContext` that replaces
    the one the parameters describe (TLS is then required)."""

    mode: str = DEFAULT_SSLMODE
    rootcert: str | None = None
    cert: str | None = None
    key: str | None = None
    context: ssl.SSLContext | None = field(default=None, compare=False)

    @classmethod
    def from_query(cls, query: str) -> UpstreamTLS:
        """The settings of a URL's query string; ValueError for an unknown `ssl*` parameter or
        mode (silently ignoring e.g. `sslcrl` would weaken what the operator asked for)."""
        params: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name.startswith("ssl") and name not in SUPPORTED_PARAMETERS:
                raise ValueError(f"upstream URL parameter {name!r} is not supported by the proxy "
                                 f"(supported: {', '.join(sorted(SUPPORTED_PARAMETERS))})")
            params[name] = value
        rootcert = params.get("sslrootcert") or None
        mode = params.get("sslmode") or ("verify-full" if rootcert == "system"
                                         else DEFAULT_SSLMODE)
        if mode not in SSLMODES:
            raise ValueError(f"invalid sslmode {mode!r} in the upstream URL (one of "
                             f"{', '.join(SSLMODES)})")
        if rootcert == "system" and mode != "verify-full":
            raise ValueError(f"sslrootcert=system needs sslmode=verify-full, not {mode}")
        cert, key = params.get("sslcert") or None, params.get("sslkey") or None
        if (cert is None) != (key is None):
            raise ValueError("sslcert and sslkey go together in the upstream URL")
        return cls(mode, rootcert, cert, key)

    @property
    def required(self) -> bool:
        """Whether a connection without TLS is refused."""
        return self.context is not None or self.mode in ("require", "verify-ca", "verify-full")

    def attempts(self) -> tuple[bool, ...]:
        """Whether each connection attempt, in order, asks for TLS."""
        if self.context is not None:
            return (True,)
        return {"disable": (False,), "allow": (False, True),
                "prefer": (True, False)}.get(self.mode, (True,))

    def ssl_context(self) -> ssl.SSLContext | None:
        """The context for the handshake (None for `disable`). ValueError when a file the
        settings need is missing or unreadable, so a bad configuration fails at start-up."""
        if self.context is not None:
            return self.context
        if self.mode == "disable":
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # libpq's ssl_min_protocol_version
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        root = self._rootcert()
        try:
            if root == "system":
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
            elif root is not None:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(cafile=root)
            chain = self._client_chain()
            if chain is not None:
                context.load_cert_chain(*chain)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"upstream TLS (sslmode={self.mode}): {exc}") from exc
        context.check_hostname = self.mode == "verify-full"
        return context

    def _rootcert(self) -> str | None:
        if self.rootcert is not None:
            if self.rootcert != "system" and not Path(self.rootcert).is_file():
                raise ValueError(f"upstream TLS: root certificate file {self.rootcert!r} does "
                                 "not exist")
            return self.rootcert
        default = _home_file("root.crt")
        if default is not None and default.is_file():
            return str(default)
        if self.mode in ("verify-ca", "verify-full"):
            raise ValueError(f"sslmode={self.mode} needs a root certificate to verify the "
                             "server with: add sslrootcert=FILE (or =system) to the upstream "
                             "URL, or provide ~/.postgresql/root.crt")
        return None

    def _client_chain(self) -> tuple[str, str] | None:
        if self.cert is not None and self.key is not None:
            return self.cert, self.key
        cert, key = _home_file("postgresql.crt"), _home_file("postgresql.key")
        if cert is not None and key is not None and cert.is_file() and key.is_file():
            return str(cert), str(key)
        return None


def describe_failure(exc: ssl.SSLError, tls: UpstreamTLS) -> UpstreamTLSError:
    """A handshake failure as the client and the log should read it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        what = exc.verify_message or exc.reason or str(exc)
        return UpstreamTLSError(f"its TLS certificate was not accepted ({what}; "
                                f"sslmode={tls.mode})")
    return UpstreamTLSError(f"the TLS handshake failed ({exc.reason or exc}; "
                            f"sslmode={tls.mode})")
