"""Property tests: random and mutated byte streams only ever raise ProtocolError, and the
decoders do bounded work (each call consumes input or asks for more)."""

from __future__ import annotations

import contextlib
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.postgres import messages as m
from adapters.postgres.codec import BackendDecoder, FrontendDecoder, ProtocolError
from tests.postgres.test_codec import BACKEND, FRONTEND, STARTUP_PHASE

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
MAX = 4096


def _drain(decoder: FrontendDecoder | BackendDecoder, data: bytes, chunks: list[int]) -> int:
    """Feed `data` in chunks, decode everything; returns the number of messages decoded.
    Work is bounded: every message consumes at least 5 bytes (4 in the start-up phase)."""
    decoded = 0
    pos = 0
    try:
        for size in [*chunks, len(data)]:
            decoder.feed(data[pos:pos + size])
            pos += size
            while decoder.next_message() is not None:
                decoded += 1
                assert decoded <= len(data) // 4
            if pos >= len(data):
                break
    except ProtocolError as exc:
        assert str(exc)
    assert decoder.buffered <= MAX + 5
    return decoded


@SETTINGS
@given(st.binary(max_size=2000), st.lists(st.integers(1, 64), max_size=20), st.booleans())
def test_random_bytes_frontend(data: bytes, chunks: list[int], startup: bool) -> None:
    _drain(FrontendDecoder(startup=startup, max_message_size=MAX, max_startup_size=MAX),
           data, chunks)


@SETTINGS
@given(st.binary(max_size=2000), st.lists(st.integers(1, 64), max_size=20))
def test_random_bytes_backend(data: bytes, chunks: list[int]) -> None:
    _drain(BackendDecoder(max_message_size=MAX), data, chunks)


_front_stream = b"".join(x.encode() for x in [STARTUP_PHASE[0], *FRONTEND])
_back_stream = b"".join(x.encode() for x in BACKEND)


def _mutate(stream: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(stream)
    for kind, where, value in edits:
        if not data:
            break
        i = where % len(data)
        if kind == 0:
            data[i] = value
        elif kind == 1:
            del data[i]
        elif kind == 2:
            data.insert(i, value)
        else:  # overwrite a plausible length field with a hostile value
            data[i:i + 4] = struct.pack("!I", [0, 3, 4, 0x7FFFFFFF, 0xFFFFFFFF, value][value % 6])
    return bytes(data)


_edits = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.integers(0, 255)),
                  min_size=1, max_size=8)


@SETTINGS
@given(_edits, st.lists(st.integers(1, 97), max_size=10))
def test_mutated_frontend_stream(edits: list[tuple[int, int, int]], chunks: list[int]) -> None:
    _drain(FrontendDecoder(max_message_size=MAX, max_startup_size=MAX),
           _mutate(_front_stream, edits), chunks)


@SETTINGS
@given(_edits, st.lists(st.integers(1, 97), max_size=10))
def test_mutated_backend_stream(edits: list[tuple[int, int, int]], chunks: list[int]) -> None:
    _drain(BackendDecoder(max_message_size=MAX), _mutate(_back_stream, edits), chunks)


@SETTINGS
@given(st.sampled_from(FRONTEND), st.integers(0, 300))
def test_truncated_frontend_message_waits_or_fails(message: m.FrontendMessage, cut: int) -> None:
    raw = message.encode()
    decoder = FrontendDecoder(startup=False)
    decoder.feed(raw[:cut])
    if cut < len(raw):
        assert decoder.next_message() is None  # incomplete: wait for more
    else:
        assert decoder.next_message() == message


@SETTINGS
@given(st.sampled_from([*FRONTEND, *BACKEND]), st.binary(min_size=1, max_size=8))
def test_body_with_garbage_appended_is_refused_or_tolerated(message: m.Message,
                                                            junk: bytes) -> None:
    raw = message.encode()
    body = raw[5:] + junk
    patched = raw[:1] + struct.pack("!I", len(body) + 4) + body
    if isinstance(message, m.FrontendMessage) and not isinstance(message, m.BackendMessage):
        decoder: FrontendDecoder | BackendDecoder = FrontendDecoder(startup=False)
    else:
        decoder = BackendDecoder()
    decoder.feed(patched)
    with contextlib.suppress(ProtocolError):
        decoder.next_message()


@SETTINGS
@given(st.text(max_size=50).filter(lambda s: "\x00" not in s),
       st.lists(st.one_of(st.none(), st.binary(max_size=20)), max_size=10))
def test_generated_messages_round_trip(text: str, values: list[bytes | None]) -> None:
    front = [m.Query(text), m.Parse(text, text, (1, 2)), m.CopyFail(text),
             m.Bind(text, text, (), tuple(values), (1,))]
    decoder = FrontendDecoder(startup=False)
    decoder.feed(b"".join(x.encode() for x in front))
    assert list(decoder) == front
    back = [m.DataRow(tuple(values)), m.CommandComplete(text),
            m.NotificationResponse(1, text, text),
            m.ErrorResponse.build("XX000", text, detail=text)]
    bdecoder = BackendDecoder()
    bdecoder.feed(b"".join(x.encode() for x in back))
    assert list(bdecoder) == back


@SETTINGS
@given(_edits, st.lists(st.integers(1, 97), max_size=10), st.sampled_from([b"D", b"d", b"T"]))
def test_fast_path_relays_exactly_what_framing_would(edits: list[tuple[int, int, int]],
                                                     chunks: list[int], kind: bytes) -> None:
    data = _mutate(_back_stream, edits)
    slow, fast = BackendDecoder(max_message_size=MAX), BackendDecoder(max_message_size=MAX)
    slow_out: list[bytes] = []
    fast_out: list[bytes] = []
    slow_error = fast_error = None
    pos = 0
    for size in [*chunks, len(data)]:
        piece = data[pos:pos + size]
        pos += size
        try:
            slow.feed(piece)
            while (frame := slow.next_frame()) is not None:
                slow_out.append(frame.raw)
        except ProtocolError as exc:
            slow_error = slow_error or str(exc)
        try:
            fast.feed(piece)
            while True:
                run = fast.next_run(kind)
                if run is not None:
                    fast_out.append(run)
                    continue
                frame = fast.next_frame()
                if frame is None:
                    break
                fast_out.append(frame.raw)
        except ProtocolError as exc:
            fast_error = fast_error or str(exc)
        if pos >= len(data):
            break
    assert b"".join(fast_out) == b"".join(slow_out)
    assert fast_error == slow_error
