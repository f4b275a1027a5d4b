"""Conversions between JSON-like Python values, protobuf `Struct`, and the Decision envelope.

Pure functions, shared by the server and `engine.client`. `Struct` carries every number as a
double; `struct_to_dict` turns integral doubles back into `int` so a policy sees `10`, not
`10.0`, exactly as it would over JSON.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any

from google.protobuf import struct_pb2

from engine.api import decision_pb2
from engine.decision import Decision, Effect, Mask, Reason

EFFECT_TO_PROTO: dict[str, int] = {
    "allow": decision_pb2.EFFECT_ALLOW,
    "deny": decision_pb2.EFFECT_DENY,
    "review": decision_pb2.EFFECT_REVIEW,
}
PROTO_TO_EFFECT: dict[int, Effect] = {
    decision_pb2.EFFECT_ALLOW: "allow",
    decision_pb2.EFFECT_DENY: "deny",
    decision_pb2.EFFECT_REVIEW: "review",
}


class InputError(ValueError):
    """The input document cannot be represented or is not a JSON object."""


def _value_to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "struct_value":
        fields = value.struct_value.fields
        return {k: _value_to_python(fields[k]) for k in fields}  # faster than .items()
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InputError(f"input document holds a non-finite number ({number})")
        if number.is_integer() and abs(number) < 2**53:
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "list_value":
        return [_value_to_python(v) for v in value.list_value.values]
    return None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A `Struct` as a plain dict (integral numbers as `int`); InputError for NaN/infinity."""
    fields = struct.fields
    return {k: _value_to_python(fields[k]) for k in fields}


def dict_to_struct(doc: dict[str, Any], into: struct_pb2.Struct | None = None) -> struct_pb2.Struct:
    """A JSON object as a `Struct`; raises InputError for values JSON cannot hold."""
    if not isinstance(doc, dict):
        raise InputError(f"input document must be a JSON object, not {type(doc).__name__}")
    struct = struct_pb2.Struct() if into is None else into
    try:
        struct.update(doc)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"input document is not JSON-representable: {exc}") from exc
    return struct


class _CommandStructs:
    """Serialised `Struct`s of recent command-fact dicts, keyed by identity.

    A decision served from the engine's cache carries the very same `command` dict each time
    (facts are shared, read-only); converting it to a `Struct` again would cost more than the
    rest of the response. Entries hold a reference to their dict, so an id is never reused
    while cached.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: OrderedDict[int, tuple[dict[str, Any], bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, command: dict[str, Any]) -> bytes:
        key = id(command)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and hit[0] is command:
                return hit[1]
        data = struct_pb2.Struct()
        data.update(command)
        encoded = data.SerializeToString()
        with self._lock:
            self._items[key] = (command, encoded)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return encoded


_command_structs = _CommandStructs()


def decision_to_proto(decision: Decision, decision_id: str,
                      into: decision_pb2.Decision | None = None) -> decision_pb2.Decision:
    """The engine's Decision as the wire envelope."""
    out = decision_pb2.Decision() if into is None else into
    out.decision_id = decision_id
    out.effect = EFFECT_TO_PROTO.get(decision.effect, decision_pb2.EFFECT_DENY)  # type: ignore[assignment]
    for r in decision.reasons:
        reason = out.reasons.add(
            policy=r.policy, message=r.message,
            effect=EFFECT_TO_PROTO.get(r.effect, decision_pb2.EFFECT_DENY),  # type: ignore[arg-type]
            approvers=list(r.approvers), window=r.window or "")
        if r.rows is not None:
            reason.rows = r.rows
    for m in decision.masks:
        out.masks.add(column=m.column, method=m.method, policy=m.policy)
    out.policy_revision = decision.policy_revision
    out.eval_time.FromNanoseconds(decision.eval_ns)
    out.cached = decision.cached
    if decision.command:
        try:
            out.command.ParseFromString(_command_structs.get(decision.command))
        except (ValueError, TypeError, AttributeError):
            # Facts the wire cannot carry are dropped from the envelope, never the decision.
            out.ClearField("command")
    return out


def decision_from_proto(msg: decision_pb2.Decision) -> tuple[str, Decision]:
    """The wire envelope as `(decision_id, Decision)`. An unknown effect reads as deny."""
    reasons = tuple(
        Reason(policy=r.policy, message=r.message,
               effect=PROTO_TO_EFFECT.get(r.effect, "deny"),
               approvers=tuple(r.approvers), window=r.window or None,
               rows=r.rows if r.HasField("rows") else None)
        for r in msg.reasons)
    masks = tuple(Mask(column=m.column, method=m.method, policy=m.policy) for m in msg.masks)
    decision = Decision(
        effect=PROTO_TO_EFFECT.get(msg.effect, "deny"),
        reasons=reasons,
        masks=masks,
        policy_revision=msg.policy_revision,
        command=struct_to_dict(msg.command) if msg.HasField("command") else {},
        eval_ns=msg.eval_time.ToNanoseconds(),
        cached=msg.cached,
    )
    return msg.decision_id, decision
