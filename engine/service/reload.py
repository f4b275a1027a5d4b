"""Live reload: watch the policy directory, compile changes off the hot path, swap atomically.

`PolicyWatcher` polls a fingerprint of the directory (relative path, size, mtime of every
file) every `interval` seconds; no extra dependency, works on every filesystem, including
ConfigMap volumes whose symlinks are swapped. When the fingerprint changes and has settled,
the whole directory is compiled in the watcher's thread with `load_policy_set`; requests keep
being served by the current set meanwhile. A set that compiles is handed to `on_loaded` (the
runtime swaps it into the engine); a set that does not is handed to `on_rejected` with its
`file:line: message` errors, and the previous set keeps serving. Fail closed: nothing here
ever swaps in a partially loaded set.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith(("~", ".swp", ".swx", ".tmp"))


def fingerprint(directory: Path) -> Fingerprint:
    """(relative path, size, mtime_ns) of every visible file under `directory`, sorted.

    A bundle file (`.tar.gz`) instead of a directory is its own single entry."""
    entries: list[tuple[str, int, int]] = []
    if directory.is_file():
        st = directory.stat()
        return ((directory.name, st.st_size, st.st_mtime_ns),)
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not _ignored(d))
        for name in files:
            if _ignored(name):
                continue
            path = Path(root) / name
            try:
                st = path.stat()
            except OSError:  # vanished between listing and stat: the next poll sees it
                continue
            entries.append((str(path.relative_to(directory)), st.st_size, st.st_mtime_ns))
    entries.sort()
    return tuple(entries)


def _default_loader(directory: Path) -> Any:
    from engine.policy import load_policy_set

    return load_policy_set(str(directory))


def load_errors(exc: BaseException, directory: Path) -> list[str]:
    """`file:line: message` lines for a failed load."""
    errors = getattr(exc, "errors", None)
    if errors:
        return [str(e) for e in errors]
    return [f"{directory}: {type(exc).__name__}: {exc}"]


class PolicyWatcher:
    """Polls `directory`; calls `on_loaded(policy_set)` or `on_rejected(errors)` on change."""

    def __init__(self, directory: str | os.PathLike[str], *,
                 on_loaded: Callable[[Any], None],
                 on_rejected: Callable[[list[str]], None],
                 interval: float = 1.0,
                 loader: Callable[[Path], Any] = _default_loader) -> None:
        self.directory = Path(directory)
        self.interval = interval
        self._on_loaded = on_loaded
        self._on_rejected = on_rejected
        self._loader = loader
        self._seen: Fingerprint | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _fingerprint(self) -> Fingerprint:
        try:
            return fingerprint(self.directory)
        except OSError:
            return ()

    def load_now(self) -> bool:
        """Compile the directory as it is now; True when a set was handed to `on_loaded`."""
        self._seen = self._fingerprint()
        try:
            policy_set = self._loader(self.directory)
        except Exception as exc:  # a broken change must never take the service down
            errors = load_errors(exc, self.directory)
            log.error("policy load rejected (%d error(s)); previous policy set keeps "
                      "serving:\n  %s", len(errors), "\n  ".join(errors))
            self._on_rejected(errors)
            return False
        self._on_loaded(policy_set)
        return True

    def poll_once(self) -> bool | None:
        """Reload if the directory changed; None when nothing changed."""
        current = self._fingerprint()
        if current == self._seen:
            return None
        # Let a multi-file write (git checkout, editor save) settle before compiling.
        for _ in range(20):
            time.sleep(min(0.05, self.interval / 4))
            again = self._fingerprint()
            if again == current:
                break
            current = again
        return self.load_now()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="policy-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll_once()
            except Exception:  # keep watching whatever happens
                log.exception("policy watcher poll failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
