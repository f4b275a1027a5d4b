"""`ordinance audit verify|anchor|seal|export|tail|prune`: the auditor's view of the trail.

Owns the command-line surface over `engine.audit`: argument parsing, output formats (JSON
lines, CSV, a readable text transcript, a session's asciicast recording checked against its
hash in the trail) and exit codes — 0 intact / done, 1 the trail (or a recording) is broken, 2
the store cannot be used (bad URL, missing database, no trail). Reading the trail is itself
recorded (`audit.accessed`, PCI DSS 10.2.1.3), best effort: with read-only credentials a
warning says the access went unrecorded. It must not read or write the database except
through `AuditLog`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import getpass
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from engine.audit import DEFAULT_RETENTION, AuditError, AuditLog, AuditRecord, open_audit_log
from engine.audit.chain import Anchor
from engine.audit.recordings import RecordingError, RecordingLink, link_of, links, read_recording

AUDIT_URL_ENV = "ORDINANCE_AUDIT_URL"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_CSV_FIELDS = ("seq", "id", "ts", "kind", "subject", "session_id", "decision_id", "payload",
               "prev_hash", "hash")


def parse_duration(text: str) -> timedelta:
    """`365d`, `52w`, `12h`, `7y` (a year is 365 days), `90m`, `30s`."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdwy])\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: a number and a unit s, m, h, d, w or y (e.g. 365d)")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def parse_time(text: str) -> datetime:
    """ISO 8601; a time without a zone is UTC."""
    try:
        ts = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid ISO 8601 time {text!r}") from exc
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit", help="verify, export, follow or prune the tamper-evident audit trail",
        description="The audit trail: hash-chained records of every decision, session, "
                    "statement and approval (PCI DSS 10.2, 10.3, 10.5).")
    actions = parser.add_subparsers(dest="audit_action", metavar="ACTION", required=True)

    def add(name: str, help_text: str, handler: Callable[[argparse.Namespace], int]) -> Any:
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--audit", metavar="URL", default=os.environ.get(AUDIT_URL_ENV),
                         required=not os.environ.get(AUDIT_URL_ENV),
                         help=f"sqlite:///path.db or postgresql://… (default ${AUDIT_URL_ENV})")
        sub.set_defaults(func=handler)
        return sub

    verify = add("verify", "check the hash chain and the head's seal; exit 1 naming the first "
                           "broken record and the kind of damage", _verify)
    verify.add_argument("--anchor", metavar="FILE",
                        help="an anchor from `ordinance audit anchor`: the trail must still "
                             "hold the record it names")

    anchor = add("anchor", "print the trail's head (seq, hash, HMAC seal with "
                           "ORDINANCE_AUDIT_KEY) as JSON for write-once storage", _anchor)
    anchor.add_argument("--output", metavar="FILE",
                        help="also write it to FILE (which must not exist yet)")

    add("seal", "adopt a trail written without ORDINANCE_AUDIT_KEY: verify it, then seal its "
                "head", _seal)

    export = add("export", "write records as JSON lines, CSV or a readable transcript, or a "
                 "session's asciicast recording", _export)
    export.add_argument("--format", choices=("jsonl", "csv", "text", "asciicast"),
                        default="jsonl",
                        help="asciicast: the recording of an interactive session (--session), "
                             "checked against its hash in the trail; text: the transcript, with "
                             "what recorded sessions showed")
    export.add_argument("--since", type=parse_time, metavar="ISO", help="from this time on")
    export.add_argument("--until", type=parse_time, metavar="ISO", help="before this time")
    export.add_argument("--subject", metavar="S", help="only this subject")
    export.add_argument("--session", metavar="ID", help="only this session")
    export.add_argument("--kind", metavar="KIND", help="only this event kind")
    export.add_argument("--recording", type=int, metavar="N",
                        help="with --format asciicast: the session's Nth recording (1 = first)")
    export.add_argument("--recordings", metavar="DIR",
                        help="look recordings up in DIR by file name (moved or copied there)")
    export.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")

    tail = add("tail", "print the last records, then follow new ones (Ctrl-C stops)", _tail)
    tail.add_argument("-n", type=int, default=10, metavar="N", help="records shown first")

    prune = add("prune", "remove records older than the retention behind a sealed "
                         "checkpoint", _prune)
    prune.add_argument("--older-than", type=parse_duration, metavar="AGE",
                       default=DEFAULT_RETENTION, help="e.g. 365d (default), at most 7y")


def _open(args: argparse.Namespace) -> AuditLog | None:
    try:
        return open_audit_log(args.audit, create=False)
    except AuditError as exc:
        _error(str(exc))
        return None


def _error(message: str) -> None:
    print(f"ordinance audit: error: {message}", file=sys.stderr)


def record_access(log: AuditLog, action: str, details: dict[str, Any], *,
                  prog: str = "ordinance audit") -> None:
    """Record a read of the trail (`audit.accessed`), warning when it cannot be recorded."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name (e.g. a container without passwd entry)
        user = f"uid:{os.getuid()}"
    try:
        log.append("audit.accessed", {"action": action, **details}, subject=user)
    except AuditError as exc:
        print(f"{prog}: warning: this access was not recorded: {exc}",
              file=sys.stderr)


def _read_anchor(path: str) -> Anchor | None:
    try:
        with open(path, encoding="utf-8") as f:
            return Anchor.from_dict(json.load(f))
    except OSError as exc:
        _error(f"cannot read anchor {path}: {exc.strerror}")
    except ValueError as exc:
        _error(f"{path}: {exc}")
    return None


def _verify(args: argparse.Namespace) -> int:
    anchor = None
    if args.anchor is not None:
        anchor = _read_anchor(args.anchor)
        if anchor is None:
            return 2
    log = _open(args)
    if log is None:
        return 2
    with log:
        try:
            result = log.verify(anchor=anchor)
        except AuditError as exc:
            _error(str(exc))
            return 2
        record_access(log, "verify", {"ok": result.ok, "count": result.count,
                                       "first_bad_seq": result.first_bad_seq,
                                       "damage": result.damage, "problem": result.problem,
                                       "anchor_seq": anchor.seq if anchor else None})
    print(result.describe(), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def _anchor(args: argparse.Namespace) -> int:
    log = _open(args)
    if log is None:
        return 2
    with log:
        record_access(log, "anchor", {"output": args.output})  # the anchor covers this record
        try:
            result = log.verify()
            anchor = log.anchor()
        except AuditError as exc:
            _error(str(exc))
            return 2
    if not result.ok:
        _error(f"not anchoring a damaged trail: {result.describe()}")
        return 1
    text = json.dumps(anchor.to_dict(), sort_keys=True) + "\n"
    if args.output:
        try:
            with open(args.output, "x", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            _error(f"cannot write anchor {args.output}: {exc.strerror}")
            return 2
    sys.stdout.write(text)
    return 0


def _seal(args: argparse.Namespace) -> int:
    log = _open(args)
    if log is None:
        return 2
    with log:
        try:
            result = log.seal()
        except AuditError as exc:
            _error(str(exc))
            return 2
        record_access(log, "seal", {"ok": result.ok, "damage": result.damage})
    print(result.describe(), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def _export(args: argparse.Namespace) -> int:
    if args.format == "asciicast" and not args.session:
        _error("--format asciicast needs --session ID")
        return 2
    log = _open(args)
    if log is None:
        return 2
    directory = Path(args.recordings) if args.recordings else None
    with log:
        counted = _Counter(log.iter_records(since=args.since, until=args.until,
                                            subject=args.subject, session_id=args.session,
                                            kind=args.kind))
        records = iter(counted)
        code = 0
        details: dict[str, Any] = {}
        with _output(args.output) as out:
            if args.format == "jsonl":
                for rec in records:
                    out.write(json.dumps(rec.to_dict(), sort_keys=True, ensure_ascii=False)
                              + "\n")
            elif args.format == "csv":
                writer = csv.writer(out, lineterminator="\n")
                writer.writerow(_CSV_FIELDS)
                for rec in records:
                    row = rec.to_dict()
                    row["payload"] = json.dumps(rec.payload, sort_keys=True, ensure_ascii=False)
                    writer.writerow(["" if row[f] is None else row[f] for f in _CSV_FIELDS])
            elif args.format == "asciicast":
                code, details = _export_recording(list(records), args, directory, out)
            else:
                broken = write_transcript(records, out, session=args.session,
                                          recordings=directory)
                code = 1 if broken else 0
            out.flush()
        filters = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in (
            ("since", args.since), ("until", args.until), ("subject", args.subject),
            ("session_id", args.session), ("kind", args.kind)) if v is not None}
        record_access(log, "export", {"format": args.format, "filters": filters,
                                       "records": counted.count, **details})
    return code


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8", newline="") as f:
        yield f


def _export_recording(records: list[AuditRecord], args: argparse.Namespace,
                      directory: Path | None, out: TextIO) -> tuple[int, dict[str, Any]]:
    """The session's recording, verbatim, once its hash and format are checked."""
    from adapters.ssh.asciicast import AsciicastError, parse_bytes

    found = [link for link in links(records) if link.format == "asciicast-v2"]
    if not found:
        _error(f"session {args.session} has no asciicast recording in the trail")
        return 1, {}
    if args.recording is None and len(found) > 1:
        listed = ", ".join(f"{i} (record #{link.seq})" for i, link in enumerate(found, 1))
        _error(f"session {args.session} has {len(found)} recordings: choose one with "
               f"--recording N: {listed}")
        return 2, {}
    index = args.recording or 1
    if not 1 <= index <= len(found):
        _error(f"--recording {index}: session {args.session} has {len(found)} recording(s)")
        return 2, {}
    link = found[index - 1]
    details = {"recording": link.path, "record": link.seq}
    try:
        data = read_recording(link, directory)
        parse_bytes(data)
    except (RecordingError, AsciicastError) as exc:
        _error(str(exc))
        return 1, {**details, "error": str(exc)}
    out.write(data.decode("utf-8"))
    return 0, details
class _Counter:
    """Passes records through, counting them."""

    def __init__(self, records: Iterator[AuditRecord]) -> None:
        self._records = records
        self.count = 0

    def __iter__(self) -> Iterator[AuditRecord]:
        for rec in self._records:
            self.count += 1
            yield rec


def _tail(args: argparse.Namespace) -> int:
    log = _open(args)
    if log is None:
        return 2
    with log:
        record_access(log, "tail", {"n": args.n})
        last = log.last_seq()
        for rec in log.tail(args.n):
            _print_line(rec)
            last = max(last, rec.seq)
        while True:
            for rec in log.wait_for_new(last, 30.0):
                _print_line(rec)
                last = rec.seq


def _print_line(rec: AuditRecord) -> None:
    who = " ".join(x for x in (rec.subject or "-", rec.session_id or "-"))
    print(f"{rec.seq:>8} {rec.ts} {who} {transcript_line(rec)}", flush=True)


def _prune(args: argparse.Namespace) -> int:
    log = _open(args)
    if log is None:
        return 2
    with log:
        try:
            result = log.prune(args.older_than)
        except AuditError as exc:
            _error(str(exc))
            return 2
    if args.older_than < DEFAULT_RETENTION:
        print("ordinance audit: warning: PCI DSS 10.5.1 asks for at least 12 months of audit "
              "history", file=sys.stderr)
    if result.checkpoint is None:
        print(f"nothing older than {result.cutoff} to prune")
    else:
        cp = result.checkpoint
        print(f"pruned {result.pruned} records older than {result.cutoff}; checkpoint at seq "
              f"{cp.through_seq} ({cp.seal_alg})")
    return 0


# --- the text transcript -------------------------------------------------------------------


def _effect(payload: dict[str, Any]) -> str | None:
    effect = payload.get("effect")
    decision = payload.get("decision")
    if effect is None and isinstance(decision, dict):
        effect = decision.get("effect")
    return str(effect) if effect is not None else None


def _command_text(payload: dict[str, Any]) -> str | None:
    for key in ("text", "sql", "statement", "command"):
        value = payload.get(key)
        if isinstance(value, dict):
            value = value.get("raw")
        if isinstance(value, str):
            return " ".join(value.split())
    return None


def _session_text(kind: str, p: dict[str, Any]) -> str | None:
    """Who connected from where to what (session.start), why it ended (session.end)."""
    if kind == "session.start" and p.get("client_addr") is not None:
        resource = p.get("resource")
        if not isinstance(resource, dict):
            resource = {}
        how = [str(p.get("auth_method") or "?"), "TLS" if p.get("tls") else "no TLS"]
        if p.get("application_name"):
            how.append(str(p["application_name"]))
        return (f"{p.get('user', '?')} from {p['client_addr']} to "
                f"{resource.get('name') or p.get('database', '?')} ({', '.join(how)})")
    if kind == "session.end" and p.get("reason") is not None:
        counts = f", {p['statements']} statements" if p.get("statements") is not None else ""
        return f"{p['reason']}{counts}"
    return None


def transcript_line(rec: AuditRecord) -> str:
    """One human line for a record: the kind, then what matters for that kind."""
    p = rec.payload
    parts = [rec.kind]
    session = _session_text(rec.kind, p)
    if session is not None:
        parts.append(session)
        if p.get("duration_ms") is not None:
            parts.append(f"-> {p['duration_ms']} ms")
        return " ".join(parts)
    effect = _effect(p)
    if effect:
        parts.append(f"[{effect}]")
    text = _command_text(p)
    if text:
        parts.append(text if len(text) <= 200 else text[:197] + "...")
    outcome = []
    if p.get("error"):
        outcome.append(f"error: {p['error']}")
    if p.get("rows") is not None and not isinstance(p.get("rows"), list):
        outcome.append(f"{p['rows']} rows")
    if p.get("duration_ms") is not None:
        outcome.append(f"{p['duration_ms']} ms")
    approval = p.get("approval")
    if isinstance(approval, dict) and approval.get("id"):
        by = f" by {approval['approver']}" if approval.get("approver") else ""
        outcome.append(f"approval {approval['id']} {approval.get('status', '')}{by}".strip())
    reasons = p.get("reasons") or (p.get("decision") or {}).get("reasons")
    if isinstance(reasons, list):
        said = str(p.get("error") or "")
        msgs = [m for m in (r.get("message", "") if isinstance(r, dict) else str(r)
                            for r in reasons) if m and m not in said]  # a denial's error has them
        if msgs:
            outcome.append("because " + "; ".join(msgs))
    if outcome:
        parts.append("-> " + ", ".join(outcome))
    elif not text and not effect and p:
        parts.append(json.dumps(p, sort_keys=True, ensure_ascii=False))
    return " ".join(parts)


def write_transcript(records: Any, out: TextIO, *, session: str | None,
                     recordings: Path | None = None) -> bool:
    """The transcript; after a record that links a recording, what the terminal showed (plain
    text). True when a linked recording could not be shown (missing, or not what the trail
    says: the text names why)."""
    header_done = False
    broken = False
    for rec in records:
        if session and not header_done:
            out.write(f"Session {session}" + (f" ({rec.subject})" if rec.subject else "") + "\n")
            header_done = True
        out.write(f"{rec.ts}  #{rec.seq}  {transcript_line(rec)}\n")
        link = link_of(rec)
        if link is not None and link.format == "asciicast-v2":
            broken |= not _write_recording_text(link, out, recordings)
    if session and not header_done:
        out.write(f"Session {session}: no records\n")
    return broken


def _write_recording_text(link: RecordingLink, out: TextIO, directory: Path | None) -> bool:
    from adapters.ssh.asciicast import AsciicastError, parse_bytes, plain_text

    try:
        recording = parse_bytes(read_recording(link, directory))
    except (RecordingError, AsciicastError) as exc:
        out.write(f"    ! recording not shown: {exc}\n")
        return False
    shown = plain_text(recording.text("o"))
    out.write(f"    recording {link.path} ({len(recording.events)} events, sha256 "
              f"{link.sha256[:16]}..., verified):\n")
    for line in shown.rstrip("\n").split("\n"):
        out.write(f"    | {line}\n")
    return True
