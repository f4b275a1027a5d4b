"""Masking MySQL result rows: per-column transforms on text and binary rows, and the PAN
backstop on every value.

Owns: `ResultMasker`, one per result set, built from its column definitions and the verdict's
masker (which picks a transform per column definition); rewriting one row payload; the column
definitions a masked column is delivered with (NOT NULL cleared: its value may now be NULL);
scrubbing card numbers out of server text. Values: a string-typed column (text and binary
protocol alike: its value is its text) gets its mask's output and then the backstop; a masked
column of another type (a number, a date: no masked value of it is valid) is delivered as
NULL and counted as a warning, in the end-of-rows packet's warning count; an unmasked
non-string value in which a card number is found is NULL too (binary numbers are not read:
they hold no digits as text; DECIMAL, sent as its digits, is read). Must not: decide which
columns are masked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from adapters.enforcement.hooks import ValueTransform, WithheldValue
from adapters.mysql.messages import (
    STRING_TYPES,
    TYPE_DECIMAL,
    TYPE_NEWDECIMAL,
    BinaryRow,
    ColumnDefinition,
    decode_binary_row,
    decode_text_row,
    encode_binary_row,
    encode_text_row,
    lenenc_bytes,
    text_row_bounds,
)
from engine.masking import find_pans, may_hold_pan_bytes, scrub_pans

NOT_NULL_FLAG = 1
_DIGIT_TYPES = frozenset({TYPE_DECIMAL, TYPE_NEWDECIMAL})  # binary protocol: their digits
ColumnMasker = Callable[[ColumnDefinition], "ValueTransform | None"]


def scrub_text(value: bytes) -> bytes:
    """The PAN backstop on one value (UTF-8; other bytes as Latin-1, which keeps every byte
    and every digit where it is)."""
    if not may_hold_pan_bytes(value):
        return value
    try:
        return scrub_pans(value.decode("utf-8")).encode("utf-8")
    except UnicodeDecodeError:
        return scrub_pans(value.decode("latin-1")).encode("latin-1")


@dataclass
class ResultMasker:
    """The transforms of one result set, column by column (`add`), then its rows (`row`)."""

    binary: bool
    masker: ColumnMasker | None = None
    columns: list[ColumnDefinition] = field(default_factory=list)
    transforms: list[ValueTransform | None] = field(default_factory=list)
    withheld: int = 0  # values delivered as NULL (warnings)
    masks: bool = False  # some column has a transform
    _masked: list[int] = field(default_factory=list)  # the columns with one

    def add(self, column: ColumnDefinition) -> ColumnDefinition | None:
        """Note the next column; the definition to send instead, when it changes."""
        transform = self.masker(column) if self.masker is not None else None
        self.columns.append(column)
        self.transforms.append(transform)
        if transform is not None:
            self.masks = True
            self._masked.append(len(self.columns) - 1)
        if transform is not None and column.flags & NOT_NULL_FLAG:
            return replace(column, flags=column.flags & ~NOT_NULL_FLAG)
        return None

    def row(self, payload: bytes) -> bytes:
        """One row payload with its masked columns masked and card numbers scrubbed."""
        scan = may_hold_pan_bytes(payload)  # False: no value of the row needs the backstop
        if not self.masks and not scan:
            return payload
        if self.masks and scan and not self.binary:
            return self._masked_text_row(payload)
        if self.binary:
            types = [c.type for c in self.columns]
            row = decode_binary_row(payload, types)
            values = [self._value(i, v, True, scan) for i, v in enumerate(row.values)]
            return encode_binary_row(BinaryRow(values), types)
        return self._text_row(payload, scan)

    def _text_row(self, payload: bytes, scan: bool) -> bytes:
        values = decode_text_row(payload, len(self.columns))
        return encode_text_row([self._value(i, v, False, scan) for i, v in enumerate(values)])

    def _masked_text_row(self, payload: bytes) -> bytes:
        """A text row with a masked column, the usual masked read: only the masked values
        are cut out and rewritten, the rest of the row kept as bytes. The masked values hold
        the card numbers the row-wide precheck saw, so the backstop looks at the rest only
        (its pieces joined by NUL: a card number in a kept value is still a run of its bytes,
        and the length prefixes kept with it can only make the precheck say "look closer",
        when the row is read value by value)."""
        bounds = text_row_bounds(payload, len(self.columns))
        if bounds is None:
            return self._text_row(payload, True)
        cut = [i for i in self._masked if bounds[i][1] >= 0]  # (NULL stays NULL)
        kept, pos = [], 0
        for i in cut:
            kept.append(payload[pos:bounds[i][0]])
            pos = bounds[i][2]
        kept.append(payload[pos:])
        if may_hold_pan_bytes(b"\0".join(kept)):
            return self._text_row(payload, True)
        out: list[bytes] = []
        for i, piece in zip(cut, kept, strict=False):  # (kept: one more)
            _, start, stop = bounds[i]
            value = self._value(i, payload[start:stop], False, False)
            out.append(piece)
            out.append(b"\xfb" if value is None else lenenc_bytes(value))
        out.append(kept[-1])
        return b"".join(out)

    def _value(self, i: int, value: bytes | None, binary: bool, scan: bool) -> bytes | None:
        if value is None:
            return None
        transform = self.transforms[i]
        text = self.columns[i].type in STRING_TYPES
        if transform is not None:
            if not text:
                self.withheld += 1
                return None
            try:
                out = transform(value)
            except WithheldValue:
                self.withheld += 1
                return None
            return None if out is None else scrub_text(out)
        if not scan:
            return value
        if text:
            return scrub_text(value)
        if (binary and self.columns[i].type not in _DIGIT_TYPES) or not may_hold_pan_bytes(value):
            return value  # binary numbers and dates hold no digits as text
        if find_pans(value.decode("latin-1")):
            self.withheld += 1
            return None
        return value
