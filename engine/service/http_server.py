"""The HTTP/1.1 server every HTTP listener of Ordinance runs on: h11 on one asyncio loop.

Owns connections, not routes. One event-loop thread holds every connection, so an idle
keep-alive client or a slow-loris costs a socket and a few kilobytes, never a thread; each
complete request is handed to the application (`HttpApp`) on a small, bounded pool of handler
threads, because answering calls the engine and the decision log, which block. h11 (pure
protocol, bytes in / events out) parses and frames; this module only moves bytes and enforces
the limits (`HttpLimits`):

- at most `max_connections` open connections; one more is answered 503 and closed at once;
- a request head must arrive whole within `header_timeout` of its first byte, and the head may
  not exceed `max_header_bytes` (431);
- a body must arrive whole within `body_timeout` (408, then closed); it is read up to the
  application's `body_limit`, and a longer one is cut there (`HttpRequest.truncated`) and the
  connection closed after the answer;
- at most `max_body_bytes_in_flight` body bytes are held at once over all connections (503
  beyond), so many slow bodies cannot add up to unbounded memory;
- an idle keep-alive connection is closed after `idle_timeout`; an answer the client does not
  read is abandoned after `body_timeout`.

TLS (optionally mutual) is negotiated on the loop with a handshake timeout; a failed handshake
is counted (`on_event("tls_handshake")`) and costs nothing else. `reuse_port` sets SO_REUSEPORT
so `--workers N` processes share one port. It must not decide anything about a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol

import h11

from engine.service.tls import TLSConfig

log = logging.getLogger(__name__)

TLS_HANDSHAKE_TIMEOUT = 10.0
_READ_SIZE = 65536


@dataclass(frozen=True)
class HttpLimits:
    """Connection limits of one listener (`ordinance serve --http-*`)."""

    max_connections: int = 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_header_bytes: int = 64 * 1024
    handler_threads: int = 16
    max_body_bytes_in_flight: int = 256 * 1024 * 1024
    """Request body bytes held by all connections at once (being received or answered);
    a body that would go beyond is answered 503 and its connection closed."""


@dataclass(frozen=True)
class HttpRequest:
    """One complete request. Header names are lower-case, in the order sent."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    truncated: bool = False
    """The body was longer than the application's limit; `body` holds its first part."""
    peer: tuple[str, int] | None = None
    local: tuple[str, int] | None = None
    http_version: str = "HTTP/1.1"

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    close: bool = False
    """Close the connection after this answer."""


class HttpApp(Protocol):
    def body_limit(self, target: str) -> int:
        """The most body bytes read for a request to `target`."""
        ...

    def __call__(self, request: HttpRequest) -> HttpResponse:
        """The answer; runs on a handler thread and may block."""
        ...


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def raw_error(status: int, code: str, message: str) -> bytes:
    """A complete `connection: close` JSON error answer, written without h11: used where the
    protocol state is broken (malformed request, timeout) or never started (connection limit)."""
    body = json.dumps({"code": code, "message": message}).encode()
    return (f"HTTP/1.1 {status} {_reason(status).decode()}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class _Timeout(Exception):
    """A deadline passed; the message names the event ("header_timeout", ...)."""


class _Closed(Exception):
    """The client went away."""


class _Busy(Exception):
    """Accepting this body would exceed `max_body_bytes_in_flight`."""


class HttpServer:
    """A listener: bound when constructed (so the port is known and errors surface at once),
    served by `start()` on its own event-loop thread, `stop()`ped from any thread."""

    def __init__(self, host: str, port: int, app: HttpApp, *, limits: HttpLimits | None = None,
                 tls: TLSConfig | None = None, reuse_port: bool = False,
                 on_event: Callable[[str], None] | None = None, name: str = "http") -> None:
        self.app = app
        self.limits = limits = limits or HttpLimits()
        self.name = name
        self._ssl = tls.ssl_context() if tls else None
        self._on_event = on_event or (lambda _reason: None)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host.strip("[]"), port), family=family,
                                          backlog=1024, reuse_port=reuse_port)
        self.port: int = self._sock.getsockname()[1]
        self._pool = ThreadPoolExecutor(limits.handler_threads, thread_name_prefix=f"{name}-h")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{name}-loop",
                                        daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.body_bytes_in_flight = 0
        """Only touched on the loop thread."""

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def start(self) -> HttpServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        future.result(timeout=10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accepted, sock=self._sock,
                                                  limit=_READ_SIZE)

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._loop.is_running():
            self._loop.close()
        self._sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=2)

    # -- one connection --------------------------------------------------------------------

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                        ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.limits.max_connections:
            self._on_event("connection_limit")
            with contextlib.suppress(Exception):
                writer.write(raw_error(503, "unavailable", "too many connections"))
                await asyncio.wait_for(writer.drain(), 1.0)
            writer.transport.abort()
            return
        self._connections.add(task)
        try:
            if self._ssl is not None:
                try:
                    await writer.start_tls(self._ssl, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
                except (TimeoutError, ssl.SSLError, OSError) as exc:
                    log.info("TLS handshake with %s failed: %s",
                             writer.get_extra_info("peername"), exc)
                    self._on_event("tls_handshake")
                    return
            await _Connection(self, reader, writer).serve()
        except (_Closed, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:  # the server stops: end quietly (asyncio logs otherwise)
            pass
        except Exception:
            log.exception("%s connection failed", self.name)
        finally:
            self._connections.discard(task)
            writer.transport.abort()


class _Connection:
    """One client connection: requests in, answers out, in order (keep-alive)."""

    def __init__(self, server: HttpServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.limits = server.limits
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.h11 = h11.Connection(h11.SERVER,
                                  max_incomplete_event_size=server.limits.max_header_bytes)
        self.peer = _address(writer.get_extra_info("peername"))
        self.local = _address(writer.get_extra_info("sockname"))
        self.held = 0
        """Body bytes of the current request counted in `body_bytes_in_flight`."""

    async def serve(self) -> None:
        try:
            await self._serve()
        finally:
            self._release()

    def _release(self) -> None:
        self.server.body_bytes_in_flight -= self.held
        self.held = 0

    def _hold(self, size: int) -> None:
        self.held += size
        self.server.body_bytes_in_flight += size
        if self.server.body_bytes_in_flight > self.limits.max_body_bytes_in_flight:
            raise _Busy

    async def _serve(self) -> None:
        while True:
            self._release()
            try:
                request = await self._read_request()
            except _Busy:
                self.server._on_event("body_memory")
                await self._write_raw(raw_error(503, "unavailable", "server busy: too many "
                                                "request bodies in flight, retry later"))
                return
            except _Timeout as exc:
                self.server._on_event(str(exc))
                await self._write_raw(raw_error(408, "invalid_parameter",
                                                str(exc).replace("_", " ")))
                return
            except h11.RemoteProtocolError as exc:
                self.server._on_event("bad_request")
                status = exc.error_status_hint
                await self._write_raw(raw_error(status, "invalid_parameter",
                                                f"bad request: {str(exc)[:200]}"))
                return
            if request is None:
                return
            try:
                response = await self.loop.run_in_executor(self.server._pool, self.server.app,
                                                           request)
            except Exception:
                log.exception("%s handler failed", self.server.name)
                response = HttpResponse(500, [("Content-Type", "application/json")],
                                        b'{"code":"internal_error","message":"handler failed"}')
            if request.truncated:
                response.close = True  # the rest of the body is still on the wire
            await self._send(response, body=request.method != "HEAD")
            if response.close or self.h11.our_state is h11.MUST_CLOSE:
                return
            try:
                self.h11.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _receive(self, deadline: float, event: str) -> None:
        """Feed h11 the next bytes, or raise _Timeout(event) (`_Closed` when idle)."""
        try:
            async with asyncio.timeout_at(deadline):  # a timer, not a task per read
                data = await self.reader.read(_READ_SIZE)
        except TimeoutError:
            if not event:
                raise _Closed from None  # an idle keep-alive connection: just close it
            raise _Timeout(event) from None
        self.h11.receive_data(data)

    async def _next_event(self, deadline: float, timeout_event: str) -> object:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self._receive(deadline, timeout_event)

    async def _read_request(self) -> HttpRequest | None:
        """The next request, its body read (or cut at the application's limit); None when the
        client closed the connection between requests."""
        limits = self.limits
        idle_deadline = self.loop.time() + limits.idle_timeout
        event: object
        while True:  # the head: an idle wait, then header_timeout from its first byte
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                break
            if self.h11.trailing_data[0]:
                head_deadline = self.loop.time() + limits.header_timeout
                event = await self._next_event(head_deadline, "header_timeout")
                break
            await self._receive(idle_deadline, "")
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")
        if sum(len(k) + len(v) + 4 for k, v in event.headers) > limits.max_header_bytes:
            raise h11.RemoteProtocolError("request header fields too large",
                                          error_status_hint=431)
        target = event.target.decode("latin-1")
        version = event.http_version.decode("ascii")
        limit = self.server.app.body_limit(target)
        if self.h11.they_are_waiting_for_100_continue:
            self.writer.write(self.h11.send(h11.InformationalResponse(status_code=100,
                                                                   headers=[])) or b"")
        chunks: list[bytes] = []
        size = 0
        truncated = False
        body_deadline = self.loop.time() + limits.body_timeout
        while True:
            body_event = await self._next_event(body_deadline, "body_timeout")
            if isinstance(body_event, h11.Data):
                room = limit - size
                if len(body_event.data) > room:
                    chunks.append(bytes(body_event.data[:max(room, 0)]))
                    self._hold(max(room, 0))
                    truncated = True
                    break
                chunks.append(bytes(body_event.data))
                self._hold(len(body_event.data))
                size += len(body_event.data)
            elif isinstance(body_event, h11.EndOfMessage):
                break
            else:
                raise _Closed
        return HttpRequest(event.method.decode("latin-1"), target,
                           [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers],
                           b"".join(chunks), truncated, self.peer, self.local, f"HTTP/{version}")

    async def _send(self, response: HttpResponse, body: bool = True) -> None:
        """Write the answer (its head only for HEAD: `body=False`), `body_timeout` to drain."""
        headers = [(k, v) for k, v in response.headers
                   if k.lower() not in ("content-length", "connection", "transfer-encoding")]
        headers.append(("Content-Length", str(len(response.body))))
        if response.close:
            headers.append(("Connection", "close"))
        try:
            head = self.h11.send(h11.Response(status_code=response.status, headers=headers,
                                              reason=_reason(response.status)))
        except h11.LocalProtocolError as exc:  # a header h11 will not write, say
            log.warning("cannot send the answer (%s); closing", exc)
            await self._write_raw(raw_error(500, "internal_error", "unrepresentable answer"))
            raise _Closed from None
        payload = self.h11.send(h11.Data(data=response.body)) if body and response.body else b""
        data = (head or b"") + (payload or b"") + (self.h11.send(h11.EndOfMessage()) or b"")
        self.writer.write(data)
        if not self.writer.transport.get_write_buffer_size():
            return  # all of it went to the socket at once: nothing to wait for
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                await self.writer.drain()
        except TimeoutError:
            self.server._on_event("write_timeout")
            raise _Closed from None

    async def _write_raw(self, data: bytes) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), 1.0)


def _address(name: object) -> tuple[str, int] | None:
    if isinstance(name, tuple) and len(name) >= 2:
        return str(name[0]), int(name[1])
    return None
