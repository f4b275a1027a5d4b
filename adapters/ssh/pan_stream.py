"""Card numbers masked in a byte stream that arrives in arbitrary chunks (sans-IO).

`PanStream.feed(chunk)` returns the bytes that can be passed on now, with every card number
`engine.masking.find_pans` sees masked (`pan`: all digits but the last 4 become `*`, length
kept); `flush()` returns the rest at the end of the stream. What could still become part of a
card number with the next chunk is held back: the trailing run of digits with single spaces or
dashes between them (the detector's run), and an incomplete UTF-8 sequence (digits of other
scripts count too). A run is held whole, so a number split across chunks is masked as if it had
come in one; a run longer than `max_hold` bytes (never a card number alone, but groups of one
can hide in it) is masked up to its last `PAN_SPAN` bytes and passed on, keeping those.

`idle()` passes the held bytes on unmasked-but-checked (what `find_pans` finds in them alone is
masked) when the source has paused: an interactive view must echo `123` typed at a prompt
without waiting for the next key. A number that arrives with such a pause inside it can reach
the view in two pieces unmasked; the recording's stream never calls `idle()`.
"""

from __future__ import annotations

from engine.masking import find_pans, may_hold_pan_bytes, scrub_pans

PAN_SPAN = 64
"""More than the longest card number with separators (19 digits and 18 separators)."""
DEFAULT_MAX_HOLD = 4096
_RUN_BYTES = frozenset(b"0123456789 -")


class PanStream:
    """One direction of one channel."""

    __slots__ = ("_held", "masked", "max_hold")

    def __init__(self, max_hold: int = DEFAULT_MAX_HOLD) -> None:
        self._held = b""
        self.max_hold = max(max_hold, 2 * PAN_SPAN)
        self.masked = 0  # card numbers masked so far

    @property
    def holding(self) -> int:
        return len(self._held)

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk if self._held else chunk
        cut = _safe_cut(data)
        if len(data) - cut > self.max_hold:
            cut = len(data) - PAN_SPAN
        self._held = data[cut:]
        return self._mask(data[:cut])

    def idle(self) -> bytes:
        return self.flush()

    def flush(self) -> bytes:
        data, self._held = self._held, b""
        return self._mask(data)

    def _mask(self, data: bytes) -> bytes:
        if not data or not may_hold_pan_bytes(data):  # C-level string ops, no decoding
            return data
        text = data.decode("utf-8", "surrogateescape")
        found = len(find_pans(text))
        if not found:
            return data
        self.masked += found
        return scrub_pans(text).encode("utf-8", "surrogateescape")


def _safe_cut(data: bytes) -> int:
    """Where the bytes that may continue into the next chunk begin: the trailing run of
    digits and single separators (an ASCII separator ends it only when doubled), then any
    trailing non-ASCII bytes (an incomplete sequence, or a digit of another script)."""
    i = len(data)
    while i > 0 and data[i - 1] >= 0x80:  # non-ASCII: may be (part of) a digit
        i -= 1
    while i > 0:
        byte = data[i - 1]
        if byte >= 0x80:
            i -= 1
            continue
        if byte not in _RUN_BYTES:
            break
        if byte in (32, 45) and i > 1 and data[i - 2] in (32, 45):
            break  # a double separator ends a run
        i -= 1
    return i
