"""Decision ids and the decision log: one record per decision the service makes.

Owns: `new_decision_id()` (ULID: 48-bit millisecond time + 80 bits, Crockford base32,
monotonic within a process, so ids sort by time), the two decision logs and `open_decision_log`,
which picks one. Records go to the audit store (`--audit URL`, `engine.audit`) or an
append-only JSON-lines file (default `./var/decisions.jsonl`), as each sink prepares them
(`engine.service.decision_record`: the file's lines by `encode_line`, the store's events by
`prepare_event`). Card numbers are masked (`engine.masking`) before anything is written; the
commits are as durable as `--audit-durability` says (`engine.audit.durability`).

- `DurableDecisionLog` (`--decision-log durable`, the default): `submit()` returns once the
  record is committed (SQLite/PostgreSQL transaction, or an `O_DSYNC` `write` of the file),
  through the group-commit `engine.audit.recorder.AuditRecorder` the PostgreSQL proxy uses:
  concurrent decisions share one commit. An answer never leaves before its record is durable.
- `DecisionLog` (`--decision-log async`): `submit()` queues the record and a writer thread
  batches it out later. Records accepted but not yet written (at most one queue's worth,
  normally a few milliseconds of traffic) are lost if the process is killed; `close()` drains
  the queue on an orderly shutdown.

Fail closed, both: `submit()` returns False when the record will not be written (durable: the
commit failed; async: the bounded queue is full or the sink is failing); the caller must then
deny (the service turns such a decision into a deny or an error). A decision we cannot record
is a decision we do not make.

This module must not evaluate policy or import the transports.
"""

from __future__ import annotations

import collections
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from engine.audit import (
    AuditError,
    InvalidAuditEvent,
    PreparedEvent,
    open_audit_log,
    prepare_event,
)
from engine.audit.durability import DelayedSync, Durability, check_durability
from engine.masking import scrub_document
from engine.service.decision_record import (
    LINE_ENCODER,
    encode_line,
    record_subject,
    render_record,
    slim_record,
)

log = logging.getLogger(__name__)

LogMode = Literal["durable", "async"]
LOG_MODES: tuple[LogMode, ...] = ("durable", "async")
RECORD_KIND = "decision"
"""The audit event kind of every decision record."""

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two base32 digits per 10 bits: a 130-bit ULID (2 zero bits + 48 time + 80 random) is 13
# table lookups.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_SHIFTS = tuple(range(120, -10, -10))
_RANDOM_MASK = (1 << 80) - 1
_id_lock = threading.Lock()
_last_ms = -1
_last_rand = 0


_TIME_SHIFTS = tuple(range(120, 70, -10))  # the 10 characters of the time (bits 80-129)
_RANDOM_SHIFTS = tuple(range(70, -10, -10))  # the 16 characters of the random part
_time_text: tuple[int, str] = (-1, "")  # the last millisecond and its 10 characters


def new_decision_id() -> str:
    """A 26-character ULID; ids made later in this process sort after earlier ones."""
    global _last_ms, _last_rand, _time_text
    with _id_lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms <= _last_ms:
            now_ms = _last_ms
            _last_rand = (_last_rand + 1) & _RANDOM_MASK
        else:
            _last_ms = now_ms
            _last_rand = int.from_bytes(os.urandom(10), "big") >> 1
        rand = _last_rand
    ms, prefix = _time_text
    if ms != now_ms:  # the time part changes once a millisecond at most
        value = now_ms << 80
        prefix = "".join([_PAIRS[(value >> shift) & 1023] for shift in _TIME_SHIFTS])
        _time_text = (now_ms, prefix)
    return prefix + "".join([_PAIRS[(rand >> shift) & 1023] for shift in _RANDOM_SHIFTS])


class DecisionSink(Protocol):
    """Where records end up. `write` raises on failure; the batch is then retried."""

    def prepare(self, record: dict[str, Any]) -> Any:
        """The record as `write` takes it (rendered; card numbers masked by here or by the
        sink); never raises."""

    def write(self, records: list[Any]) -> None:
        """Write the batch; on failure raise, leaving in `records` what is still unwritten."""

    def close(self) -> None: ...


class JsonLinesSink:
    """Append-only JSON lines, one `os.write` per batch on an `O_APPEND` descriptor.

    Several worker processes may share the file: Linux serialises `O_APPEND` writes to a
    regular file, so batches do not interleave. Each batch is durable before `write`
    returns (the descriptor is `O_DSYNC`: the write is a `write` + `fdatasync` in one call),
    or with `durability="os"` fdatasync'ed within `OS_SYNC_DELAY` after it (`DelayedSync`).
    """

    def __init__(self, path: str | os.PathLike[str], *, durability: Durability = "fsync"
                 ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        self._fd = os.open(self.path, flags, 0o640)
        # Sync a regular file; /dev/null or a pipe (logging switched off or shipped
        # elsewhere) cannot be synced and need not be.
        regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        os_durability = check_durability(durability) == "os"
        self._later = (DelayedSync(self._fdatasync, name="decision-log-sync")
                       if regular and os_durability else None)
        if regular and not os_durability:
            # O_DSYNC: each `write` returns once its data is durable, as `write` +
            # `fdatasync` would, in one system call (one GIL release instead of two).
            os.close(self._fd)
            self._fd = os.open(self.path, flags | os.O_DSYNC, 0o640)

    @staticmethod
    def prepare(record: dict[str, Any]) -> str:
        return line_event(record)

    def write(self, records: list[str]) -> None:
        """Append the lines `prepare` made."""
        self.write_text("".join([line + "\n" for line in records]))

    def write_text(self, text: str) -> None:
        """Append `text` and make it durable (`O_DSYNC`) before returning; with `os`
        durability, have it synced soon. Raises OSError when it cannot (a failed sync
        included: nothing more is accepted until one succeeds)."""
        if self._later is not None and self._later.broken is not None:
            raise OSError(f"the decision log cannot sync its file: {self._later.broken}")
        view = memoryview(text.encode())
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self._later is not None:
            self._later.written()

    def _fdatasync(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._later is not None:
            self._later.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class AuditSink:
    """Records go to the audit store (`engine.audit.open_audit_log(url)`), kind `decision`.

    The store appends one durable record per call. On a failure the records already written
    are removed from the batch before re-raising, so a retry never duplicates them. A record
    the store refuses as invalid (e.g. too large) is written without its input and result,
    with the reason, rather than blocking the log forever.
    """

    KIND = RECORD_KIND

    def __init__(self, url: str, *, durability: Durability = "fsync") -> None:
        self._log = open_audit_log(url, durability=durability)

    @staticmethod
    def prepare(record: dict[str, Any]) -> dict[str, Any]:
        return render_record(record)  # the trail's prepare_event masks card numbers

    def write(self, records: list[dict[str, Any]]) -> None:
        written = 0
        try:
            for record in records:
                try:
                    self._log.append(self.KIND, record, decision_id=record["decision_id"],
                                     subject=record_subject(record))
                except InvalidAuditEvent as exc:
                    self._log.append(self.KIND, slim_record(record, exc),
                                     decision_id=record["decision_id"])
                written += 1
        finally:
            del records[:written]

    def close(self) -> None:
        self._log.close()


class JsonLinesTrail:
    """The JSON-lines file as a trail for the group-commit recorder: one `O_DSYNC` `write`
    per commit (or the `os` durability's sync). Its events are the lines
    themselves (`line_event`): no hash chain, so none of the audit store's encoding."""

    def __init__(self, path: str | os.PathLike[str], *, durability: Durability = "fsync"
                 ) -> None:
        self._file = JsonLinesSink(path, durability=durability)

    def append_many(self, lines: list[str]) -> None:
        self._file.write_text("\n".join(lines) + "\n")

    def close(self) -> None:
        self._file.close()


def line_event(record: dict[str, Any]) -> str:
    """A decision record as its JSON line for `JsonLinesTrail`, card numbers masked; a
    record that has no JSON form (NaN, a cycle) is logged without its input and result."""
    try:
        return encode_line(record)
    except (ValueError, TypeError, RecursionError) as exc:
        slim = slim_record(render_record(record), exc)
        try:
            return LINE_ENCODER.encode(scrub_document(slim))
        except (ValueError, TypeError, RecursionError) as again:
            raise InvalidAuditEvent(f"record is not JSON: {again}") from again


def audit_event(record: dict[str, Any]) -> PreparedEvent:
    """A decision record as an audit event (`prepare_event` scrubs and encodes it); one the
    trail refuses (too large, not JSON) is logged without its input and result."""
    rendered = render_record(record)
    decision_id = rendered.get("decision_id")
    try:
        return prepare_event(RECORD_KIND, rendered, record_subject(rendered), None,
                             decision_id)
    except InvalidAuditEvent as exc:
        return prepare_event(RECORD_KIND, slim_record(rendered, exc), None, None, decision_id)


def open_sink(audit_url: str | None, path: str | os.PathLike[str] | None,
              durability: Durability = "fsync") -> DecisionSink:
    """The audit store when a URL is given, else the JSON-lines file (default var/)."""
    if audit_url:
        return AuditSink(audit_url, durability=durability)
    return JsonLinesSink(path or Path("var") / "decisions.jsonl", durability=durability)


class DecisionLog:
    """Bounded queue + one writer thread. `submit()` never blocks and never raises.

    The hot path is a `deque.append` (atomic, no lock, no wake-up); the writer polls every
    `poll_interval` seconds when idle, so a record reaches the sink within a few
    milliseconds without the request thread paying for a notification.
    """

    def __init__(self, sink: DecisionSink, *, max_queue: int = 10_000, max_batch: int = 512,
                 retry_interval: float = 0.5,
                 poll_interval: float = 0.005,
                 on_batch: Callable[[int, bool], None] | None = None) -> None:
        self._sink = sink
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._retry_interval = retry_interval
        self._poll_interval = poll_interval
        self._on_batch = on_batch
        self._broken: str | None = None
        self._closed = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    @property
    def broken(self) -> str | None:
        """Why the sink is failing, or None when it is writing."""
        return self._broken

    @property
    def backlog(self) -> int:
        """Records accepted and not yet handed to the sink."""
        return len(self._queue)

    def submit(self, record: dict[str, Any]) -> bool:
        """Queue a record; False means it will not be recorded and the decision must deny."""
        if self._broken is not None or self._closed or len(self._queue) >= self._max_queue:
            return False
        self._queue.append(record)
        return True

    def _take_batch(self) -> list[Any]:
        batch: list[Any] = []
        while self._queue and len(batch) < self._max_batch:
            record = self._queue.popleft()
            try:
                batch.append(self._sink.prepare(record))
            except Exception as exc:  # never lose the record's existence
                log.exception("cannot render decision record %s", record.get("decision_id"))
                batch.append(self._sink.prepare({
                    "decision_id": record.get("decision_id"), "timestamp": time.time(),
                    "kind": record.get("kind"), "unrenderable": repr(exc)}))
        return batch

    def _run(self) -> None:
        pending: list[Any] = []
        while True:
            if not pending:
                pending = self._take_batch()
                if not pending:
                    if self._closed:
                        return
                    self._wake.wait(self._poll_interval)
                    continue
            try:
                self._sink.write(pending)
            except Exception as exc:  # any sink failure: stop accepting, retry the batch
                if self._broken is None:
                    log.error("decision log write failed, denying until it recovers: %s", exc)
                self._broken = f"{type(exc).__name__}: {exc}"
                if self._on_batch:
                    self._on_batch(len(pending), False)
                if self._closed:
                    log.error("decision log still failing at shutdown; %d record(s) not "
                              "written", len(pending) + len(self._queue))
                    return
                self._wake.wait(self._retry_interval)
                continue
            if self._broken is not None:
                log.warning("decision log recovered")
                self._broken = None
            if self._on_batch:
                self._on_batch(len(pending), True)
            pending = []

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then close the sink."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("decision log writer did not finish in %.0f s", timeout)
        self._sink.close()


class DurableDecisionLog:
    """`submit()` blocks until the record is committed to `trail` (group commit with the
    other callers of this process), so the answer it belongs to can leave."""

    def __init__(self, trail: Any, *, encode: Callable[[dict[str, Any]], Any],
                 on_batch: Callable[[int, bool], None] | None = None) -> None:
        """`encode`: a decision record as the event `trail` stores (`audit_event` for the
        audit store, `line_event` for the JSON-lines file), validated and card numbers
        masked, in the caller's thread."""
        from engine.audit.recorder import AuditRecorder

        self._trail = trail
        self._encode = encode
        self._on_batch = on_batch
        self._recorder = AuditRecorder(trail, thread_name="decision-log").start()

    @property
    def broken(self) -> str | None:
        """Why the last commit failed, or None when the last commit succeeded."""
        return self._recorder.broken

    @property
    def backlog(self) -> int:
        """Records waiting for a commit."""
        return self._recorder.backlog

    def submit(self, record: dict[str, Any]) -> bool:
        """True once the record is durable; False when it is not (the decision must deny)."""
        try:
            self._recorder.append_prepared_blocking(self._encode(record))
        except AuditError as exc:
            log.error("decision %s not recorded: %s", record.get("decision_id"), exc)
            if self._on_batch:
                self._on_batch(1, False)
            return False
        if self._on_batch:
            self._on_batch(1, True)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is waiting, then close the trail."""
        self._recorder.close(timeout)
        self._trail.close()


DecisionLogger = DecisionLog | DurableDecisionLog


def open_decision_log(audit_url: str | None, path: str | os.PathLike[str] | None,
                      mode: LogMode = "durable",
                      on_batch: Callable[[int, bool], None] | None = None,
                      durability: Durability = "fsync") -> DecisionLogger:
    """The decision log of `mode` on the audit store at `audit_url`, else the JSON-lines file
    at `path` (default var/decisions.jsonl), its commits as durable as `durability` says."""
    if mode == "async":
        return DecisionLog(open_sink(audit_url, path, durability), on_batch=on_batch)
    if mode != "durable":
        raise ValueError(f"decision log mode must be one of {LOG_MODES}, not {mode!r}")
    if audit_url:
        return DurableDecisionLog(open_audit_log(audit_url, durability=durability),
                                  encode=audit_event, on_batch=on_batch)
    trail = JsonLinesTrail(path or Path("var") / "decisions.jsonl", durability=durability)
    return DurableDecisionLog(trail, encode=line_event, on_batch=on_batch)
