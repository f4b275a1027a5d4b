"""Round trips, split feeding and precise errors of the sans-IO protocol codec."""

from __future__ import annotations

import struct

import pytest

from adapters.postgres import messages as m
from adapters.postgres.codec import (
    BackendDecoder,
    Frame,
    FrontendDecoder,
    ProtocolError,
    decode_backend,
    decode_frontend,
)

STARTUP_PHASE = [
    m.StartupMessage((("user", "alice"), ("database", "payments"),
                      ("application_name", "psql ü"))),
    m.StartupMessage(()),
    m.SSLRequest(),
    m.GSSENCRequest(),
    m.CancelRequest(4242, b"\x01\x02\x03\x04"),
    m.CancelRequest(7, bytes(range(32))),
]

FRONTEND = [
    m.Query("SELECT 1; SELECT 'é'"),
    m.Query(""),
    m.Parse("", "SELECT $1::int", (23,)),
    m.Parse("s1", "SELECT 1", ()),
    m.Parse("s2", "SELECT $1, $2", (0, 4294967295)),
    m.Bind("", "", (), (), ()),
    m.Bind("p1", "s1", (1,), (b"\x00\x00\x00\x01", None, b""), (1, 0)),
    m.Bind("p2", "s2", (0, 1), (b"x", b"\x00"), (0,)),
    m.Describe("S", "s1"),
    m.Describe("P", ""),
    m.Execute("", 0),
    m.Execute("p1", 100),
    m.Sync(),
    m.Flush(),
    m.Close("S", "s1"),
    m.Close("P", "p1"),
    m.CopyData(b"1\tfoo\n"),
    m.CopyData(b""),
    m.CopyDone(),
    m.CopyFail("client gave up"),
    m.FunctionCall(1598, (1,), (b"\x00\x00\x00\x2a", None), 1),
    m.FunctionCall(1598),
    m.Terminate(),
    m.AuthResponse(b"secret\x00"),
]

BACKEND = [
    m.AuthenticationOk(),
    m.AuthenticationCleartextPassword(),
    m.AuthenticationMD5Password(b"abcd"),
    m.AuthenticationSASL(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")),
    m.AuthenticationSASLContinue(b"r=abc,s=c2FsdA==,i=4096"),
    m.AuthenticationSASLFinal(b"v=c2lnbmF0dXJl"),
    m.AuthenticationOther(7, b""),
    m.AuthenticationOther(8, b"gss-token"),
    m.ParameterStatus("server_version", "15.2"),
    m.BackendKeyData(1234, b"\xde\xad\xbe\xef"),
    m.ReadyForQuery("I"),
    m.ReadyForQuery("T"),
    m.ReadyForQuery("E"),
    m.RowDescription((m.FieldDescription("pan", 16384, 2, 25, -1, -1, 0),
                      m.FieldDescription("n", 0, 0, 23, 4, -1, 1))),
    m.RowDescription(()),
    m.DataRow((b"4111111111111111", None, b"")),
    m.DataRow(()),
    m.CommandComplete("SELECT 2"),
    m.ErrorResponse.build("42501", "permission denied", detail="decision 01H", hint="ask",
                          position="8"),
    m.NoticeResponse.build("00000", "hello", severity="WARNING"),
    m.ParseComplete(),
    m.BindComplete(),
    m.CloseComplete(),
    m.NoData(),
    m.ParameterDescription((23, 25, 4294967295)),
    m.ParameterDescription(()),
    m.PortalSuspended(),
    m.EmptyQueryResponse(),
    m.CopyInResponse(0, (0, 0)),
    m.CopyOutResponse(1, (1, 1, 1)),
    m.CopyBothResponse(0, ()),
    m.CopyData(b"row\n"),
    m.CopyDone(),
    m.NotificationResponse(99, "chan", "payload"),
    m.NegotiateProtocolVersion(0, ("_pq_.foo",)),
    m.FunctionCallResponse(b"\x00\x01"),
    m.FunctionCallResponse(None),
    m.UnknownBackendMessage(b"Y", b"future"),
]


@pytest.mark.parametrize("message", STARTUP_PHASE, ids=repr)
def test_startup_phase_round_trip(message: m.FrontendMessage) -> None:
    decoder = FrontendDecoder()
    decoder.feed(message.encode())
    assert decoder.next_message() == message
    assert decoder.buffered == 0


@pytest.mark.parametrize("message", FRONTEND, ids=repr)
def test_frontend_round_trip(message: m.FrontendMessage) -> None:
    decoder = FrontendDecoder(startup=False)
    raw = message.encode()
    decoder.feed(raw)
    frame = decoder.next_frame()
    assert frame is not None and frame.raw == raw
    assert decoder.decode(frame) == message
    assert decoder.next_frame() is None


@pytest.mark.parametrize("message", BACKEND, ids=repr)
def test_backend_round_trip(message: m.BackendMessage) -> None:
    decoder = BackendDecoder()
    raw = message.encode()
    decoder.feed(raw)
    assert decoder.next_message() == message
    assert decoder.next_message() is None
    assert message.encode() == raw


def test_whole_conversation_fed_one_byte_at_a_time() -> None:
    frontend = [STARTUP_PHASE[2], STARTUP_PHASE[0], *FRONTEND]
    stream = b"".join(msg.encode() for msg in frontend)
    decoder = FrontendDecoder()
    got: list[m.FrontendMessage] = []
    for i in range(len(stream)):
        decoder.feed(stream[i:i + 1])
        got.extend(decoder)
    assert got == frontend

    backend_stream = b"".join(msg.encode() for msg in BACKEND)
    bdecoder = BackendDecoder()
    bgot: list[m.BackendMessage] = []
    for i in range(len(backend_stream)):
        bdecoder.feed(backend_stream[i:i + 1])
        bgot.extend(bdecoder)
    assert bgot == BACKEND


def test_frames_keep_the_raw_bytes_for_relaying() -> None:
    decoder = BackendDecoder()
    rows = [m.DataRow((str(i).encode(),)).encode() for i in range(3)]
    decoder.feed(b"".join(rows))
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    assert [f.raw for f in frames] == rows
    assert [f.type for f in frames] == [b"D"] * 3
    assert frames[0].body == rows[0][5:]


def test_auth_response_readers() -> None:
    assert m.AuthResponse(m.PasswordMessage("pw").encode()[5:]).as_password().password == "pw"
    initial = m.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc")
    parsed = m.AuthResponse(initial.encode()[5:]).as_sasl_initial()
    assert parsed == initial
    empty = m.SASLInitialResponse("SCRAM-SHA-256", None)
    assert m.AuthResponse(empty.encode()[5:]).as_sasl_initial() == empty
    assert m.AuthResponse(b"xyz").as_sasl_response().data == b"xyz"
    with pytest.raises(ProtocolError, match=r"PasswordMessage: .*without terminator"):
        m.AuthResponse(b"pw").as_password()
    with pytest.raises(ProtocolError, match=r"PasswordMessage: .*trailing data"):
        m.AuthResponse(b"pw\x00x").as_password()
    with pytest.raises(ProtocolError, match="SASLInitialResponse: data length 9"):
        m.AuthResponse(b"SCRAM-SHA-256\x00\x00\x00\x00\x09abc").as_sasl_initial()


def test_error_response_builder_and_accessors() -> None:
    err = m.ErrorResponse.build("28P01", 'password authentication failed for user "x"',
                                severity="FATAL", detail="d", hint="h")
    assert err.fields[:4] == (("S", "FATAL"), ("V", "FATAL"), ("C", "28P01"),
                              ("M", 'password authentication failed for user "x"'))
    assert (err.code, err.severity, err.get("D"), err.get("H"), err.get("W")) == (
        "28P01", "FATAL", "d", "h", None)
    with pytest.raises(TypeError):
        m.ErrorResponse.build("XX000", "x", colour="red")


def test_bind_result_format_lookup() -> None:
    assert m.Bind("", "").result_format(3) == 0
    assert m.Bind("", "", result_formats=(1,)).result_format(3) == 1
    assert m.Bind("", "", result_formats=(0, 1)).result_format(1) == 1


def test_startup_decoder_phases() -> None:
    decoder = FrontendDecoder()
    decoder.feed(m.SSLRequest().encode())
    assert decoder.next_message() == m.SSLRequest()
    assert decoder.in_startup
    decoder.feed(m.StartupMessage((("user", "u"),)).encode() + m.Query("x").encode())
    assert isinstance(decoder.next_message(), m.StartupMessage)
    assert not decoder.in_startup
    assert decoder.next_message() == m.Query("x")

    cancel = FrontendDecoder()
    cancel.feed(m.CancelRequest(1, b"abcd").encode() + b"junk")
    assert cancel.next_message() == m.CancelRequest(1, b"abcd")
    with pytest.raises(ProtocolError, match="4 bytes after a CancelRequest"):
        cancel.next_message()


def _typed(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


@pytest.mark.parametrize(("raw", "error"), [
    (_typed(b"Z", b""), "invalid frontend message type b'Z'"),
    (_typed(b"Q", b"select 1"), r"Query: query string is not NUL-terminated at byte 0 of "
                                r"8-byte body"),
    (_typed(b"Q", b"a\x00b"), "Query: 1 unexpected trailing bytes at byte 2 of 3-byte body"),
    (_typed(b"Q", b"\xff\x00"), "Query: query string is not valid UTF-8"),
    (_typed(b"S", b"x"), "Sync: 1 unexpected trailing bytes"),
    (_typed(b"D", b"X\x00"), r"Describe: kind is b'X', expected 'S' or 'P'"),
    (_typed(b"E", b"p\x00\x00"), r"Execute: truncated row limit \(needs 4 bytes\)"),
    (_typed(b"B", b"\x00\x00\x00\x01\x00\x02"),
     "Bind: parameter format code #0 is 2, expected 0 .text. or 1 .binary."),
    (_typed(b"B", b"\x00\x00\x00\x00\xff\xff"), "Bind: negative parameter value count -1"),
    (_typed(b"B", b"\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00"),
     "Bind: parameter value #0 has negative length -2"),
    (_typed(b"B", b"\x00\x00\x00\x00\x7f\xff"), "Bind: truncated 32767 parameter values"),
    (_typed(b"B", b"\x00\x00\x00\x02\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00"),
     "Bind: 2 parameter format codes for 1 parameters"),
    (_typed(b"P", b"s\x00q\x00\x00\x02\x00\x00\x00\x17"),
     "Parse: truncated 2 parameter type OIDs"),
    (_typed(b"F", b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x07"),
     "FunctionCall: result format code is 7"),
    (b"Q\x00\x00\x00\x03", "frontend message b'Q': length 3 is less than 4"),
])
def test_frontend_errors_are_precise(raw: bytes, error: str) -> None:
    decoder = FrontendDecoder(startup=False)
    decoder.feed(raw)
    with pytest.raises(ProtocolError, match=error):
        decoder.next_message()
    # The decoder is poisoned: it keeps failing the same way.
    with pytest.raises(ProtocolError, match=error):
        decoder.next_message()
    with pytest.raises(ProtocolError):
        decoder.feed(b"more")


@pytest.mark.parametrize(("raw", "error"), [
    (struct.pack("!i", 4), "start-up packet: length 4 is less than 8"),
    (struct.pack("!ii", 8, 1234 << 16 | 9999), "StartupMessage: unknown request code"),
    (struct.pack("!ii", 9, 196608) + b"u", "StartupMessage: parameter name is not NUL"),
    (struct.pack("!ii", 14, 196608) + b"u\x00v\x00\x00x",
     "StartupMessage: 1 unexpected trailing bytes"),
    (struct.pack("!ii", 17, 196608) + b"u\x00v\x00u\x00w\x00\x00",
     "StartupMessage: duplicate parameter 'u'"),
    (struct.pack("!iii", 12, 80877102, 5), "CancelRequest: secret key has 0 bytes"),
    (struct.pack("!ii", 12, 80877103) + b"abcd", "SSLRequest: 4 unexpected trailing bytes"),
    (struct.pack("!i", 10001), "start-up packet: length 10001 exceeds the maximum"),
    (b"GET / HTTP/1.1\r\n", r"exceeds the maximum start-up packet size 10000 \(it begins with "
                              r"the text 'GET ': not a PostgreSQL client; an HTTP request\?\)"),
])
def test_startup_errors_are_precise(raw: bytes, error: str) -> None:
    decoder = FrontendDecoder()
    decoder.feed(raw)
    with pytest.raises(ProtocolError, match=error):
        decoder.next_message()


@pytest.mark.parametrize(("raw", "error"), [
    (_typed(b"Z", b"X"), r"ReadyForQuery: transaction status is b'X'"),
    (_typed(b"Z", b""), r"ReadyForQuery: truncated transaction status"),
    (_typed(b"D", b"\x00\x01\x00\x00\x00\x05ab"),
     r"DataRow: truncated column value #0 \(5 bytes\)"),
    (_typed(b"T", b"\x00\x02a\x00"), "RowDescription: truncated 2 field descriptions"),
    (_typed(b"R", b"\x00\x00\x00\x05ab"), "AuthenticationMD5Password: truncated salt"),
    (_typed(b"K", b"\x00\x00\x00\x01ab"), "BackendKeyData: secret key has 2 bytes"),
    (_typed(b"E", b"Mno end"), "ErrorResponse: field 'M' is not NUL-terminated"),
    (_typed(b"H", b"\x02\x00\x00"), "CopyOutResponse: overall format is 2"),
    (_typed(b"1", b"x"), "ParseComplete: 1 unexpected trailing bytes"),
    (_typed(b"v", b"\x00\x00\x00\x00\x7f\xff\xff\xff"), "NegotiateProtocolVersion: option "
                                                      "count 2147483647 is impossible"),
])
def test_backend_errors_are_precise(raw: bytes, error: str) -> None:
    decoder = BackendDecoder()
    decoder.feed(raw)
    with pytest.raises(ProtocolError, match=error):
        decoder.next_message()


def test_oversized_length_header_is_refused_before_buffering() -> None:
    decoder = FrontendDecoder(startup=False, max_message_size=1024)
    decoder.feed(b"Q" + struct.pack("!I", 0x7FFFFFF0))
    with pytest.raises(ProtocolError, match="length 2147483632 exceeds the maximum message "
                                            "size 1024"):
        decoder.next_frame()
    assert decoder.buffered == 5  # nothing but the header was ever held

    backend = BackendDecoder()  # default 64 MiB
    backend.feed(b"D" + struct.pack("!I", 0xFFFFFFFF))
    with pytest.raises(ProtocolError, match="exceeds the maximum message size 67108864"):
        backend.next_frame()


def test_unknown_frontend_type_is_refused_before_its_length_arrives() -> None:
    decoder = FrontendDecoder(startup=False)
    decoder.feed(b"\x00")
    with pytest.raises(ProtocolError, match=r"invalid frontend message type b'\\x00'"):
        decoder.next_frame()


def test_unknown_backend_type_passes_through() -> None:
    raw = _typed(b"Y", b"new")
    decoder = BackendDecoder()
    decoder.feed(raw)
    frame = decoder.next_frame()
    assert frame == Frame(b"Y", raw)
    assert decode_backend(frame) == m.UnknownBackendMessage(b"Y", b"new")


def test_encoding_refuses_nul_in_strings() -> None:
    with pytest.raises(ProtocolError, match="cannot encode Query: it contains a NUL byte"):
        m.Query("a\x00b").encode()
    with pytest.raises(ProtocolError, match="cannot encode Execute"):
        m.Execute("", 2**40).encode()


def test_decode_functions_match_decoders() -> None:
    raw = m.Query("x").encode()
    assert decode_frontend(Frame(b"Q", raw)) == m.Query("x")
    with pytest.raises(ProtocolError, match="invalid frontend message type"):
        decode_frontend(Frame(b"Z", raw))


def test_next_run_relays_consecutive_messages_of_one_type_raw() -> None:
    rows = [m.DataRow((str(i).encode(),)).encode() for i in range(4)]
    done = m.CommandComplete("SELECT 4").encode()
    decoder = BackendDecoder()
    decoder.feed(b"".join(rows) + done + rows[0][:3])
    assert decoder.next_run(b"C") is None
    assert decoder.next_run(b"D") == b"".join(rows)
    assert decoder.next_run(b"D") is None
    assert decoder.next_message() == m.CommandComplete("SELECT 4")
    assert decoder.next_run(b"D") is None  # incomplete: left for later
    decoder.feed(rows[0][3:])
    assert decoder.next_run(b"D") == rows[0]


def test_next_run_leaves_bad_lengths_to_next_frame() -> None:
    decoder = BackendDecoder(max_message_size=64)
    decoder.feed(m.DataRow((b"x",)).encode() + b"D" + struct.pack("!I", 1000))
    assert decoder.next_run(b"D") == m.DataRow((b"x",)).encode()
    assert decoder.next_run(b"D") is None
    with pytest.raises(ProtocolError, match="length 1000 exceeds the maximum message size 64"):
        decoder.next_frame()
