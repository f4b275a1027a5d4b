"""The audit trail's fast encoding equals the definition it replaces, byte for byte.

`EncodedEvent` builds a record's hashed text from pre-encoded parts; ULIDs are made with table
lookups. Each is checked here against the straightforward implementation (`canonical_json` of
the fields; the digit-by-digit base32 loop) on generated inputs.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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

SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# --- the definitions the fast paths must equal -------------------------------------------------


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
