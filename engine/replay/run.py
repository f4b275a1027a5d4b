"""Running a replay: stream the trail, rebuild each in-scope record, decide it on both sides,
compare, report. Memory stays bounded: records are read a page at a time, sessions and
decisions sit in bounded LRUs, and the report keeps counts and a few examples.

A decision recorded twice (a statement record of a proxy that asked the decision service, and
that service's decision record; or a portal's several results) is replayed once: a record
whose decision id was seen in scope within the last `DEDUPE_WINDOW` seqs is a duplicate.
`--jobs N` splits the seq range into N parts replayed by N processes, each first reading the
`DEDUPE_WINDOW` seqs before its part for decision ids, so the result is the one a single
process gives.
"""

from __future__ import annotations

import multiprocessing
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.audit import AuditError, AuditLog, AuditRecord, open_audit_log
from engine.audit.stores import driver_errors
from engine.errors import PolicySetError
from engine.policy import load_policy_set
from engine.replay.records import KINDS, Item, Sessions, decision_item, statement_item
from engine.replay.report import ReplayReport
from engine.replay.sides import PolicySide, RecordedSide, Unreplayable
from engine.replay.verdict import compare

DEDUPE_WINDOW = 200_000


class ReplayError(Exception):
    """The trail or a policy set cannot be used (exit 2)."""


@dataclass(frozen=True)
class ReplayOptions:
    audit_url: str
    policies: str
    baseline: str | None = None
    """A policy directory, or None to compare with the recorded decisions."""
    baseline_revision: str | None = None
    """With no `baseline`: only records recorded under this revision."""
    since: datetime | None = None
    until: datetime | None = None
    resource: str | None = None
    kinds: tuple[str, ...] = KINDS
    limit: int | None = None
    jobs: int = 1


def _load(root: str, label: str) -> Any:
    try:
        return load_policy_set(root)
    except PolicySetError as exc:
        raise ReplayError(f"the {label} policy set {root} has {len(exc.errors)} error(s):\n"
                          + "\n".join(exc.errors)) from exc


def open_trail(url: str) -> AuditLog:
    try:
        return open_audit_log(url, create=False)
    except AuditError as exc:
        raise ReplayError(str(exc)) from exc


def _in_scope(rec: AuditRecord, options: ReplayOptions) -> bool:
    """The record's kind and resource are asked for (checked without rebuilding it)."""
    if rec.kind not in options.kinds:
        return False
    if options.resource is None:
        return True
    if rec.kind == "statement":
        resource = rec.payload.get("resource")
    else:
        doc = rec.payload.get("input")
        found = doc.get("resource") if isinstance(doc, dict) else None
        resource = found.get("name") if isinstance(found, dict) else None
    return bool(resource == options.resource)


class _Window:
    """Decision ids seen in the last `DEDUPE_WINDOW` seqs."""

    def __init__(self) -> None:
        self._ids: OrderedDict[str, int] = OrderedDict()

    def seen(self, decision_id: str, seq: int) -> bool:
        ids = self._ids
        while ids:
            if next(iter(ids.values())) >= seq - DEDUPE_WINDOW:
                break
            ids.popitem(last=False)
        if decision_id in ids:
            return True
        ids[decision_id] = seq
        return False


class Replayer:
    """One process's replay of a seq range."""

    def __init__(self, options: ReplayOptions) -> None:
        self.options = options
        self.proposed = PolicySide(_load(options.policies, "proposed"), "proposed")
        self.baseline: PolicySide | RecordedSide = (
            PolicySide(_load(options.baseline, "baseline"), "baseline")
            if options.baseline else RecordedSide(options.baseline_revision))

    def _records(self, log: AuditLog, after: int, through: int | None,
                 limit: int | None = None) -> Iterator[AuditRecord]:
        o = self.options
        for rec in log.iter_records(since=o.since, until=o.until, after_seq=after,
                                    limit=limit):
            if through is not None and rec.seq > through:
                return
            yield rec

    def run(self, after: int = 0, through: int | None = None) -> ReplayReport:
        """Replay the records with `after < seq <= through` (all when `through` is None)."""
        options = self.options
        report = ReplayReport()
        log = open_trail(options.audit_url)
        unreadable: tuple[type[BaseException], ...] = (AuditError,
                                                        *driver_errors(log.store.dialect))
        try:
            self._run(log, report, after, through)
        except unreadable as exc:
            raise ReplayError(f"the trail could not be read: {exc}") from exc
        finally:
            log.close()
        return report

    def _run(self, log: AuditLog, report: ReplayReport, after: int, through: int | None
             ) -> None:
        options = self.options
        sessions = Sessions(log)
        window = _Window()
        if after > 0:
            for rec in self._records(log, max(0, after - DEDUPE_WINDOW), after):
                if rec.decision_id and _in_scope(rec, options):
                    window.seen(rec.decision_id, rec.seq)
        taken = 0
        for rec in self._records(log, after, through):
            if rec.kind == "session.start":
                sessions.add(rec)
                continue
            if not _in_scope(rec, options):
                continue
            if options.limit is not None and taken >= options.limit:
                break
            taken += 1
            item = (statement_item(rec, sessions) if rec.kind == "statement"
                    else decision_item(rec))
            report.seen(item)
            if rec.decision_id and window.seen(rec.decision_id, rec.seq):
                report.duplicate()
                continue
            self._replay(item, report)

    def _replay(self, item: Item, report: ReplayReport) -> None:
        if item.skip is not None or item.input is None:
            report.skipped(item, Unreplayable(item.skip or "the record holds no input"))
            return
        before = self.baseline.verdict(item)
        if isinstance(before, Unreplayable):
            report.skipped(item, before)
            return
        after = self.proposed.verdict(item)
        if isinstance(after, Unreplayable):
            report.skipped(item, after)
            return
        change = compare(before, after, item.query_path)
        if change is None:
            report.unchanged()
        else:
            report.changed(item, change, before, after)


_worker: Replayer | None = None


def _init_worker(options: ReplayOptions) -> None:
    global _worker
    _worker = Replayer(options)


def _run_part(bounds: tuple[int, int]) -> ReplayReport:
    assert _worker is not None
    return _worker.run(*bounds)


def replay(options: ReplayOptions) -> ReplayReport:
    """The whole replay; raises ReplayError when the trail or a policy set is unusable."""
    replayer = Replayer(options)  # loads (and checks) the policy sets before any reading
    if options.jobs <= 1:
        return replayer.run()
    if options.limit is not None:
        raise ReplayError("--limit counts records in trail order: it cannot be combined "
                          "with --jobs")
    log = open_trail(options.audit_url)
    try:
        first = next(iter(log.iter_records(since=options.since, until=options.until,
                                           limit=1)), None)
        last = log.last_seq()
    finally:
        log.close()
    if first is None:
        return ReplayReport()
    start = first.seq - 1
    step = max(1, -(-(last - start) // options.jobs))
    parts = [(lo, min(lo + step, last)) for lo in range(start, last, step)]
    report = ReplayReport()
    context = multiprocessing.get_context("spawn")  # no fork of a process holding regopy
    with ProcessPoolExecutor(max_workers=options.jobs, mp_context=context,
                             initializer=_init_worker, initargs=(options,)) as pool:
        for part in pool.map(_run_part, parts):
            report.merge(part)
    return report
