"""Live reload: watch the policy path, compile a whole new set off the hot path, swap atomically.

`PolicyWatcher` polls a cheap fingerprint of the path (where its atomic switch points; size,
mtime, ctime and inode of every policy file and of `.manifest`) every `interval` seconds; no
extra dependency, and it works on every filesystem. On a change it takes a snapshot with
`engine.policy.snapshot.take_snapshot`, which returns only a complete set (atomic switch
followed, content stable over the read, no file open for writing, and a matching `.manifest`
or `settle` quiet seconds): a set still being written is simply tried again at the next poll,
while the current set keeps serving. The snapshot's bytes are compiled in the watcher's
thread; before the result is handed to `on_loaded` the set is read again (`confirm`), so a
change made during the compile is never swapped in under the old content's name. A set that
does not compile, or does not match its manifest, goes to `on_rejected` with `file:line:
message` errors and the previous set keeps serving. Nothing here ever swaps in a partial set.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.policy.snapshot import (
    DEFAULT_SETTLE_SECONDS,
    MANIFEST,
    ManifestMismatch,
    NotSettled,
    PolicySnapshot,
    confirm,
    read_source,
    resolve_switch,
)

log = logging.getLogger(__name__)

Fingerprint = tuple[Any, ...]
WAITING_WARNING_S = 30.0
"""A change that has not settled for this long is logged as a warning (then again as often)."""


def fingerprint(path: Path) -> Fingerprint:
    """Where the path's atomic switch points, and (relative path, size, mtime_ns, ctime_ns,
    inode) of every visible file under it and of its `.manifest`, sorted."""
    root = resolve_switch(str(path))
    entries: list[tuple[str, int, int, int, int]] = []
    if os.path.isfile(root):
        st = os.stat(root)
        return (root, ((os.path.basename(root), st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                        st.st_ino),))
    for dirpath, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith(".") and not (name == MANIFEST and dirpath == root):
                continue
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
            except OSError:  # vanished between listing and stat: the next poll sees it
                continue
            entries.append((os.path.relpath(full, root), st.st_size, st.st_mtime_ns,
                            st.st_ctime_ns, st.st_ino))
    entries.sort()
    return (root, tuple(entries))


def _default_compiler(snapshot: PolicySnapshot | None, source: Any) -> Any:
    from engine.policy import compile_policy_source

    return compile_policy_source(source, snapshot.root if snapshot else "")


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
                 settle: float = DEFAULT_SETTLE_SECONDS,
                 compiler: Callable[[PolicySnapshot | None, Any], Any] = _default_compiler
                 ) -> None:
        self.directory = Path(directory)
        self.interval = interval
        self.settle = settle
        self._on_loaded = on_loaded
        self._on_rejected = on_rejected
        self._compiler = compiler
        self._seen: Fingerprint | None = None
        self._waiting_since: float | None = None
        self._warned_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_unchecked = False

    def _fingerprint(self) -> Fingerprint:
        try:
            return fingerprint(self.directory)
        except OSError:
            return ()

    def load_now(self, wait: float | None = None) -> bool:
        """Compile the set as it is now; True when a set was handed to `on_loaded`. A set
        still being written is waited for up to `wait` seconds (default: `settle` + 5 s)."""
        deadline = time.monotonic() + (self.settle + 5.0 if wait is None else wait)
        while True:
            outcome = self._try_load()
            if outcome is not None:
                return outcome
            if time.monotonic() >= deadline or self._stop.is_set():
                log.warning("policy set in %s did not settle; still watching", self.directory)
                return False
            time.sleep(min(0.1, max(self.settle / 4, 0.01)))

    def _try_load(self) -> bool | None:
        """One attempt: True loaded, False rejected, None not settled (try again)."""
        seen = self._fingerprint()
        try:
            snapshot, source = read_source(str(self.directory), settle=self.settle)
        except NotSettled as exc:
            now = time.monotonic()
            if self._waiting_since is None:
                self._waiting_since = self._warned_at = now
                log.info("policy change not settled yet (%s); the current set keeps serving",
                         exc)
            elif now - self._warned_at >= WAITING_WARNING_S:
                self._warned_at = now
                log.warning("policy change still not settled after %.0f s (%s); the current "
                            "set keeps serving", now - self._waiting_since, exc)
            return None
        except ManifestMismatch as exc:
            return self._reject(seen, exc.errors)
        except OSError as exc:
            return self._reject(seen, [f"{self.directory}: {exc}"])
        try:
            policy_set = self._compiler(snapshot, source)
        except Exception as exc:  # a broken change must never take the service down
            return self._reject(seen, load_errors(exc, self.directory))
        if snapshot is not None and not confirm(snapshot):
            log.info("policy set changed while it was compiled; reading it again")
            return None
        if snapshot is not None and snapshot.writer_check == "unavailable" \
                and not self._warned_unchecked:
            self._warned_unchecked = True
            log.warning("cannot check whether policy files under %s are open for writing "
                        "(not their owner, or no lease support): reloads of a plain "
                        "directory rely on the %g s quiet period; prefer an atomic switch "
                        "or a .manifest (docs/service.md)", self.directory, self.settle)
        self._seen = seen
        self._waiting_since = None
        self._on_loaded(policy_set)
        return True

    def _reject(self, seen: Fingerprint, errors: list[str]) -> bool:
        self._seen = seen
        self._waiting_since = None
        log.error("policy load rejected (%d error(s)); previous policy set keeps "
                  "serving:\n  %s", len(errors), "\n  ".join(errors))
        self._on_rejected(errors)
        return False

    def poll_once(self) -> bool | None:
        """Reload if the directory changed; None when nothing changed or the change has not
        settled yet (the next poll tries again)."""
        if self._waiting_since is None and self._fingerprint() == self._seen:
            return None
        return self._try_load()

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
