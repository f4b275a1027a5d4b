"""The result path's hot loops, in C when the optional extension `_rowscan` was built.

Owns: `run_end` (where a run of complete messages of one type ends: the framer's loop) and
`run_count` (the same, cut at a number of messages, with the count: a row budget's meter),
`may_hold_pan_bytes` (engine.masking's PAN precheck over a whole run), `copy_run_clean` (that
precheck over each CopyData of a run, so a scanned COPY goes out a run at a time) and
`mask_rows` (a whole run of DataRows masked at once), with the method codes of `mask_rows`
specs. Must not: decide
what to mask (`RowRewriter` builds the specs from its transforms) or handle what the C loop
refuses (a malformed row, a transform that raises: the caller falls back to its row-by-row
reference path).

`pip install -e .` builds `_rowscan.c` when a C compiler is present. Without it `run_end` is
the same loop in Python, `may_hold_pan_bytes` is engine.masking's and `mask_rows` is None, so
results are masked row by row (several times slower on large results; see
`docs/postgres-proxy.md`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from engine import masking

_U32 = struct.Struct("!I")

MaskRows = Callable[[bytes, tuple[object, ...]], bytes]

try:
    from adapters.postgres import _rowscan
except ImportError:  # no C compiler at install time
    _rowscan = None  # type: ignore[assignment]


def python_run_end(buf: bytes | bytearray, pos: int, code: int, limit: int) -> int:
    """`run_end` in Python (the reference of the C loop)."""
    end = len(buf)
    last = end - 5
    unpack = _U32.unpack_from
    while pos <= last and buf[pos] == code:
        following = pos + 1 + unpack(buf, pos + 1)[0]
        if not pos + 5 <= following <= end or following - pos > limit:
            break  # incomplete, or a bad length that the framer reports precisely
        pos = following
    return pos


def python_run_count(buf: bytes | bytearray, pos: int, code: int, limit: int,
                     max_count: int) -> tuple[int, int]:
    """`run_count` in Python (the reference of the C loop)."""
    end = len(buf)
    last = end - 5
    unpack = _U32.unpack_from
    count = 0
    while count < max_count and pos <= last and buf[pos] == code:
        following = pos + 1 + unpack(buf, pos + 1)[0]
        if not pos + 5 <= following <= end or following - pos > limit:
            break
        pos = following
        count += 1
    return pos, count


def python_copy_run_clean(run: bytes, quote: int) -> bool:
    """`copy_run_clean` in Python (the reference of the C loop)."""
    size = len(run)
    pos = 0
    clean = True
    while pos < size:
        if size - pos < 5 or run[pos] != 0x64:  # b"d"
            raise ValueError("not a run of complete CopyData messages")
        (length,) = _U32.unpack_from(run, pos + 1)
        if length < 4 or length > size - pos - 1:
            raise ValueError("CopyData length out of bounds")
        data = run[pos + 5:pos + 1 + length]
        pos += 1 + length
        if clean and (not data.endswith(b"\n")
                      or (quote >= 0 and data.count(quote) % 2)
                      or masking.may_hold_pan_bytes(data)):
            clean = False
    return clean


ACCELERATED = _rowscan is not None
"""Whether the C extension is in use."""

run_end: Callable[[bytes | bytearray, int, int, int], int] = (
    _rowscan.run_end if _rowscan is not None else python_run_end)
"""run_end(buffer, pos, code, limit): the end of the run of complete messages of type `code`
that starts at `pos` (`pos` when there is none); it stops before an incomplete message and
before one whose length is below 4 or whose size exceeds `limit`."""

run_count: Callable[[bytes | bytearray, int, int, int, int], tuple[int, int]] = (
    _rowscan.run_count if _rowscan is not None else python_run_count)
"""run_count(buffer, pos, code, limit, max_count): `run_end` of at most `max_count` messages,
and how many: `(end, count)` (a row budget's room; see `BackendDecoder.next_counted_run`)."""

may_hold_pan_bytes: Callable[[bytes], bool] = (
    _rowscan.may_hold_pan if _rowscan is not None else masking.may_hold_pan_bytes)
"""engine.masking.may_hold_pan_bytes (False: no card number can be in `data`), in C."""

copy_run_clean: Callable[[bytes, int], bool] = (
    _rowscan.copy_run_clean if _rowscan is not None else python_copy_run_clean)
"""copy_run_clean(run, quote): whether every CopyData message of `run` (a run of complete
ones) holds whole records (its data ends with a newline; with `quote` >= 0, CSV, an even
number of that byte) in which `may_hold_pan_bytes` finds nothing: what `CopyOutRewriter.feed`
relays unchanged, message by message. ValueError on a malformed run."""

mask_rows: MaskRows | None = _rowscan.mask_rows if _rowscan is not None else None
"""mask_rows(run, specs): the DataRows of `run` with columns masked, one spec per column: None
(copied) or (METHOD_*, transform). ValueError on a malformed row; a transform's exception
propagates."""

METHOD_CALL = 0
"""Every value goes through the transform."""
METHOD_PAN = 1
"""engine.masking's `pan` in C for ASCII values, the transform for others."""
METHOD_LAST4 = 2
"""`last4` in C for ASCII values, the transform for others."""
METHOD_NULL = 3
"""Every value becomes NULL."""
METHOD_SCAN = 4
"""The value is copied if `may_hold_pan_bytes` finds nothing in it, else it goes through the
transform (a scrubber)."""
METHOD_CONST = 5
"""Every non-NULL value becomes the bytes the spec holds instead of a transform (`redact`)."""
METHOD_EMAIL = 6
"""`email` in C for ASCII values, the transform for others."""
