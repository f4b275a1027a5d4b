"""Trail records -> replay items: the input document a record's decision was made for, what
the record lacks of it, and the decision it recorded.

- `statement` (the PostgreSQL proxy): the text, joined with its session's `session.start`
  (subject id, groups and claims, the resource with its labels and type, which is the SQL
  dialect, and the session fields), rebuilt exactly as `PolicyBridge.input_document` builds
  it. A session.start written before claims were recorded leaves `subject.claims` missing.
- `decision` (the decision service and Envoy): the logged input; Envoy's derived members are
  derived again from the logged attributes (`adapters.envoy.replay`), and the header values
  the log redacted are missing.
- A card number the trail scrubbed is missing where it was (`command.raw` is special: see
  `Item.scrubbed`).

An item that cannot be rebuilt at all carries `skip` (why); a field it lacks is in `missing`,
and whether that matters depends on what the policies read (`engine.replay.reads`).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from engine.audit import AuditLog, AuditRecord
from engine.facts import SQL_PROTOCOLS
from engine.replay.reads import Path
from engine.replay.verdict import ORDINANCE_MADE, Verdict, query_verdict, recorded_verdict

SCRUBBED = re.compile(r"\*(?:[ -]?\*){8,}(?:[ -]?\d){4}(?!\d)")
"""A card number as `engine.masking.mask_pan` leaves it: 13-19 positions, all but the last 4
digits replaced by `*`, single spaces or dashes kept."""

TRUNCATED_MARK = " …[truncated]"
TRUNCATED_AT = 64 * 1024
"""`adapters.enforcement.records` records at most this much of a statement, then the mark."""

PROXY_POLICY = "ordinance.proxy"
"""The reasons of what the proxy refused itself, asking no policy (`Enforcer.refused`)."""
_EXECUTE = re.compile(r"\bexecute\b", re.IGNORECASE)
KINDS = ("statement", "decision")
SESSION_CACHE = 50_000


@dataclass(slots=True)
class Item:
    seq: int
    ts: str
    kind: str  # "statement" or "decision"
    subject: str | None
    resource: str | None
    session_id: str | None
    decision_id: str | None
    text: str
    input: dict[str, Any] | None = None
    missing: tuple[Path, ...] = ()
    scrubbed: bool = False
    """`command.raw` shows a card number the trail masked: the same decision only for policies
    that cannot see literals, and only when every mark sits inside a string literal."""
    recorded: Verdict | None = None
    recorded_fields: tuple[Any, Any, Any] | None = None
    """(effect, reasons, masks) as recorded, made a Verdict only when asked (`recorded_as`)."""
    recorded_revision: str = ""
    recorded_problem: str | None = None
    skip: str | None = None
    query_path: str | None = None
    query_enriched: bool = True
    """The service enriches a query's `command` with facts (`enriched_input`); Envoy does not."""

    def example(self) -> dict[str, Any]:
        text = self.text if len(self.text) <= 500 else self.text[:497] + "..."
        return {"seq": self.seq, "ts": self.ts, "kind": self.kind, "subject": self.subject,
                "resource": self.resource, "session_id": self.session_id,
                "decision_id": self.decision_id, "text": text}


@dataclass(frozen=True, slots=True)
class _Session:
    subject: dict[str, Any]
    resource: Any
    session: dict[str, Any]
    missing: tuple[Path, ...]
    protocol: str  # the adapter's (`command.protocol`): session.start's, postgres before it was


def _session_of(payload: dict[str, Any], session_id: str, subject: str | None) -> _Session:
    missing: list[Path] = []
    groups = payload.get("groups")
    if not isinstance(groups, list):
        missing.append(("subject", "groups"))
        groups = []
    claims = payload.get("claims")
    if not isinstance(claims, dict):
        missing.append(("subject", "claims"))
        claims = {}
    user = payload.get("user")
    subject_doc = {"id": user if isinstance(user, str) else subject, "groups": groups,
                   "claims": claims}
    session = {"id": session_id}
    for name in ("client_addr", "tls", "application_name"):
        if name in payload:
            session[name] = payload[name]
        else:
            missing.append(("session", name))
    protocol = payload.get("protocol")
    return _Session(subject_doc, payload.get("resource"), session, tuple(missing),
                    protocol if isinstance(protocol, str) and protocol else "postgres")


class Sessions:
    """The `session.start` of each session, in a bounded LRU; a session not seen in this
    pass (it started before `--since`, or was evicted) is looked up in the trail."""

    def __init__(self, log: AuditLog, size: int = SESSION_CACHE) -> None:
        self._log = log
        self._size = size
        self._items: OrderedDict[str, _Session | None] = OrderedDict()

    def add(self, rec: AuditRecord) -> None:
        if rec.session_id:
            self._put(rec.session_id, _session_of(rec.payload, rec.session_id, rec.subject))

    def _put(self, session_id: str, session: _Session | None) -> None:
        self._items[session_id] = session
        self._items.move_to_end(session_id)
        if len(self._items) > self._size:
            self._items.popitem(last=False)

    def get(self, session_id: str) -> _Session | None:
        if session_id in self._items:
            self._items.move_to_end(session_id)
            return self._items[session_id]
        found = None
        for rec in self._log.iter_records(session_id=session_id, kind="session.start",
                                          limit=1):
            found = _session_of(rec.payload, session_id, rec.subject)
        self._put(session_id, found)
        return found


def recorded_as(item: Item) -> Verdict | str:
    """The decision recorded with the item, or why there is none to compare with."""
    if item.recorded_fields is not None:
        _recorded(item, *item.recorded_fields)
        item.recorded_fields = None
    if item.recorded_problem is not None:
        return item.recorded_problem
    return item.recorded if item.recorded is not None else "the record holds no decision"


def _recorded(item: Item, effect: Any, reasons: Any, masks: Any) -> None:
    if masks is None:
        item.recorded_problem = "the record does not hold the decision's masks (written " \
                                "before they were recorded)"
        masks = []
    if not isinstance(masks, list):
        item.recorded_problem = "the recorded masks are not a list"
        return
    masks = [m if isinstance(m, str) else f"{m.get('column')}:{m.get('method')}"
             for m in masks if isinstance(m, str | dict)]
    verdict = recorded_verdict(effect, reasons, masks)
    if isinstance(verdict, str):
        item.recorded_problem = verdict
        return
    item.recorded = verdict
    made = [m for p, _, m, _, _ in verdict.reasons if p in ORDINANCE_MADE]
    if made and item.recorded_problem is None:
        item.recorded_problem = "the recorded decision was made by Ordinance, not the " \
                                "policies: " + "; ".join(sorted(made))


def statement_item(rec: AuditRecord, sessions: Sessions) -> Item:
    p = rec.payload
    text = p.get("text")
    resource = p.get("resource")
    item = Item(rec.seq, rec.ts, "statement", rec.subject,
                resource if isinstance(resource, str) else None, rec.session_id,
                rec.decision_id, text if isinstance(text, str) else "")
    item.recorded_revision = str(p.get("policy_revision") or "")
    reasons = p.get("reasons")
    item.recorded_fields = (p.get("effect"), reasons, p.get("masks"))
    if not isinstance(text, str):
        item.skip = "the record holds no statement text"
        return item
    if not rec.decision_id and isinstance(reasons, list) and any(
            isinstance(r, dict) and r.get("policy") == PROXY_POLICY for r in reasons):
        item.skip = "the proxy refused it itself (no policy was asked)"
        return item
    if len(text) > TRUNCATED_AT and text.endswith(TRUNCATED_MARK):
        item.skip = "the statement text was truncated when recorded (over 64 KiB)"
        return item
    session = sessions.get(rec.session_id) if rec.session_id else None
    if session is None:
        item.skip = "its session.start record is not in the trail (pruned, or no session)"
        return item
    if not isinstance(session.resource, dict):
        item.skip = "its session.start record holds no resource"
        return item
    item.input = {"subject": session.subject, "resource": session.resource,
                  "command": {**_recorded_command(p.get("command")),
                              "protocol": session.protocol, "raw": text},
                  "session": session.session}
    item.missing = session.missing
    item.scrubbed = SCRUBBED.search(text) is not None
    if session.protocol in SQL_PROTOCOLS and _EXECUTE.search(text) and _executes_prepared(
            text, session.protocol, session.resource):
        item.skip = ("it EXECUTEs a statement prepared in its session: the proxy decided it "
                     "with the PREPARE's text too (that PREPARE is replayed)")
    return item


def _recorded_command(fields: Any) -> dict[str, Any]:
    """The fields an adapter added to `input.command` (SSH's `sftp`, PostgreSQL's
    `view_tables`), as its statement record holds them."""
    return dict(fields) if isinstance(fields, dict) else {}


def _executes_prepared(text: str, protocol: str, resource: dict[str, Any]) -> bool:
    from engine.facts import enrich_command

    facts = enrich_command({"protocol": protocol, "raw": text}, resource)
    return any(s.get("executed_name") is not None for s in facts.get("statements") or ())


def scrubbed_paths(doc: Any, path: Path = ()) -> Iterator[Path]:
    """Where a string of `doc` shows a card number the trail masked."""
    if isinstance(doc, str):
        if "*" in doc and SCRUBBED.search(doc):
            yield path
    elif isinstance(doc, dict):
        for key, value in doc.items():
            yield from scrubbed_paths(value, (*path, str(key)))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from scrubbed_paths(value, (*path, str(index)))


EnvoyInput = Callable[[dict[str, Any], int | None], tuple[dict[str, Any], list[Path]]]


def _envoy_input() -> EnvoyInput:
    from adapters.envoy.replay import input_from_log

    return input_from_log


def decision_item(rec: AuditRecord) -> Item:
    p = rec.payload
    logged = p.get("input")
    resource = logged.get("resource") if isinstance(logged, dict) else None
    name = resource.get("name") if isinstance(resource, dict) else None
    command = logged.get("command") if isinstance(logged, dict) else None
    path = p.get("path")
    text = command.get("raw") if isinstance(command, dict) else None
    item = Item(rec.seq, rec.ts, "decision", rec.subject, name if isinstance(name, str) else None,
                rec.session_id, rec.decision_id,
                text if isinstance(text, str) else str(path or ""))
    item.recorded_revision = str(p.get("policy_revision") or "")
    kind = p.get("kind")
    if kind == "rejected":
        item.skip = "rejected before any decision (unauthenticated or malformed request)"
        return item
    if "truncated" in p or "unrenderable" in p:
        item.skip = "the decision log could not keep the record's input"
        return item
    if kind not in ("decide", "query"):
        item.skip = "not a decision the policies made"
        return item
    if kind == "query":
        if not isinstance(path, str):
            item.skip = "the query record holds no path"
            return item
        item.query_path = path
        item.text = text if isinstance(text, str) else path
        if "error" not in p:
            item.recorded = query_verdict("result" in p, p.get("result"))
        else:
            item.recorded_problem = "the recorded query failed: " + str(p["error"])
    else:
        result = p.get("result")
        if isinstance(result, dict):
            item.recorded_fields = (result.get("effect"), result.get("reasons"),
                                    result.get("masks"))
        else:
            item.recorded_problem = "the record holds no result"
    if not isinstance(logged, dict):
        item.skip = "the record holds no input document"
        return item
    missing: list[Path] = []
    transport = str(p.get("transport") or "")
    if transport.startswith("envoy-"):
        item.query_enriched = False
        try:
            max_body = p.get("max_body")
            logged, missing = _envoy_input()(
                logged, max_body if isinstance(max_body, int) else None)
        except ValueError as exc:
            item.skip = f"its Envoy request cannot be rebuilt: {exc}"
            return item
        raw = logged["command"].get("raw")
        if isinstance(raw, str):
            item.text = raw
    command = logged.get("command")
    sql = isinstance(command, dict) and str(command.get("protocol") or "").lower() in SQL_PROTOCOLS
    for where in scrubbed_paths(logged):
        if where == ("command", "raw") and sql:
            item.scrubbed = True
        else:
            missing.append(where)
    item.input = logged
    item.missing = tuple(missing)
    return item
