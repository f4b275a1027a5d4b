"""Masking: pure functions that hide values, declared once in `MASK_METHODS`.

Owns the masking methods named by policies (`Mask.method`), the card-number (PAN) content
detector and the scrubbers that run on every result value and on every audit record.
It must not do I/O beyond reading the hash key from the environment, and it knows nothing
of adapters, policies or the Decision.

Rules every method follows (and the tests check):

* `None` stays `None` (there is nothing to hide in SQL NULL).
* No method reveals more than it names; when a value is too short for the "keep the last 4"
  methods to hide anything meaningful, everything is hidden instead.
* Every method except `hash` is idempotent: masking a masked value changes nothing, so the
  audit log may scrub what an adapter already masked.

The `hash` method needs a key: `set_hash_key(bytes)` or the environment variable
`ORDINANCE_MASK_KEY` (UTF-8, at least 16 bytes). Without one it does not invent a per-process
random key (pseudonyms would silently change on every restart and differ between replicas);
it falls back to `redact` and logs one warning. `hash_key_configured()` lets the engine refuse
at load time a policy that asks for `hash` when no key is set.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

REDACTED = "[REDACTED]"
"""What `redact` returns for every non-null value (and `hash` when no key is configured)."""

MASK_CHAR = "*"
HASH_KEY_ENV = "ORDINANCE_MASK_KEY"
HASH_KEY_MIN_BYTES = 16
HASH_HEX_CHARS = 16
"""`hash` returns this many lowercase hex characters of HMAC-SHA256 (64 bits)."""

PAN_MIN_DIGITS = 13
PAN_MAX_DIGITS = 19
PAN_KEEP_DIGITS = 4
LAST4_MIN_LENGTH = 8
"""`last4` shows the last 4 characters only when at least as many are hidden."""


class UnknownMaskMethod(ValueError):
    """A masking method name that is not in `MASK_METHODS`."""

    def __init__(self, method: str) -> None:
        self.method = method
        known = ", ".join(sorted(MASK_METHODS))
        super().__init__(f"unknown masking method {method!r} (known: {known})")


@dataclass(frozen=True)
class MaskMethod:
    """One masking method: its policy-facing `name`, a one-line `description` and `function`."""

    name: str
    description: str
    function: Callable[[str], str | None]


# ---------------------------------------------------------------------------------------------
# The methods


def mask_pan(value: str) -> str:
    """Hide every digit but the last 4, keeping length, separators and other characters.

    A value with fewer than 13 digit positions (digits or `*`) is not a card number, and its
    last 4 digits could be most of it, so all of its digits are hidden.
    """
    if value.isascii() and value.isdigit():
        n = len(value)
        if n < PAN_MIN_DIGITS:
            return MASK_CHAR * n
        return MASK_CHAR * (n - PAN_KEEP_DIGITS) + value[-PAN_KEEP_DIGITS:]
    positions = sum(1 for ch in value if ch.isdigit() or ch == MASK_CHAR)
    keep_from = positions - PAN_KEEP_DIGITS if positions >= PAN_MIN_DIGITS else positions
    out: list[str] = []
    seen = 0
    for ch in value:
        if ch.isdigit():
            out.append(ch if seen >= keep_from else MASK_CHAR)
            seen += 1
        else:
            out.append(ch)
            seen += ch == MASK_CHAR
    return "".join(out)


def mask_last4(value: str) -> str:
    """Keep the last 4 characters, replace the others by `*`; all hidden if shorter than 8."""
    if len(value) < LAST4_MIN_LENGTH:
        return MASK_CHAR * len(value)
    return MASK_CHAR * (len(value) - PAN_KEEP_DIGITS) + value[-PAN_KEEP_DIGITS:]


def mask_redact(value: str) -> str:
    """Replace the whole value by the fixed placeholder `[REDACTED]`."""
    return REDACTED


def mask_null(value: str) -> None:
    """Replace the value by SQL NULL / JSON null."""
    return None


def mask_email(value: str) -> str:
    """`alice@example.com` -> `a***@example.com`; a value without `@` becomes `***`."""
    local, at, domain = value.rpartition("@")
    if not at:
        return MASK_CHAR * 3
    return local[:1] + MASK_CHAR * 3 + "@" + domain


_hash_key: bytes | None = None
_warned_no_key = False


def set_hash_key(key: bytes | None) -> None:
    """Set the HMAC key of the `hash` method (at least 16 bytes); `None` reverts to the env."""
    global _hash_key
    if key is not None and len(key) < HASH_KEY_MIN_BYTES:
        raise ValueError(f"mask hash key must be at least {HASH_KEY_MIN_BYTES} bytes")
    _hash_key = key


def _current_hash_key() -> bytes | None:
    if _hash_key is not None:
        return _hash_key
    env = os.environ.get(HASH_KEY_ENV, "").encode()
    return env if len(env) >= HASH_KEY_MIN_BYTES else None


def hash_key_configured() -> bool:
    """True when `hash` produces pseudonyms rather than falling back to `redact`."""
    return _current_hash_key() is not None


def mask_hash(value: str) -> str:
    """A stable pseudonym: the first 16 hex characters of HMAC-SHA256(key, value).

    Equal values give equal pseudonyms (joins and counts still work) and nobody without the key
    can test a guess. Without a key, returns `[REDACTED]` and warns once.
    """
    global _warned_no_key
    key = _current_hash_key()
    if key is None:
        if not _warned_no_key:
            _warned_no_key = True
            log.warning(
                "masking method 'hash' has no key (set %s or call set_hash_key); "
                "values are redacted instead", HASH_KEY_ENV)
        return REDACTED
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:HASH_HEX_CHARS]


MASK_METHODS: dict[str, MaskMethod] = {
    m.name: m
    for m in (
        MaskMethod("pan", "card number: every digit hidden but the last 4, separators kept",
                   mask_pan),
        MaskMethod("last4", "every character hidden but the last 4 (all if shorter than 8)",
                   mask_last4),
        MaskMethod("redact", f"the whole value replaced by {REDACTED}", mask_redact),
        MaskMethod("null", "the value replaced by NULL", mask_null),
        MaskMethod("email", "e-mail address: first letter and domain kept (a***@example.com)",
                   mask_email),
        MaskMethod("hash", "stable keyed pseudonym: 16 hex chars of HMAC-SHA256 "
                   f"(key from {HASH_KEY_ENV}; redacts without a key)", mask_hash),
    )
}


def mask_value(method: str, value: str | None) -> str | None:
    """Mask one value with the named method; `None` stays `None`."""
    try:
        function = MASK_METHODS[method].function
    except KeyError:
        raise UnknownMaskMethod(method) from None
    if value is None:
        return None
    return function(value)


# ---------------------------------------------------------------------------------------------
# Card-number detection in free text

# A maximal run of at least 13 decimal digits (any script), each pair separated by at most one
# space or dash. Being greedy and leftmost, every match starts and ends at the edges of its run.
_RUN = re.compile(r"\d(?:[ -]?\d){12,}")
_GROUP = re.compile(r"\d+")

# Fast path for ASCII text, all in C string operations: count the digits, then map the text to
# its shape (d = digit, s = space or dash, x = other), turn double separators into breaks, drop
# the single ones, and look for 13 digits in a row. Equivalent to `_RUN.search(text)`.
_ASCII_DIGITS = b"0123456789"
_SHAPE = bytes(
    ord("d") if chr(i).isdigit() else ord("s") if chr(i) in " -" else ord("x")
    for i in range(256)
)
_THIRTEEN_DIGITS = b"d" * PAN_MIN_DIGITS


def may_hold_pan(text: str) -> bool:
    """True iff `text` has a run of 13+ digits with single separators (a PAN may be in it).

    False means `scrub_pans(text)` returns `text` unchanged, and also every substring of
    `text` (a run inside a substring is a run of `text`): the audit trail checks an event's
    whole JSON encoding once (JSON never escapes digits, spaces or dashes) instead of
    scrubbing each of its strings and integers.
    """
    if len(text) < PAN_MIN_DIGITS:
        return False
    if not text.isascii():
        return _RUN.search(text) is not None
    raw = text.encode("ascii")
    if len(raw) - len(raw.translate(None, _ASCII_DIGITS)) < PAN_MIN_DIGITS:
        return False
    shape = raw.translate(_SHAPE).replace(b"ss", b"xx").replace(b"s", b"")
    return _THIRTEEN_DIGITS in shape


# The same shape test over raw bytes holding whole UTF-8 values among other bytes (a run of
# PostgreSQL DataRow messages, a chunk of COPY records), without decoding anything. Every byte
# >= 0x80 counts as a digit, so digits of other scripts (always multi-byte in UTF-8) are never
# missed: non-ASCII text only makes the test say "maybe" more often.
_BYTE_SHAPE = bytes(
    ord("d") if (48 <= i <= 57 or i >= 0x80) else ord("s") if i in (32, 45) else ord("x")
    for i in range(256)
)
_BYTE_DIGITS = bytes(range(48, 58)) + bytes(range(0x80, 0x100))


def may_hold_pan_bytes(data: bytes) -> bool:
    """False only when no UTF-8 text contained in `data` can hold a card number, so a scrubber
    may pass `data` on untouched; True means "look closer" (`scrub_pans` on each value).

    Conservative by construction: a card number is 13+ digits with single spaces or dashes
    between them, and these bytes stay adjacent wherever the value sits in `data`.
    """
    if len(data) - len(data.translate(None, _BYTE_DIGITS)) < PAN_MIN_DIGITS:
        return False
    shape = data.translate(_BYTE_SHAPE).replace(b"ss", b"xx").replace(b"s", b"")
    return _THIRTEEN_DIGITS in shape


def _ascii_digits(digits: str) -> str:
    return digits if digits.isascii() else "".join(str(int(ch)) for ch in digits)


_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of ASCII digits."""
    raw = digits.encode("ascii")
    odd = raw[-1::-2]
    even = raw[-2::-2].translate(_DOUBLED)
    return (sum(odd) + sum(even) - 48 * len(raw)) % 10 == 0


def _pans_in_run(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Candidate PANs in one run: whole groups, 13-19 digits, Luhn-valid; overlaps merged."""
    groups = [(m.start(), m.end()) for m in _GROUP.finditer(text, start, end)]
    found: list[tuple[int, int]] = []
    for i in range(len(groups)):
        digits = ""
        for j in range(i, len(groups)):
            digits += _ascii_digits(text[groups[j][0]:groups[j][1]])
            if len(digits) > PAN_MAX_DIGITS:
                break
            if len(digits) >= PAN_MIN_DIGITS and luhn_valid(digits):
                span = (groups[i][0], groups[j][1])
                if found and span[0] < found[-1][1]:
                    found[-1] = (found[-1][0], max(found[-1][1], span[1]))
                else:
                    found.append(span)
    return found


def find_pans(text: str) -> list[tuple[int, int]]:
    """Spans `(start, end)` of card numbers in free text, sorted and non-overlapping.

    A card number is 13-19 decimal digits (ASCII or any other script), optionally separated
    by single spaces or dashes, Luhn-valid and not part of a longer digit run (no digit right
    before or after it). A digit sequence with separators may hold several candidates
    ("0 4111 1111 1111 1111"); every Luhn-valid one is taken and overlapping ones are merged,
    so masking a span with `pan` hides every digit that any candidate would hide.
    """
    if not may_hold_pan(text):
        return []
    spans: list[tuple[int, int]] = []
    for run in _RUN.finditer(text):
        spans.extend(_pans_in_run(text, run.start(), run.end()))
    return spans


def scrub_pans(text: str) -> str:
    """Mask every card number found in `text` with `pan`; returns `text` itself if none.

    Runs on every value of every result row, so text that cannot hold a card number is
    rejected with C-level string operations only (well under 1 us for typical values).
    """
    spans = find_pans(text)
    if not spans:
        return text
    parts: list[str] = []
    pos = 0
    for start, end in spans:
        parts.append(text[pos:start])
        parts.append(mask_pan(text[start:end]))
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _is_digest(key: Any, value: Any) -> bool:
    """A SHA-256 digest that we computed (`command_sha256`): a key ending in `_sha256` and 64
    lowercase hex digits. A digit run in it is not a card number, and masking one would break
    the digest's match with what it identifies."""
    return (isinstance(key, str) and key.endswith("_sha256") and isinstance(value, str)
            and _SHA256_HEX.fullmatch(value) is not None)


def scrub_document(obj: Any) -> Any:
    """Scrub card numbers from every string (dict keys and values) in nested dicts/lists/tuples,
    except SHA-256 digests under a key ending in `_sha256`.

    Integers are checked too (a PAN stored as a JSON number is still a PAN); one holding a card
    number becomes its masked string. Other values are returned unchanged.
    """
    if isinstance(obj, str):
        return scrub_pans(obj)
    if isinstance(obj, dict):
        return {scrub_document(k): v if _is_digest(k, v) else scrub_document(v)
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub_document(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(scrub_document(v) for v in obj)
    if isinstance(obj, int) and not isinstance(obj, bool) and abs(obj) >= 10 ** (
            PAN_MIN_DIGITS - 1):
        as_text = str(obj)
        scrubbed = scrub_pans(as_text)
        return obj if scrubbed is as_text else scrubbed
    return obj
