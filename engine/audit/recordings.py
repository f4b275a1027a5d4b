"""Session recordings the trail links to: found in records, read back, checked by hash.

An enforcement point that records a session's bytes (the SSH gateway's interactive shells,
asciicast v2) writes them to a file beside the trail and puts a link in the record of the
request: `recording: {format, path, sha256, bytes}`. The record is in the hash chain, so the
file's SHA-256 is too: a file that was edited, cut or swapped no longer matches its record,
and reading it back says so (`RecordingError`) instead of returning it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.audit.base import AuditError
from engine.audit.chain import AuditRecord

MAX_RECORDING_BYTES = 1 << 30


class RecordingError(AuditError):
    """A linked recording is missing, unreadable, or does not match its record's hash."""


@dataclass(frozen=True)
class RecordingLink:
    seq: int
    """The record that links it."""
    format: str
    path: str
    sha256: str
    bytes: int | None


def link_of(record: AuditRecord) -> RecordingLink | None:
    """The recording a record links to, if any (a malformed link is none)."""
    link = record.payload.get("recording")
    if not isinstance(link, dict):
        return None
    fmt, path, digest = link.get("format"), link.get("path"), link.get("sha256")
    if not (isinstance(fmt, str) and isinstance(path, str) and isinstance(digest, str)):
        return None
    size = link.get("bytes")
    return RecordingLink(record.seq, fmt, path, digest.lower(),
                         size if isinstance(size, int) and not isinstance(size, bool) else None)


def links(records: Iterable[AuditRecord]) -> list[RecordingLink]:
    return [link for link in map(link_of, records) if link is not None]


def read_recording(link: RecordingLink, directory: Path | None = None) -> bytes:
    """The file's bytes, only if they are the ones the record names. With `directory`, the
    file is looked up there by its name (recordings moved or copied for an auditor)."""
    path = Path(link.path)
    if directory is not None:
        path = directory / path.name
    try:
        with path.open("rb") as f:
            data = f.read(MAX_RECORDING_BYTES + 1)
    except OSError as exc:
        raise RecordingError(f"recording of record #{link.seq} cannot be read: {path}: "
                             f"{exc.strerror or exc}") from None
    if len(data) > MAX_RECORDING_BYTES:
        raise RecordingError(f"recording of record #{link.seq} is larger than "
                             f"{MAX_RECORDING_BYTES} bytes: {path}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != link.sha256:
        raise RecordingError(f"recording of record #{link.seq} does not match the trail: {path} "
                             f"has SHA-256 {digest}, the record says {link.sha256} "
                             f"(edited, cut or replaced)")
    return data
