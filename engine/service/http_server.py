"""The threading HTTP server every HTTP listener of Ordinance runs on.

Adds to the standard library's ThreadingHTTPServer: IPv6 hosts, TLS with the handshake done
in the connection's own thread (a slow or broken client cannot stall the accept loop), and
optional SO_REUSEPORT so `--workers N` processes share one port. Routing is the handler's job.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from engine.service.tls import TLSConfig

log = logging.getLogger(__name__)

TLS_HANDSHAKE_TIMEOUT = 10.0


class TLSThreadingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler], *,
                 tls: TLSConfig | None = None, reuse_port: bool = False,
                 on_tls_failure: Callable[[], None] | None = None) -> None:
        self.reuse_port = reuse_port
        self.ssl_context = tls.ssl_context() if tls else None
        self.on_tls_failure = on_tls_failure
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host.strip("[]"), port), handler)

    def server_bind(self) -> None:
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
        return sock, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(TLS_HANDSHAKE_TIMEOUT)
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                log.info("TLS handshake with %s failed: %s", client_address, exc)
                if self.on_tls_failure is not None:
                    self.on_tls_failure()
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("HTTP connection from %s ended with an error", client_address,
                  exc_info=True)
