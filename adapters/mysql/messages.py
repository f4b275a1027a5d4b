"""Typed MySQL protocol payloads: decode one message's payload, encode one to send.

Owns: capability and status flags, command codes, the handshake (v10 greeting, SSLRequest,
HandshakeResponse41, AuthSwitchRequest, AuthMoreData), OK / ERR / EOF (with and without
CLIENT_DEPRECATE_EOF), the COM_* commands, column definitions, text and binary result rows,
COM_STMT_PREPARE_OK and the LOCAL INFILE request. Field layouts follow the MySQL source
documentation (dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_*.html) and the
MariaDB KB ("clientserver-protocol"). Every malformed payload raises `ProtocolError` naming
the packet, the field and the byte offset. Must not: do I/O or keep conversation state
(which packet may follow which is `session.py`'s; a binary row needs its column types, passed
in).

PyMySQL parses the client side of these packets (`pymysql.protocol`), but it is written for a
client reading a server's answers (a packet reader tied to its connection, no encoders of
server packets, no greeting or command decoding), so the server side here is our own.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from adapters.mysql.codec import ProtocolError

# -- capability flags (protocol::CapabilityFlags) --------------------------------------------
CLIENT_LONG_PASSWORD = 1
CLIENT_FOUND_ROWS = 1 << 1
CLIENT_LONG_FLAG = 1 << 2
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_NO_SCHEMA = 1 << 4
CLIENT_COMPRESS = 1 << 5
CLIENT_ODBC = 1 << 6
CLIENT_LOCAL_FILES = 1 << 7
CLIENT_IGNORE_SPACE = 1 << 8
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_INTERACTIVE = 1 << 10
CLIENT_SSL = 1 << 11
CLIENT_IGNORE_SIGPIPE = 1 << 12
CLIENT_TRANSACTIONS = 1 << 13
CLIENT_RESERVED = 1 << 14
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_MULTI_STATEMENTS = 1 << 16
CLIENT_MULTI_RESULTS = 1 << 17
CLIENT_PS_MULTI_RESULTS = 1 << 18
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22
CLIENT_SESSION_TRACK = 1 << 23
CLIENT_DEPRECATE_EOF = 1 << 24
CLIENT_OPTIONAL_RESULTSET_METADATA = 1 << 25
CLIENT_ZSTD_COMPRESSION = 1 << 26
CLIENT_QUERY_ATTRIBUTES = 1 << 27

REQUIRED_CAPABILITIES = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH
"""What a client must support to log in through the proxy (every client of this century)."""

SUPPORTED_CAPABILITIES = (
    CLIENT_LONG_PASSWORD | CLIENT_FOUND_ROWS | CLIENT_LONG_FLAG | CLIENT_CONNECT_WITH_DB
    | CLIENT_NO_SCHEMA | CLIENT_ODBC | CLIENT_IGNORE_SPACE | CLIENT_PROTOCOL_41
    | CLIENT_INTERACTIVE | CLIENT_SSL | CLIENT_IGNORE_SIGPIPE | CLIENT_TRANSACTIONS
    | CLIENT_RESERVED | CLIENT_SECURE_CONNECTION | CLIENT_MULTI_STATEMENTS
    | CLIENT_MULTI_RESULTS | CLIENT_PS_MULTI_RESULTS | CLIENT_PLUGIN_AUTH
    | CLIENT_CONNECT_ATTRS | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | CLIENT_SESSION_TRACK
    | CLIENT_DEPRECATE_EOF | CLIENT_LOCAL_FILES)
"""What the proxy can relay (LOCAL INFILE: only for a statement the policies allowed, see
proxy.py). Not offered: compression, optional result set metadata, query attributes and
MariaDB's extended capabilities (progress reports, COM_MULTI, bulk execution, extended type
info, metadata cache), whose packets this codec does not read."""

# -- server status flags ---------------------------------------------------------------------
SERVER_STATUS_IN_TRANS = 1
SERVER_STATUS_AUTOCOMMIT = 2
SERVER_MORE_RESULTS_EXISTS = 8
SERVER_STATUS_CURSOR_EXISTS = 64
SERVER_STATUS_LAST_ROW_SENT = 128
SERVER_SESSION_STATE_CHANGED = 1 << 14

# -- commands --------------------------------------------------------------------------------
COM_SLEEP = 0x00
COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_FIELD_LIST = 0x04
COM_CREATE_DB = 0x05
COM_DROP_DB = 0x06
COM_REFRESH = 0x07
COM_SHUTDOWN = 0x08
COM_STATISTICS = 0x09
COM_PROCESS_INFO = 0x0A
COM_CONNECT = 0x0B
COM_PROCESS_KILL = 0x0C
COM_DEBUG = 0x0D
COM_PING = 0x0E
COM_TIME = 0x0F
COM_DELAYED_INSERT = 0x10
COM_CHANGE_USER = 0x11
COM_BINLOG_DUMP = 0x12
COM_TABLE_DUMP = 0x13
COM_CONNECT_OUT = 0x14
COM_REGISTER_SLAVE = 0x15
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
COM_SET_OPTION = 0x1B
COM_STMT_FETCH = 0x1C
COM_DAEMON = 0x1D
COM_BINLOG_DUMP_GTID = 0x1E
COM_RESET_CONNECTION = 0x1F

COMMAND_NAMES = {
    COM_SLEEP: "COM_SLEEP", COM_QUIT: "COM_QUIT", COM_INIT_DB: "COM_INIT_DB",
    COM_QUERY: "COM_QUERY", COM_FIELD_LIST: "COM_FIELD_LIST", COM_CREATE_DB: "COM_CREATE_DB",
    COM_DROP_DB: "COM_DROP_DB", COM_REFRESH: "COM_REFRESH", COM_SHUTDOWN: "COM_SHUTDOWN",
    COM_STATISTICS: "COM_STATISTICS", COM_PROCESS_INFO: "COM_PROCESS_INFO",
    COM_CONNECT: "COM_CONNECT", COM_PROCESS_KILL: "COM_PROCESS_KILL", COM_DEBUG: "COM_DEBUG",
    COM_PING: "COM_PING", COM_TIME: "COM_TIME", COM_DELAYED_INSERT: "COM_DELAYED_INSERT",
    COM_CHANGE_USER: "COM_CHANGE_USER", COM_BINLOG_DUMP: "COM_BINLOG_DUMP",
    COM_TABLE_DUMP: "COM_TABLE_DUMP", COM_CONNECT_OUT: "COM_CONNECT_OUT",
    COM_REGISTER_SLAVE: "COM_REGISTER_SLAVE", COM_STMT_PREPARE: "COM_STMT_PREPARE",
    COM_STMT_EXECUTE: "COM_STMT_EXECUTE", COM_STMT_SEND_LONG_DATA: "COM_STMT_SEND_LONG_DATA",
    COM_STMT_CLOSE: "COM_STMT_CLOSE", COM_STMT_RESET: "COM_STMT_RESET",
    COM_SET_OPTION: "COM_SET_OPTION", COM_STMT_FETCH: "COM_STMT_FETCH",
    COM_DAEMON: "COM_DAEMON", COM_BINLOG_DUMP_GTID: "COM_BINLOG_DUMP_GTID",
    COM_RESET_CONNECTION: "COM_RESET_CONNECTION",
}

# -- column types (enum_field_types) ---------------------------------------------------------
TYPE_DECIMAL, TYPE_TINY, TYPE_SHORT, TYPE_LONG, TYPE_FLOAT, TYPE_DOUBLE = 0, 1, 2, 3, 4, 5
TYPE_NULL, TYPE_TIMESTAMP, TYPE_LONGLONG, TYPE_INT24, TYPE_DATE, TYPE_TIME = 6, 7, 8, 9, 10, 11
TYPE_DATETIME, TYPE_YEAR, TYPE_NEWDATE, TYPE_VARCHAR, TYPE_BIT = 12, 13, 14, 15, 16
TYPE_JSON, TYPE_NEWDECIMAL, TYPE_ENUM, TYPE_SET = 245, 246, 247, 248
TYPE_TINY_BLOB, TYPE_MEDIUM_BLOB, TYPE_LONG_BLOB, TYPE_BLOB = 249, 250, 251, 252
TYPE_VAR_STRING, TYPE_STRING, TYPE_GEOMETRY = 253, 254, 255

STRING_TYPES = frozenset({TYPE_VARCHAR, TYPE_VAR_STRING, TYPE_STRING, TYPE_TINY_BLOB,
                          TYPE_MEDIUM_BLOB, TYPE_LONG_BLOB, TYPE_BLOB, TYPE_ENUM, TYPE_SET,
                          TYPE_JSON})
"""Types whose values (text or binary protocol) are a length-encoded string of their text."""
_LENENC_BINARY = STRING_TYPES | {TYPE_DECIMAL, TYPE_NEWDECIMAL, TYPE_BIT, TYPE_GEOMETRY}
_FIXED_BINARY = {TYPE_TINY: 1, TYPE_SHORT: 2, TYPE_YEAR: 2, TYPE_LONG: 4, TYPE_INT24: 4,
                 TYPE_FLOAT: 4, TYPE_LONGLONG: 8, TYPE_DOUBLE: 8, TYPE_NULL: 0}
_TEMPORAL_BINARY = {TYPE_DATE: (0, 4, 7, 11), TYPE_DATETIME: (0, 4, 7, 11),
                    TYPE_TIMESTAMP: (0, 4, 7, 11), TYPE_NEWDATE: (0, 4, 7, 11),
                    TYPE_TIME: (0, 8, 12)}

BINARY_CHARSET = 63
UNSAFE_CHARSETS = ("big5", "gbk", "sjis", "cp932", "gb18030")
"""Character sets in which a multibyte character may end in `\\` (0x5C), `'` or another ASCII
byte: a text that is one statement to a UTF-8 parser can be another to the server (the
classic GBK quote escape), so the proxy refuses them for a connection."""
UNSAFE_COLLATIONS = frozenset({1, 84, 13, 88, 28, 87, 95, 96, 248, 249, 250})
"""The collation ids of UNSAFE_CHARSETS a handshake can name (one byte)."""
UTF8MB4_GENERAL_CI = 45

# -- error codes the proxy sends -------------------------------------------------------------
ER_ACCESS_DENIED_ERROR = 1045
ER_TABLEACCESS_DENIED_ERROR = 1142
ER_NOT_SUPPORTED_AUTH_MODE = 1251
ER_UNKNOWN_COM_ERROR = 1047
ER_NET_PACKETS_OUT_OF_ORDER = 1156
ER_MALFORMED_PACKET = 1835
ER_HANDSHAKE_ERROR = 1043
ER_NOT_ALLOWED_COMMAND = 1148
ER_QUERY_INTERRUPTED = 1317
ER_SERVER_SHUTDOWN = 1053
ER_DBACCESS_DENIED_ERROR = 1044
ER_UNKNOWN_STMT_HANDLER = 1243
ER_LOCK_WAIT_TIMEOUT = 1205
CR_SERVER_LOST_EXTENDED = 2055


# --------------------------------------------------------------------------------------------
# Reading and writing fields


class Reader:
    """A cursor over one payload; every read is bounds-checked and names `packet` on error."""

    __slots__ = ("data", "packet", "pos")

    def __init__(self, packet: str, data: bytes, pos: int = 0) -> None:
        self.packet = packet
        self.data = data
        self.pos = pos

    def fail(self, what: str) -> ProtocolError:
        return ProtocolError(f"{self.packet}: {what} at byte {self.pos} of "
                             f"{len(self.data)}-byte payload")

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"truncated {what} (needs {n} bytes)")
        value = self.data[self.pos:self.pos + n]
        self.pos += n
        return value

    def uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "little")

    def lenenc_int(self, what: str) -> int:
        first = self.uint(1, what)
        if first < 0xFB:
            return first
        if first == 0xFC:
            return self.uint(2, what)
        if first == 0xFD:
            return self.uint(3, what)
        if first == 0xFE:
            return self.uint(8, what)
        self.pos -= 1
        raise self.fail(f"invalid length-encoded integer prefix 0x{first:02x} in {what}")

    def lenenc_bytes(self, what: str) -> bytes:
        return self.take(self.lenenc_int(what), what)

    def lenenc_text(self, what: str) -> str:
        return self.decode(self.lenenc_bytes(what), what)

    def nul_bytes(self, what: str) -> bytes:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise self.fail(f"unterminated {what}")
        value = self.data[self.pos:end]
        self.pos = end + 1
        return value

    def nul_text(self, what: str) -> str:
        return self.decode(self.nul_bytes(what), what)

    def rest(self) -> bytes:
        value = self.data[self.pos:]
        self.pos = len(self.data)
        return value

    def decode(self, raw: bytes, what: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not valid UTF-8 ({exc.reason})") from None

    def end(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} unexpected trailing byte(s)")


def lenenc_int(value: int) -> bytes:
    if value < 0:
        raise ValueError("a length-encoded integer is unsigned")
    if value < 0xFB:
        return bytes((value,))
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + value.to_bytes(8, "little")


def lenenc_bytes(value: bytes) -> bytes:
    return lenenc_int(len(value)) + value


def nul_bytes(value: bytes, what: str) -> bytes:
    if b"\0" in value:
        raise ValueError(f"{what} may not contain NUL")
    return value + b"\0"


# --------------------------------------------------------------------------------------------
# Handshake


@dataclass(frozen=True)
class Greeting:
    """Protocol::HandshakeV10, the server's first packet. `auth_data` is the whole scramble
    (part 1 and 2 without the trailing NUL): 20 bytes for every plugin of interest."""

    server_version: str
    connection_id: int
    auth_data: bytes
    capabilities: int
    charset: int
    status: int
    auth_plugin: str

    def encode(self) -> bytes:
        caps = self.capabilities
        part2 = self.auth_data[8:]
        out = bytearray(b"\x0a")
        out += nul_bytes(self.server_version.encode(), "server version")
        out += struct.pack("<I", self.connection_id) + self.auth_data[:8] + b"\0"
        out += struct.pack("<HBHH", caps & 0xFFFF, self.charset, self.status, caps >> 16 & 0xFFFF)
        out += bytes((len(self.auth_data) + 1 if caps & CLIENT_PLUGIN_AUTH else 0,))
        # 10 reserved bytes; MariaDB puts its extended capabilities in the last 4 when
        # CLIENT_LONG_PASSWORD ("CLIENT_MYSQL") is clear: the proxy offers none.
        out += bytes(10)
        if caps & CLIENT_SECURE_CONNECTION:
            out += part2 + b"\0"
        if caps & CLIENT_PLUGIN_AUTH:
            out += nul_bytes(self.auth_plugin.encode(), "auth plugin")
        return bytes(out)

    @classmethod
    def decode(cls, payload: bytes) -> Greeting:
        r = Reader("greeting", payload)
        if payload[:1] == b"\xff":
            raise r.fail(f"the server refused the connection: {decode_err(payload).message}")
        protocol = r.uint(1, "protocol version")
        if protocol != 10:
            raise r.fail(f"protocol version {protocol} (only 10 is supported)")
        version = r.nul_text("server version")
        connection_id = r.uint(4, "connection id")
        part1 = r.take(8, "auth data part 1")
        r.take(1, "filler")
        caps = r.uint(2, "capability flags")
        charset, status = 0, 0
        plugin = ""
        part2 = b""
        if r.remaining:
            charset = r.uint(1, "character set")
            status = r.uint(2, "status flags")
            caps |= r.uint(2, "upper capability flags") << 16
            data_len = r.uint(1, "auth data length")
            r.take(10, "reserved bytes")
            if caps & CLIENT_SECURE_CONNECTION:
                part2 = r.take(max(13, data_len - 8), "auth data part 2")
                part2 = part2[:-1] if part2.endswith(b"\0") else part2
            if caps & CLIENT_PLUGIN_AUTH:
                # some servers omit the terminating NUL of the last field
                plugin = r.decode(r.rest().split(b"\0", 1)[0], "auth plugin")
        return cls(version, connection_id, part1 + part2, caps, charset, status, plugin)


@dataclass(frozen=True)
class SSLRequest:
    """Protocol::SSLRequest: the first 32 bytes of a HandshakeResponse41 with CLIENT_SSL."""

    capabilities: int
    max_packet: int
    charset: int

    def encode(self) -> bytes:
        return struct.pack("<IIB", self.capabilities | CLIENT_SSL, self.max_packet,
                           self.charset) + bytes(23)


@dataclass(frozen=True)
class HandshakeResponse:
    """Protocol::HandshakeResponse41 (the client's login)."""

    capabilities: int
    max_packet: int
    charset: int
    user: str
    auth_response: bytes
    database: str | None = None
    auth_plugin: str = ""
    attributes: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        caps = self.capabilities
        out = bytearray(struct.pack("<IIB", caps, self.max_packet, self.charset) + bytes(23))
        out += nul_bytes(self.user.encode(), "user")
        if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
            out += lenenc_bytes(self.auth_response)
        else:
            if len(self.auth_response) > 255:
                raise ValueError("auth response too long without lenenc client data")
            out += bytes((len(self.auth_response),)) + self.auth_response
        if caps & CLIENT_CONNECT_WITH_DB:
            out += nul_bytes((self.database or "").encode(), "database")
        if caps & CLIENT_PLUGIN_AUTH:
            out += nul_bytes(self.auth_plugin.encode(), "auth plugin")
        if caps & CLIENT_CONNECT_ATTRS:
            attrs = b"".join(lenenc_bytes(k.encode()) + lenenc_bytes(v.encode())
                             for k, v in self.attributes)
            out += lenenc_bytes(attrs)
        return bytes(out)


def decode_login(payload: bytes) -> SSLRequest | HandshakeResponse:
    """The client's answer to the greeting: an SSLRequest (32 bytes with CLIENT_SSL) or its
    HandshakeResponse41. A client without CLIENT_PROTOCOL_41 is refused (ProtocolError)."""
    r = Reader("handshake response", payload)
    caps = r.uint(4, "capability flags")
    if not caps & CLIENT_PROTOCOL_41:
        raise r.fail("the client does not speak protocol 4.1 (CLIENT_PROTOCOL_41)")
    max_packet = r.uint(4, "max packet size")
    charset = r.uint(1, "character set")
    r.take(23, "filler")
    if r.remaining == 0:
        if not caps & CLIENT_SSL:
            raise r.fail("a 32-byte handshake response without CLIENT_SSL")
        return SSLRequest(caps, max_packet, charset)
    user = r.nul_text("user")
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth = r.lenenc_bytes("auth response")
    elif caps & CLIENT_SECURE_CONNECTION:
        auth = r.take(r.uint(1, "auth response length"), "auth response")
    else:
        auth = r.nul_bytes("auth response")
    database = None
    if caps & CLIENT_CONNECT_WITH_DB and r.remaining:
        database = r.nul_text("database")
    plugin = ""
    if caps & CLIENT_PLUGIN_AUTH and r.remaining:
        plugin = r.nul_text("auth plugin")
    attributes: list[tuple[str, str]] = []
    if caps & CLIENT_CONNECT_ATTRS and r.remaining:
        attrs = Reader("connection attributes", r.lenenc_bytes("connection attributes"))
        while attrs.remaining:
            attributes.append((attrs.lenenc_text("attribute name"),
                               attrs.lenenc_text("attribute value")))
    if caps & CLIENT_ZSTD_COMPRESSION and r.remaining:
        r.take(1, "zstd compression level")
    r.end()
    return HandshakeResponse(caps, max_packet, charset, user, auth, database, plugin,
                             tuple(attributes))


@dataclass(frozen=True)
class AuthSwitchRequest:
    """0xFE, plugin name, plugin data (a new scramble): the server asks for another plugin."""

    plugin: str
    data: bytes

    def encode(self) -> bytes:
        return b"\xfe" + nul_bytes(self.plugin.encode(), "plugin") + self.data


@dataclass(frozen=True)
class AuthMoreData:
    """0x01 and plugin data: caching_sha2_password's fast-auth result (0x03 ok, 0x04 full
    authentication needed) or an RSA public key."""

    data: bytes

    def encode(self) -> bytes:
        return b"\x01" + self.data


def decode_auth_reply(payload: bytes, capabilities: int
                      ) -> OK | ERR | AuthSwitchRequest | AuthMoreData:
    """The server's answer during authentication."""
    r = Reader("authentication reply", payload)
    head = r.uint(1, "header")
    if head == 0x00:
        return decode_ok(payload, capabilities)
    if head == 0xFF:
        return decode_err(payload)
    if head == 0xFE:
        if r.remaining == 0:  # the old "use the pre-4.1 password" request
            raise r.fail("the server asks for the pre-4.1 password hash, which is unsupported")
        plugin = r.nul_text("auth plugin")
        data = r.rest()
        return AuthSwitchRequest(plugin, data[:-1] if data.endswith(b"\0") else data)
    if head == 0x01:
        return AuthMoreData(r.rest())
    r.pos = 0
    raise r.fail(f"unexpected header 0x{head:02x}")


# --------------------------------------------------------------------------------------------
# OK, ERR, EOF


@dataclass(frozen=True)
class OK:
    """OK_Packet. `eof` marks the 0xFE-headed OK that ends a result set under
    CLIENT_DEPRECATE_EOF. `session_state` is kept raw (relayed, never interpreted)."""

    affected_rows: int = 0
    last_insert_id: int = 0
    status: int = SERVER_STATUS_AUTOCOMMIT
    warnings: int = 0
    info: bytes = b""
    session_state: bytes | None = None
    eof: bool = False

    def encode(self, capabilities: int) -> bytes:
        out = bytearray(b"\xfe" if self.eof else b"\x00")
        out += lenenc_int(self.affected_rows) + lenenc_int(self.last_insert_id)
        out += struct.pack("<HH", self.status, self.warnings)
        if capabilities & CLIENT_SESSION_TRACK:
            if self.info or self.session_state is not None:
                out += lenenc_bytes(self.info)
            if self.session_state is not None and self.status & SERVER_SESSION_STATE_CHANGED:
                out += lenenc_bytes(self.session_state)
        else:
            out += self.info
        return bytes(out)


def decode_ok(payload: bytes, capabilities: int) -> OK:
    r = Reader("OK packet", payload)
    head = r.uint(1, "header")
    if head not in (0x00, 0xFE):
        r.pos = 0
        raise r.fail(f"header 0x{head:02x} is not 0x00 or 0xFE")
    affected = r.lenenc_int("affected rows")
    insert_id = r.lenenc_int("last insert id")
    status = r.uint(2, "status flags")
    warnings = r.uint(2, "warnings")
    info = b""
    state = None
    if capabilities & CLIENT_SESSION_TRACK:
        if r.remaining:
            info = r.lenenc_bytes("info")
            if status & SERVER_SESSION_STATE_CHANGED and r.remaining:
                state = r.lenenc_bytes("session state")
    else:
        info = r.rest()
    return OK(affected, insert_id, status, warnings, info, state, head == 0xFE)


@dataclass(frozen=True)
class ERR:
    """ERR_Packet (always with the protocol 4.1 SQL state)."""

    code: int
    sqlstate: str
    message: str

    def encode(self) -> bytes:
        state = self.sqlstate.encode("ascii")
        if len(state) != 5:
            raise ValueError(f"SQLSTATE must be 5 characters, got {self.sqlstate!r}")
        return (b"\xff" + struct.pack("<H", self.code) + b"#" + state
                + self.message.encode("utf-8", "replace"))


def decode_err(payload: bytes) -> ERR:
    r = Reader("ERR packet", payload)
    if r.uint(1, "header") != 0xFF:
        r.pos = 0
        raise r.fail("header is not 0xFF")
    code = r.uint(2, "error code")
    state = "HY000"
    if r.data[r.pos:r.pos + 1] == b"#":
        r.pos += 1
        state = r.decode(r.take(5, "SQL state"), "SQL state")
    message = r.rest().decode("utf-8", "replace")
    return ERR(code, state, message)


@dataclass(frozen=True)
class EOF:
    """EOF_Packet (without CLIENT_DEPRECATE_EOF): 0xFE, warnings, status; under 9 bytes."""

    warnings: int = 0
    status: int = SERVER_STATUS_AUTOCOMMIT

    def encode(self) -> bytes:
        return b"\xfe" + struct.pack("<HH", self.warnings, self.status)


def is_eof(payload: bytes) -> bool:
    """An EOF packet, or the 0xFE-headed OK that replaces it (a row is never this short and
    0xFE-headed: a row's first value would then be an 8-byte length)."""
    return payload[:1] == b"\xfe" and len(payload) < 0xFFFFFF and (
        len(payload) < 9 or payload[1:2] != b"\xfe")


def decode_eof(payload: bytes) -> EOF:
    r = Reader("EOF packet", payload)
    if r.uint(1, "header") != 0xFE:
        r.pos = 0
        raise r.fail("header is not 0xFE")
    warnings = r.uint(2, "warnings") if r.remaining >= 2 else 0
    status = r.uint(2, "status flags") if r.remaining >= 2 else 0
    return EOF(warnings, status)


def end_status(payload: bytes, capabilities: int) -> int:
    """The status flags of an OK or EOF packet (result set end)."""
    if capabilities & CLIENT_DEPRECATE_EOF or len(payload) >= 9 or payload[:1] == b"\x00":
        return decode_ok(payload, capabilities).status
    return decode_eof(payload).status


# --------------------------------------------------------------------------------------------
# Commands


@dataclass(frozen=True)
class Command:
    """A command packet: `code` (COM_*) and its argument bytes."""

    code: int
    body: bytes

    @property
    def name(self) -> str:
        return COMMAND_NAMES.get(self.code, f"command 0x{self.code:02x}")

    def encode(self) -> bytes:
        return bytes((self.code,)) + self.body

    def text(self) -> str:
        """The UTF-8 text of COM_QUERY / COM_STMT_PREPARE / COM_INIT_DB."""
        return Reader(self.name, self.body).decode(self.body, "statement text")

    def statement_id(self) -> int:
        """The statement id of a COM_STMT_* command."""
        return Reader(self.name, self.body).uint(4, "statement id")


def decode_command(payload: bytes) -> Command:
    if not payload:
        raise ProtocolError("command packet: empty payload")
    return Command(payload[0], payload[1:])


@dataclass(frozen=True)
class FieldList:
    """COM_FIELD_LIST: a table and a column wildcard."""

    table: str
    wildcard: str


def decode_field_list(command: Command) -> FieldList:
    r = Reader("COM_FIELD_LIST", command.body)
    table = r.nul_text("table")
    return FieldList(table, r.decode(r.rest(), "wildcard"))


@dataclass(frozen=True)
class StmtExecute:
    """COM_STMT_EXECUTE, as far as the proxy reads it: the statement and the cursor flags
    (the parameter values follow, relayed as they are)."""

    statement_id: int
    flags: int
    iterations: int


def decode_stmt_execute(command: Command) -> StmtExecute:
    r = Reader("COM_STMT_EXECUTE", command.body)
    return StmtExecute(r.uint(4, "statement id"), r.uint(1, "flags"), r.uint(4, "iterations"))


@dataclass(frozen=True)
class ChangeUser:
    """COM_CHANGE_USER (user, auth response, database, charset, plugin; attributes skipped)."""

    user: str
    auth_response: bytes
    database: str
    charset: int
    auth_plugin: str


def decode_change_user(command: Command, capabilities: int) -> ChangeUser:
    r = Reader("COM_CHANGE_USER", command.body)
    user = r.nul_text("user")
    if capabilities & CLIENT_SECURE_CONNECTION:
        auth = r.take(r.uint(1, "auth response length"), "auth response")
    else:
        auth = r.nul_bytes("auth response")
    database = r.nul_text("database")
    charset = r.uint(2, "character set") if r.remaining >= 2 else 0
    plugin = r.nul_text("auth plugin") if capabilities & CLIENT_PLUGIN_AUTH and r.remaining \
        else ""
    return ChangeUser(user, auth, database, charset, plugin)


# --------------------------------------------------------------------------------------------
# Result sets


def decode_column_count(payload: bytes) -> int:
    r = Reader("column count", payload)
    count = r.lenenc_int("column count")
    r.end()
    if count == 0:
        raise r.fail("a result set of zero columns")
    return count


@dataclass(frozen=True)
class ColumnDefinition:
    """Protocol::ColumnDefinition41. `org_table`/`org_name` are the base table and column of
    a plain column reference (empty for computed columns); `default` is what follows the
    fixed fields in a COM_FIELD_LIST answer, raw (a length-encoded default value, or 0xFB for
    NULL)."""

    schema: str
    table: str
    org_table: str
    name: str
    org_name: str
    charset: int
    length: int
    type: int
    flags: int
    decimals: int
    catalog: str = "def"
    default: bytes | None = None

    def encode(self) -> bytes:
        out = bytearray()
        for value in (self.catalog, self.schema, self.table, self.org_table, self.name,
                      self.org_name):
            out += lenenc_bytes(value.encode("utf-8"))
        out += b"\x0c" + struct.pack("<HIBHBH", self.charset, self.length, self.type,
                                     self.flags, self.decimals, 0)
        if self.default is not None:
            out += self.default
        return bytes(out)


def decode_column_definition(payload: bytes) -> ColumnDefinition:
    r = Reader("column definition", payload)
    catalog = r.lenenc_text("catalog")
    schema = r.lenenc_text("schema")
    table = r.lenenc_text("table")
    org_table = r.lenenc_text("org_table")
    name = r.lenenc_text("name")
    org_name = r.lenenc_text("org_name")
    fixed = r.lenenc_int("fixed fields length")
    if fixed < 10:
        raise r.fail(f"fixed fields length {fixed} (at least 10)")
    fields = Reader("column definition", r.take(fixed, "fixed fields"))
    charset = fields.uint(2, "character set")
    length = fields.uint(4, "column length")
    type_ = fields.uint(1, "type")
    flags = fields.uint(2, "flags")
    decimals = fields.uint(1, "decimals")
    default = r.rest() or None
    return ColumnDefinition(schema, table, org_table, name, org_name, charset, length, type_,
                            flags, decimals, catalog, default)


def decode_text_row(payload: bytes, columns: int) -> list[bytes | None]:
    """A text-protocol row: one length-encoded string or 0xFB (NULL) per column. (The hot
    path of every result: `text_row_bounds`; anything irregular is read again by
    `_decode_text_row`, which names the fault.)"""
    bounds = text_row_bounds(payload, columns)
    if bounds is None:
        return _decode_text_row(payload, columns)
    return [None if start < 0 else payload[start:stop] for _, start, stop in bounds]


def text_row_bounds(payload: bytes, columns: int) -> list[tuple[int, int, int]] | None:
    """Where each value of a text-protocol row lies: (its length prefix, its first byte, its
    end); a NULL is (its 0xFB, -1, the byte after it). None for what `decode_text_row` reads
    the slow way (values of 64 KiB and more, and faults, which it names)."""
    bounds: list[tuple[int, int, int]] = []
    pos, end = 0, len(payload)
    try:
        for _ in range(columns):
            head, first = pos, payload[pos]
            if first < 0xFB:
                pos += 1
                stop = pos + first
            elif first == 0xFB:
                pos += 1
                bounds.append((head, -1, pos))
                continue
            elif first == 0xFC:
                stop = pos + 3 + (payload[pos + 1] | payload[pos + 2] << 8)
                pos += 3
            else:
                raise IndexError
            if stop > end:
                raise IndexError
            bounds.append((head, pos, stop))
            pos = stop
    except IndexError:
        return None
    return bounds if pos == end else None


def _decode_text_row(payload: bytes, columns: int) -> list[bytes | None]:
    r = Reader("text row", payload)
    values: list[bytes | None] = []
    for i in range(columns):
        if r.data[r.pos:r.pos + 1] == b"\xfb":
            r.pos += 1
            values.append(None)
        else:
            values.append(r.lenenc_bytes(f"value of column {i + 1}"))
    r.end()
    return values


def encode_text_row(values: list[bytes | None]) -> bytes:
    return b"".join(b"\xfb" if v is None else (bytes((len(v),)) + v if len(v) < 0xFB
                                              else lenenc_bytes(v)) for v in values)


@dataclass
class BinaryRow:
    """A binary-protocol row: `values[i]` is the raw encoding of column i (for string types
    the text, without its length prefix) or None for NULL."""

    values: list[bytes | None] = field(default_factory=list)


def decode_binary_row(payload: bytes, types: list[int]) -> BinaryRow:
    r = Reader("binary row", payload)
    if r.uint(1, "header") != 0x00:
        r.pos = 0
        raise r.fail("header is not 0x00")
    bitmap = r.take((len(types) + 7 + 2) // 8, "NULL bitmap")
    values: list[bytes | None] = []
    for i, type_ in enumerate(types):
        bit = i + 2
        if bitmap[bit // 8] & (1 << (bit % 8)):
            values.append(None)
            continue
        what = f"value of column {i + 1}"
        if type_ in _LENENC_BINARY:
            values.append(r.lenenc_bytes(what))
        elif type_ in _FIXED_BINARY:
            values.append(r.take(_FIXED_BINARY[type_], what))
        elif type_ in _TEMPORAL_BINARY:
            length = r.uint(1, what)
            if length not in _TEMPORAL_BINARY[type_]:
                r.pos -= 1
                raise r.fail(f"{what}: temporal length {length}")
            values.append(bytes((length,)) + r.take(length, what))
        else:
            raise r.fail(f"{what}: unknown column type {type_}")
    r.end()
    return BinaryRow(values)


def encode_binary_row(row: BinaryRow, types: list[int]) -> bytes:
    bitmap = bytearray((len(types) + 7 + 2) // 8)
    body = bytearray()
    for i, (value, type_) in enumerate(zip(row.values, types, strict=True)):
        if value is None:
            bit = i + 2
            bitmap[bit // 8] |= 1 << (bit % 8)
        elif type_ in _LENENC_BINARY:
            body += lenenc_bytes(value)
        else:
            body += value
    return b"\x00" + bytes(bitmap) + bytes(body)


@dataclass(frozen=True)
class PrepareOK:
    """COM_STMT_PREPARE_OK: the statement id and how many column and parameter definitions
    follow."""

    statement_id: int
    columns: int
    params: int
    warnings: int = 0

    def encode(self) -> bytes:
        return struct.pack("<BIHHBH", 0, self.statement_id, self.columns, self.params, 0,
                           self.warnings)


def decode_prepare_ok(payload: bytes) -> PrepareOK:
    r = Reader("COM_STMT_PREPARE_OK", payload)
    if r.uint(1, "status") != 0:
        r.pos = 0
        raise r.fail("status is not 0x00")
    statement_id = r.uint(4, "statement id")
    columns = r.uint(2, "column count")
    params = r.uint(2, "parameter count")
    warnings = 0
    if r.remaining:
        r.take(1, "filler")
        warnings = r.uint(2, "warnings") if r.remaining >= 2 else 0
    return PrepareOK(statement_id, columns, params, warnings)


@dataclass(frozen=True)
class LocalInfileRequest:
    """0xFB and a file name: the server asks the client to send a file (LOAD DATA LOCAL)."""

    filename: bytes

    def encode(self) -> bytes:
        return b"\xfb" + self.filename
