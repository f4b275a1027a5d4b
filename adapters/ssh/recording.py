"""An interactive session's recording: an asciicast v2 file (asciinema's format, encoded by
`adapters.ssh.asciicast`) in the gateway's recordings directory, written as the session runs,
hashed when it ends.

Every byte the user typed (`i` events) and saw (`o` events) is written, card numbers already
masked by the caller (`PanStream`), and every window resize (`r`). `close()` flushes, fsyncs and
returns the file's SHA-256, which the session's `statement` record carries into the hash chain
(`recording: {format, path, sha256, bytes}`): a changed file no longer matches it. The file is
created owner-only, never overwritten, named without a long digit run (the trail masks what
could be a card number, and the record must name the file as it is).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path

from adapters.ssh.asciicast import Encoder, Header


class ShellRecording:
    def __init__(self, directory: Path, session_id: str, *, width: int, height: int,
                 term: str, title: str) -> None:
        directory = directory.resolve()  # the record names the file wherever it is read
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        # `_`, not `-`: the card-number backstop reads digits across `-`, and the session id's
        # last digits with the date could pass for a card number in the record's path
        self.path = directory / f"{session_id}_{stamp}_{secrets.token_hex(4)}.cast"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._start = time.monotonic()
        self.bytes = 0
        self._encoder = Encoder(Header(width=width or 80, height=height or 24,
                                       timestamp=int(time.time()), title=title,
                                       env={"TERM": term} if term else {}))
        self._write(self._encoder.header())

    def _now(self) -> float:
        return time.monotonic() - self._start

    def _write(self, data: bytes) -> None:
        if data:
            self._file.write(data)
            self._hash.update(data)
            self.bytes += len(data)

    def output(self, data: bytes) -> None:
        """What the user saw (already masked)."""
        self._write(self._encoder.output(self._now(), data))

    def input(self, data: bytes) -> None:
        """What the user typed (already masked)."""
        self._write(self._encoder.input(self._now(), data))

    def resize(self, width: int, height: int) -> None:
        self._write(self._encoder.resize(self._now(), width, height))

    def close(self) -> str:
        """Durable; the file's SHA-256 (hex)."""
        self._write(self._encoder.finish(self._now()))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._hash.hexdigest()
