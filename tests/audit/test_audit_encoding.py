"""The audit trail's fast encoding equals the definition it replaces, byte for byte.

`prepare_event` encodes an event once and scrubs it only when one test over that text finds a
possible card number; `EncodedEvent` builds a record's hashed text from pre-encoded parts; ULIDs
are made with table lookups. Each is checked here against the straightforward implementation
(`canonical_json` of the fields; the JSON round trip, `scrub_document` and `canonical_json` of
the old `prepare_event`; the digit-by-digit base32 loop) on generated inputs.
"""

from __future__ import annotations

import json
import string
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine.audit import InvalidAuditEvent
from engine.audit.base import MAX_EVENT_BYTES, _json_default, prepare_event
from engine.audit.chain import (
    _CROCKFORD,
    EncodedEvent,
    _decode_base32,
    _encode_ulid,
    _next_ulid,
    canonical_json,
    new_ulid,
    record_hash,
)
from engine.masking import may_hold_pan, scrub_document

SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# --- the definitions the fast paths must equal -------------------------------------------------


def reference_prepare(kind: str, payload: dict[str, Any], subject: str | None,
                      session_id: str | None, decision_id: str | None
                      ) -> tuple[dict[str, Any], str | None, str | None, str | None]:
    """`prepare_event` as it was before it encoded once (kind and id checks left out: they
    did not change); returns (payload, subject, session_id, decision_id)."""
    try:
        plain = json.loads(json.dumps(payload, default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidAuditEvent(f"payload is not representable as JSON: {exc}") from exc
    scrubbed = scrub_document({"subject": subject, "session_id": session_id,
                               "decision_id": decision_id, "payload": plain})
    try:
        size = len(canonical_json(scrubbed).encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidAuditEvent(f"event holds text that is not valid Unicode: {exc}") from exc
    if size > MAX_EVENT_BYTES:
        raise InvalidAuditEvent(f"event is {size} bytes; the limit is {MAX_EVENT_BYTES}")
    return (scrubbed["payload"], scrubbed["subject"], scrubbed["session_id"],
            scrubbed["decision_id"])


def reference_base32(value: int, length: int = 26) -> str:
    out = []
    for _ in range(length):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


# --- strategies ----------------------------------------------------------------------------------


def luhn_complete(body: str) -> str:
    """`body` plus the check digit that makes it Luhn-valid."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


@st.composite
def pans(draw: st.DrawFn) -> str:
    """A Luhn-valid 13-19 digit number, maybe grouped by single spaces or dashes."""
    n = draw(st.integers(13, 19))
    digits = luhn_complete(draw(st.text("0123456789", min_size=n - 1, max_size=n - 1)))
    sep = draw(st.sampled_from(["", " ", "-"]))
    if not sep:
        return digits
    return sep.join(digits[i:i + 4] for i in range(0, len(digits), 4))


# Text that often looks like numbers, keywords and card numbers, and sometimes is odd Unicode
# (other scripts' digits, quotes, backslashes, control characters, lone surrogates).
texts = st.one_of(
    st.text(max_size=12),
    st.text(string.digits + " -", max_size=24),
    st.text(string.digits + "٠١٢٣٤٥٦٧٨٩" + " -x\"\\\n\x00é", max_size=24),
    st.sampled_from(["true", "false", "null", "-1", "1e5", "", "{\"a\":1}", ",\"1\":"]),
    st.builds(lambda a, p, b: a + p + b, st.text(max_size=4), pans(), st.text(max_size=4)),
)
scalars = st.one_of(
    st.none(), st.booleans(), texts,
    st.integers(), st.integers(min_value=10 ** 12, max_value=10 ** 19),
    pans().map(lambda p: int(p.replace(" ", "").replace("-", ""))),
    st.floats(allow_nan=True, allow_infinity=True),
)
keys = st.one_of(texts, pans())
plain_json = st.recursive(
    scalars.filter(lambda v: not (isinstance(v, float) and (v != v or v in (
        float("inf"), float("-inf"))))),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(keys, children, max_size=4)),
    max_leaves=12)
# What callers may hand in: also tuples, sets, dates, Decimals, bytes, NaN, and keys that are
# not strings (numbers, booleans, None, and mixes of them that cannot be sorted).
odd_keys = st.one_of(keys, st.integers(-20, 20), st.floats(allow_nan=False, width=16),
                     st.booleans(), st.none())
odd_scalars = st.one_of(
    scalars,
    st.datetimes(timezones=st.just(UTC)), st.datetimes(), st.dates(),
    st.timedeltas(max_value=timedelta(days=9999)), st.decimals(allow_nan=True),
    st.binary(max_size=8),
    st.frozensets(st.integers(0, 9), max_size=3),
)
odd_json = st.recursive(
    odd_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.tuples(children, children),
                               st.dictionaries(odd_keys, children, max_size=4)),
    max_leaves=12)
ids = st.one_of(st.none(), texts.filter(lambda t: "\x00" not in t),
                pans(), st.text(string.hexdigits, min_size=24, max_size=24))


# --- the hashed text -------------------------------------------------------------------------


@SETTINGS
@given(kind=st.text(max_size=12), subject=ids, session_id=ids, decision_id=ids,
       payload=st.dictionaries(keys, plain_json, max_size=5),
       seq=st.integers(min_value=0, max_value=1 << 70), rid=st.text(max_size=30),
       ts=st.text(max_size=30), prev_hash=st.text(max_size=70))
def test_hashed_text_from_parts_is_canonical_json_of_the_fields(
        kind: str, subject: str | None, session_id: str | None, decision_id: str | None,
        payload: dict[str, Any], seq: int, rid: str, ts: str, prev_hash: str) -> None:
    fields = {"seq": seq, "id": rid, "ts": ts, "kind": kind, "subject": subject,
              "session_id": session_id, "decision_id": decision_id, "payload": payload,
              "prev_hash": prev_hash}
    encoded = EncodedEvent.of(kind, subject, session_id, decision_id, canonical_json(payload))
    text = encoded.hashed_text(seq, rid, ts, prev_hash)
    assert text == canonical_json(fields)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates: such an event is refused before it is hashed
    assert encoded.hash(seq, rid, ts, prev_hash) == record_hash(fields)


# --- prepare_event ---------------------------------------------------------------------------


def check_against_reference(payload: Any, subject: str | None, session_id: str | None,
                            decision_id: str | None) -> None:
    try:
        expected = reference_prepare("statement", payload, subject, session_id, decision_id)
    except InvalidAuditEvent:
        with pytest.raises(InvalidAuditEvent):
            prepare_event("statement", payload, subject, session_id, decision_id)
        return
    event = prepare_event("statement", payload, subject, session_id, decision_id)
    assert (event.payload, event.subject, event.session_id, event.decision_id) == expected
    assert event.payload_json == canonical_json(expected[0])
    assert event.encoded == EncodedEvent.of("statement", *expected[1:], event.payload_json)


@SETTINGS
@given(payload=st.dictionaries(keys, plain_json, max_size=6), subject=ids, session_id=ids,
       decision_id=ids)
def test_prepare_event_equals_the_reference_on_json_payloads(
        payload: dict[str, Any], subject: str | None, session_id: str | None,
        decision_id: str | None) -> None:
    check_against_reference(payload, subject, session_id, decision_id)


@SETTINGS
@given(payload=st.dictionaries(odd_keys, odd_json, max_size=6), subject=ids)
def test_prepare_event_equals_the_reference_on_any_payload(payload: dict[Any, Any],
                                                          subject: str | None) -> None:
    check_against_reference(payload, subject, None, None)


@SETTINGS
@given(doc=plain_json)
def test_no_candidate_in_the_encoding_means_nothing_to_scrub(doc: Any) -> None:
    """The precheck `prepare_event` relies on: when the canonical text of a JSON value holds no
    run of 13+ digits, scrubbing changes none of its strings (keys too) or integers."""
    if not may_hold_pan(canonical_json(doc)):
        assert canonical_json(scrub_document(doc)) == canonical_json(doc)


@SETTINGS
@given(pan=pans(), where=st.sampled_from(["value", "key", "nested", "int", "subject", "list"]),
       noise=st.dictionaries(st.text(max_size=6), plain_json, max_size=3))
def test_a_card_number_anywhere_is_scrubbed(pan: str, where: str,
                                            noise: dict[str, Any]) -> None:
    digits = pan.replace(" ", "").replace("-", "")
    payload: dict[str, Any] = dict(noise)
    subject = None
    if where == "value":
        payload["text"] = f"SELECT * FROM cards WHERE pan = '{pan}'"
    elif where == "key":
        payload[pan] = 1
    elif where == "nested":
        payload["rows"] = [{"a": [None, f"x{pan}y"]}]
    elif where == "int":
        payload["n"] = int(digits)
    elif where == "list":
        payload["masked"] = ["1", pan]
    else:
        subject = f"user {pan}"
    event = prepare_event("statement", payload, subject, None, None)
    stored = event.payload_json + json.dumps(event.subject)
    assume(digits not in canonical_json(noise))  # noise may hold its own unscrubbed run
    assert pan not in stored and digits not in stored
    check_against_reference(payload, subject, None, None)


@pytest.mark.parametrize("subject", [None, "ålice"])
@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_the_size_limit_is_the_same_to_the_byte(subject: str | None, extra: int) -> None:
    def payload(filler: int) -> dict[str, Any]:
        return {"text": "é" + "x" * filler, "n": 1}

    base = len(canonical_json({"decision_id": "d", "payload": payload(0),
                               "session_id": None, "subject": subject}).encode("utf-8"))
    event = payload(MAX_EVENT_BYTES - base + extra)
    if extra > 0:
        with pytest.raises(InvalidAuditEvent, match=f"{MAX_EVENT_BYTES + extra} bytes"):
            prepare_event("statement", event, subject, None, "d")
        with pytest.raises(InvalidAuditEvent):
            reference_prepare("statement", event, subject, None, "d")
    else:
        assert prepare_event("statement", event, subject, None, "d").payload == \
            reference_prepare("statement", event, subject, None, "d")[0]


def test_payloads_the_fast_path_must_not_take() -> None:
    """Keys that are not strings are sorted as numbers by the encoder: the general path."""
    payloads: list[dict[Any, Any]] = [
        {10: "a", 9: "b"}, {1: "a", "b": 2}, {"x": {2.5: 1, 10: 2}}, {True: 1, None: 2},
        {"t": ("a", {-1: 0, -2: 1})}, {False: 0, True: 1}, {None: 0},
        {"a": [{"-1": 0, "-2": 1, "10": 2, "9": 3}]}]
    cyclic: dict[str, Any] = {"a": [1]}
    cyclic["a"].append(cyclic)  # the fast encoder has no cycle check: RecursionError, general path
    for payload in [*payloads, cyclic]:
        check_against_reference(payload, None, None, None)
    event = prepare_event("statement", payloads[0], None, None, None)
    assert event.payload_json == '{"10":"a","9":"b"}'
    event = prepare_event("statement", {"at": date(2024, 1, 2), "d": Decimal("1.5"),
                                        "b": b"\x01", "s": {3, 1}}, None, None, None)
    assert event.payload == {"at": "2024-01-02", "d": "1.5", "b": "01", "s": [1, 3]}


# --- ULIDs ---------------------------------------------------------------------------------------


@SETTINGS
@given(value=st.one_of(st.integers(min_value=-(1 << 140), max_value=1 << 140),
                       st.integers(min_value=0, max_value=(1 << 128) - 1)))
def test_ulid_digits_equal_the_reference(value: int) -> None:
    assert _encode_ulid(value) == reference_base32(value)


@SETTINGS
@given(text=st.one_of(
    st.text(_CROCKFORD, min_size=26, max_size=26),
    st.builds(lambda a, n: (a + "Z" * n)[-26:].rjust(26, "0"),
              st.text(_CROCKFORD, max_size=26), st.integers(0, 26)),
    st.text(_CROCKFORD, max_size=30)))
def test_next_ulid_is_the_reference_plus_one(text: str) -> None:
    assert _next_ulid(text) == reference_base32(_decode_base32(text) + 1)


def test_new_ulids_sort_after_the_previous_and_carry_the_time() -> None:
    now = datetime(2026, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    ms = int(now.timestamp() * 1000)
    prefix = reference_base32(ms << 80)[:10]
    last = None
    for _ in range(2000):
        rid = new_ulid(now, last)
        assert len(rid) == 26 and set(rid) <= set(_CROCKFORD) and rid.startswith(prefix)
        assert last is None or rid > last
        last = rid
    assert new_ulid(now, prefix + "ZZZZZZZZZZZZZZZZ") == reference_base32(
        _decode_base32(prefix + "ZZZZZZZZZZZZZZZZ") + 1)
    later = new_ulid(now + timedelta(milliseconds=1), last)
    assert later[:10] == reference_base32((ms + 1) << 80)[:10]
