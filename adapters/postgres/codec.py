"""Sans-IO decoders for PostgreSQL protocol 3.0: bytes in, frames and typed messages out.

Owns: framing (length header, maximum message size checked before buffering), the start-up
phase of the frontend stream (untyped first messages), and decoding every message body into
the values of `messages.py`. Every malformed input raises `ProtocolError` and poisons the
decoder (later calls raise the same error). Must not: do I/O, time out, or interpret the
conversation (which message may follow which is the session's business).

The frontend decoder is strict: unknown message types and trailing bytes are errors, because
what the client sends is what policy decisions are made on. The backend decoder tolerates
unknown message types (`UnknownBackendMessage`) so a newer server still relays.

A `Frame` keeps the raw bytes of one message, so a message relayed unchanged is never
re-encoded: `next_frame()` for the relay fast path, `decode(frame)` when the content matters,
`next_message()` / iteration when every message matters.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple

from adapters.postgres.messages import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    SSL_REQUEST_CODE,
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationOther,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthResponse,
    BackendKeyData,
    BackendMessage,
    Bind,
    BindComplete,
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    FrontendMessage,
    FunctionCall,
    FunctionCallResponse,
    GSSENCRequest,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PortalSuspended,
    ProtocolError,
    Query,
    ReadyForQuery,
    RowDescription,
    SSLRequest,
    StartupMessage,
    Sync,
    Terminate,
    UnknownBackendMessage,
)
from adapters.postgres.rowscan import run_count, run_end

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_STARTUP_PACKET_SIZE",
    "BackendDecoder",
    "Frame",
    "FrontendDecoder",
    "ProtocolError",
    "decode_backend",
    "decode_frontend",
]

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
MAX_STARTUP_PACKET_SIZE = 10_000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH
MAX_CANCEL_KEY_LENGTH = 256

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_FIELD = struct.Struct("!IhIhih")
STARTUP = b""  # the type of a start-up phase frame (no type byte on the wire)
_BYTES = [bytes((i,)) for i in range(256)]


class Frame(NamedTuple):
    """One complete message: `type` (one byte, or b"" in the start-up phase) and `raw`, the
    whole message as it was on the wire."""

    type: bytes
    raw: bytes

    @property
    def body(self) -> bytes:
        return self.raw[5:] if self.type else self.raw[4:]


# --------------------------------------------------------------------------------------------
# Body reader


class _Body:
    """A cursor over one message body; every read is bounds-checked."""

    __slots__ = ("data", "name", "pos", "strict_text")

    def __init__(self, name: str, data: bytes, strict_text: bool) -> None:
        self.name = name
        self.data = data
        self.pos = 0
        self.strict_text = strict_text

    def fail(self, what: str) -> ProtocolError:
        return ProtocolError(f"{self.name}: {what} at byte {self.pos} of {len(self.data)}-byte "
                             "body")

    def _need(self, n: int, what: str) -> None:
        if self.pos + n > len(self.data):
            raise self.fail(f"truncated {what} (needs {n} bytes)")

    def int8(self, what: str) -> int:
        self._need(1, what)
        value = self.data[self.pos]
        self.pos += 1
        return value - 256 if value > 127 else value

    def int16(self, what: str) -> int:
        self._need(2, what)
        value: int = _I16.unpack_from(self.data, self.pos)[0]
        self.pos += 2
        return value

    def int32(self, what: str) -> int:
        self._need(4, what)
        value: int = _I32.unpack_from(self.data, self.pos)[0]
        self.pos += 4
        return value

    def uint32(self, what: str) -> int:
        self._need(4, what)
        value: int = _U32.unpack_from(self.data, self.pos)[0]
        self.pos += 4
        return value

    def count(self, what: str) -> int:
        n = self.int16(what)
        if n < 0:
            self.pos -= 2
            raise self.fail(f"negative {what} {n}")
        return n

    def take(self, n: int, what: str) -> bytes:
        self._need(n, what)
        value = self.data[self.pos:self.pos + n]
        self.pos += n
        return value

    def rest(self) -> bytes:
        value = self.data[self.pos:]
        self.pos = len(self.data)
        return value

    def cstring(self, what: str) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise self.fail(f"{what} is not NUL-terminated")
        raw = self.data[self.pos:end]
        try:
            value = raw.decode("utf-8") if self.strict_text else raw.decode(
                "utf-8", "surrogateescape")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not valid UTF-8 ({exc.reason} at offset "
                            f"{exc.start})") from None
        self.pos = end + 1
        return value

    def _count(self, what: str) -> int:
        """`count(f"{what} count")`, formatting the name only for an error (hot path)."""
        pos = self.pos
        if pos + 2 > len(self.data):
            raise self.fail(f"truncated {what} count (needs 2 bytes)")
        n: int = _I16.unpack_from(self.data, pos)[0]
        if n < 0:
            raise self.fail(f"negative {what} count {n}")
        self.pos = pos + 2
        return n

    def formats(self, what: str) -> tuple[int, ...]:
        n = self._count(what)
        if self.pos + 2 * n > len(self.data):
            raise self.fail(f"truncated {what} (needs {2 * n} bytes)")
        values: tuple[int, ...] = struct.unpack_from(f"!{n}h", self.data, self.pos) if n else ()
        for i, code in enumerate(values):
            if code not in (0, 1):
                raise self.fail(f"{what} #{i} is {code}, expected 0 (text) or 1 (binary)")
        self.pos += 2 * n
        return values

    def values(self, what: str) -> tuple[bytes | None, ...]:
        n = self._count(what)
        data = self.data
        size = len(data)
        pos = self.pos
        # Each value needs at least its 4-byte length: reject absurd counts before looping.
        if pos + 4 * n > size:
            raise self.fail(f"truncated {n} {what}s (needs {4 * n} bytes)")
        out: list[bytes | None] = []
        unpack = _I32.unpack_from
        for i in range(n):
            if pos + 4 > size:
                self.pos = pos
                raise self.fail(f"truncated {what} #{i} length (needs 4 bytes)")
            (length,) = unpack(data, pos)
            if length == -1:
                out.append(None)
                pos += 4
            elif length < 0:
                self.pos = pos
                raise self.fail(f"{what} #{i} has negative length {length}")
            else:
                pos += 4
                if pos + length > size:
                    self.pos = pos
                    raise self.fail(f"truncated {what} #{i} ({length} bytes) (needs {length} "
                                    "bytes)")
                out.append(data[pos:pos + length])
                pos += length
        self.pos = pos
        return tuple(out)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} unexpected trailing bytes")


# --------------------------------------------------------------------------------------------
# Frontend bodies


def _startup(body: _Body) -> FrontendMessage:
    code = body.int32("protocol code")
    if code == SSL_REQUEST_CODE:
        body.name = "SSLRequest"
        body.end()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        body.name = "GSSENCRequest"
        body.end()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        body.name = "CancelRequest"
        pid = body.int32("process id")
        secret = body.rest()
        if not 4 <= len(secret) <= MAX_CANCEL_KEY_LENGTH:
            raise body.fail(f"secret key has {len(secret)} bytes, expected 4 to "
                            f"{MAX_CANCEL_KEY_LENGTH}")
        return CancelRequest(pid, secret)
    body.name = "StartupMessage"
    if code >> 16 == 1234:
        raise body.fail(f"unknown request code {code}")
    params: list[tuple[str, str]] = []
    seen: set[str] = set()
    while True:
        name = body.cstring("parameter name")
        if not name:
            break
        if name in seen:
            raise body.fail(f"duplicate parameter {name!r}")
        seen.add(name)
        params.append((name, body.cstring(f"value of parameter {name!r}")))
    body.end()
    return StartupMessage(tuple(params), code)


def _kind(body: _Body) -> str:
    kind = body.take(1, "kind byte")
    if kind not in (b"S", b"P"):
        body.pos -= 1
        raise body.fail(f"kind is {kind!r}, expected 'S' or 'P'")
    return kind.decode("ascii")


def _query(b: _Body) -> Query:
    return Query(b.cstring("query string"))


def _parse(b: _Body) -> Parse:
    name = b.cstring("statement name")
    query = b.cstring("query string")
    n = b.count("parameter type count")
    b._need(4 * n, f"{n} parameter type OIDs")
    types = tuple(b.uint32(f"parameter type #{i}") for i in range(n))
    return Parse(name, query, types)


def _bind(b: _Body) -> Bind:
    portal = b.cstring("portal name")
    statement = b.cstring("statement name")
    param_formats = b.formats("parameter format code")
    params = b.values("parameter value")
    if len(param_formats) > 1 and len(param_formats) != len(params):
        raise b.fail(f"{len(param_formats)} parameter format codes for {len(params)} "
                     "parameters")
    return Bind(portal, statement, param_formats, params, b.formats("result format code"))


def _describe(b: _Body) -> Describe:
    return Describe(_kind(b), b.cstring("name"))


def _close(b: _Body) -> Close:
    return Close(_kind(b), b.cstring("name"))


def _execute(b: _Body) -> Execute:
    return Execute(b.cstring("portal name"), b.int32("row limit"))


def _function_call(b: _Body) -> FunctionCall:
    oid = b.uint32("function OID")
    arg_formats = b.formats("argument format code")
    args = b.values("argument")
    if len(arg_formats) > 1 and len(arg_formats) != len(args):
        raise b.fail(f"{len(arg_formats)} argument format codes for {len(args)} arguments")
    result_format = b.int16("result format code")
    if result_format not in (0, 1):
        b.pos -= 2
        raise b.fail(f"result format code is {result_format}, expected 0 or 1")
    return FunctionCall(oid, arg_formats, args, result_format)


def _empty(cls: type[FrontendMessage] | type[BackendMessage]) -> Callable[[_Body], object]:
    instance = cls()

    def decode(_: _Body) -> object:
        return instance

    return decode


_FRONTEND: dict[bytes, tuple[str, Callable[[_Body], object]]] = {
    b"Q": ("Query", _query),
    b"P": ("Parse", _parse),
    b"B": ("Bind", _bind),
    b"D": ("Describe", _describe),
    b"E": ("Execute", _execute),
    b"S": ("Sync", _empty(Sync)),
    b"H": ("Flush", _empty(Flush)),
    b"C": ("Close", _close),
    b"d": ("CopyData", lambda b: CopyData(b.rest())),
    b"c": ("CopyDone", _empty(CopyDone)),
    b"f": ("CopyFail", lambda b: CopyFail(b.cstring("message"))),
    b"F": ("FunctionCall", _function_call),
    b"X": ("Terminate", _empty(Terminate)),
    b"p": ("AuthResponse", lambda b: AuthResponse(b.rest())),
}
FRONTEND_TYPES = frozenset(_FRONTEND)


def decode_frontend(frame: Frame) -> FrontendMessage:
    """The typed message of one frontend frame (start-up phase frames included)."""
    if frame.type == STARTUP:
        body = _Body("start-up packet", frame.raw[4:], strict_text=True)
        return _startup(body)
    entry = _FRONTEND.get(frame.type)
    if entry is None:
        raise ProtocolError(f"invalid frontend message type {frame.type!r}")
    name, decode = entry
    body = _Body(name, frame.raw[5:], strict_text=True)
    message = decode(body)
    body.end()
    assert isinstance(message, FrontendMessage)
    return message


# --------------------------------------------------------------------------------------------
# Backend bodies


def _authentication(b: _Body) -> BackendMessage:
    code = b.int32("authentication code")
    if code == 0:
        b.name = "AuthenticationOk"
        return AuthenticationOk()
    if code == 3:
        b.name = "AuthenticationCleartextPassword"
        return AuthenticationCleartextPassword()
    if code == 5:
        b.name = "AuthenticationMD5Password"
        return AuthenticationMD5Password(b.take(4, "salt"))
    if code == 10:
        b.name = "AuthenticationSASL"
        mechanisms: list[str] = []
        while True:
            mechanism = b.cstring("mechanism name")
            if not mechanism:
                break
            mechanisms.append(mechanism)
        return AuthenticationSASL(tuple(mechanisms))
    if code == 11:
        return AuthenticationSASLContinue(b.rest())
    if code == 12:
        return AuthenticationSASLFinal(b.rest())
    return AuthenticationOther(code, b.rest())


def _backend_key(b: _Body) -> BackendKeyData:
    pid = b.int32("process id")
    secret = b.rest()
    if not 4 <= len(secret) <= MAX_CANCEL_KEY_LENGTH:
        raise b.fail(f"secret key has {len(secret)} bytes, expected 4 to "
                     f"{MAX_CANCEL_KEY_LENGTH}")
    return BackendKeyData(pid, secret)


def _ready(b: _Body) -> ReadyForQuery:
    status = b.take(1, "transaction status")
    if status not in (b"I", b"T", b"E"):
        b.pos -= 1
        raise b.fail(f"transaction status is {status!r}, expected I, T or E")
    return ReadyForQuery(status.decode("ascii"))


def _row_description(b: _Body) -> RowDescription:
    n = b.count("field count")
    b._need(19 * n, f"{n} field descriptions")  # each is at least a NUL and 18 bytes
    fields = []
    for i in range(n):
        name = b.cstring(f"field #{i} name")
        b._need(18, f"field #{i} description")
        table, attnum, type_oid, size, modifier, fmt = _FIELD.unpack_from(b.data, b.pos)
        b.pos += 18
        fields.append(FieldDescription(name, table, attnum, type_oid, size, modifier, fmt))
    return RowDescription(tuple(fields))


def _report(b: _Body) -> tuple[tuple[str, str], ...]:
    fields: list[tuple[str, str]] = []
    while True:
        code = b.take(1, "field code")
        if code == b"\x00":
            return tuple(fields)
        fields.append((code.decode("latin-1"), b.cstring(f"field {code.decode('latin-1')!r}")))


def _copy_response(cls: type[CopyInResponse] | type[CopyOutResponse] | type[CopyBothResponse]
                   ) -> Callable[[_Body], object]:
    def decode(b: _Body) -> object:
        overall = b.int8("overall format")
        if overall not in (0, 1):
            b.pos -= 1
            raise b.fail(f"overall format is {overall}, expected 0 or 1")
        return cls(overall, b.formats("column format code"))

    return decode


def _negotiate(b: _Body) -> NegotiateProtocolVersion:
    minor = b.int32("newest minor version")
    n = b.int32("option count")
    if n < 0 or n > len(b.data):
        b.pos -= 4
        raise b.fail(f"option count {n} is impossible")
    return NegotiateProtocolVersion(minor, tuple(b.cstring(f"option #{i}") for i in range(n)))


def _function_result(b: _Body) -> FunctionCallResponse:
    length = b.int32("result length")
    if length == -1:
        return FunctionCallResponse(None)
    if length < 0:
        b.pos -= 4
        raise b.fail(f"negative result length {length}")
    return FunctionCallResponse(b.take(length, "result value"))


_BACKEND: dict[bytes, tuple[str, Callable[[_Body], object]]] = {
    b"R": ("Authentication", _authentication),
    b"S": ("ParameterStatus", lambda b: ParameterStatus(b.cstring("name"), b.cstring("value"))),
    b"K": ("BackendKeyData", _backend_key),
    b"Z": ("ReadyForQuery", _ready),
    b"T": ("RowDescription", _row_description),
    b"D": ("DataRow", lambda b: DataRow(b.values("column value"))),
    b"C": ("CommandComplete", lambda b: CommandComplete(b.cstring("command tag"))),
    b"E": ("ErrorResponse", lambda b: ErrorResponse(_report(b))),
    b"N": ("NoticeResponse", lambda b: NoticeResponse(_report(b))),
    b"1": ("ParseComplete", _empty(ParseComplete)),
    b"2": ("BindComplete", _empty(BindComplete)),
    b"3": ("CloseComplete", _empty(CloseComplete)),
    b"n": ("NoData", _empty(NoData)),
    b"s": ("PortalSuspended", _empty(PortalSuspended)),
    b"I": ("EmptyQueryResponse", _empty(EmptyQueryResponse)),
    b"t": ("ParameterDescription", lambda b: ParameterDescription(tuple(
        b.uint32(f"parameter type #{i}") for i in range(b.count("parameter count"))))),
    b"G": ("CopyInResponse", _copy_response(CopyInResponse)),
    b"H": ("CopyOutResponse", _copy_response(CopyOutResponse)),
    b"W": ("CopyBothResponse", _copy_response(CopyBothResponse)),
    b"d": ("CopyData", lambda b: CopyData(b.rest())),
    b"c": ("CopyDone", _empty(CopyDone)),
    b"A": ("NotificationResponse", lambda b: NotificationResponse(
        b.int32("process id"), b.cstring("channel"), b.cstring("payload"))),
    b"v": ("NegotiateProtocolVersion", _negotiate),
    b"V": ("FunctionCallResponse", _function_result),
}


def decode_backend(frame: Frame) -> BackendMessage:
    """The typed message of one backend frame; unknown types become UnknownBackendMessage."""
    entry = _BACKEND.get(frame.type)
    if entry is None:
        return UnknownBackendMessage(frame.type, frame.raw[5:])
    name, decode = entry
    body = _Body(name, frame.raw[5:], strict_text=False)
    message = decode(body)
    body.end()
    assert isinstance(message, BackendMessage)
    return message


# --------------------------------------------------------------------------------------------
# Framing


class _Framer:
    """Buffers bytes and cuts them into frames. The length header is checked against the
    limit as soon as it is complete, so an oversized message is refused before its body is
    buffered."""

    def __init__(self, direction: str, max_message_size: int) -> None:
        if max_message_size < 5:
            raise ValueError("max_message_size must be at least 5")
        self.direction = direction
        self.max_message_size = max_message_size
        self._buffer = bytearray()
        self._pos = 0
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer) - self._pos

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._pos and self._pos >= len(self._buffer) // 2:
            del self._buffer[:self._pos]
            self._pos = 0
        self._buffer += data

    def _fail(self, message: str) -> ProtocolError:
        self._error = ProtocolError(message)
        return self._error

    def _typed_frame(self, valid_types: frozenset[bytes] | None) -> Frame | None:
        buf, pos = self._buffer, self._pos
        available = len(buf) - pos
        if available < 1:
            return None
        kind = _BYTES[buf[pos]]
        if valid_types is not None and kind not in valid_types:
            raise self._fail(f"invalid {self.direction} message type {kind!r} "
                             f"(byte 0x{kind[0]:02x})")
        if available < 5:
            return None
        (length,) = _U32.unpack_from(buf, pos + 1)
        if length < 4:
            raise self._fail(f"{self.direction} message {kind!r}: length {length} is less "
                             "than 4")
        if length + 1 > self.max_message_size:
            raise self._fail(f"{self.direction} message {kind!r}: length {length} exceeds "
                             f"the maximum message size {self.max_message_size}")
        if available < length + 1:
            return None
        raw = bytes(buf[pos:pos + length + 1])
        self._pos = pos + length + 1
        return Frame(kind, raw)

    def take_run(self, kind: bytes) -> bytes | None:
        """All complete messages of type `kind` at the head of the buffer, as one bytes object
        (one copy for the whole run), or None if the next message is of another type."""
        start = self._pos
        pos = run_end(self._buffer, start, kind[0], self.max_message_size)
        if pos == start:
            return None
        self._pos = pos
        return bytes(self._buffer[start:pos])

    def take_counted_run(self, kind: bytes, max_count: int) -> tuple[bytes | None, int]:
        """Like `take_run`, but at most `max_count` messages, and how many it took."""
        start = self._pos
        pos, count = run_count(self._buffer, start, kind[0], self.max_message_size, max_count)
        if not count:
            return None, 0
        self._pos = pos
        return bytes(self._buffer[start:pos]), count

    def buffered_types(self) -> set[bytes]:
        """The types of the complete messages buffered now (not consumed)."""
        buf, pos, end = self._buffer, self._pos, len(self._buffer)
        found: set[bytes] = set()
        while pos <= end - 5:
            following = pos + 1 + _U32.unpack_from(buf, pos + 1)[0]
            if not pos + 5 <= following <= end:
                break
            found.add(_BYTES[buf[pos]])
            pos = following
        return found

    def _untyped_frame(self, limit: int) -> Frame | None:
        buf, pos = self._buffer, self._pos
        if len(buf) - pos < 4:
            return None
        (length,) = _U32.unpack_from(buf, pos)
        if length < 8:
            raise self._fail(f"start-up packet: length {length} is less than 8"
                             + _looks_like_text(buf[pos:pos + 4]))
        if length > limit:
            raise self._fail(f"start-up packet: length {length} exceeds the maximum "
                             f"start-up packet size {limit}" + _looks_like_text(buf[pos:pos + 4]))
        if len(buf) - pos < length:
            return None
        raw = bytes(buf[pos:pos + length])
        self._pos = pos + length
        return Frame(STARTUP, raw)

    def check(self) -> None:
        if self._error is not None:
            raise self._error


def _looks_like_text(head: bytes | bytearray) -> str:
    """A hint for a start-up packet that begins with text: an HTTP request (`GET /`) or
    another protocol sent to the PostgreSQL port."""
    if len(head) == 4 and all(32 <= b < 127 for b in head):
        return (f" (it begins with the text {bytes(head).decode()!r}: not a PostgreSQL client;"
                " an HTTP request?)")
    return ""


class FrontendDecoder:
    """Decodes what a client sends. Starts in the start-up phase (untyped messages) unless
    `startup=False`; a StartupMessage moves it to the typed phase, SSLRequest and
    GSSENCRequest keep it in the start-up phase, a CancelRequest ends the stream."""

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 max_startup_size: int = MAX_STARTUP_PACKET_SIZE, startup: bool = True) -> None:
        self._framer = _Framer("frontend", max_message_size)
        self.max_startup_size = max_startup_size
        self._phase = "startup" if startup else "typed"

    @property
    def max_message_size(self) -> int:
        return self._framer.max_message_size

    @max_message_size.setter
    def max_message_size(self, value: int) -> None:
        self._framer.max_message_size = value

    @property
    def in_startup(self) -> bool:
        return self._phase == "startup"

    @property
    def buffered(self) -> int:
        return self._framer.buffered

    def feed(self, data: bytes) -> None:
        self._framer.feed(data)

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes are fed."""
        framer = self._framer
        framer.check()
        if self._phase == "typed":
            return framer._typed_frame(FRONTEND_TYPES)
        if self._phase == "closed":
            if framer.buffered:
                raise framer._fail(f"{framer.buffered} bytes after a CancelRequest")
            return None
        frame = framer._untyped_frame(self.max_startup_size)
        if frame is not None:
            (code,) = _I32.unpack_from(frame.raw, 4)
            if code == CANCEL_REQUEST_CODE:
                self._phase = "closed"
            elif code not in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
                self._phase = "typed"
        return frame

    def decode(self, frame: Frame) -> FrontendMessage:
        try:
            return decode_frontend(frame)
        except ProtocolError as exc:
            self._framer._error = exc
            raise

    def next_message(self) -> FrontendMessage | None:
        frame = self.next_frame()
        return None if frame is None else self.decode(frame)

    def __iter__(self) -> Iterator[FrontendMessage]:
        while (message := self.next_message()) is not None:
            yield message


class BackendDecoder:
    """Decodes what a server sends (always typed; unknown types are passed through)."""

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._framer = _Framer("backend", max_message_size)

    @property
    def buffered(self) -> int:
        return self._framer.buffered

    def feed(self, data: bytes) -> None:
        self._framer.feed(data)

    def next_frame(self) -> Frame | None:
        self._framer.check()
        return self._framer._typed_frame(None)

    def peek(self) -> bytes | None:
        """The type of the next message when at least its type and length have arrived
        (the message itself may not be complete yet), else None."""
        framer = self._framer
        framer.check()
        pos = framer._pos
        buf = framer._buffer
        if len(buf) - pos < 5:
            return None
        return _BYTES[buf[pos]]

    def next_run(self, kind: bytes) -> bytes | None:
        """Fast path for relaying: the raw bytes of every complete `kind` message at the head
        of the buffer (None if there is none). Messages are framed but not decoded."""
        self._framer.check()
        return self._framer.take_run(kind)

    def next_counted_run(self, kind: bytes, max_count: int) -> tuple[bytes | None, int]:
        """`next_run` of at most `max_count` messages, and how many it holds (0: none)."""
        self._framer.check()
        return self._framer.take_counted_run(kind, max_count)

    def has_complete(self, kind: bytes) -> bool:
        """Whether a complete `kind` message is at the head of the buffer."""
        framer = self._framer
        framer.check()
        pos = framer._pos
        return run_end(framer._buffer, pos, kind[0], framer.max_message_size) > pos

    def buffered_types(self) -> set[bytes]:
        """The types of the complete messages received but not yet returned."""
        return self._framer.buffered_types()

    def decode(self, frame: Frame) -> BackendMessage:
        try:
            return decode_backend(frame)
        except ProtocolError as exc:
            self._framer._error = exc
            raise

    def next_message(self) -> BackendMessage | None:
        frame = self.next_frame()
        return None if frame is None else self.decode(frame)

    def __iter__(self) -> Iterator[BackendMessage]:
        while (message := self.next_message()) is not None:
            yield message
