"""`ResultMasker`'s masked text rows: the fast path (masked values cut out, the rest kept as
bytes, the backstop over the rest at once) gives exactly what reading every value does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.enforcement.transforms import mask_transform
from adapters.mysql.messages import (
    TYPE_LONG,
    TYPE_VAR_STRING,
    ColumnDefinition,
    decode_text_row,
    encode_text_row,
)
from adapters.mysql.results import ResultMasker

PAN = b"4111111111111111"
_piece = st.sampled_from([b"", b"0", b"1234", b"-", b" ", PAN, b"4111 1111 1111 1111",
                          b"\xff", "é".encode(), b"x" * 300])
_value = st.one_of(st.none(), st.lists(_piece, max_size=4).map(b"".join))


def _masker(types: list[int], masked: set[int]) -> ResultMasker:
    names = [f"c{i}" for i in range(len(types))]
    result = ResultMasker(False, lambda c: mask_transform("pan") if int(c.name[1:]) in masked
                          else None)
    for name, type_ in zip(names, types, strict=True):
        result.add(ColumnDefinition("d", "t", "t", name, name, 33, 64, type_, 0, 0))
    return result


def _reference(result: ResultMasker, payload: bytes) -> bytes:
    values = decode_text_row(payload, len(result.columns))
    return encode_text_row([result._value(i, v, False, True) for i, v in enumerate(values)])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_value, st.sampled_from([TYPE_VAR_STRING, TYPE_LONG]), st.booleans()),
                min_size=1, max_size=5))
def test_fast_path_equals_reading_every_value(columns: list) -> None:
    types = [t for _, t, _ in columns]
    masked = {i for i, (_, _, m) in enumerate(columns) if m}
    payload = encode_text_row([v for v, _, _ in columns])
    fast, slow = _masker(types, masked), _masker(types, masked)
    assert fast.row(payload) == _reference(slow, payload)
    assert fast.withheld == slow.withheld


def test_card_number_in_an_unmasked_value_is_scrubbed() -> None:
    result = _masker([TYPE_LONG, TYPE_VAR_STRING, TYPE_VAR_STRING], {2})
    out = decode_text_row(result.row(encode_text_row([b"7", b"note " + PAN, PAN])), 3)
    assert PAN not in out[1] and out[1].startswith(b"note ")
    assert out[2] == b"*" * 12 + PAN[-4:]


def test_long_values_take_the_slow_path() -> None:
    result = _masker([TYPE_VAR_STRING, TYPE_VAR_STRING], {1})
    big = b"y" * 70_000
    out = decode_text_row(result.row(encode_text_row([big, PAN])), 2)
    assert out == [big, b"*" * 12 + PAN[-4:]]
