"""Decision ids and the decision log: one record per decision the service makes.

Owns: `new_decision_id()` (ULID: 48-bit millisecond time + 80 bits, Crockford base32,
monotonic within a process, so ids sort by time), the two decision logs and `open_decision_log`,
which picks one. Records go to the audit store (`--audit URL`, `engine.audit`) or an
append-only JSON-lines file (default `./var/decisions.jsonl`). Card numbers are masked with
`engine.masking.scrub_document` before anything is written.

- `DurableDecisionLog` (`--decision-log durable`, the default): `submit()` returns once the
  record is committed (SQLite/PostgreSQL transaction, or `write` + `fdatasync` of the file),
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
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

from engine.service.identity_lru import IdentityLRU

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

    def write(self, records: list[dict[str, Any]]) -> None:
        """Write the batch; on failure raise, leaving in `records` what is still unwritten."""

    def close(self) -> None: ...


class JsonLinesSink:
    """Append-only JSON lines, one `os.write` per batch on an `O_APPEND` descriptor.

    Several worker processes may share the file: Linux serialises `O_APPEND` writes to a
    regular file, so batches do not interleave. Each batch is fsync'ed.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        # fsync a regular file; /dev/null or a pipe (logging switched off or shipped
        # elsewhere) cannot be synced and need not be.
        self._sync = stat.S_ISREG(os.fstat(self._fd).st_mode)

    def write(self, records: list[dict[str, Any]]) -> None:
        self.write_text("".join(json.dumps(r, separators=(",", ":"), default=str) + "\n"
                                for r in records))

    def write_text(self, text: str) -> None:
        """Append `text` and make it durable (`fdatasync`) before returning."""
        view = memoryview(text.encode())
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self._sync:
            os.fdatasync(self._fd)

    def close(self) -> None:
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

    def __init__(self, url: str) -> None:
        from engine.audit import open_audit_log

        self._log = open_audit_log(url)

    def write(self, records: list[dict[str, Any]]) -> None:
        from engine.audit import InvalidAuditEvent

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


def record_subject(record: dict[str, Any]) -> str | None:
    """The `input.subject.id` of a record, when it is a string (the audit trail indexes it)."""
    input_doc = record.get("input")
    subject = input_doc.get("subject") if isinstance(input_doc, dict) else None
    subject_id = subject.get("id") if isinstance(subject, dict) else None
    return subject_id if isinstance(subject_id, str) else None


def slim_record(record: dict[str, Any], why: Exception) -> dict[str, Any]:
    """A record the trail refused (e.g. too large) without its input and result, with the
    reason: its existence is never lost."""
    slim = {k: v for k, v in record.items() if k not in ("input", "result")}
    slim["truncated"] = str(why)
    return slim


def render_record(record: dict[str, Any],
                  scrub: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Timestamp as ISO 8601; a Decision as its result; `scrub` applied to input and result.

    The command facts the engine derived are not logged: they follow from the logged
    input and policy revision, and they triple the record's size and scrub time.
    """
    out = dict(record)
    out["timestamp"] = datetime.fromtimestamp(record["timestamp"], UTC).isoformat()
    decision = out.pop("decision", None)
    if decision is not None:
        # A cached decision's reasons and masks are shared tuples: rendered once (the
        # result is shared too, and read-only like them).
        out["result"] = _results.get((decision.effect, decision.reasons, decision.masks),
                                     partial(_result, decision), keep=decision.cached)
        out["policy_revision"] = decision.policy_revision
        out["eval_ns"] = decision.eval_ns
        out["cached"] = decision.cached
    if scrub is not None:
        if "input" in out:
            out["input"] = scrub(out["input"])
        if "result" in out:
            out["result"] = scrub(out["result"])
    return out


_results = IdentityLRU(1024)


def _result(decision: Any) -> dict[str, Any]:
    return {"effect": decision.effect, "reasons": [r.to_dict() for r in decision.reasons],
            "masks": [m.to_dict() for m in decision.masks]}


class JsonLinesTrail:
    """The JSON-lines file as a trail for the group-commit recorder: one `write` and one
    `fdatasync` per commit. Its events are the lines themselves (`prepare`): no hash chain,
    so none of the audit store's encoding."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._file = JsonLinesSink(path)

    @staticmethod
    def prepare(kind: str, payload: dict[str, Any], subject: str | None,
                session_id: str | None, decision_id: str | None) -> str:
        """The record as one JSON line, card numbers masked; InvalidAuditEvent when it is not
        JSON (NaN, a cycle)."""
        from engine.audit import InvalidAuditEvent
        from engine.masking import may_hold_pan, scrub_document

        try:
            text = _LINE.encode(payload)
            if may_hold_pan(text):
                text = _LINE.encode(scrub_document(payload))
        except (ValueError, RecursionError) as exc:
            raise InvalidAuditEvent(f"record is not JSON: {exc}") from exc
        return text

    def append_many(self, lines: list[str]) -> None:
        self._file.write_text("\n".join(lines) + "\n")

    def close(self) -> None:
        self._file.close()


_LINE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                         default=str)


def open_sink(audit_url: str | None, path: str | os.PathLike[str] | None) -> DecisionSink:
    """The audit store when a URL is given, else the JSON-lines file (default var/)."""
    if audit_url:
        return AuditSink(audit_url)
    return JsonLinesSink(path or Path("var") / "decisions.jsonl")


def _default_scrub() -> Callable[[Any], Any]:
    from engine.masking import scrub_document

    return scrub_document


class DecisionLog:
    """Bounded queue + one writer thread. `submit()` never blocks and never raises.

    The hot path is a `deque.append` (atomic, no lock, no wake-up); the writer polls every
    `poll_interval` seconds when idle, so a record reaches the sink within a few
    milliseconds without the request thread paying for a notification.
    """

    def __init__(self, sink: DecisionSink, *, max_queue: int = 10_000, max_batch: int = 512,
                 scrub: Callable[[Any], Any] | None = None, retry_interval: float = 0.5,
                 poll_interval: float = 0.005,
                 on_batch: Callable[[int, bool], None] | None = None) -> None:
        self._sink = sink
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._scrub = scrub if scrub is not None else _default_scrub()
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

    def _prepare(self, record: dict[str, Any]) -> dict[str, Any]:
        return render_record(record, self._scrub)

    def _take_batch(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        while self._queue and len(batch) < self._max_batch:
            record = self._queue.popleft()
            try:
                batch.append(self._prepare(record))
            except Exception as exc:  # never lose the record's existence
                log.exception("cannot render decision record %s", record.get("decision_id"))
                batch.append({"decision_id": record.get("decision_id"),
                              "kind": record.get("kind"), "unrenderable": repr(exc)})
        return batch

    def _run(self) -> None:
        pending: list[dict[str, Any]] = []
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

    def __init__(self, trail: Any, *, prepare: Callable[..., Any] | None = None,
                 on_batch: Callable[[int, bool], None] | None = None) -> None:
        """`prepare`: how the recorder encodes a record for `trail` (default: the audit
        store's `prepare_event`)."""
        from engine.audit import prepare_event
        from engine.audit.recorder import AuditRecorder

        self._trail = trail
        self._on_batch = on_batch
        self._recorder = AuditRecorder(trail, thread_name="decision-log",
                                       prepare=prepare or prepare_event).start()

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
        from engine.audit import AuditError, InvalidAuditEvent

        rendered = render_record(record)  # prepare_event scrubs every field
        decision_id = rendered.get("decision_id")
        try:
            try:
                self._recorder.append_blocking(RECORD_KIND, rendered, decision_id=decision_id,
                                               subject=record_subject(rendered))
            except InvalidAuditEvent as exc:
                self._recorder.append_blocking(RECORD_KIND, slim_record(rendered, exc),
                                               decision_id=decision_id)
        except AuditError as exc:
            log.error("decision %s not recorded: %s", decision_id, exc)
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
                      on_batch: Callable[[int, bool], None] | None = None) -> DecisionLogger:
    """The decision log of `mode` on the audit store at `audit_url`, else the JSON-lines file
    at `path` (default var/decisions.jsonl)."""
    if mode == "async":
        return DecisionLog(open_sink(audit_url, path), on_batch=on_batch)
    if mode != "durable":
        raise ValueError(f"decision log mode must be one of {LOG_MODES}, not {mode!r}")
    if audit_url:
        from engine.audit import open_audit_log

        return DurableDecisionLog(open_audit_log(audit_url), on_batch=on_batch)
    trail = JsonLinesTrail(path or Path("var") / "decisions.jsonl")
    return DurableDecisionLog(trail, prepare=trail.prepare, on_batch=on_batch)
