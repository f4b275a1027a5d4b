"""asciicast v2 (asciinema's recording format), sans-IO: an encoder that turns a terminal
session's bytes into the file's lines, and a reader that checks and parses such a file.

The format (https://docs.asciinema.org/manual/asciicast/v2/): newline-delimited JSON; the
first line a header object (`version: 2`, `width`, `height`, optional `timestamp`, `duration`,
`idle_time_limit`, `command`, `title`, `env`), then one event per line, `[time, code, data]`:
`time` seconds since the start (non-decreasing), `code` `o` (output), `i` (input), `r`
(resize, data `COLSxROWS`) or `m` (marker), `data` text. Terminal bytes are UTF-8 that may be
split anywhere across chunks: each stream has an incremental decoder, so a character cut in
two is written whole with the chunk that completes it; invalid bytes become U+FFFD, as
asciinema's own recorder does. `asciinema play FILE` replays what the encoder writes.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

VERSION = 2
EVENT_CODES = frozenset({"o", "i", "r", "m"})
_RESIZE = re.compile(r"[1-9][0-9]{0,4}x[1-9][0-9]{0,4}")


class AsciicastError(ValueError):
    """A recording that is not valid asciicast v2; the message names the line."""


@dataclass(frozen=True)
class Header:
    width: int
    height: int
    timestamp: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    title: str | None = None
    command: str | None = None
    idle_time_limit: float | None = None
    duration: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": VERSION, "width": self.width, "height": self.height}
        for key in ("timestamp", "duration", "idle_time_limit", "command", "title"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.env:
            out["env"] = dict(self.env)
        return out


@dataclass(frozen=True)
class Event:
    time: float
    code: str
    data: str


@dataclass(frozen=True)
class Recording:
    header: Header
    events: list[Event]

    def text(self, code: str = "o") -> str:
        """Every event of `code` joined: what the terminal showed (`o`) or was typed (`i`)."""
        return "".join(e.data for e in self.events if e.code == code)


def _line(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": ")).encode("utf-8") + b"\n"


class Encoder:
    """Lines of one recording. `header()` first, then events with times in seconds since
    the start (a time before the previous event's is written as that one's: the format
    requires them in order), `finish()` last: it writes what the decoders still hold."""

    def __init__(self, header: Header) -> None:
        if header.width <= 0 or header.height <= 0:
            raise ValueError("an asciicast needs a positive width and height")
        self._header = header
        self._decoders = {code: codecs.getincrementaldecoder("utf-8")("replace")
                          for code in ("o", "i")}
        self._last = 0.0
        self._finished = False

    def header(self) -> bytes:
        return _line(self._header.to_json())

    def _time(self, t: float) -> float:
        if not math.isfinite(t) or t < self._last:
            t = self._last
        self._last = t
        return round(t, 6)

    def _event(self, t: float, code: str, data: str) -> bytes:
        if self._finished:
            raise ValueError("the recording is finished")
        return _line([self._time(t), code, data])

    def output(self, t: float, data: bytes) -> bytes:
        """An `o` event for terminal output (b"" while only part of a character has come)."""
        return self._stream(t, "o", data)

    def input(self, t: float, data: bytes) -> bytes:
        """An `i` event for what the user typed."""
        return self._stream(t, "i", data)

    def _stream(self, t: float, code: str, data: bytes) -> bytes:
        text = self._decoders[code].decode(data)
        return self._event(t, code, text) if text else b""

    def resize(self, t: float, width: int, height: int) -> bytes:
        return self._event(t, "r", f"{width}x{height}")

    def marker(self, t: float, label: str) -> bytes:
        return self._event(t, "m", label)

    def finish(self, t: float) -> bytes:
        """The characters left incomplete at the end (as U+FFFD), and no more events."""
        out = b""
        for code, decoder in self._decoders.items():
            tail = decoder.decode(b"", final=True)
            if tail:
                out += self._event(t, code, tail)
        self._finished = True
        return out


def _header(value: Any) -> Header:
    if not isinstance(value, dict):
        raise AsciicastError("line 1: the header must be a JSON object")
    if value.get("version") != VERSION:
        raise AsciicastError(f"line 1: version {value.get('version')!r} is not asciicast v2")
    width, height = value.get("width"), value.get("height")
    for name, size in (("width", width), ("height", height)):
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise AsciicastError(f"line 1: {name} must be a positive integer")
    assert isinstance(width, int) and isinstance(height, int)
    env = value.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str | None)
                                            for k, v in env.items()):
        raise AsciicastError("line 1: env must map names to strings")
    timestamp = value.get("timestamp")
    if timestamp is not None and (isinstance(timestamp, bool) or
                                  not isinstance(timestamp, int | float)):
        raise AsciicastError("line 1: timestamp must be a number")

    def text(key: str) -> str | None:
        item = value.get(key)
        if item is not None and not isinstance(item, str):
            raise AsciicastError(f"line 1: {key} must be a string")
        return item

    def number(key: str) -> float | None:
        item = value.get(key)
        if item is not None and (isinstance(item, bool) or not isinstance(item, int | float)):
            raise AsciicastError(f"line 1: {key} must be a number")
        return item

    return Header(width=width, height=height,
                  timestamp=int(timestamp) if timestamp is not None else None,
                  env={k: v for k, v in env.items() if v is not None},
                  title=text("title"), command=text("command"),
                  idle_time_limit=number("idle_time_limit"), duration=number("duration"))


def parse(lines: Iterable[str | bytes]) -> Recording:
    """A whole recording, checked: header, events in time order, known codes."""
    header: Header | None = None
    events: list[Event] = []
    last = 0.0
    for number, raw in enumerate(lines, start=1):
        line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise AsciicastError(f"line {number}: not JSON: {exc}") from None
        if header is None:
            header = _header(value)
            continue
        if not (isinstance(value, list) and len(value) == 3):
            raise AsciicastError(f"line {number}: an event is [time, code, data]")
        t, code, data = value
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise AsciicastError(f"line {number}: the time must be a number")
        if t < last:
            raise AsciicastError(f"line {number}: time {t} is before the previous event's")
        if code not in EVENT_CODES or not isinstance(data, str):
            raise AsciicastError(f"line {number}: unknown event {code!r}")
        if code == "r" and not _RESIZE.fullmatch(data):
            raise AsciicastError(f"line {number}: a resize is COLSxROWS, not {data!r}")
        last = float(t)
        events.append(Event(float(t), code, data))
    if header is None:
        raise AsciicastError("empty recording: no header")
    return Recording(header, events)


def parse_bytes(data: bytes) -> Recording:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AsciicastError(f"not UTF-8 at byte {exc.start}") from None
    return parse(text.split("\n"))


_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def plain_text(data: str) -> str:
    """Terminal output as plain text: escape sequences and control characters dropped,
    CR LF as LF (for a readable transcript, not a faithful replay)."""
    text = _ESCAPES.sub("", data).replace("\r\n", "\n")
    return _CONTROL.sub("", text.replace("\r", "\n"))
