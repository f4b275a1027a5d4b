"""Conversions between JSON-like Python values, protobuf `Struct`, and the Decision envelope.

Pure functions, shared by the server and `engine.client`. `Struct` carries every number as a
double; `struct_to_dict` turns integral doubles back into `int` so a policy sees `10`, not
`10.0`, exactly as it would over JSON.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from functools import partial
from typing import Any

from google.protobuf import struct_pb2

from engine.api import decision_pb2
from engine.decision import Decision, Effect, Mask, Reason
from engine.service.identity_lru import IdentityLRU

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


class _Subdocuments:
    """Decoded sub-documents of recent inputs, keyed by their serialised bytes.

    Callers send the same `subject`, `resource` and `command` again and again; decoding them
    value by value is most of a cached Decide's own cost. Equal bytes decode to equal values,
    so a sub-document of at most `max_bytes` seen recently is handed out again: shared, so
    whoever receives it must not change it (the engine and the decision log do not).
    """

    def __init__(self, size: int = 1024, max_bytes: int = 2048) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, value: struct_pb2.Value) -> Any:
        encoded = value.SerializeToString()
        if len(encoded) > self.max_bytes:
            return _value_to_python(value)
        with self._lock:
            if encoded in self._items:
                self._items.move_to_end(encoded)
                return self._items[encoded]
        decoded = _value_to_python(value)  # InputError for what cannot be decoded
        with self._lock:
            self._items[encoded] = decoded
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return decoded


_subdocuments = _Subdocuments()


def input_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """`struct_to_dict` for a request's input document, whose object and list members may
    be shared with earlier requests' (`_Subdocuments`): read them, never change them."""
    fields = struct.fields
    out: dict[str, Any] = {}
    for name in fields:
        value = fields[name]
        if value.WhichOneof("kind") in ("struct_value", "list_value"):
            out[name] = _subdocuments.get(value)
        else:
            out[name] = _value_to_python(value)
    return out


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


_ENTRY_CACHE_MAX_BYTES = 4 * 1024
_entries = IdentityLRU(2048)  # (names, facts values) -> their Struct entries, serialised
_fixed = IdentityLRU()  # (reasons, masks) of a cached decision -> their Decision fields


def command_struct_bytes(command: dict[str, Any]) -> bytes:
    """The serialised `Struct` of a command-facts dict; raises like `Struct.update`.

    A serialised `Struct` is the concatenation of its map entries, so the command is encoded
    in two parts: its list and dict values (the parsed facts: `statements`, `kinds`,
    `tables`, ...) once, then from the cache keyed by their identity, because the engine
    shares those values between decisions (its facts and decision caches hand out the same
    objects); its scalars (`raw`, `protocol`, `parse_error`) each time, so a decision
    answered from the cache for another statement text costs one small `Struct` rather than
    a full conversion. Encodings over 4 KiB are not kept (the cache holds at most 8 MiB).
    """
    shared: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for name, value in command.items():
        if isinstance(value, dict | list):
            shared[name] = value
        else:
            scalars[name] = value
    encoded = _entries.get((*shared, *shared.values()), partial(_struct_bytes, shared),
                           keep=_small) if shared else b""
    return encoded + _scalar_struct_bytes(scalars) if scalars else encoded


def _scalar_struct_bytes(scalars: dict[str, Any]) -> bytes:
    """`_struct_bytes` for strings, numbers, booleans and None, set field by field (a third
    of `Struct.update`'s time)."""
    data = struct_pb2.Struct()
    fields = data.fields
    for name, value in scalars.items():
        if isinstance(value, str):
            fields[name].string_value = value
        elif value is None:
            fields[name].null_value = struct_pb2.NULL_VALUE
        elif isinstance(value, bool):
            fields[name].bool_value = value
        elif isinstance(value, int | float):
            fields[name].number_value = value
        else:
            data.update({name: value})
    return data.SerializeToString()


def _small(encoded: bytes) -> bool:
    return len(encoded) <= _ENTRY_CACHE_MAX_BYTES


def _struct_bytes(doc: dict[str, Any]) -> bytes:
    data = struct_pb2.Struct()
    data.update(doc)
    return data.SerializeToString()


def _fixed_parts(decision: Decision) -> bytes:
    """The reasons, masks and policy revision of `decision` as serialised Decision fields
    (the PCI pack's fourteen masks cost more to build than the rest of the answer)."""
    out = decision_pb2.Decision()
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
    return out.SerializeToString()


def decision_to_proto(decision: Decision, decision_id: str,
                      into: decision_pb2.Decision | None = None) -> decision_pb2.Decision:
    """The engine's Decision as the wire envelope."""
    out = decision_pb2.Decision() if into is None else into
    out.Clear()
    # A cached decision's reasons and masks are shared tuples: encoded once. Another
    # decision's tuples are never seen again, so they are not kept.
    out.MergeFromString(_fixed.get((decision.reasons, decision.masks, decision.policy_revision),
                                   lambda: _fixed_parts(decision), keep=decision.cached))
    out.decision_id = decision_id
    out.effect = EFFECT_TO_PROTO.get(decision.effect, decision_pb2.EFFECT_DENY)  # type: ignore[assignment]
    out.eval_time.seconds, out.eval_time.nanos = divmod(decision.eval_ns, 1_000_000_000)
    out.cached = decision.cached
    if decision.command:
        try:
            out.command.ParseFromString(command_struct_bytes(decision.command))
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
