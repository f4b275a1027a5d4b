"""Durable audit records with group commit, for any adapter or service.

Owns `AuditRecorder`, which appends the events of every caller to a trail (`AuditLog`, or
anything with its `append_many(events)`, e.g. the decision service's JSON-lines file) with
group commit: events that arrive while a commit is running are committed together in the next
one, so concurrent callers share fsyncs instead of queueing for them. Each caller waits for its
own event's durability and gets `AuditWriteError` when it did not become durable:

- coroutines `await recorder.append(...)` (the PostgreSQL proxy); one writer thread commits
  for them, so no event loop ever blocks on the trail;
- threads call `recorder.append_blocking(...)` (the decision service's gRPC and HTTP
  handlers); the first of them to find no commit running commits everything waiting, its own
  event included, in its own thread (leader/follower: a lone caller pays no hand-over to
  another thread, only the commit, and does not queue its event first), and those arriving
  meanwhile wait and are committed together by the next one.

One lock orders all commits, so both kinds of caller may share a recorder. Must not: decide
anything, or acknowledge an event before the trail has committed it.

Costs, per event: validation, scrubbing and encoding (`prepare_event`) run in `append`, on the
caller's event loop (or thread), so an invalid event is refused at once and the writer thread
holds the GIL only to chain and insert. A loop hands its new events to the writer once per pass (a
`call_soon` scheduled by the first), so the writer wakes once for all the records of the
callbacks that were ready together, instead of waking on the first and waiting for the GIL
while the loop produces the others. Per commit, one `call_soon_threadsafe` per event loop
settles every future of the batch (one wake-up of that loop, not one per event).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from engine.audit.base import AuditWriteError, InvalidAuditEvent, prepare_event

log = logging.getLogger("ordinance.audit.recorder")

MAX_BATCH = 256
DEFAULT_WAIT = 60.0
"""How long `append_blocking` waits for its commit before it gives up (and the caller fails
closed): longer than SQLite's busy timeout and PostgreSQL's connect timeout together."""


class Trail(Protocol):
    """Where the recorder commits: all of `events` durable when it returns, or it raises.
    A trail that also has `commit_many(events)` (`AuditLog`: the same, returning nothing) is
    committed to with that."""

    def append_many(self, events: list[Any]) -> Any: ...


Prepare = Callable[[str, dict[str, Any], str | None, str | None, str | None], Any]
"""Validates and encodes one event for the trail, in the caller's thread; `prepare_event` for
an `AuditLog`."""


class AuditRecorder:
    """`start()`, then `await append(...)` from any event loop or `append_blocking(...)` from
    any thread; `close()` drains and stops. `broken` is the last commit's error (None once a
    commit succeeds again)."""

    def __init__(self, audit: Trail, *, max_batch: int = MAX_BATCH,
                 thread_name: str = "audit-recorder", prepare: Prepare = prepare_event) -> None:
        self.audit = audit
        self.max_batch = max_batch
        self.thread_name = thread_name
        self.broken: str | None = None
        self._prepare = prepare
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        self._waiting: list[_Item] = []  # events of blocked threads, not yet committed
        self._lock = threading.Lock()  # _closed, _pending, _waiting and what reaches the queue
        self._commit_lock = threading.Lock()  # one commit at a time, whoever runs it
        self._thread: threading.Thread | None = None
        self._closed = False
        self.commits = 0
        self.events = 0

    @property
    def backlog(self) -> int:
        """Events waiting for a commit (approximate)."""
        return self._queue.qsize() + len(self._waiting)

    def start(self) -> AuditRecorder:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    async def append(self, kind: str, payload: dict[str, Any], *, subject: str | None = None,
                     session_id: str | None = None, decision_id: str | None = None) -> None:
        """Returns once the event is durable; raises `AuditWriteError` (or
        `InvalidAuditEvent`) when it is not."""
        if self._closed or self._thread is None:
            raise AuditWriteError("the audit recorder is not running")
        event = self._prepare(kind, payload, subject, session_id, decision_id)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._closed:
                raise AuditWriteError("the audit recorder is not running")
            pending = self._pending.get(loop)
            if pending is None:
                pending = self._pending[loop] = []
                loop.call_soon(self._hand_over, loop)
            pending.append((event, loop, future))
        await future

    def append_blocking(self, kind: str, payload: dict[str, Any], *,
                        subject: str | None = None, session_id: str | None = None,
                        decision_id: str | None = None, timeout: float = DEFAULT_WAIT) -> None:
        """`append` for threads: returns once the event is durable; raises `AuditWriteError`
        (or `InvalidAuditEvent`) when it is not, or not within `timeout` seconds."""
        self.append_prepared_blocking(self._prepare(kind, payload, subject, session_id,
                                                    decision_id), timeout=timeout)

    def append_prepared_blocking(self, event: Any, *, timeout: float = DEFAULT_WAIT) -> None:
        """`append_blocking` of an event its caller prepared for the trail (as `prepare`
        would: validated, card numbers masked, encoded)."""
        waiter = _Waiter()
        item = (event, None, waiter)
        if self._commit_lock.acquire(blocking=False):  # no commit running: lead one now
            try:
                with self._lock:
                    if self._closed or self._thread is None:
                        raise AuditWriteError("the audit recorder is not running")
                    batch = self._waiting[:self.max_batch - 1]
                    del self._waiting[:self.max_batch - 1]
                    batch.append(item)
                self._commit(batch)
            finally:
                self._commit_lock.release()
            if waiter.error is not None:
                raise waiter.error
            return
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed or self._thread is None:
                raise AuditWriteError("the audit recorder is not running")
            self._waiting.append(item)
        while not waiter.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._commit_lock.acquire(timeout=remaining):
                raise AuditWriteError(f"the audit trail did not commit within {timeout:g} s")
            try:
                if not waiter.done:  # nobody committed it meanwhile: lead the next commit
                    self._commit_waiting()
            finally:
                self._commit_lock.release()
        if waiter.error is not None:
            raise waiter.error

    def _commit_waiting(self) -> None:
        """Under the commit lock: commit (up to max_batch of) the blocked threads' events."""
        with self._lock:
            batch = self._waiting[:self.max_batch]
            del self._waiting[:self.max_batch]
        if batch:
            self._commit(batch)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """On `loop`, once the callbacks that were ready when the first of them was appended
        have run: queue the events it appended since its last hand-over (the writer wakes
        once for all of them). After close() they are refused: close() handed over the rest."""
        with self._lock:
            items = self._pending.pop(loop, ())
            if not self._closed:
                for item in items:
                    self._queue.put(item)
                return
        for _, _, future in items:
            if isinstance(future, asyncio.Future) and not future.done():
                future.set_exception(AuditWriteError("the audit recorder is closed"))

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued (and appended but not yet handed over), then stop the
        thread."""
        with self._lock:
            running = self._thread is not None and not self._closed
            self._closed = True
            if running:
                for loop in list(self._pending):
                    for item in self._pending.pop(loop):
                        self._queue.put(item)
                self._queue.put(None)
        if running and self._thread is not None:
            self._thread.join(timeout)
            if self._commit_lock.acquire(timeout=timeout):  # blocked threads still waiting
                try:
                    while self._waiting:
                        self._commit_waiting()
                finally:
                    self._commit_lock.release()

    def _run(self) -> None:
        _name_os_thread(self.thread_name)
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            with self._commit_lock:
                self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[Any]) -> None:
        events = [event for event, _, _ in batch]
        try:
            self._append_many(events)
            results: list[BaseException | None] = [None] * len(batch)
            self.commits += 1
            self.events += len(batch)
            self.broken = None
        except InvalidAuditEvent:
            results = [self._one(event) for event in events]  # isolate the bad one
        except Exception as exc:
            log.error("audit append of %d event(s) failed: %s", len(batch), exc)
            error = exc if isinstance(exc, AuditWriteError) else AuditWriteError(str(exc))
            self.broken = f"{type(exc).__name__}: {exc}"
            results = [error] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[_Settlement]] = {}
        for (_, loop, waiter), result in zip(batch, results, strict=True):
            if isinstance(waiter, _Waiter):
                waiter.error = result
                waiter.done = True
            elif loop is not None:
                by_loop.setdefault(loop, []).append((waiter, result))
        for loop, settlements in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, settlements)

    def _append_many(self, events: list[Any]) -> None:
        commit = getattr(self.audit, "commit_many", None)
        (commit or self.audit.append_many)(events)

    def _one(self, event: Any) -> BaseException | None:
        try:
            self._append_many([event])
            self.commits += 1
            self.events += 1
            return None
        except Exception as exc:
            return exc


def _name_os_thread(name: str) -> None:
    """Give the calling thread `name` in the OS too (`top -H`, /proc/PID/task/*/comm), which
    Python before 3.14 does not; benchmarks.load_postgres finds the writer's CPU time by it."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


class _Waiter:
    """A thread blocked in `append_blocking`: `done` once its commit settled (under the commit
    lock, which the thread takes next)."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None


_Item = tuple[Any, "asyncio.AbstractEventLoop | None", "asyncio.Future[None] | _Waiter"]
_Settlement = tuple["asyncio.Future[None]", BaseException | None]


def _settle(settlements: list[_Settlement]) -> None:
    for future, error in settlements:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
