"""A whole policy set read from a directory that may be changing, or no set at all.

`take_snapshot(path)` reads every file the loader would read into memory and returns a
`PolicySnapshot` only when that content is one complete set; otherwise it raises `NotSettled`
(try again later) or `ManifestMismatch` (the set does not match its `.manifest`). What is
compiled is exactly the bytes checked here: nothing is read from disk twice.

The rules, each closing one way of catching a set half-written:

1. **Atomic switch.** The path is resolved through its symlinks once (git-sync's `--link`,
   any symlinked directory) and so is a Kubernetes ConfigMap volume's `..data` link; the
   resolved directory is read, and the read is discarded if the link moved meanwhile. A
   bundle archive is read through one open file, so a bundle replaced by rename is read whole
   (an archive cut short fails its gzip/tar framing and is rejected).
2. **Stable over the read.** Every file's (size, mtime, ctime, inode) is the same before and
   after its content is read and when the whole tree is listed again at the end.
3. **No writer.** A file some process holds open for writing is not read (Linux: a read lease
   cannot be taken on such a file; `writer_check="unavailable"` where the kernel refuses the
   lease, e.g. to a process that does not own the file).
4. **Complete.** With a `.manifest` listing `files` (relative path -> `sha256:` hex), the set
   must be exactly those files with those hashes. Without one, nothing in the set may have
   changed in the last `settle` seconds (ctime, which no one can set back, and mtime of every
   file and directory), so a copy of several files or a writer that pauses with the file
   closed is waited for.

`confirm(snapshot)` reads the set again and tells whether it is still the same (the watcher
calls it after compiling, before swapping). It must not compile or decide anything.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.policy.loader import (
    MAX_POLICY_FILE_BYTES,
    PolicySource,
    policy_file_names,
    read_policy_files,
)

MANIFEST = ".manifest"
CONFIGMAP_LINK = "..data"
DEFAULT_SETTLE_SECONDS = 1.0

FileState = tuple[int, int, int, int]
"""(size, mtime_ns, ctime_ns, inode)."""


class NotSettled(Exception):
    """The set is being changed right now; reading it again later may succeed."""


class ManifestMismatch(Exception):
    """The files do not match the set's `.manifest` (`errors` name each difference)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class PolicySnapshot:
    """One complete policy set as read: `files` (relative path, content) in load order."""

    path: str
    """What was asked for."""
    root: str
    """What was read: `path` resolved through its atomic switch, if any."""
    files: tuple[tuple[str, bytes | OSError], ...]
    """Content, or the error reading it (reported by the loader)."""
    states: tuple[tuple[str, FileState], ...]
    manifest_revision: str | None
    writer_check: str
    """"lease" (no file was open for writing) or "unavailable" (could not be checked)."""

    def source(self) -> PolicySource:
        return read_policy_files(self.root, list(self.files))


def resolve_switch(path: str) -> str:
    """The directory (or bundle) to read: `path` through its symlinks, and into `..data` when
    it is a ConfigMap volume."""
    root = os.path.realpath(path)
    link = os.path.join(root, CONFIGMAP_LINK)
    if os.path.islink(link):
        root = os.path.realpath(link)
    return root


def _state(st: os.stat_result) -> FileState:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _open_for_writing(fd: int) -> bool | None:
    """Whether any process holds the file open for writing; None when the kernel cannot tell
    us (not the file's owner, or a filesystem without leases).

    A read lease is refused with EAGAIN while a writable descriptor exists. It is released at
    once; a writer opening in that instant would break it, so its notice is redirected from
    SIGIO (which would end the process) to SIGURG, whose default is to be ignored."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return True
        return None
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


def _read_stable(path: str, expected: FileState) -> tuple[bytes, bool | None]:
    """The file's content, read while it did not change; (content, open_for_writing)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or _state(st) != expected:
            raise NotSettled(f"{path} changed while being read")
        writing = _open_for_writing(fd)
        if writing:
            raise NotSettled(f"{path} is open for writing")
        if st.st_size > MAX_POLICY_FILE_BYTES:
            raise OSError(errno.EFBIG, f"larger than {MAX_POLICY_FILE_BYTES} bytes")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        if _state(os.fstat(fd)) != expected:
            raise NotSettled(f"{path} changed while being read")
        return b"".join(chunks), writing
    finally:
        os.close(fd)


def _list(root: str) -> tuple[list[tuple[str, FileState]], int]:
    """(relative path, state) of every policy file, and the newest change (ns) of any of them
    or of any directory above them."""
    if os.path.isfile(root):
        st = os.stat(root)
        return [("", _state(st))], max(st.st_mtime_ns, st.st_ctime_ns)
    if not os.path.isdir(root):
        raise FileNotFoundError(errno.ENOENT, "no such policy directory", root)
    entries: list[tuple[str, FileState]] = []
    st = os.stat(root)
    newest = max(st.st_mtime_ns, st.st_ctime_ns)
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        with contextlib.suppress(OSError):
            d = os.stat(dirpath)
            newest = max(newest, d.st_mtime_ns, d.st_ctime_ns)
    for rel in policy_file_names(root):
        try:
            st = os.stat(os.path.join(root, rel))
        except OSError as exc:
            raise NotSettled(f"{rel} vanished while being listed") from exc
        entries.append((rel, _state(st)))
        newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
    return entries, newest


def _manifest(root: str) -> dict[str, Any] | None:
    path = os.path.join(root, MANIFEST)
    if os.path.isfile(root) or not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError) as exc:
        raise ManifestMismatch([f"{path}: unreadable manifest ({exc})"]) from exc
    if not isinstance(doc, dict):
        raise ManifestMismatch([f"{path}: a manifest must be a JSON object"])
    return doc


def _check_manifest(root: str, doc: dict[str, Any],
                    files: list[tuple[str, bytes | OSError]]) -> None:
    listed = doc.get("files")
    where = os.path.join(root, MANIFEST)
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise ManifestMismatch([f"{where}: `files` must map each policy file's relative path "
                                f"to \"sha256:<hex>\""])
    errors = []
    read = {rel: content for rel, content in files if isinstance(content, bytes)}
    for rel in sorted(set(listed) - set(read)):
        errors.append(f"{where}: {rel} is listed but not present")
    for rel in sorted(set(read) - set(listed)):
        errors.append(f"{where}: {rel} is present but not listed")
    for rel in sorted(set(read) & set(listed)):
        actual = "sha256:" + hashlib.sha256(read[rel]).hexdigest()
        if listed[rel].lower() != actual:
            errors.append(f"{where}: {rel} does not match its hash (being written, or stale "
                          f"manifest)")
    if errors:
        raise ManifestMismatch(errors)


def take_snapshot(path: str, *, settle: float = DEFAULT_SETTLE_SECONDS,
                  clock: Callable[[], int] = time.time_ns) -> PolicySnapshot:
    """The whole set at `path`, or NotSettled / ManifestMismatch (see the module docstring);
    FileNotFoundError when there is no such directory or bundle. A file that cannot be read
    (permissions, too large) is kept as its OSError, for the loader to report."""
    root = resolve_switch(path)
    listed, newest = _list(root)
    manifest = _manifest(root)
    files: list[tuple[str, bytes | OSError]] = []
    checks: set[str] = set()
    for rel, expected in listed:
        full = os.path.join(root, rel) if rel else root
        try:
            content, writing = _read_stable(full, expected)
        except NotSettled:
            raise
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise NotSettled(f"{full} vanished while being read") from exc
            files.append((rel, exc))
            continue
        checks.add("unavailable" if writing is None else "lease")
        files.append((rel, content))
    again, newest_again = _list(root)
    if again != listed or newest_again != newest or resolve_switch(path) != root:
        raise NotSettled(f"{path} changed while being read")
    if manifest is not None and "files" in manifest:
        _check_manifest(root, manifest, files)
    elif settle > 0:
        age = (clock() - newest) / 1e9
        if age < settle:
            raise NotSettled(f"{path} changed {max(age, 0):.2f} s ago; waiting until it has "
                             f"been quiet for {settle:g} s")
    revision = manifest.get("revision") if manifest else None
    return PolicySnapshot(path, root, tuple(files), tuple(listed),
                          str(revision) if revision is not None else None,
                          "unavailable" if "unavailable" in checks else "lease")


def read_source(path: str, *, settle: float = DEFAULT_SETTLE_SECONDS
                ) -> tuple[PolicySnapshot | None, PolicySource]:
    """`take_snapshot` and its parsed source (None and the error for a missing path)."""
    try:
        snapshot = take_snapshot(path, settle=settle)
    except FileNotFoundError:
        return None, PolicySource(errors=[f"{path}: no such policy directory"])
    return snapshot, snapshot.source()


def confirm(snapshot: PolicySnapshot) -> bool:
    """True when the set still reads exactly as `snapshot` (same files, same bytes)."""
    try:
        again = take_snapshot(snapshot.path, settle=0)
    except (NotSettled, ManifestMismatch, OSError):
        return False
    return again.root == snapshot.root and again.files == snapshot.files
