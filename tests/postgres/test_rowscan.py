"""The C loops of the result path (`adapters/postgres/_rowscan.c`) against their references:
the framer's Python loop, engine.masking's PAN precheck, `RowRewriter.rewrite` row by row and
`CopyOutRewriter.feed` message by message."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from adapters.enforcement.hooks import WithheldValue
from adapters.enforcement.transforms import SCRUB_JSON, SCRUB_TEXT, mask_transform
from adapters.postgres import messages as m
from adapters.postgres import rowscan
from adapters.postgres.descriptors import CopyLayout
from adapters.postgres.results import CopyOutRewriter, RowRewriter
from engine.masking import MASK_METHODS, may_hold_pan_bytes, set_hash_key

_rowscan = rowscan._rowscan
needs_c = pytest.mark.skipif(not rowscan.ACCELERATED, reason="the C loops are not built")


def test_the_c_loops_are_built() -> None:
    """CI sets ORDINANCE_REQUIRE_C=1: there the tests below must compare C with Python."""
    if not rowscan.ACCELERATED:
        reason = "adapters/postgres/_rowscan.c was not built (no C compiler at install?)"
        if os.environ.get("ORDINANCE_REQUIRE_C") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    assert rowscan.run_end is _rowscan.run_end
    assert rowscan.run_count is _rowscan.run_count
    assert rowscan.mask_rows is _rowscan.mask_rows
    assert rowscan.copy_run_clean is _rowscan.copy_run_clean
    names = ("CALL", "PAN", "LAST4", "NULL", "SCAN", "CONST", "EMAIL")
    assert [getattr(rowscan, f"METHOD_{n}") for n in names] == [
        getattr(_rowscan, f"METHOD_{n}") for n in names]


def row(values: tuple[bytes | None, ...]) -> bytes:
    return m.DataRow(values).encode()


_MESSAGE = st.builds(lambda kind, body: kind + struct.pack("!I", len(body) + 4) + body,
                     st.sampled_from([b"D", b"C", b"d"]), st.binary(max_size=12))


@needs_c
@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(_MESSAGE, st.binary(max_size=9)), max_size=8).map(b"".join),
       st.integers(0, 40), st.sampled_from([ord("D"), ord("d"), 0]), st.integers(0, 30))
def test_run_end_equals_the_python_loop(buffer: bytes, pos: int, code: int, limit: int) -> None:
    assume(pos <= len(buffer))
    expected = rowscan.python_run_end(buffer, pos, code, limit)
    assert _rowscan.run_end(buffer, pos, code, limit) == expected
    assert _rowscan.run_end(bytearray(buffer), pos, code, limit) == expected


@needs_c
@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(_MESSAGE, st.binary(max_size=9)), max_size=8).map(b"".join),
       st.integers(0, 40), st.sampled_from([ord("D"), ord("d"), 0]), st.integers(0, 30),
       st.integers(0, 9))
def test_run_count_equals_the_python_loop(buffer: bytes, pos: int, code: int, limit: int,
                                          count: int) -> None:
    assume(pos <= len(buffer))
    expected = rowscan.python_run_count(buffer, pos, code, limit, count)
    assert _rowscan.run_count(buffer, pos, code, limit, count) == expected
    assert rowscan.python_run_count(buffer, pos, code, limit, 10**9)[0] == \
        rowscan.python_run_end(buffer, pos, code, limit)  # uncut, it is run_end


_PAN_BYTES = st.lists(st.sampled_from([b"4", b"1", b"0", b" ", b"-", b"x", b"\x00", b"\xc3",
                                       b"\xa9", b"\xd9\xa3", b"*"]), max_size=60).map(b"".join)


@needs_c
@settings(max_examples=2000, deadline=None)
@given(st.one_of(_PAN_BYTES, st.binary(max_size=60)))
def test_may_hold_pan_equals_engine_masking(data: bytes) -> None:
    assert _rowscan.may_hold_pan(data) is may_hold_pan_bytes(data)


@needs_c
def test_may_hold_pan_examples() -> None:
    for yes in (b"4111111111111", b"x4111 1111 1111 1111x", b"5500-0055-5555-5559",
                "".join(chr(0x0661 + i % 9) for i in range(13)).encode()):
        assert _rowscan.may_hold_pan(yes)
    for no in (b"", b"411111111111", b"4111  1111 1111 1111", b"4111--1111-1111-1111",
               b"4111x1111x1111x1111", b"************1111"):
        assert not _rowscan.may_hold_pan(no)


_PANS = st.sampled_from([b"4111111111111111", b"4111 1111 1111 1111", b"5500-0055-5555-5559",
                         b"1234567890123", b"123", b"", b"***1111", b"alice@example.com",
                         b"@host", b"a@b@c", b"x@", "\u00e9@\u00e9.fr".encode(),
                         "4111\u0661\u0661\u0661\u06611111111".encode()])
_VALUES = st.one_of(st.none(), st.binary(max_size=20), _PANS, st.text(max_size=12).map(
    lambda t: t.encode("utf-8", "surrogatepass")),
    st.tuples(st.binary(max_size=5), _PANS, st.binary(max_size=5)).map(b"".join))


def _withheld(value: bytes) -> bytes:
    raise WithheldValue("withheld")


_TRANSFORMS = {"none": None, "scan": SCRUB_TEXT, "json": SCRUB_JSON, "plain": lambda v: v[:3],
               "withheld": _withheld, **{name: mask_transform(name) for name in MASK_METHODS}}


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(sorted(_TRANSFORMS)), min_size=1, max_size=5),
       st.lists(st.sampled_from([0, 0, 0, 1]), min_size=5, max_size=5),
       st.lists(st.lists(_VALUES, min_size=5, max_size=5), min_size=1, max_size=6))
def test_rewrite_run_equals_rewriting_row_by_row(kinds: list[str], formats: list[int],
                                                 rows: list[list[bytes | None]]) -> None:
    """Whenever the C loop answers, it gives what the reference gives row by row; it declines
    (None) rather than differ."""
    set_hash_key(b"k" * 16)
    try:
        transforms = [_TRANSFORMS[kind] for kind in kinds]
        formats = formats[:len(kinds)]
        run = b"".join(row(tuple(values[:len(kinds)])) for values in rows)
        fast = RowRewriter(transforms, formats).rewrite_run(run)
        if fast is None:
            return
        reference = RowRewriter(transforms, formats)
        expected = b"".join(row_message(reference.rewrite(row(tuple(values[:len(kinds)]))[5:]))
                            for values in rows)
        assert fast == expected
    finally:
        set_hash_key(None)


def row_message(body: bytes) -> bytes:
    return b"D" + struct.pack("!I", len(body) + 4) + body


@needs_c
def test_rewrite_run_does_the_usual_masked_read_in_c() -> None:
    """The common case never falls back: ids, names, and an ASCII card number column; nor
    does a card number in a scanned column."""
    rows = [(str(i).encode(), f"holder {i}".encode(), b"4111111111111111") for i in range(50)]
    run = b"".join(row(values) for values in rows)
    rewriter = RowRewriter([None, SCRUB_TEXT, mask_transform("pan")], [0, 0, 0])
    out = rewriter.rewrite_run(run)
    assert out == b"".join(row((a, b, b"************1111")) for a, b, _ in rows)
    # a card number in the scanned column: the C loop hands it to the scrubber
    run = row((b"1", b"card 4111111111111111", b"4111111111111111"))
    assert rewriter.rewrite_run(run) == row((b"1", b"card ************1111",
                                             b"************1111"))
    assert rewriter.rewrite(run[5:]) == rewriter.rewrite_run(run)[5:]  # type: ignore[index]


@needs_c
@settings(max_examples=1000, deadline=None)
@given(st.data())
def test_mask_rows_refuses_malformed_runs_without_crashing(data: st.DataObject) -> None:
    run = bytearray(b"".join(row((b"12", b"4111111111111111", None)) for _ in range(3)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(run) - 1))
        run[at] = data.draw(st.integers(0, 255))
    run = run[:data.draw(st.integers(0, len(run)))]
    specs = (None, (rowscan.METHOD_PAN, mask_transform("pan").function), None)
    try:
        out = _rowscan.mask_rows(bytes(run), specs)
    except ValueError:
        return
    assert out[:1] in (b"", b"D")


@needs_c
def test_mask_rows_refuses_bad_specs_and_results() -> None:
    run = row((b"x",))
    with pytest.raises(TypeError, match="None or"):
        _rowscan.mask_rows(run, ((1,),))
    with pytest.raises(ValueError, match="unknown method code 9"):
        _rowscan.mask_rows(run, ((9, None),))
    with pytest.raises(TypeError, match="METHOD_CONST spec holds bytes"):
        _rowscan.mask_rows(run, ((rowscan.METHOD_CONST, "x"),))
    with pytest.raises(TypeError, match="returned str"):
        _rowscan.mask_rows(run, ((0, lambda v: "x"),))
    with pytest.raises(ValueError, match="DataRow has 1 columns, its description has 2"):
        _rowscan.mask_rows(run, (None, None))
    with pytest.raises(WithheldValue):
        _rowscan.mask_rows(run, ((0, _withheld),))


@needs_c
def test_mask_rows_hands_scanned_values_that_may_hold_a_card_number_to_the_scrubber() -> None:
    seen: list[bytes] = []

    def scrub(value: bytes) -> bytes:
        seen.append(value)
        return SCRUB_TEXT(value)  # type: ignore[return-value]

    scan = (rowscan.METHOD_SCAN, scrub)
    pan = (rowscan.METHOD_PAN, mask_transform("pan").function)
    run = row((b"note 1", b"4111111111111111")) + row((None, b""))
    arabic = "\u0661".encode() * 7  # other scripts: the precheck says maybe
    run += row((b"4111 1111 1111 1111", b"1")) + row((arabic, b"2"))
    assert _rowscan.mask_rows(run, (scan, pan)) == (
        row((b"note 1", b"************1111")) + row((None, b""))
        + row((b"**** **** **** 1111", b"*")) + row((arabic, b"*")))
    assert seen == [b"4111 1111 1111 1111", arabic]


def copy_data(data: bytes) -> bytes:
    return b"d" + struct.pack("!I", len(data) + 4) + data


_COPY_DATA = st.lists(st.sampled_from([b"1\t", b"41111111", b"11111", b" ", b"-", b"\n", b'"',
                                       b",", b"x", b"\xd9\xa3", b"\\N"]), max_size=12
                      ).map(b"".join)


@needs_c
@settings(max_examples=1500, deadline=None)
@given(st.lists(st.one_of(_COPY_DATA, st.binary(max_size=20)), max_size=6),
       st.sampled_from([-1, ord('"'), ord("'")]))
def test_copy_run_clean_equals_the_python_loop(datas: list[bytes], quote: int) -> None:
    run = b"".join(copy_data(d) for d in datas)
    assert _rowscan.copy_run_clean(run, quote) is rowscan.python_copy_run_clean(run, quote)


@needs_c
@settings(max_examples=1000, deadline=None)
@given(st.data())
def test_copy_run_clean_refuses_malformed_runs_as_the_python_loop_does(
        data: st.DataObject) -> None:
    """A fuzzed run: C and Python agree, or both raise ValueError (never a crash)."""
    run = bytearray(b"".join(copy_data(b"1\t4111111111111111\n") for _ in range(3)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(run) - 1))
        run[at] = data.draw(st.integers(0, 255))
    run = run[:data.draw(st.integers(0, len(run)))]
    outcomes = []
    for check in (_rowscan.copy_run_clean, rowscan.python_copy_run_clean):
        try:
            outcomes.append(check(bytes(run), -1))
        except ValueError:
            outcomes.append("ValueError")
    assert outcomes[0] == outcomes[1]


_LAYOUTS = {"text": CopyLayout(format="text"), "csv": CopyLayout(format="csv"),
            "csv-escape": CopyLayout(format="csv", escape=b"\\"),
            "csv-header": CopyLayout(format="csv", header=True)}


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(sorted(_LAYOUTS)), st.lists(_COPY_DATA, max_size=6),
       st.integers(0, 3))
def test_copy_run_clean_only_when_feed_relays_every_message_unchanged(
        layout: str, datas: list[bytes], fed: int) -> None:
    """`CopyOutRewriter.run_clean` (C when built, else the Python loop) is true only when
    `feed` would give back every message of the run as it is, from the same state; a run it
    declines goes through `feed`, so nothing it lets through is left unscanned."""
    rewriter = CopyOutRewriter([None, SCRUB_TEXT], False, _LAYOUTS[layout], 1 << 20)
    reference = CopyOutRewriter([None, SCRUB_TEXT], False, _LAYOUTS[layout], 1 << 20)
    for before in (b"1\tx\n", b"2,y\n", b"3\tz\n")[:fed]:  # the same earlier stream
        for r in (rewriter, reference):
            try:
                r.feed(before)
            except Exception:
                return
    run = b"".join(copy_data(d) for d in datas)
    if not rewriter.run_clean(run):
        return
    for data in datas:
        try:
            assert reference.feed(data) is data
        except Exception as exc:  # a record the rewriter would refuse: not clean
            raise AssertionError(f"run_clean passed what feed refuses: {exc}") from exc


def test_copy_run_clean_examples() -> None:
    clean = copy_data(b"1\t1\t0\t   \n") + copy_data(b"2\t1\t0\t   \n")
    check = rowscan.copy_run_clean
    assert check(clean, -1) and check(b"", -1)
    assert not check(clean + copy_data(b"3\t4111 1111 1111 1111\n"), -1)  # a card number
    assert not check(copy_data(b"3\t4111"), -1)  # a record that goes on in the next message
    assert not check(copy_data(b'"a\n'), ord('"'))  # inside a CSV quote
    assert check(copy_data(b'"a\n"\n'), ord('"'))
    with pytest.raises(ValueError):
        check(clean[:-1], -1)
    with pytest.raises(ValueError):
        check(b"D" + clean[1:], -1)
