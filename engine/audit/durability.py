"""How durable a committed record is before its caller goes on: `fsync` (default) or `os`.

- `fsync`: a commit returns once its record is on stable storage (SQLite `synchronous=FULL`,
  PostgreSQL `synchronous_commit=on`, the JSON-lines file's `fdatasync`). It survives a power
  loss.
- `os`: a commit returns once its record is written to the operating system (SQLite's WAL
  file, PostgreSQL's server, the file's page cache), so it survives a kill -9 of the writing
  process but not a power loss or kernel crash; `DelayedSync` then makes it durable within
  `OS_SYNC_DELAY` (plus the time of the sync itself), one sync for everything written
  meanwhile. A sync that fails makes the writer refuse further records (fail closed).

Owns only that timing; what "sync" means is the trail's (`AuditLog._sync_os_writes`,
`JsonLinesTrail`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

log = logging.getLogger("ordinance.audit.durability")

Durability = Literal["fsync", "os"]
DURABILITIES: tuple[Durability, ...] = ("fsync", "os")
OS_SYNC_DELAY = 0.010
"""Seconds a record written with `os` durability may wait for its sync (beyond the sync's own
duration)."""


def check_durability(value: str) -> Durability:
    if value not in DURABILITIES:
        raise ValueError(f"audit durability must be one of {', '.join(DURABILITIES)}, "
                         f"not {value!r}")
    return value  # type: ignore[return-value]


class DelayedSync:
    """Calls `sync` on its own thread at most `delay` seconds after `written()` was called.

    `broken` is the last sync's error (None once one succeeds); `close()` syncs what is left
    and stops the thread."""

    def __init__(self, sync: Callable[[], None], *, delay: float = OS_SYNC_DELAY,
                 name: str = "audit-sync") -> None:
        self._sync = sync
        self.delay = delay
        self.broken: str | None = None
        self.syncs = 0
        self._dirty = threading.Event()
        self._closed = False
        self._lock = threading.Lock()  # one sync at a time (the thread's or close()'s)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def written(self) -> None:
        """Something reached the OS that must be synced within `delay`."""
        self._dirty.set()

    def _run(self) -> None:
        while not self._closed:
            self._dirty.wait()
            if self._closed:
                return
            time.sleep(self.delay)  # what is written meanwhile shares this sync
            self._dirty.clear()  # (close() may have set it: hence the loop's own test)
            self.sync_now()

    def sync_now(self) -> None:
        with self._lock:
            try:
                self._sync()
            except Exception as exc:
                if self.broken is None:
                    log.error("audit sync failed; refusing records until one succeeds: %s",
                              exc)
                self.broken = f"{type(exc).__name__}: {exc}"
                self._dirty.set()  # try again after the next delay
                return
            self.syncs += 1
            if self.broken is not None:
                log.warning("audit sync recovered")
                self.broken = None

    def close(self, timeout: float = 10.0) -> None:
        """Sync what was written, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._dirty.set()
        self._thread.join(timeout)
        self.sync_now()
