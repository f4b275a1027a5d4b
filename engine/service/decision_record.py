"""One decision's record: rendered as a document, or encoded straight to its JSON line.

`render_record` turns what the runtime hands the decision log (a Decision object, a float
timestamp) into the logged document. `encode_line` gives that document's JSON line for the
JSON-lines decision log, equal to `json.dumps(render_record(record), separators=(",", ":"),
ensure_ascii=False, allow_nan=False, default=str)` with card numbers masked, but made from
parts: a cached decision's result (shared by every decision the cache answers) is encoded
and checked for card numbers once, so a repeated decision costs the encoding of its input
and a few fields. A part that may hold a card number sends the whole record through
`scrub_document` (`engine.masking`), as any record did before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from engine.audit.chain import json_string
from engine.masking import may_hold_pan, scrub_document
from engine.service.identity_lru import IdentityLRU

_results = IdentityLRU(1024)
"""A cached Decision's (effect, reasons, masks) -> its rendered result."""
_result_lines = IdentityLRU(1024)
"""The same -> (the result's JSON text, whether it may hold a PAN)."""

LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                                default=str)
"""How a JSON-lines record is encoded (the general path)."""

_C_MAKE_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)
_C_VALUE: Any = _C_MAKE_ENCODER and _C_MAKE_ENCODER(
    None, str, json.encoder.encode_basestring, None, ":", ",", False, False, False)
"""`LINE_ENCODER`'s C encoder, made once, without its cycle check (`markers=None`): a cycle
ends in RecursionError, and `encode_line` leaves such a record to the general path."""


def render_record(record: dict[str, Any],
                  scrub: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Timestamp as ISO 8601; a Decision as its result; `scrub` applied to input and result.

    The command facts the engine derived are not logged: they follow from the logged
    input and policy revision, and they triple the record's size and scrub time.
    """
    out = dict(record)
    out["timestamp"] = _iso(record["timestamp"])
    decision = out.pop("decision", None)
    if decision is not None:
        out["result"] = _rendered_result(decision)
        out["policy_revision"] = decision.policy_revision
        out["eval_ns"] = decision.eval_ns
        out["cached"] = decision.cached
    if scrub is not None:
        if "input" in out:
            out["input"] = scrub(out["input"])
        if "result" in out:
            out["result"] = scrub(out["result"])
    return out


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def _rendered_result(decision: Any) -> dict[str, Any]:
    # A cached decision's reasons and masks are shared tuples: rendered once (the result is
    # shared too, and read-only like them).
    return _results.get((decision.effect, decision.reasons, decision.masks),  # type: ignore[no-any-return]
                        partial(_result, decision), keep=decision.cached)


def _result(decision: Any) -> dict[str, Any]:
    return {"effect": decision.effect, "reasons": [r.to_dict() for r in decision.reasons],
            "masks": [m.to_dict() for m in decision.masks]}


def _value(value: Any) -> str:
    return "".join(_C_VALUE(value, 0)) if _C_VALUE is not None else LINE_ENCODER.encode(value)


def _result_line(decision: Any) -> tuple[str, bool]:
    text = _value(_rendered_result(decision))
    return text, may_hold_pan(text)


def encode_line(record: dict[str, Any]) -> str:
    """The record's JSON line (without the newline), card numbers masked. Raises ValueError
    (NaN, infinity), RecursionError (a cycle) or TypeError (a key JSON cannot hold) when the
    record has no JSON form."""
    decision = record.get("decision")
    if _C_VALUE is not None and (decision is None or _DECISION_FIELDS.isdisjoint(record)):
        try:
            line = _encode_parts(record, decision)
        except (TypeError, RecursionError):
            line = None  # what only the general path encodes, or refuses, properly
        if line is not None:
            return line
    return LINE_ENCODER.encode(scrub_document(render_record(record)))


_DECISION_FIELDS = frozenset(("result", "policy_revision", "eval_ns", "cached"))
"""What `render_record` makes of a Decision (appended after the record's own keys)."""


def _encode_parts(record: dict[str, Any], decision: Any) -> str | None:
    """The line, or None when part of it may hold a card number."""
    own = dict(record)
    own.pop("decision", None)
    if "timestamp" in own:
        own["timestamp"] = _iso(own["timestamp"])
    head = _value(own)
    if decision is None:
        return None if may_hold_pan(head) else head
    revision = decision.policy_revision
    tail = (f'"policy_revision":'
            f'{json_string(revision) if type(revision) is str else _value(revision)},'
            f'"eval_ns":{_value(decision.eval_ns)},"cached":{_value(decision.cached)}}}')
    if may_hold_pan(head) or may_hold_pan(tail):
        return None
    result_text, suspect = _result_lines.get(
        (decision.effect, decision.reasons, decision.masks),
        partial(_result_line, decision), keep=decision.cached)
    if suspect:
        return None
    return f'{head[:-1]}{"," if len(head) > 2 else ""}"result":{result_text},{tail}'


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
