"""PostgreSQL wire protocol 3.0 messages as immutable values, and their encoding to bytes.

Owns: one frozen dataclass per frontend and backend message, `encode()` for each, the builders
for ErrorResponse / NoticeResponse fields, and `ProtocolError`, the one error type of the codec.
Must not: decode bytes (that is `codec.py`), do I/O, or keep any session state. Strings are
UTF-8 on the wire (the proxy only serves UTF8 / SQL_ASCII client encodings).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


class ProtocolError(Exception):
    """Malformed or unexpected protocol data; the message says which message, what and where."""


_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")
_HEADER = struct.Struct("!cI")


def cstring(value: str, what: str = "string") -> bytes:
    """`value` as a NUL-terminated UTF-8 string; NUL inside the value is a ProtocolError."""
    data = value.encode("utf-8", "surrogateescape")
    if b"\x00" in data:
        raise ProtocolError(f"cannot encode {what}: it contains a NUL byte")
    return data + b"\x00"


def _int16s(values: Iterable[int]) -> bytes:
    items = tuple(values)
    return _INT16.pack(len(items)) + b"".join(_INT16.pack(v) for v in items)


def _values(values: Iterable[bytes | None]) -> bytes:
    items = tuple(values)
    parts = [_INT16.pack(len(items))]
    for value in items:
        if value is None:
            parts.append(_INT32.pack(-1))
        else:
            parts.append(_INT32.pack(len(value)))
            parts.append(bytes(value))
    return b"".join(parts)


class Message:
    """Base of all messages: a one-byte type code, an int32 length, then the body."""

    __slots__ = ()
    type_code: ClassVar[bytes] = b""

    def encode_body(self) -> bytes:
        return b""

    def encode(self) -> bytes:
        try:
            body = self.encode_body()
            return _HEADER.pack(self.type_code, len(body) + 4) + body
        except struct.error as exc:
            raise ProtocolError(f"cannot encode {type(self).__name__}: {exc}") from exc


class FrontendMessage(Message):
    """A message sent by the client (frontend)."""

    __slots__ = ()


class BackendMessage(Message):
    """A message sent by the server (backend)."""

    __slots__ = ()


def encode_all(messages: Iterable[Message]) -> bytes:
    return b"".join(m.encode() for m in messages)


# --------------------------------------------------------------------------------------------
# Start-up phase (untyped: int32 length, int32 code, payload)


class _Untyped(FrontendMessage):
    __slots__ = ()

    def encode(self) -> bytes:
        try:
            body = self.encode_body()
            return _INT32.pack(len(body) + 4) + body
        except struct.error as exc:
            raise ProtocolError(f"cannot encode {type(self).__name__}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class StartupMessage(_Untyped):
    params: tuple[tuple[str, str], ...]
    protocol: int = PROTOCOL_3_0

    @property
    def major(self) -> int:
        return self.protocol >> 16

    @property
    def minor(self) -> int:
        return self.protocol & 0xFFFF

    def get(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return default

    def encode_body(self) -> bytes:
        parts = [_INT32.pack(self.protocol)]
        for key, value in self.params:
            if not key:
                raise ProtocolError("cannot encode StartupMessage: empty parameter name")
            parts.append(cstring(key, "StartupMessage parameter name"))
            parts.append(cstring(value, "StartupMessage parameter value"))
        parts.append(b"\x00")
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class SSLRequest(_Untyped):
    def encode_body(self) -> bytes:
        return _INT32.pack(SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest(_Untyped):
    def encode_body(self) -> bytes:
        return _INT32.pack(GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest(_Untyped):
    """`secret` is 4 bytes in protocol 3.0 (longer keys exist from 3.2 on)."""

    pid: int
    secret: bytes

    def encode_body(self) -> bytes:
        return _INT32.pack(CANCEL_REQUEST_CODE) + _INT32.pack(self.pid) + self.secret


# --------------------------------------------------------------------------------------------
# Frontend, typed


@dataclass(frozen=True, slots=True)
class Query(FrontendMessage):
    type_code: ClassVar[bytes] = b"Q"
    sql: str

    def encode_body(self) -> bytes:
        return cstring(self.sql, "Query")


@dataclass(frozen=True, slots=True)
class Parse(FrontendMessage):
    type_code: ClassVar[bytes] = b"P"
    name: str
    query: str
    param_types: tuple[int, ...] = ()

    def encode_body(self) -> bytes:
        return (cstring(self.name, "Parse statement name") + cstring(self.query, "Parse query")
                + _INT16.pack(len(self.param_types))
                + b"".join(_UINT32.pack(oid) for oid in self.param_types))


@dataclass(frozen=True, slots=True)
class Bind(FrontendMessage):
    type_code: ClassVar[bytes] = b"B"
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def encode_body(self) -> bytes:
        return (cstring(self.portal, "Bind portal name")
                + cstring(self.statement, "Bind statement name")
                + _int16s(self.param_formats) + _values(self.params)
                + _int16s(self.result_formats))

    def result_format(self, index: int) -> int:
        """The format code of result column `index` (0 text, 1 binary)."""
        if not self.result_formats:
            return 0
        if len(self.result_formats) == 1:
            return self.result_formats[0]
        return self.result_formats[index] if index < len(self.result_formats) else 0


@dataclass(frozen=True, slots=True)
class Describe(FrontendMessage):
    type_code: ClassVar[bytes] = b"D"
    kind: str  # "S" statement or "P" portal
    name: str

    def encode_body(self) -> bytes:
        return self.kind.encode("ascii") + cstring(self.name, "Describe name")


@dataclass(frozen=True, slots=True)
class Execute(FrontendMessage):
    type_code: ClassVar[bytes] = b"E"
    portal: str
    max_rows: int = 0

    def encode_body(self) -> bytes:
        return cstring(self.portal, "Execute portal name") + _INT32.pack(self.max_rows)


@dataclass(frozen=True, slots=True)
class Sync(FrontendMessage):
    type_code: ClassVar[bytes] = b"S"


@dataclass(frozen=True, slots=True)
class Flush(FrontendMessage):
    type_code: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class Close(FrontendMessage):
    type_code: ClassVar[bytes] = b"C"
    kind: str  # "S" statement or "P" portal
    name: str

    def encode_body(self) -> bytes:
        return self.kind.encode("ascii") + cstring(self.name, "Close name")


@dataclass(frozen=True, slots=True)
class CopyFail(FrontendMessage):
    type_code: ClassVar[bytes] = b"f"
    message: str

    def encode_body(self) -> bytes:
        return cstring(self.message, "CopyFail message")


@dataclass(frozen=True, slots=True)
class FunctionCall(FrontendMessage):
    type_code: ClassVar[bytes] = b"F"
    function_oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0

    def encode_body(self) -> bytes:
        return (_UINT32.pack(self.function_oid) + _int16s(self.arg_formats)
                + _values(self.args) + _INT16.pack(self.result_format))


@dataclass(frozen=True, slots=True)
class Terminate(FrontendMessage):
    type_code: ClassVar[bytes] = b"X"


@dataclass(frozen=True, slots=True)
class AuthResponse(FrontendMessage):
    """A `p` message. Its meaning depends on the authentication exchange in progress, so the
    decoder yields this; `as_password()` / `as_sasl_initial()` / `as_sasl_response()` read it."""

    type_code: ClassVar[bytes] = b"p"
    data: bytes

    def encode_body(self) -> bytes:
        return self.data

    def as_password(self) -> PasswordMessage:
        end = self.data.find(b"\x00")
        if end != len(self.data) - 1:
            raise ProtocolError(
                f"PasswordMessage: expected one NUL-terminated string, got {len(self.data)} "
                "bytes" + (" without terminator" if end < 0 else " with trailing data"))
        try:
            return PasswordMessage(self.data[:end].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"PasswordMessage: password is not valid UTF-8 ({exc})") from None

    def as_sasl_initial(self) -> SASLInitialResponse:
        end = self.data.find(b"\x00")
        if end < 0:
            raise ProtocolError("SASLInitialResponse: mechanism name is not NUL-terminated "
                                f"(body length {len(self.data)})")
        rest = self.data[end + 1:]
        if len(rest) < 4:
            raise ProtocolError(f"SASLInitialResponse: truncated at byte {end + 1} of "
                                f"{len(self.data)}, missing data length")
        (length,) = _INT32.unpack_from(rest)
        payload = rest[4:]
        if length == -1 and not payload:
            data: bytes | None = None
        elif length < 0 or length != len(payload):
            raise ProtocolError(f"SASLInitialResponse: data length {length} does not match "
                                f"the {len(payload)} bytes that follow")
        else:
            data = payload
        return SASLInitialResponse(self.data[:end].decode("ascii", "replace"), data)

    def as_sasl_response(self) -> SASLResponse:
        return SASLResponse(self.data)


@dataclass(frozen=True, slots=True)
class PasswordMessage(FrontendMessage):
    type_code: ClassVar[bytes] = b"p"
    password: str

    def encode_body(self) -> bytes:
        return cstring(self.password, "PasswordMessage")


@dataclass(frozen=True, slots=True)
class SASLInitialResponse(FrontendMessage):
    type_code: ClassVar[bytes] = b"p"
    mechanism: str
    data: bytes | None

    def encode_body(self) -> bytes:
        if self.data is None:
            return cstring(self.mechanism, "SASL mechanism") + _INT32.pack(-1)
        return cstring(self.mechanism, "SASL mechanism") + _INT32.pack(len(self.data)) + self.data


@dataclass(frozen=True, slots=True)
class SASLResponse(FrontendMessage):
    type_code: ClassVar[bytes] = b"p"
    data: bytes

    def encode_body(self) -> bytes:
        return self.data


# --------------------------------------------------------------------------------------------
# Both directions


@dataclass(frozen=True, slots=True)
class CopyData(FrontendMessage, BackendMessage):
    type_code: ClassVar[bytes] = b"d"
    data: bytes

    def encode_body(self) -> bytes:
        return bytes(self.data)


@dataclass(frozen=True, slots=True)
class CopyDone(FrontendMessage, BackendMessage):
    type_code: ClassVar[bytes] = b"c"


# --------------------------------------------------------------------------------------------
# Backend


class Authentication(BackendMessage):
    """Base of the `R` messages; `code` is the int32 that follows the length."""

    __slots__ = ()
    type_code: ClassVar[bytes] = b"R"
    code: ClassVar[int] = -1

    def auth_data(self) -> bytes:
        return b""

    def encode_body(self) -> bytes:
        return _INT32.pack(self.code) + self.auth_data()


@dataclass(frozen=True, slots=True)
class AuthenticationOk(Authentication):
    code: ClassVar[int] = 0


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword(Authentication):
    code: ClassVar[int] = 3


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password(Authentication):
    code: ClassVar[int] = 5
    salt: bytes

    def auth_data(self) -> bytes:
        if len(self.salt) != 4:
            raise ProtocolError(f"cannot encode AuthenticationMD5Password: salt has "
                                f"{len(self.salt)} bytes, expected 4")
        return self.salt


@dataclass(frozen=True, slots=True)
class AuthenticationSASL(Authentication):
    code: ClassVar[int] = 10
    mechanisms: tuple[str, ...]

    def auth_data(self) -> bytes:
        return b"".join(cstring(m, "SASL mechanism") for m in self.mechanisms) + b"\x00"


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue(Authentication):
    code: ClassVar[int] = 11
    data: bytes

    def auth_data(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal(Authentication):
    code: ClassVar[int] = 12
    data: bytes

    def auth_data(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class AuthenticationOther(BackendMessage):
    """Kerberos (2), GSS (7), GSSContinue (8), SSPI (9) or an unknown request: kept opaque."""

    type_code: ClassVar[bytes] = b"R"
    auth_code: int
    data: bytes = b""

    def encode_body(self) -> bytes:
        return _INT32.pack(self.auth_code) + self.data


@dataclass(frozen=True, slots=True)
class ParameterStatus(BackendMessage):
    type_code: ClassVar[bytes] = b"S"
    name: str
    value: str

    def encode_body(self) -> bytes:
        return cstring(self.name, "ParameterStatus name") + cstring(self.value,
                                                                    "ParameterStatus value")


@dataclass(frozen=True, slots=True)
class BackendKeyData(BackendMessage):
    type_code: ClassVar[bytes] = b"K"
    pid: int
    secret: bytes

    def encode_body(self) -> bytes:
        return _INT32.pack(self.pid) + self.secret


@dataclass(frozen=True, slots=True)
class ReadyForQuery(BackendMessage):
    type_code: ClassVar[bytes] = b"Z"
    status: str = "I"  # I idle, T in transaction, E failed transaction

    def encode_body(self) -> bytes:
        return self.status.encode("ascii")


@dataclass(frozen=True, slots=True)
class FieldDescription:
    name: str
    table_oid: int = 0
    column_attnum: int = 0
    type_oid: int = 25
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0

    def encode(self) -> bytes:
        return cstring(self.name, "RowDescription field name") + struct.pack(
            "!IhIhih", self.table_oid, self.column_attnum, self.type_oid, self.type_size,
            self.type_modifier, self.format)


@dataclass(frozen=True, slots=True)
class RowDescription(BackendMessage):
    type_code: ClassVar[bytes] = b"T"
    fields: tuple[FieldDescription, ...]

    def encode_body(self) -> bytes:
        return _INT16.pack(len(self.fields)) + b"".join(f.encode() for f in self.fields)


@dataclass(frozen=True, slots=True)
class DataRow(BackendMessage):
    type_code: ClassVar[bytes] = b"D"
    values: tuple[bytes | None, ...]

    def encode_body(self) -> bytes:
        return _values(self.values)


@dataclass(frozen=True, slots=True)
class CommandComplete(BackendMessage):
    type_code: ClassVar[bytes] = b"C"
    tag: str

    def encode_body(self) -> bytes:
        return cstring(self.tag, "CommandComplete tag")


# Field codes of ErrorResponse / NoticeResponse and the builder argument naming each.
ERROR_FIELDS: dict[str, str] = {
    "S": "severity", "V": "severity_nonlocalized", "C": "code", "M": "message",
    "D": "detail", "H": "hint", "P": "position", "p": "internal_position",
    "q": "internal_query", "W": "where", "s": "schema", "t": "table", "c": "column",
    "d": "data_type", "n": "constraint", "F": "file", "L": "line", "R": "routine",
}
_FIELD_BY_NAME = {name: code for code, name in ERROR_FIELDS.items()}


class _Report(BackendMessage):
    """ErrorResponse and NoticeResponse: a list of (field code, value) pairs."""

    __slots__ = ()
    fields: tuple[tuple[str, str], ...]

    def get(self, code: str, default: str | None = None) -> str | None:
        for key, value in self.fields:
            if key == code:
                return value
        return default

    @property
    def severity(self) -> str:
        return self.get("V") or self.get("S") or ""

    @property
    def code(self) -> str:
        return self.get("C") or ""

    @property
    def message(self) -> str:
        return self.get("M") or ""

    def encode_body(self) -> bytes:
        parts = []
        for code, value in self.fields:
            if len(code) != 1 or code == "\x00":
                raise ProtocolError(f"cannot encode {type(self).__name__}: bad field code "
                                    f"{code!r}")
            parts.append(code.encode("ascii") + cstring(value, f"field {code}"))
        parts.append(b"\x00")
        return b"".join(parts)


def report_fields(severity: str, code: str, message: str, **extra: str | None
                  ) -> tuple[tuple[str, str], ...]:
    """Fields in PostgreSQL's order: S, V, C, M, then the named extras (detail, hint, ...)."""
    fields: list[tuple[str, str]] = [("S", severity), ("V", severity), ("C", code),
                                     ("M", message)]
    for name, value in extra.items():
        if value is None:
            continue
        if name not in _FIELD_BY_NAME or name in ("severity", "severity_nonlocalized", "code",
                                                  "message"):
            raise TypeError(f"unknown error field {name!r}")
        fields.append((_FIELD_BY_NAME[name], value))
    return tuple(fields)


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Report):
    type_code: ClassVar[bytes] = b"E"
    fields: tuple[tuple[str, str], ...]

    @classmethod
    def build(cls, code: str, message: str, *, severity: str = "ERROR",
              **extra: str | None) -> ErrorResponse:
        """E.g. `ErrorResponse.build("42501", "permission denied", detail="...")`."""
        return cls(report_fields(severity, code, message, **extra))


@dataclass(frozen=True, slots=True)
class NoticeResponse(_Report):
    type_code: ClassVar[bytes] = b"N"
    fields: tuple[tuple[str, str], ...]

    @classmethod
    def build(cls, code: str, message: str, *, severity: str = "NOTICE",
              **extra: str | None) -> NoticeResponse:
        return cls(report_fields(severity, code, message, **extra))


@dataclass(frozen=True, slots=True)
class ParseComplete(BackendMessage):
    type_code: ClassVar[bytes] = b"1"


@dataclass(frozen=True, slots=True)
class BindComplete(BackendMessage):
    type_code: ClassVar[bytes] = b"2"


@dataclass(frozen=True, slots=True)
class CloseComplete(BackendMessage):
    type_code: ClassVar[bytes] = b"3"


@dataclass(frozen=True, slots=True)
class NoData(BackendMessage):
    type_code: ClassVar[bytes] = b"n"


@dataclass(frozen=True, slots=True)
class PortalSuspended(BackendMessage):
    type_code: ClassVar[bytes] = b"s"


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(BackendMessage):
    type_code: ClassVar[bytes] = b"I"


@dataclass(frozen=True, slots=True)
class ParameterDescription(BackendMessage):
    type_code: ClassVar[bytes] = b"t"
    type_oids: tuple[int, ...]

    def encode_body(self) -> bytes:
        return _INT16.pack(len(self.type_oids)) + b"".join(_UINT32.pack(o)
                                                            for o in self.type_oids)


class _CopyResponse(BackendMessage):
    __slots__ = ()
    format: int
    column_formats: tuple[int, ...]

    def encode_body(self) -> bytes:
        return struct.pack("!b", self.format) + _int16s(self.column_formats)


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    type_code: ClassVar[bytes] = b"G"
    format: int
    column_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    type_code: ClassVar[bytes] = b"H"
    format: int
    column_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    type_code: ClassVar[bytes] = b"W"
    format: int
    column_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class NotificationResponse(BackendMessage):
    type_code: ClassVar[bytes] = b"A"
    pid: int
    channel: str
    payload: str

    def encode_body(self) -> bytes:
        return (_INT32.pack(self.pid) + cstring(self.channel, "notification channel")
                + cstring(self.payload, "notification payload"))


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion(BackendMessage):
    type_code: ClassVar[bytes] = b"v"
    newest_minor: int
    unrecognized: tuple[str, ...] = ()

    def encode_body(self) -> bytes:
        return (_INT32.pack(self.newest_minor) + _INT32.pack(len(self.unrecognized))
                + b"".join(cstring(o, "protocol option") for o in self.unrecognized))


@dataclass(frozen=True, slots=True)
class FunctionCallResponse(BackendMessage):
    type_code: ClassVar[bytes] = b"V"
    value: bytes | None

    def encode_body(self) -> bytes:
        if self.value is None:
            return _INT32.pack(-1)
        return _INT32.pack(len(self.value)) + self.value


@dataclass(frozen=True, slots=True)
class UnknownBackendMessage(BackendMessage):
    """A backend message type this codec does not know; relayed as is."""

    kind: bytes
    body: bytes

    def encode(self) -> bytes:
        return _HEADER.pack(self.kind, len(self.body) + 4) + self.body
