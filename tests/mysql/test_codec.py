"""The MySQL codec, typed packets and the response reader, without a server; plus property
tests (hypothesis) that random and mutated byte streams only ever raise ProtocolError and
every decode does bounded work."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.mysql import messages as m
from adapters.mysql.codec import MAX_PACKET, PacketDecoder, ProtocolError, encode_packets
from adapters.mysql.session import CommandPlanner, ResponseReader

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
CAPS = m.SUPPORTED_CAPABILITIES & ~m.CLIENT_SSL
CAPS_EOF = CAPS & ~m.CLIENT_DEPRECATE_EOF


def test_packets_round_trip_and_split_at_16_mib() -> None:
    for size in (0, 1, MAX_PACKET - 1, MAX_PACKET, MAX_PACKET + 1, 2 * MAX_PACKET):
        payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        wire = encode_packets(payload, 3)
        decoder = PacketDecoder("server", max_message_size=3 * MAX_PACKET)
        decoder.expect(3)
        decoder.feed(wire)
        message = decoder.next_message()
        assert message is not None and message.payload == payload
        assert message.packets == size // MAX_PACKET + 1
        assert message.next_seq == (3 + message.packets) & 0xFF
        assert decoder.next_message() is None and decoder.buffered == 0


def test_sequence_ids_are_checked() -> None:
    decoder = PacketDecoder("client")
    decoder.expect(0)
    decoder.feed(encode_packets(b"\x0eping", 1))
    with pytest.raises(ProtocolError, match="sequence id 1, expected 0"):
        decoder.next_message()
    with pytest.raises(ProtocolError):  # poisoned
        decoder.next_message()


def test_maximum_message_size_is_checked_before_buffering() -> None:
    decoder = PacketDecoder("client", max_message_size=1000)
    decoder.feed((5000).to_bytes(3, "little") + b"\x00")
    with pytest.raises(ProtocolError, match="exceeds the maximum message size"):
        decoder.next_message()


def test_greeting_round_trip() -> None:
    greeting = m.Greeting("5.5.5-10.11.19-MariaDB", 42, bytes(range(1, 21)), CAPS, 45, 2,
                          "caching_sha2_password")
    assert m.Greeting.decode(greeting.encode()) == greeting


def test_handshake_response_round_trip_and_ssl_request() -> None:
    response = m.HandshakeResponse(CAPS, 1 << 24, 45, "alice", b"\x01" * 32, "payments",
                                   "caching_sha2_password", (("_client_name", "x"),))
    assert m.decode_login(response.encode()) == response
    ssl = m.decode_login(m.SSLRequest(CAPS, 1 << 24, 45).encode())
    assert isinstance(ssl, m.SSLRequest) and ssl.capabilities & m.CLIENT_SSL
    with pytest.raises(ProtocolError, match=r"protocol 4\.1"):
        m.decode_login(b"\x00" * 32)


@pytest.mark.parametrize("caps", [CAPS, CAPS & ~m.CLIENT_SESSION_TRACK])
def test_ok_err_eof(caps: int) -> None:
    ok = m.OK(3, 7, m.SERVER_STATUS_AUTOCOMMIT, 1, b"Rows matched: 3")
    assert m.decode_ok(ok.encode(caps), caps) == ok
    err = m.ERR(1142, "42000", "permission denied by policy: x")
    assert m.decode_err(err.encode()) == err
    eof = m.EOF(2, m.SERVER_MORE_RESULTS_EXISTS)
    assert m.is_eof(eof.encode()) and m.decode_eof(eof.encode()) == eof
    assert m.end_status(eof.encode(), CAPS_EOF) == m.SERVER_MORE_RESULTS_EXISTS


def test_column_definitions_and_rows() -> None:
    col = m.ColumnDefinition("db", "c", "cards", "pan", "pan", 45, 128, m.TYPE_VAR_STRING, 1, 0)
    assert m.decode_column_definition(col.encode()) == col
    values: list[bytes | None] = [b"1", None, b"x" * 300]
    assert m.decode_text_row(m.encode_text_row(values), 3) == values
    types = [m.TYPE_LONG, m.TYPE_VAR_STRING, m.TYPE_DATE, m.TYPE_NULL, m.TYPE_DOUBLE]
    row = m.BinaryRow([b"\x01\x00\x00\x00", b"abc", b"\x04\xe8\x07\x02\x1d", None,
                       b"\x00" * 8])
    assert m.decode_binary_row(m.encode_binary_row(row, types), types) == row
    with pytest.raises(ProtocolError, match="trailing"):
        m.decode_text_row(m.encode_text_row(values) + b"\x00", 3)


def test_response_reader_text_result_with_and_without_eof() -> None:
    col = m.ColumnDefinition("db", "t", "t", "a", "a", 45, 10, m.TYPE_VAR_STRING, 0, 0)
    for caps in (CAPS, CAPS_EOF):
        reader = ResponseReader("result", caps)
        packets = [b"\x01", col.encode()]
        if not caps & m.CLIENT_DEPRECATE_EOF:
            packets.append(m.EOF().encode())
        packets += [m.encode_text_row([b"v"]), m.encode_text_row([None])]
        end = (m.OK(eof=True).encode(caps) if caps & m.CLIENT_DEPRECATE_EOF
               else m.EOF().encode())
        kinds = [reader.read(p) for p in packets]
        assert not reader.done
        assert reader.read(end) == "eof" and reader.done and reader.results == 1
        assert kinds.count("row") == 2 and kinds[0] == "column_count"


def test_response_reader_multi_results_and_prepare() -> None:
    reader = ResponseReader("result", CAPS)
    assert reader.read(m.OK(status=m.SERVER_MORE_RESULTS_EXISTS).encode(CAPS)) == "ok"
    assert not reader.done
    assert reader.read(m.ERR(1064, "42000", "syntax").encode()) == "err" and reader.done
    col = m.ColumnDefinition("", "", "", "?", "", 63, 0, m.TYPE_VAR_STRING, 0, 0).encode()
    for caps in (CAPS, CAPS_EOF):
        reader = ResponseReader("prepare", caps)
        assert reader.read(m.PrepareOK(5, 1, 2).encode()) == "prepare_ok"
        sent = [col, col] + ([m.EOF().encode()] if caps == CAPS_EOF else []) + [col]
        sent += [m.EOF().encode()] if caps == CAPS_EOF else []
        for packet in sent:
            assert not reader.done
            reader.read(packet)
        assert reader.done and reader.prepare.statement_id == 5


def test_planner() -> None:
    planner = CommandPlanner()
    plan = planner.plan(m.Command(m.COM_INIT_DB, b"pay`ments"))
    assert plan.decide == "USE `pay``ments`"
    plan = planner.plan(m.Command(m.COM_FIELD_LIST, b"cards\x00%"))
    assert plan.decide == "SHOW COLUMNS FROM `cards`" and plan.response == "field_list"
    assert planner.plan(m.Command(m.COM_STMT_EXECUTE, bytes(9))).refuse
    assert planner.plan(m.Command(m.COM_CHANGE_USER, b"x\x00")).refuse
    assert planner.plan(m.Command(m.COM_BINLOG_DUMP, b"")).refuse
    assert planner.plan(m.Command(m.COM_QUIT, b"")).quit
    assert planner.plan(m.Command(m.COM_PING, b"")).decide is None
    with pytest.raises(ProtocolError, match="UTF-8"):
        planner.plan(m.Command(m.COM_QUERY, b"\xff"))


# -- property tests -------------------------------------------------------------------------

def _drain(data: bytes, chunks: list[int], max_size: int = 4096) -> int:
    decoder = PacketDecoder("client", max_message_size=max_size)
    decoded, pos = 0, 0
    try:
        for size in [*chunks, len(data)]:
            decoder.feed(data[pos:pos + size])
            pos += size
            while (message := decoder.next_message()) is not None:
                decoded += 1
                assert decoded <= len(data) // 4
                with contextlib.suppress(ProtocolError):
                    CommandPlanner().plan(m.decode_command(message.payload))
            if pos >= len(data):
                break
    except ProtocolError as exc:
        assert str(exc)
    assert decoder.buffered <= max_size + 8 * 4
    return decoded


@SETTINGS
@given(st.binary(max_size=2000), st.lists(st.integers(1, 64), max_size=20))
def test_random_bytes_only_raise_protocol_error(data: bytes, chunks: list[int]) -> None:
    _drain(data, chunks)


DECODERS = [
    m.Greeting.decode, m.decode_login, lambda p: m.decode_auth_reply(p, CAPS),
    lambda p: m.decode_ok(p, CAPS), lambda p: m.decode_ok(p, CAPS & ~m.CLIENT_SESSION_TRACK),
    m.decode_err, m.decode_eof, m.decode_column_definition, m.decode_column_count,
    m.decode_prepare_ok, lambda p: m.decode_text_row(p, 3),
    lambda p: m.decode_binary_row(p, [m.TYPE_LONG, m.TYPE_BLOB, m.TYPE_DATETIME]),
    lambda p: m.decode_change_user(m.Command(m.COM_CHANGE_USER, p), CAPS),
    lambda p: m.decode_field_list(m.Command(m.COM_FIELD_LIST, p)),
    lambda p: m.decode_stmt_execute(m.Command(m.COM_STMT_EXECUTE, p)),
]
SAMPLES = [
    m.Greeting("8.0.0", 1, bytes(range(1, 21)), CAPS, 45, 2, "caching_sha2_password").encode(),
    m.HandshakeResponse(CAPS, 1 << 24, 45, "alice", b"\x01" * 20, "db", "x").encode(),
    m.OK(1, 2, 3, 4, b"info").encode(CAPS), m.ERR(1, "HY000", "e").encode(),
    m.ColumnDefinition("d", "t", "t", "c", "c", 45, 1, 253, 0, 0).encode(),
    m.encode_text_row([b"a", None, b"c"]), m.PrepareOK(1, 2, 3).encode(),
]


@SETTINGS
@given(st.sampled_from(SAMPLES), st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)),
                                          max_size=6), st.integers(0, 2000))
def test_mutated_packets_only_raise_protocol_error(sample: bytes,
                                                   edits: list[tuple[int, int]],
                                                   cut: int) -> None:
    data = bytearray(sample)
    for where, value in edits:
        if data:
            data[where % len(data)] = value
    payload = bytes(data[:cut])
    for decode in DECODERS:
        with contextlib.suppress(ProtocolError):
            decode(payload)


@SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_response_reader_on_random_packets(packets: list[bytes]) -> None:
    for kind in ("result", "prepare", "ok", "field_list", "single"):
        reader = ResponseReader(kind, CAPS)  # type: ignore[arg-type]
        with contextlib.suppress(ProtocolError):
            for packet in packets:
                reader.read(packet)


@SETTINGS
@given(st.lists(st.one_of(st.none(), st.binary(max_size=300)), max_size=6),
       st.binary(max_size=40), st.integers(0, 8))
def test_fast_text_row_decoder_equals_the_reference(values: list[bytes | None], noise: bytes,
                                                    columns: int) -> None:
    """The inline decoder of the hot path gives what the Reader-based one gives, or raises
    the same error."""
    for payload in (m.encode_text_row(values), noise, m.encode_text_row(values) + noise):
        for count in (len(values), columns):
            try:
                expected: object = m._decode_text_row(payload, count)
            except ProtocolError as exc:
                expected = str(exc)
            try:
                got: object = m.decode_text_row(payload, count)
            except ProtocolError as exc:
                got = str(exc)
            assert got == expected
