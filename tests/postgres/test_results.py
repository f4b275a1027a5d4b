"""Result rewriting without a server: DataRow bodies, COPY text / CSV / binary streams."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.postgres import messages as m
from adapters.postgres.descriptors import ColumnDescriptor, CopyLayout
from adapters.postgres.results import (
    BINARY_COPY_SIGNATURE,
    CopyOutRewriter,
    RewriteError,
    RowRewriter,
    csv_quote,
    csv_split,
    describe_fields,
    plan_columns,
    text_escape,
    text_unescape,
)


def stars(value: bytes) -> bytes:
    return b"*" * len(value)


def body(values: tuple[bytes | None, ...]) -> bytes:
    return m.DataRow(values).encode()[5:]


def test_row_rewriter_transforms_text_nulls_binary_and_keeps_the_rest() -> None:
    rows = RowRewriter([None, stars, stars, lambda v: None], [0, 0, 1, 0])
    out = rows.rewrite(body((b"1", b"4111", b"\x00\x01", b"x")))
    assert out == body((b"1", b"****", None, None))
    assert rows.rewrite(body((b"1", None, None, None))) == body((b"1", None, None, None))


_PANS = st.sampled_from([b"4111111111111111", b"4111 1111 1111 1111", b"5500-0055-5555-5559",
                         b"1234567890123"])
_VALUES = st.one_of(st.none(), st.binary(max_size=24), _PANS,
                    st.tuples(st.binary(max_size=6), _PANS, st.binary(max_size=6)).map(
                        lambda t: b"".join(t)))
_KINDS = st.sampled_from(["none", "scan", "mask", "drop"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_KINDS, st.sampled_from([0, 1]), _VALUES), min_size=1, max_size=6))
def test_row_rewriter_equals_applying_every_transform(columns: list[tuple[str, int, bytes | None]]
                                                      ) -> None:
    """The prechecks (whole row; scanned values only, when masks share the row) only skip work:
    the result is what applying every column's transform to every value gives."""
    from adapters.enforcement.transforms import SCRUB_TEXT, mask_transform
    from adapters.postgres.results import binary_masked_notice

    by_kind = {"none": None, "scan": SCRUB_TEXT, "mask": mask_transform("pan"),
               "drop": lambda v: None}
    transforms = [by_kind[kind] for kind, _, _ in columns]
    formats = [fmt for _, fmt, _ in columns]
    rows = RowRewriter(transforms, formats)
    values = tuple(value for _, _, value in columns)
    expected = []
    for transform, fmt, value in zip(transforms, formats, values, strict=True):
        if transform is None or value is None:
            expected.append(value)
        elif fmt == 1:
            expected.append(None)  # a masked or scanned binary value is sent as NULL
        else:
            expected.append(transform(value))
    assert rows.rewrite(body(values)) == body(tuple(expected))
    assert binary_masked_notice("") in rows.notices or not any(
        fmt == 1 and kind != "none" for kind, fmt, _ in columns)


@pytest.mark.parametrize(("raw", "error"), [
    (body((b"1",)), "DataRow has 1 columns, its description has 2"),
    (b"\x00", "has no column count"),
    (b"\x00\x02\x00\x00\x00\x05ab", "DataRow column #0 has bad length 5"),
    (body((b"1", b"2")) + b"x", "1 trailing bytes"),
])
def test_row_rewriter_refuses_malformed_rows(raw: bytes, error: str) -> None:
    with pytest.raises(RewriteError, match=error):
        RowRewriter([None, stars], [0, 0]).rewrite(raw)


def test_transform_failures_are_rewrite_errors() -> None:
    def boom(value: bytes) -> bytes:
        raise ValueError("bad")

    with pytest.raises(RewriteError, match="transform of column #0 failed: ValueError: bad"):
        RowRewriter([boom], [0]).rewrite(body((b"x",)))
    with pytest.raises(RewriteError, match="returned str, expected bytes"):
        RowRewriter([lambda v: "x"], [0]).rewrite(body((b"x",)))  # type: ignore[list-item,return-value]


def test_plan_columns() -> None:
    fields = (m.FieldDescription("id", 1, 1, 23, 4, -1, 0),
              m.FieldDescription("pan", 1, 2, 25, -1, -1, 0))
    columns = describe_fields(fields, [0, 1])
    assert columns[1] == ColumnDescriptor(1, "pan", 1, 2, 25, -1, 1)
    assert plan_columns(columns, None) is None
    assert plan_columns(columns, lambda c: None) is None
    assert plan_columns(columns, lambda c: stars if c.attnum == 2 else None) == [None, stars]

    def broken(column: ColumnDescriptor) -> None:
        raise KeyError("x")

    with pytest.raises(RewriteError, match="masker failed for column #0 'id'"):
        plan_columns(columns, broken)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40), st.sampled_from([b"\t", b",", b"|"]))
def test_text_escape_round_trips(value: bytes, delimiter: bytes) -> None:
    escaped = text_escape(value, delimiter[0])
    assert delimiter not in escaped.replace(b"\\" + delimiter, b"")
    assert b"\n" not in escaped and b"\t" not in escaped.replace(b"\\t", b"")
    assert text_unescape(escaped) == value


def test_text_unescape_handles_postgres_escapes() -> None:
    assert text_unescape(b"a\\tb\\\\c\\101\\x41\\x4g\\q") == b"a\tb\\cAA\x04gq"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=10), min_size=1, max_size=5))
def test_csv_quote_and_split_round_trip(values: list[bytes]) -> None:
    record = b",".join(csv_quote(v, 44, 34, 34, b"") for v in values)
    assert [v for v, _ in csv_split(record, 44, 34, 34)] == values


def _stream(rewriter: CopyOutRewriter, data: bytes, step: int) -> bytes:
    out = b"".join(rewriter.feed(data[i:i + step]) for i in range(0, len(data), step))
    rewriter.finish()
    return out


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_copy_text_rewriting(step: int) -> None:
    data = b"1\t4111\tAnn\n2\t\\N\tB\\tob\n3\t55\\\\55\tCy\n\\.\n"
    out = _stream(CopyOutRewriter([None, stars, stars], False, CopyLayout(), 1024), data, step)
    assert out == b"1\t****\t***\n2\t\\N\t****\n3\t*****\t**\n\\.\n"


def test_copy_text_with_header_and_custom_layout() -> None:
    layout = CopyLayout(delimiter=b"|", null=b"NULL", header=True)
    rw = CopyOutRewriter([None, lambda v: v + b"|x"], False, layout, 1024)
    assert _stream(rw, b"id|pan\n1|NULL\n2|ab\n", 2) == b"id|pan\n1|NULL\n2|ab\\|x\n"


def test_copy_csv_rewriting_respects_quotes() -> None:
    # Raw tabs, quoted delimiters and newlines cannot move the masked column.
    data = b'1,"4111,1111\n1111",\t\t\n2,,"a""b"\n3,"",x\n'
    rw = CopyOutRewriter([None, stars, None], False, CopyLayout(format="csv"), 1024)
    assert _stream(rw, data, 1) == b'1,**************,\t\t\n2,,"a""b"\n3,"",x\n'


def test_copy_csv_with_backslash_escape() -> None:
    layout = CopyLayout(format="csv", escape=b"\\")
    rw = CopyOutRewriter([lambda v: v.upper(), None], False, layout, 1024)
    assert _stream(rw, b'"a\\"b",c\n', 1) == b'"A\\"B",c\n'


@pytest.mark.parametrize(("layout", "data", "error"), [
    (CopyLayout(), b"1\t2\t3\n", "COPY record has 3 fields, expected 2"),
    (CopyLayout(format="csv"), b'"open\n', None),
    (CopyLayout(), b"no newline", "COPY data ended inside a record"),
])
def test_copy_text_failures(layout: CopyLayout, data: bytes, error: str | None) -> None:
    rw = CopyOutRewriter([None, stars], False, layout, 1024)
    with pytest.raises(RewriteError, match=error or "ended inside a record"):
        rw.feed(data)
        rw.finish()


def test_copy_text_without_layout_is_refused() -> None:
    with pytest.raises(RewriteError, match="needs the statement's COPY layout"):
        CopyOutRewriter([stars], False, None, 1024)


def test_copy_record_size_is_bounded() -> None:
    rw = CopyOutRewriter([stars], False, CopyLayout(), 16)
    with pytest.raises(RewriteError, match="longer than 16 bytes"):
        rw.feed(b"x" * 17)


def _binary_copy(rows: list[tuple[bytes | None, ...]]) -> bytes:
    out = [BINARY_COPY_SIGNATURE, struct.pack("!ii", 0, 4), b"ext!"]
    for row in rows:
        out.append(struct.pack("!h", len(row)))
        for value in row:
            out.append(struct.pack("!i", -1) if value is None
                       else struct.pack("!i", len(value)) + value)
    out.append(struct.pack("!h", -1))
    return b"".join(out)


@pytest.mark.parametrize("step", [1, 7, 10_000])
def test_copy_binary_nulls_masked_fields(step: int) -> None:
    data = _binary_copy([(b"\x00\x00\x00\x01", b"4111"), (b"\x00\x00\x00\x02", None)])
    expected = _binary_copy([(b"\x00\x00\x00\x01", None), (b"\x00\x00\x00\x02", None)])
    assert _stream(CopyOutRewriter([None, stars], True, None, 1 << 20), data, step) == expected


def test_copy_binary_failures() -> None:
    with pytest.raises(RewriteError, match="PGCOPY signature"):
        CopyOutRewriter([stars], True, None, 1024).feed(b"NOTPGCOPY" + b"\x00" * 20)
    rw = CopyOutRewriter([stars], True, None, 1024)
    with pytest.raises(RewriteError, match="data after the trailer"):
        rw.feed(_binary_copy([]) + b"\x00\x01")
    rw = CopyOutRewriter([stars], True, None, 1024)
    with pytest.raises(RewriteError, match="record has 2 fields"):
        rw.feed(_binary_copy([(b"a", b"b")]))
    rw = CopyOutRewriter([stars], True, None, 1024)
    rw.feed(_binary_copy([(b"a",)])[:-2])
    with pytest.raises(RewriteError, match="without its trailer"):
        rw.finish()


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=24), st.text("0123456789", max_size=22).map(str.encode),
                 st.text(max_size=20).map(str.encode)))
def test_pan_mask_on_bytes_equals_mask_pan(value: bytes) -> None:
    from adapters.enforcement.transforms import mask_transform
    from engine.masking import mask_pan

    expected = mask_pan(value.decode("utf-8", "surrogateescape"))
    assert mask_transform("pan")(value) == expected.encode("utf-8", "surrogateescape")


_COPY_BYTES = st.lists(st.sampled_from([b"a", b"1", b",", b"\t", b'"', b"\\", b"\n", b"\\N",
                                        b"\r", b"|"]), max_size=40).map(b"".join)


def _outcome(rewriter: CopyOutRewriter, data: bytes, cuts: list[int]) -> object:
    """What `feed` gives for `data` cut at `cuts`, then `finish`; or the error."""
    bounds = [0, *cuts, len(data)]
    try:
        out = b"".join(rewriter.feed(data[a:b]) for a, b in itertools.pairwise(bounds))
        rewriter.finish()
    except RewriteError as exc:
        return ("RewriteError", str(exc))
    return out


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(["text", "csv", "csv-header"]), _COPY_BYTES,
       st.lists(st.integers(0, 40), max_size=4).map(sorted))
def test_copy_records_found_by_newline_equal_the_bytewise_loop(
        layout: str, data: bytes, cuts: list[int]) -> None:
    """`_records_by_newline` (find and count; unquoted CSV split by its delimiter) gives what
    the byte-at-a-time reference gives, however the stream is cut into CopyData messages."""
    layouts = {"text": CopyLayout(), "csv": CopyLayout(format="csv"),
               "csv-header": CopyLayout(format="csv", header=True)}
    cuts = [c for c in cuts if c <= len(data)]
    fast = CopyOutRewriter([stars, None], False, layouts[layout], 1024)
    reference = CopyOutRewriter([stars, None], False, layouts[layout], 1024)
    reference._records = reference._records_bytewise  # type: ignore[method-assign]
    assert _outcome(fast, data, cuts) == _outcome(reference, data, cuts)


@settings(max_examples=1000, deadline=None)
@given(_COPY_BYTES, st.sampled_from([9, 44, 124]))
def test_copy_escapes_round_trip(value: bytes, delimiter: int) -> None:
    escaped = text_escape(value, delimiter)
    assert text_unescape(escaped) == value
    assert delimiter not in escaped.replace(b"\\" + bytes((delimiter,)), b"")
    quoted = csv_quote(value, delimiter, 34, 34, b"")
    assert [v for v, _ in csv_split(quoted, delimiter, 34, 34)] == [value]
