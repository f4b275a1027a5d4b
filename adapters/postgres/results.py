"""Result rewriting: apply per-column value transforms to DataRow bodies and COPY TO STDOUT data.

Owns: choosing the transforms of a result set from its column descriptors (`plan_columns`),
rewriting one DataRow body (`RowRewriter`), and the streaming COPY-out rewriters for the text,
CSV and binary formats (`CopyOutRewriter`), with PostgreSQL's exact escaping rules. Binary
values of masked columns become NULL. Must not: decide which columns to mask (the masker in the
verdict does), do I/O, or touch rows that need no rewriting (callers relay those raw).

Anything that cannot be rewritten safely (a row whose column count does not match its
description, a transform that raises, an unterminated COPY record) raises `RewriteError`; the
proxy then ends the session rather than deliver unmasked data. A transform that raises
`WithheldValue` gets NULL and a notice instead; so does a masked column in binary format
(unless its transform is a binary-safe `ScrubTransform`). The notices of a result set are
collected in `notices` (each distinct text once) for the session to send.

When every transform of a result is a `ScrubTransform` with the same `may_match` (nothing is
masked, only scanned), `precheck` is that function: the caller may relay rows or COPY chunks
that cannot match without rewriting them (`RowRewriter.rewrite` and `CopyOutRewriter.feed`
apply it themselves too; `CopyOutRewriter.run_clean` applies it to a whole run of CopyData
messages in C).

`RowRewriter.rewrite_run` rewrites a whole run of DataRows in C (`rowscan.mask_rows`) when the
extension is built; `rewrite`, one row at a time, is the reference it must equal and what
runs when the C loop declines.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from adapters.enforcement.hooks import MaskTransform, ScrubTransform, ValueTransform, WithheldValue
from adapters.postgres import rowscan
from adapters.postgres.descriptors import ColumnDescriptor, CopyLayout, PgColumnMasker
from adapters.postgres.messages import FieldDescription

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_NULL = _I32.pack(-1)
BINARY_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


class RewriteError(Exception):
    """A result could not be rewritten as its masks require; the session must end."""


class _Notices:
    """The notices a result set has to tell the client, each distinct text once."""

    def __init__(self) -> None:
        self.notices: list[str] = []
        self._seen: set[str] = set()

    def notice(self, text: str) -> None:
        if text not in self._seen:
            self._seen.add(text)
            self.notices.append(text)

    def take_notices(self) -> list[str]:
        taken, self.notices = self.notices, []
        return taken


def _apply(transform: ValueTransform, value: bytes, index: int,
           notices: _Notices | None = None, what: str = "column") -> bytes | None:
    try:
        out = transform(value)
    except WithheldValue as withheld:
        if notices is not None:
            notices.notice(withheld.notice)
        return None
    except Exception as exc:
        raise RewriteError(f"transform of {what} #{index} failed: {type(exc).__name__}: "
                           f"{exc}") from exc
    if out is None or type(out) is bytes:
        return out
    if not isinstance(out, bytes | bytearray):
        raise RewriteError(f"transform of {what} #{index} returned {type(out).__name__}, "
                           "expected bytes or None")
    return bytes(out)


def plan_columns(descriptors: Sequence[ColumnDescriptor], masker: PgColumnMasker | None
                 ) -> list[ValueTransform | None] | None:
    """One transform (or None) per column, or None when no column needs rewriting."""
    if masker is None:
        return None
    plan: list[ValueTransform | None] = []
    for column in descriptors:
        try:
            plan.append(masker(column))
        except Exception as exc:
            raise RewriteError(f"masker failed for column #{column.index} {column.name!r}: "
                               f"{type(exc).__name__}: {exc}") from exc
    return plan if any(t is not None for t in plan) else None


def describe_fields(fields: Sequence[FieldDescription], formats: Sequence[int] | None = None
                    ) -> list[ColumnDescriptor]:
    """Column descriptors of a RowDescription; `formats` overrides its format codes (a portal
    bound with result formats, described through its statement)."""
    out = []
    for i, f in enumerate(fields):
        fmt = f.format if formats is None else formats[i]
        out.append(ColumnDescriptor(i, f.name, f.table_oid, f.column_attnum, f.type_oid,
                                    f.type_modifier, fmt))
    return out


def binary_masked_notice(name: str) -> str:
    label = f'column "{name}"' if name else "a masked column"
    return (f"{label} is masked by policy and was requested in binary format: its values are "
            "sent as NULL")


def scrub_precheck(transforms: Sequence[ValueTransform | None]
                   ) -> Callable[[bytes], bool] | None:
    """The shared `may_match` when every transform is a ScrubTransform using it, else None."""
    check = None
    for transform in transforms:
        if transform is None:
            continue
        if not isinstance(transform, ScrubTransform):
            return None
        if check is None:
            check = transform.may_match
        elif transform.may_match is not check:
            return None
    return check


def _nulls_binary(transform: ValueTransform | None) -> bool:
    """Whether a binary-format value with this transform is replaced by NULL."""
    return transform is not None and not (isinstance(transform, ScrubTransform)
                                          and transform.binary_safe)


_C_METHODS = {"pan": rowscan.METHOD_PAN, "last4": rowscan.METHOD_LAST4,
              "null": rowscan.METHOD_NULL, "email": rowscan.METHOD_EMAIL}


def _run_specs(transforms: Sequence[ValueTransform | None], nulls: Sequence[bool]
               ) -> tuple[object, ...] | None:
    """The `rowscan.mask_rows` specs of a result, or None when no column has a transform or
    the C loop is not built. A scanned column's values go to its scrubber only when the PAN
    precheck (`rowscan.may_hold_pan_bytes`, the one the scrubber uses) finds something."""
    if rowscan.mask_rows is None:
        return None
    specs: list[object] = []
    for transform, nulled in zip(transforms, nulls, strict=True):
        if transform is None:
            specs.append(None)
        elif nulled:
            specs.append((rowscan.METHOD_NULL, transform))
        elif isinstance(transform, ScrubTransform):
            if transform.may_match is not rowscan.may_hold_pan_bytes:
                return None
            specs.append((rowscan.METHOD_SCAN, transform.scrub))
        elif isinstance(transform, MaskTransform) and transform.method == "redact":
            specs.append((rowscan.METHOD_CONST, transform.function(b"")))  # one placeholder
        elif isinstance(transform, MaskTransform):
            specs.append((_C_METHODS.get(transform.method, rowscan.METHOD_CALL),
                          transform.function))
        else:
            specs.append((rowscan.METHOD_CALL, transform))
    return tuple(specs) if any(spec is not None for spec in specs) else None


class RowRewriter(_Notices):
    """Rewrites the DataRow bodies of one result set. `names` (the column names) only serve
    the notices.

    Scrub transforms (`ScrubTransform`) that share one `may_match` are skipped together for a
    row in which it finds nothing; the other transforms (masks) always apply. `precheck` is
    set when there are no others, so the caller may skip whole runs of rows."""

    def __init__(self, transforms: Sequence[ValueTransform | None], formats: Sequence[int],
                 names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.transforms = list(transforms)
        self.formats = list(formats)
        self._null = [fmt != 0 and _nulls_binary(t) for t, fmt in zip(transforms, formats,
                                                                         strict=True)]
        for i, nulled in enumerate(self._null):
            if nulled:
                self.notice(binary_masked_notice(names[i] if names else ""))
        scrubs = [t if isinstance(t, ScrubTransform) and not self._null[i] else None
                  for i, t in enumerate(self.transforms)]
        self._check = scrub_precheck(scrubs)
        hard = [None if scrubs[i] is not None else t for i, t in enumerate(self.transforms)]
        # what applies to a row in which `_check` finds nothing (None: nothing at all)
        self._unscanned = hard if any(t is not None for t in hard) else None
        self.precheck = self._check if self._unscanned is None else None
        self._specs = _run_specs(self.transforms, self._null)

    def rewrite_run(self, run: bytes) -> bytes | None:
        """A whole run of DataRow messages rewritten at once by the C loop, or None when the
        row-by-row path (`rewrite`) must do it: the C loop is not built, a row is malformed,
        or a transform raised (`WithheldValue`: the notice is the row-by-row path's). Equal
        to `rewrite` on every row otherwise."""
        specs = self._specs
        if specs is None or rowscan.mask_rows is None:
            return None
        try:
            return rowscan.mask_rows(run, specs)
        except Exception:
            return None

    def rewrite(self, body: bytes) -> bytes:
        """A new DataRow body (without the type and length header); `body` itself when no
        value changed.

        With masks and scans in one row, the scans are deferred: a masked value (a card
        number, typically) would make the whole-row precheck say "maybe" on every row, so the
        precheck runs on the scanned values alone, and the scans apply only when it hits."""
        if self._check is not None and self._unscanned is None and not self._check(body):
            return body
        size = len(body)
        if size < 2:
            raise RewriteError(f"DataRow body of {size} bytes has no column count")
        (count,) = _I16.unpack_from(body, 0)
        transforms = self.transforms
        if count != len(transforms):
            raise RewriteError(f"DataRow has {count} columns, its description has "
                               f"{len(transforms)}")
        defer = self._check is not None
        replaced: list[tuple[int, int, bytes]] = []  # (start, end, new length + value)
        deferred: list[tuple[int, ValueTransform, int, int]] = []  # scans, run if needed
        pos = 2
        unpack = _I32.unpack_from
        nulls = self._null
        unscanned = self._unscanned
        for i, transform in enumerate(transforms):
            if pos + 4 > size:
                raise RewriteError(f"DataRow truncated at column #{i}")
            (length,) = unpack(body, pos)
            end = pos + 4 + max(length, 0)
            if end > size or length < -1:
                raise RewriteError(f"DataRow column #{i} has bad length {length}")
            if transform is not None and length != -1:
                if nulls[i]:
                    replaced.append((pos, end, _NULL))
                elif defer and unscanned is not None and unscanned[i] is None:
                    deferred.append((i, transform, pos, end))
                else:
                    self._replace(transform, body, i, pos, end, replaced)
            pos = end
        if pos != size:
            raise RewriteError(f"DataRow has {size - pos} trailing bytes")
        if deferred and self._check is not None and self._check(
                b"\n".join(body[start + 4:end] for _, _, start, end in deferred)):
            for i, transform, start, end in deferred:
                self._replace(transform, body, i, start, end, replaced)
            replaced.sort()
        if not replaced:
            return body
        parts: list[bytes] = []
        copied = 0
        for start, end, new in replaced:
            parts.append(body[copied:start])
            parts.append(new)
            copied = end
        parts.append(body[copied:])
        return b"".join(parts)

    def _replace(self, transform: ValueTransform, body: bytes, index: int, start: int,
                 end: int, replaced: list[tuple[int, int, bytes]]) -> None:
        value = body[start + 4:end]
        out = _apply(transform, value, index, self)
        if out is not value:
            replaced.append((start, end, _NULL if out is None else _I32.pack(len(out)) + out))


# --------------------------------------------------------------------------------------------
# COPY text format (PostgreSQL's CopyReadAttributesText / CopyAttributeOutText)

_TEXT_UNESCAPE = {ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9,
                  ord("v"): 11}
_TEXT_ESCAPE = {8: b"\\b", 12: b"\\f", 10: b"\\n", 13: b"\\r", 9: b"\\t", 11: b"\\v",
                92: b"\\\\"}
_HEX = b"0123456789abcdefABCDEF"


def text_unescape(raw: bytes) -> bytes:
    if 92 not in raw:  # no backslash: nothing is escaped
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        i += 1
        if c != 92 or i >= n:
            out.append(c)
            continue
        c = raw[i]
        i += 1
        if 48 <= c <= 55:  # octal, up to three digits
            value = c - 48
            for _ in range(2):
                if i < n and 48 <= raw[i] <= 55:
                    value = value * 8 + raw[i] - 48
                    i += 1
            out.append(value & 0xFF)
        elif c == ord("x") and i < n and raw[i] in _HEX:
            digits = raw[i:i + 1]
            i += 1
            if i < n and raw[i] in _HEX:
                digits += raw[i:i + 1]
                i += 1
            out.append(int(digits, 16))
        else:
            out.append(_TEXT_UNESCAPE.get(c, c))
    return bytes(out)


_TEXT_SPECIAL = bytes(_TEXT_ESCAPE)


def text_escape(value: bytes, delimiter: int) -> bytes:
    if len(value.translate(None, _TEXT_SPECIAL + bytes((delimiter,)))) == len(value):
        return value  # nothing to escape (the common case, found at C speed)
    out = bytearray()
    for c in value:
        escaped = _TEXT_ESCAPE.get(c)
        if escaped is not None:
            out += escaped
        elif c == delimiter:
            out += b"\\" + bytes((c,))
        else:
            out.append(c)
    return bytes(out)


# --------------------------------------------------------------------------------------------
# COPY CSV format (PostgreSQL's CopyReadAttributesCSV / CopyAttributeOutCSV)


def csv_split(record: bytes, delimiter: int, quote: int, escape: int
              ) -> list[tuple[bytes, bool]]:
    """Fields of one CSV record (without its newline) as (unquoted value, was_quoted)."""
    fields: list[tuple[bytes, bool]] = []
    value = bytearray()
    quoted = in_quote = False
    i, n = 0, len(record)
    while i < n:
        c = record[i]
        i += 1
        if in_quote:
            if c == escape and i < n and record[i] in (quote, escape) and (
                    escape != quote or record[i] == quote):
                value.append(record[i])
                i += 1
            elif c == quote:
                in_quote = False
            else:
                value.append(c)
        elif c == quote:
            in_quote = quoted = True
        elif c == delimiter:
            fields.append((bytes(value), quoted))
            value = bytearray()
            quoted = False
        else:
            value.append(c)
    if in_quote:
        raise RewriteError("unterminated CSV quoted field in COPY data")
    fields.append((bytes(value), quoted))
    return fields


def csv_quote(value: bytes, delimiter: int, quote: int, escape: int, null: bytes) -> bytes:
    """A CSV field as PostgreSQL writes it: quoted when it holds a delimiter, quote or newline,
    or could be mistaken for NULL or the end-of-data marker."""
    special = bytes((delimiter, quote, 10, 13))
    if value == null or value == b"\\." or len(value.translate(None, special)) != len(value):
        out = bytearray((quote,))
        for c in value:
            if c in (quote, escape):
                out.append(escape)
            out.append(c)
        out.append(quote)
        return bytes(out)
    return value


def _csv_raw_fields(record: bytes, delimiter: int, quote: int, escape: int) -> list[bytes]:
    """The raw (still quoted) text of each CSV field, to relay unmasked fields byte for byte."""
    fields: list[bytes] = []
    start = 0
    in_quote = False
    i, n = 0, len(record)
    while i < n:
        c = record[i]
        if in_quote and c == escape and escape != quote and i + 1 < n and record[i + 1] in (
                quote, escape):
            i += 2
            continue
        if c == quote:
            in_quote = not in_quote
        elif c == delimiter and not in_quote:
            fields.append(record[start:i])
            start = i + 1
        i += 1
    fields.append(record[start:])
    return fields


# --------------------------------------------------------------------------------------------
# Streaming COPY-out rewriting


class CopyOutRewriter(_Notices):
    """Rewrites the CopyData stream of one `COPY ... TO STDOUT`. `feed()` returns the rewritten
    bytes of every complete record so far (records may span CopyData messages); `finish()`
    checks nothing is left over at CopyDone. In binary COPY the values of columns with a
    transform become NULL (the types are unknown here), with a notice, except that binary-safe
    `ScrubTransform`s (string columns, whose binary form is their text) are applied."""

    def __init__(self, transforms: Sequence[ValueTransform | None], binary: bool,
                 layout: CopyLayout | None, max_buffer: int) -> None:
        super().__init__()
        self.transforms = list(transforms)
        self.binary = binary
        self.precheck = None if binary else scrub_precheck(self.transforms)
        if binary and any(_nulls_binary(t) for t in self.transforms):
            self.notice("binary COPY: masked columns are sent as NULL")
        self.max_buffer = max_buffer
        self._buffer = bytearray()
        self._done = False
        self._in_quote = False
        self._scan = 0
        if binary:
            self._header_pending = True
            self.csv = False
            self.delimiter = self.quote = self.escape = 0
            self.null = b""
            return
        if layout is None:
            raise RewriteError("masked COPY TO STDOUT in text format needs the statement's COPY "
                               "layout, and the verdict gave none")
        self.csv = layout.format == "csv"
        delimiter = layout.delimiter or (b"," if self.csv else b"\t")
        if len(delimiter) != 1 or len(layout.quote) != 1 or (
                layout.escape is not None and len(layout.escape) != 1):
            raise RewriteError("COPY delimiter, quote and escape must be one byte each")
        self.delimiter = delimiter[0]
        self.quote = layout.quote[0]
        self.escape = layout.escape[0] if layout.escape else self.quote
        self.null = layout.null if layout.null is not None else (b"" if self.csv else b"\\N")
        self._header_pending = layout.header

    def feed(self, data: bytes) -> bytes:
        if (self.precheck is not None and not self._buffer and not self._header_pending
                and data.endswith(b"\n") and self._unquoted_after(data)
                and not self.precheck(data)):
            return data  # whole records, nothing to scrub: relayed as they are
        self._buffer += data
        out = self._binary() if self.binary else self._records()
        if len(self._buffer) > self.max_buffer:
            raise RewriteError(f"COPY record longer than {self.max_buffer} bytes")
        return out

    def run_clean(self, run: bytes) -> bool:
        """Whether `feed` would return every CopyData of `run` (a run of complete messages,
        `BackendDecoder.next_run`) unchanged, checked in one C pass
        (`rowscan.copy_run_clean`): the caller then relays the run whole. False sends it
        message by message through `feed`."""
        if (self.precheck is not rowscan.may_hold_pan_bytes or self._buffer
                or self._header_pending):
            return False
        if self.csv and self.escape != self.quote:
            return False
        return rowscan.copy_run_clean(run, self.quote if self.csv else -1)

    def _unquoted_after(self, data: bytes) -> bool:
        """Whether parsing `data` from a record boundary ends outside a CSV quote (so skipping
        it keeps the parser's state); always true for the text format."""
        if not self.csv:
            return True
        return self.escape == self.quote and data.count(self.quote) % 2 == 0

    def finish(self) -> None:
        if self._buffer:
            raise RewriteError(f"COPY data ended inside a record ({len(self._buffer)} bytes "
                               "left)")
        if self.binary and not self._done and not self._header_pending:
            raise RewriteError("binary COPY data ended without its trailer")

    # text and CSV: records end at a newline (outside quotes for CSV)
    def _records(self) -> bytes:
        if not self.csv or self.escape == self.quote:
            return self._records_by_newline()
        return self._records_bytewise()

    def _records_bytewise(self) -> bytes:
        """`_records` a byte at a time: any CSV escape (the reference of
        `_records_by_newline`)."""
        out: list[bytes] = []
        buf = self._buffer
        start = 0
        i = self._scan
        n = len(buf)
        csv, quote, escape = self.csv, self.quote, self.escape
        while i < n:
            c = buf[i]
            if csv and self._in_quote and c == escape and escape != quote:
                if i + 1 >= n:
                    break  # need the next byte to know whether it escapes
                if buf[i + 1] in (quote, escape):
                    i += 2
                    continue
            if csv and c == quote:
                self._in_quote = not self._in_quote
            elif c == 10 and not self._in_quote:
                out.append(self._record(bytes(buf[start:i])) + b"\n")
                start = i + 1
            i += 1
        del buf[:start]
        self._scan = i - start
        return b"".join(out)

    def _records_by_newline(self) -> bytes:
        """`_records` when a newline ends a record unless inside a CSV quote that no escape
        character can hide (text format: data newlines are escaped; CSV whose escape is its
        quote: a quote byte always toggles the quote), found with `find` and `count`."""
        out: list[bytes] = []
        buf = self._buffer
        start = 0
        i = self._scan
        csv, quote = self.csv, self.quote
        while (newline := buf.find(b"\n", i)) >= 0:
            if csv and buf.count(quote, i, newline) % 2:
                self._in_quote = not self._in_quote
            i = newline + 1
            if not self._in_quote:
                out.append(self._record(bytes(buf[start:newline])) + b"\n")
                start = i
        if csv and buf.count(quote, i) % 2:
            self._in_quote = not self._in_quote
        self._scan = len(buf) - start
        del buf[:start]
        return b"".join(out)

    def _record(self, record: bytes) -> bytes:
        if self._header_pending:
            self._header_pending = False
            return record
        if record == b"\\.":
            return record
        sep = bytes((self.delimiter,))
        if self.csv:
            if self.quote in record:
                fields = csv_split(record, self.delimiter, self.quote, self.escape)
                raw_fields = _csv_raw_fields(record, self.delimiter, self.quote, self.escape)
            else:  # nothing quoted: the fields are the raw text between delimiters
                raw_fields = record.split(sep)
                fields = [(field, False) for field in raw_fields]
            self._check_count(len(fields))
            for i, transform in enumerate(self.transforms):
                value, quoted = fields[i]
                if transform is None or (value == self.null and not quoted):
                    continue
                new = _apply(transform, value, i, self, "COPY column")
                if new is value:
                    continue  # unchanged (a scrub that found nothing): keep the raw field
                raw_fields[i] = self.null if new is None else csv_quote(
                    new, self.delimiter, self.quote, self.escape, self.null)
            return sep.join(raw_fields)
        raw = record.split(sep)
        self._check_count(len(raw))
        for i, transform in enumerate(self.transforms):
            if transform is None or raw[i] == self.null:
                continue
            value = text_unescape(raw[i])
            new = _apply(transform, value, i, self, "COPY column")
            if new is value:
                continue
            raw[i] = self.null if new is None else text_escape(new, self.delimiter)
        return sep.join(raw)

    def _check_count(self, count: int) -> None:
        if count != len(self.transforms):
            raise RewriteError(f"COPY record has {count} fields, expected "
                               f"{len(self.transforms)} (the layout does not match the data)")

    # binary: signature, flags, header extension, then tuples, then a -1 trailer
    def _binary(self) -> bytes:
        buf = self._buffer
        out: list[bytes] = []
        pos = 0
        if self._header_pending:
            if len(buf) < 19:
                return b""
            if bytes(buf[:11]) != BINARY_COPY_SIGNATURE:
                raise RewriteError("binary COPY data does not start with the PGCOPY signature")
            (ext,) = _I32.unpack_from(buf, 15)
            if ext < 0:
                raise RewriteError(f"binary COPY header extension length {ext} is negative")
            if len(buf) < 19 + ext:
                return b""
            out.append(bytes(buf[:19 + ext]))
            pos = 19 + ext
            self._header_pending = False
        while pos + 2 <= len(buf):
            if self._done:
                raise RewriteError("binary COPY data after the trailer")
            (count,) = _I16.unpack_from(buf, pos)
            if count == -1:
                out.append(bytes(buf[pos:pos + 2]))
                pos += 2
                self._done = True
                continue
            self._check_count(count)
            end = pos + 2
            parts = [bytes(buf[pos:end])]
            complete = True
            for i, transform in enumerate(self.transforms):
                if end + 4 > len(buf):
                    complete = False
                    break
                (length,) = _I32.unpack_from(buf, end)
                if length < -1:
                    raise RewriteError(f"binary COPY field #{i} has bad length {length}")
                stop = end + 4 + max(length, 0)
                if stop > len(buf):
                    complete = False
                    break
                if transform is None:
                    parts.append(bytes(buf[end:stop]))
                elif not _nulls_binary(transform) and length != -1:
                    value = bytes(buf[end + 4:stop])  # a binary-safe scrub: text bytes
                    new = _apply(transform, value, i, self, "COPY column")
                    parts.append(_NULL if new is None else _I32.pack(len(new)) + new)
                else:
                    parts.append(_NULL)
                end = stop
            if not complete:
                break
            out.append(b"".join(parts))
            pos = end
        del buf[:pos]
        return b"".join(out)
