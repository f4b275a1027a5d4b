"""Sans-IO framing of the MySQL client/server protocol: bytes in, whole packets out.

Owns: the 4-byte packet header (3-byte little-endian length, 1-byte sequence id), joining a
message split over 16 MiB - 1 packets (a payload of exactly 0xFFFFFF bytes continues in the
next packet; a message whose length is a multiple of it ends with an empty one), checking
sequence ids, the maximum message size (checked before anything is buffered past it), and
splitting a payload into packets to send. Every malformed input raises `ProtocolError` and
poisons the decoder (later calls raise the same error). Must not: do I/O, or interpret a
payload (`messages.py` does) or the conversation (`session.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PACKET = 0xFFFFFF
"""The largest payload of one packet; a longer message is split (and a payload of exactly this
length says "more follows")."""

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
"""The largest whole message the proxy accepts (MySQL's own max_allowed_packet default)."""


class ProtocolError(Exception):
    """Malformed or unexpected protocol data; the message says what and where."""


@dataclass(frozen=True, slots=True)
class Message:
    """One logical message: `seq` the sequence id of its first packet, `payload` the joined
    payload, `packets` how many packets carried it (the next sequence id is seq + packets)."""

    seq: int
    payload: bytes
    packets: int = 1

    @property
    def next_seq(self) -> int:
        return (self.seq + self.packets) & 0xFF


def encode_packets(payload: bytes, seq: int) -> bytes:
    """`payload` as packets from sequence id `seq` (split at 16 MiB - 1)."""
    if len(payload) < MAX_PACKET:  # (one packet: every row of a usual result)
        return len(payload).to_bytes(3, "little") + bytes((seq & 0xFF,)) + payload
    out = bytearray()
    pos = 0
    while True:
        chunk = payload[pos:pos + MAX_PACKET]
        out += len(chunk).to_bytes(3, "little") + bytes((seq & 0xFF,)) + chunk
        seq += 1
        pos += len(chunk)
        if len(chunk) < MAX_PACKET:
            return bytes(out)


def packet_count(payload_length: int) -> int:
    """How many packets `encode_packets` makes of a payload this long."""
    return payload_length // MAX_PACKET + 1


class PacketDecoder:
    """Reassembles messages from a byte stream in one direction.

    `expect(seq)` sets the sequence id the next message must start with (None: any, for a
    relay that only follows the other side); each packet of a message must follow the previous
    one. `direction` names the peer in errors ("client" or "server").
    """

    def __init__(self, direction: str, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
                 ) -> None:
        self.direction = direction
        self.max_message_size = max_message_size
        self._buf = bytearray()
        self._start = 0  # where the unread bytes of _buf begin
        self._expected: int | None = None
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._start

    def expect(self, seq: int | None) -> None:
        self._expected = None if seq is None else seq & 0xFF

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._start and self._start >= len(self._buf) // 2:
            del self._buf[:self._start]  # consumed messages are dropped in bulk, not each
            self._start = 0
        self._buf += data

    def _fail(self, what: str) -> ProtocolError:
        self._error = ProtocolError(f"{self.direction}: {what}")
        return self._error

    def take_buffered(self) -> bytes:
        """The bytes buffered past the last message, removed (where a TLS stream begins)."""
        data = bytes(self._buf[self._start:])
        self._buf.clear()
        self._start = 0
        return data

    def next_message(self) -> Message | None:
        """The next whole message, or None until more bytes arrive."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        start = pos = self._start
        end = len(buf)
        total = 0
        first_seq: int | None = None
        packets = 0
        spans: list[tuple[int, int]] = []
        while True:
            if end - pos < 4:
                self._check_pending(total + (end - pos))
                return None
            length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            seq = buf[pos + 3]
            want = self._expected if first_seq is None else (first_seq + packets) & 0xFF
            if want is not None and seq != want:
                raise self._fail(f"packet sequence id {seq}, expected {want}")
            if total + length > self.max_message_size:
                raise self._fail(f"message of more than {total + length} bytes exceeds the "
                                 f"maximum message size ({self.max_message_size} bytes)")
            if end - pos - 4 < length:
                self._check_pending(total + (end - pos))
                return None
            if first_seq is None:
                first_seq = seq
            spans.append((pos + 4, pos + 4 + length))
            pos += 4 + length
            total += length
            packets += 1
            if length < MAX_PACKET:
                break
        payload = b"".join(bytes(buf[a:b]) for a, b in spans) if len(spans) > 1 else bytes(
            buf[spans[0][0]:spans[0][1]])
        self._start = pos if pos < end else 0
        if pos >= end:
            buf.clear()
        assert first_seq is not None and pos > start
        self._expected = None if self._expected is None else (first_seq + packets) & 0xFF
        return Message(first_seq, payload, packets)

    def _check_pending(self, pending: int) -> None:
        if pending > self.max_message_size + 4 * packet_count(self.max_message_size):
            raise self._fail(f"more than {self.max_message_size} bytes buffered without a "
                             "whole message")
