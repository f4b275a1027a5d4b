"""Value transforms: masking methods on result values, and the card-number backstop.

Owns: `mask_transform(method)` (a masking method of `engine.masking` on UTF-8 text values, as a
`MaskTransform`), the backstop scrubbers (`SCRUB_TEXT`, `SCRUB_TEXT_BINARY`, `SCRUB_JSON`,
`withhold_pans`: card numbers found in values the policies did not mask), `withheld` (NULL with
a notice, for a masked value whose type cannot hold the masked text), and `scrub_server_text`
(the backstop on what a server says outside result rows: errors, notices, notifications,
command output). Shared by every adapter; which transform a column gets is the adapter's
masking (PostgreSQL: `adapters.postgres.column_masks`). Must not: read protocol bytes or
choose columns.

The precheck `may_hold_pan_bytes` is the C one built with the PostgreSQL row loop
(`adapters.postgres.rowscan`, pure Python without a compiler); it reads no protocol bytes.
"""

from __future__ import annotations

import json

from adapters.enforcement.hooks import (
    MaskTransform,
    ScrubTransform,
    ValueTransform,
    WithheldValue,
)
from adapters.postgres.rowscan import may_hold_pan_bytes
from engine.masking import (
    MASK_CHAR,
    MASK_METHODS,
    PAN_KEEP_DIGITS,
    PAN_MIN_DIGITS,
    find_pans,
    mask_pan,
    scrub_pans,
)


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _scrub_text(value: bytes) -> bytes:
    if not may_hold_pan_bytes(value):
        return value
    text = _decode(value)
    scrubbed = scrub_pans(text)
    return value if scrubbed is text else _encode(scrubbed)


def scrub_server_text(value: bytes) -> bytes:
    """The backstop on a string the server sends outside result rows (a field of an error or
    notice, a notification's payload, command output): such text can quote a masked column's
    value."""
    return _scrub_text(value)


def _scrub_json(value: bytes) -> bytes | None:
    out = _scrub_text(value)
    if out is value:
        return value
    try:
        json.loads(out)
    except ValueError:
        raise WithheldValue("a JSON value held a card number where masking would break it: "
                            "sent as NULL") from None
    return out


SCRUB_TEXT = ScrubTransform(_scrub_text, may_hold_pan_bytes)
SCRUB_TEXT_BINARY = ScrubTransform(_scrub_text, may_hold_pan_bytes, binary_safe=True)
SCRUB_JSON = ScrubTransform(_scrub_json, may_hold_pan_bytes)


def withhold_pans(name: str) -> ScrubTransform:
    """The backstop for a column whose type cannot hold a masked card number: a value in which
    one is found is sent as NULL with a notice naming the column."""
    notice = (f'a value of column "{name}" holds a card number and its type cannot hold a '
              "masked value: sent as NULL")

    def scrub(value: bytes) -> bytes:
        if may_hold_pan_bytes(value) and find_pans(_decode(value)):
            raise WithheldValue(notice)
        return value

    return ScrubTransform(scrub, may_hold_pan_bytes)


def mask_transform(method: str) -> MaskTransform:
    """The masking method on text values (UTF-8)."""
    if method == "pan":
        return MaskTransform(method, _mask_pan_bytes)
    if method == "null":
        return MaskTransform(method, _null)
    function = MASK_METHODS[method].function

    def transform(value: bytes) -> bytes | None:
        out = function(_decode(value))
        return None if out is None else _encode(out)

    return MaskTransform(method, transform)


_MASK_BYTE = MASK_CHAR.encode()


def _mask_pan_bytes(value: bytes) -> bytes:
    """`mask_pan` on UTF-8 text; a value of ASCII digits only (the usual PAN column) is done
    on the bytes, exactly as `mask_pan` does it (a masked row costs ~1 µs less)."""
    if value.isdigit():  # bytes: ASCII digits only, and not empty
        n = len(value)
        if n >= PAN_MIN_DIGITS:
            return _MASK_BYTE * (n - PAN_KEEP_DIGITS) + value[-PAN_KEEP_DIGITS:]
        return _MASK_BYTE * n
    return _encode(mask_pan(_decode(value)))


def _null(value: bytes) -> None:
    return None


def withheld(name: str, method: str) -> ValueTransform:
    """A masked column whose type cannot hold the masked value: every value NULL, with a
    notice naming the column and the method."""
    notice = (f'column "{name}" is masked by policy ({method}) and its type cannot hold a '
              "masked value: sent as NULL")

    def transform(value: bytes) -> bytes | None:
        raise WithheldValue(notice)

    return transform
