"""An interactive session's recording: an asciicast v2 file (asciinema's format) in the
gateway's recordings directory, written as the session runs, hashed when it ends.

Every byte the user typed (`i` events) and saw (`o` events) is written, card numbers already
masked by the caller (`PanStream`). UTF-8 split across chunks is decoded incrementally
(invalid bytes become U+FFFD, as asciinema does). `close()` flushes, fsyncs and returns the
file's SHA-256, which the command record carries into the hash chain (a changed file no
longer matches it). The file is created owner-only and never overwritten.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any


class ShellRecording:
    def __init__(self, directory: Path, session_id: str, *, width: int, height: int,
                 term: str, title: str) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = directory / f"{session_id}-{time.time_ns()}.cast"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._start = time.monotonic()
        self._decoders = {kind: codecs.getincrementaldecoder("utf-8")("replace")
                          for kind in ("i", "o")}
        self.bytes = 0
        self._line({"version": 2, "width": width or 80, "height": height or 24,
                    "timestamp": int(time.time()), "title": title,
                    "env": {"TERM": term or "", "SHELL": ""}})

    def _line(self, value: Any) -> None:
        data = json.dumps(value, ensure_ascii=False).encode("utf-8") + b"\n"
        self._file.write(data)
        self._hash.update(data)
        self.bytes += len(data)

    def event(self, kind: str, data: bytes) -> None:
        """`kind` "o" (output) or "i" (input); `data` already masked."""
        text = self._decoders[kind].decode(data)
        if text:
            self._line([round(time.monotonic() - self._start, 6), kind, text])

    def resize(self, width: int, height: int) -> None:
        self._line([round(time.monotonic() - self._start, 6), "r", f"{width}x{height}"])

    def close(self) -> str:
        """Durable; the file's SHA-256 (hex)."""
        for kind, decoder in self._decoders.items():
            tail = decoder.decode(b"", final=True)
            if tail:
                self._line([round(time.monotonic() - self._start, 6), kind, tail])
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._hash.hexdigest()
