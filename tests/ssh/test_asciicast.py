"""asciicast v2 (adapters/ssh/asciicast.py): what the encoder writes the reader reads back,
UTF-8 split anywhere across chunks, and malformed recordings refused with the line named."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.ssh.asciicast import (
    AsciicastError,
    Encoder,
    Header,
    parse,
    parse_bytes,
    plain_text,
)

HEADER = Header(width=100, height=30, timestamp=1_765_000_000,
                env={"TERM": "xterm-256color", "SHELL": "/bin/bash"}, title="alice@db1")


def record(chunks: list[tuple[float, str, bytes]], header: Header = HEADER) -> bytes:
    enc = Encoder(header)
    out = enc.header()
    for t, code, data in chunks:
        out += enc.output(t, data) if code == "o" else enc.input(t, data)
    return out + enc.finish(chunks[-1][0] if chunks else 0.0)


def test_a_recording_round_trips() -> None:
    data = record([(0.1, "i", b"ls\r"), (0.25, "o", b"ls\r\nfile\r\n"), (1.5, "o", b"$ ")])
    lines = data.decode().splitlines()
    assert json.loads(lines[0]) == {"version": 2, "width": 100, "height": 30,
                                    "timestamp": 1_765_000_000, "title": "alice@db1",
                                    "env": {"TERM": "xterm-256color", "SHELL": "/bin/bash"}}
    assert json.loads(lines[1]) == [0.1, "i", "ls\r"]
    rec = parse_bytes(data)
    assert rec.header == HEADER
    assert [(e.time, e.code, e.data) for e in rec.events] == [
        (0.1, "i", "ls\r"), (0.25, "o", "ls\r\nfile\r\n"), (1.5, "o", "$ ")]
    assert rec.text("o") == "ls\r\nfile\r\n$ " and rec.text("i") == "ls\r"


def test_utf8_split_across_chunks_is_written_whole() -> None:
    euro = "€".encode()  # 3 bytes
    data = record([(0.1, "o", b"price " + euro[:1]), (0.2, "o", euro[1:2]),
                   (0.3, "o", euro[2:] + b" 5")])
    rec = parse_bytes(data)
    assert [e.data for e in rec.events] == ["price ", "€ 5"]  # no event for the middle byte


def test_invalid_bytes_become_replacement_characters() -> None:
    rec = parse_bytes(record([(0.1, "o", b"a\xffb"), (0.2, "o", b"\xe2\x82")]))
    assert rec.text("o") == "a\ufffdb\ufffd"  # the cut character at the end, at finish()


def test_input_and_output_are_decoded_apart() -> None:
    snow = "☃".encode()
    rec = parse_bytes(record([(0.1, "o", snow[:2]), (0.2, "i", b"x"), (0.3, "o", snow[2:])]))
    assert [(e.code, e.data) for e in rec.events] == [("i", "x"), ("o", "☃")]


def test_times_never_go_backwards_and_resizes_and_markers() -> None:
    enc = Encoder(HEADER)
    lines = [enc.header(), enc.output(2.0, b"a"), enc.output(1.0, b"b"),
             enc.resize(3.0, 120, 40), enc.marker(3.5, "approved")]
    rec = parse_bytes(b"".join(lines))
    assert [e.time for e in rec.events] == [2.0, 2.0, 3.0, 3.5]
    assert rec.events[2].data == "120x40" and rec.events[3].code == "m"
    enc.finish(4.0)
    with pytest.raises(ValueError, match="finished"):
        enc.output(5.0, b"late")


def test_control_characters_and_quotes_are_json_escaped() -> None:
    rec = parse_bytes(record([(0.0, "o", b'\x1b[31m"red"\\\x00\x07')]))
    assert rec.text("o") == '\x1b[31m"red"\\\x00\x07'


@pytest.mark.parametrize(("text", "error"), [
    ("", "no header"),
    ("not json\n", "line 1: not JSON"),
    ('{"version": 1, "width": 80, "height": 24}\n', "not asciicast v2"),
    ('{"version": 2, "width": 0, "height": 24}\n', "width must be a positive integer"),
    ('{"version": 2, "width": 80, "height": "24"}\n', "height must be a positive integer"),
    ('{"version": 2, "width": 80, "height": 24, "env": {"A": 1}}\n', "env must map"),
    ('{"version": 2, "width": 80, "height": 24}\n[1, "o"]\n', "line 2: an event is"),
    ('{"version": 2, "width": 80, "height": 24}\n["1", "o", "x"]\n', "line 2: the time"),
    ('{"version": 2, "width": 80, "height": 24}\n[2, "o", "x"]\n[1, "o", "y"]\n',
     "line 3: time 1 is before"),
    ('{"version": 2, "width": 80, "height": 24}\n[1, "x", "y"]\n', "unknown event"),
    ('{"version": 2, "width": 80, "height": 24}\n[1, "r", "big"]\n', "COLSxROWS"),
    ('{"version": 2, "width": 80, "height": 24}\n[NaN, "o", "x"]\n', "the time"),
])
def test_malformed_recordings_are_refused(text: str, error: str) -> None:
    with pytest.raises(AsciicastError, match=error):
        parse(text.split("\n"))


def test_not_utf8_is_refused() -> None:
    with pytest.raises(AsciicastError, match="not UTF-8"):
        parse_bytes(b'{"version": 2, "width": 80, "height": 24}\n\xff\n')


def test_plain_text_drops_escapes() -> None:
    assert plain_text("\x1b[1;32muser@host\x1b[0m:~$ ls\r\n\x1b]0;title\x07a\x08b\r\n") == (
        "user@host:~$ ls\nab\n")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("io"), st.binary(max_size=40)), max_size=30))
def test_any_byte_stream_round_trips_as_its_utf8_decoding(chunks: list[tuple[str, bytes]]) -> None:
    data = record([(i * 0.01, code, b) for i, (code, b) in enumerate(chunks)])
    rec = parse_bytes(data)
    for code in "io":
        sent = b"".join(b for c, b in chunks if c == code)
        assert rec.text(code) == sent.decode("utf-8", "replace")
