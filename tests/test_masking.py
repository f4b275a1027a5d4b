"""Masking methods, the PAN detector and the scrubbers: examples and hypothesis properties."""

from __future__ import annotations

import logging
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from engine import masking
from engine.masking import (
    MASK_METHODS,
    REDACTED,
    UnknownMaskMethod,
    find_pans,
    luhn_valid,
    mask_value,
    scrub_document,
    scrub_pans,
    set_hash_key,
)

VISA = "4111111111111111"
MASTERCARD = "5500 0000 0000 0004"
AMEX = "3782-822463-10005"
FULLWIDTH_VISA = VISA.translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})


@pytest.fixture(autouse=True)
def _no_hash_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(masking.HASH_KEY_ENV, raising=False)
    set_hash_key(None)
    monkeypatch.setattr(masking, "_warned_no_key", False)


# --- registry ---------------------------------------------------------------------------------

def test_registry_declares_every_method_once() -> None:
    assert set(MASK_METHODS) == {"pan", "last4", "redact", "null", "email", "hash"}
    for name, method in MASK_METHODS.items():
        assert method.name == name
        assert method.description and "\n" not in method.description


def test_unknown_method_names_the_known_ones() -> None:
    with pytest.raises(UnknownMaskMethod, match=r"'rot13'.*known: email, hash"):
        mask_value("rot13", "x")


@pytest.mark.parametrize("method", sorted(MASK_METHODS))
def test_null_stays_null(method: str) -> None:
    assert mask_value(method, None) is None


# --- methods ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "masked"), [
    ("4111-1111-1111-1111", "****-****-****-1111"),
    ("4111 1111 1111 1111", "**** **** **** 1111"),
    (VISA, "************1111"),
    ("378282246310005", "***********0005"),
    ("card: 4111111111111111.", "card: ************1111."),
    ("1234", "****"),                      # too short to be a PAN: nothing revealed
    ("12-34-56", "**-**-**"),
    ("", ""),
])
def test_pan(value: str, masked: str) -> None:
    assert mask_value("pan", value) == masked


@pytest.mark.parametrize(("value", "masked"), [
    ("123456789", "*****6789"),
    ("abcdefgh", "****efgh"),
    ("abcdefg", "*******"),
    ("ab", "**"),
    ("", ""),
])
def test_last4(value: str, masked: str) -> None:
    assert mask_value("last4", value) == masked


def test_redact_and_null() -> None:
    assert mask_value("redact", "secret") == REDACTED == "[REDACTED]"
    assert mask_value("redact", "") == REDACTED
    assert mask_value("null", "secret") is None


@pytest.mark.parametrize(("value", "masked"), [
    ("alice@example.com", "a***@example.com"),
    ("a@b.c", "a***@b.c"),
    ('"weird@local"@example.com', '"***@example.com'),
    ("@example.com", "***@example.com"),
    ("not an address", "***"),
])
def test_email(value: str, masked: str) -> None:
    assert mask_value("email", value) == masked


def test_hash_is_a_stable_keyed_pseudonym(monkeypatch: pytest.MonkeyPatch) -> None:
    set_hash_key(b"k" * 32)
    first = mask_value("hash", "alice@example.com")
    assert first is not None and re.fullmatch(r"[0-9a-f]{16}", first)
    assert mask_value("hash", "alice@example.com") == first
    assert mask_value("hash", "bob@example.com") != first
    set_hash_key(b"another key, 32 bytes long......")
    assert mask_value("hash", "alice@example.com") != first
    set_hash_key(None)
    monkeypatch.setenv(masking.HASH_KEY_ENV, "k" * 32)
    assert mask_value("hash", "alice@example.com") == first


def test_hash_without_key_redacts_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    assert not masking.hash_key_configured()
    with caplog.at_level(logging.WARNING, logger="engine.masking"):
        assert mask_value("hash", "alice") == REDACTED
        assert mask_value("hash", "bob") == REDACTED
    assert len([r for r in caplog.records if "ORDINANCE_MASK_KEY" in r.getMessage()]) == 1


def test_hash_key_too_short(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        set_hash_key(b"short")
    monkeypatch.setenv(masking.HASH_KEY_ENV, "short")
    assert not masking.hash_key_configured()
    assert mask_value("hash", "alice") == REDACTED


# --- detector ---------------------------------------------------------------------------------

def test_luhn() -> None:
    assert luhn_valid(VISA) and luhn_valid("378282246310005") and luhn_valid("0")
    assert not luhn_valid("4111111111111112")


@pytest.mark.parametrize(("text", "found"), [
    (f"pay with {VISA} now", [VISA]),
    (f"mc {MASTERCARD}, amex {AMEX}", [MASTERCARD, AMEX]),
    (f"{VISA}{VISA}", []),                   # a 32-digit run is not a card number
    (f"9{VISA}", []),                        # part of a longer digit run
    ("4111111111111112", []),                # Luhn-invalid
    ("4111  1111 1111 1111", []),            # a double space ends the run
    ("4111--1111-1111-1111", []),
    ("order 12 items", []),
    (f"{VISA} {VISA}", [VISA, VISA]),        # two cards, one space apart
    (f"ref 0 {VISA}", [f"0 {VISA}"]),        # "0 4111…" is also Luhn-valid: spans merge
    (FULLWIDTH_VISA, [FULLWIDTH_VISA]),      # digits of another script
])
def test_find_pans_examples(text: str, found: list[str]) -> None:
    assert [text[a:b] for a, b in find_pans(text)] == found


def test_neighbouring_digits_cannot_unhide_a_separated_card() -> None:
    # "6 4111 1111 1111" is itself Luhn-valid (13 digits), so a detector that took only the
    # first candidate would reveal "1111 1111" of the real card; overlaps are merged instead.
    text = "6 4111 1111 1111 1111"
    assert luhn_valid("6411111111111")
    assert scrub_pans(text) == "* **** **** **** 1111"


def test_scrub_examples() -> None:
    assert scrub_pans(f"card {VISA} exp 12/29") == "card ************1111 exp 12/29"
    assert scrub_pans(f"{MASTERCARD}/{AMEX}") == "**** **** **** 0004/****-******-*0005"


def test_scrub_returns_the_same_object_when_nothing_found() -> None:
    for text in ("", "short", "no digits at all in this rather long value",
                 "12345678901234567890123", "4111111111111112", "1 2 3 4 5 6 7 8 9 1 2 3 9"):
        if not find_pans(text):
            assert scrub_pans(text) is text


def test_scrub_document() -> None:
    doc = {
        "rows": [[1, VISA, None, True], ("t", f"x {AMEX}")],
        VISA: {"nested": [f"{MASTERCARD}"]},
        "as_int": int(VISA),
        "small": 42,
        "float": 1.5,
    }
    assert scrub_document(doc) == {
        "rows": [[1, "************1111", None, True], ("t", "x ****-******-*0005")],
        "************1111": {"nested": ["**** **** **** 0004"]},
        "as_int": "************1111",
        "small": 42,
        "float": 1.5,
    }
    assert scrub_document(4111111111111112) == 4111111111111112


def test_scrub_document_keeps_sha256_digests() -> None:
    """A digest we computed (an approval's `command_sha256`) may hold a Luhn-valid digit run;
    masking it would break its match with the command. Only 64 hex digits under a key ending
    in `_sha256` are kept."""
    digest = "ab" + VISA + "c" * 46
    assert len(digest) == 64
    doc = {"command_sha256": digest, "note": digest, "x_sha256": VISA, "y_sha256": [digest]}
    assert scrub_document(doc) == {"command_sha256": digest,
                                   "note": "ab************1111" + "c" * 46,
                                   "x_sha256": "************1111",
                                   "y_sha256": ["ab************1111" + "c" * 46]}


# --- properties -------------------------------------------------------------------------------

def _with_check_digit(body: str) -> str:
    for d in "0123456789":
        if luhn_valid(body + d):
            return body + d
    raise AssertionError("unreachable")


@st.composite
def pans(draw: st.DrawFn, separated: bool = True) -> tuple[str, str]:
    """(digits, as written): a Luhn-valid 13-19 digit number, maybe with single separators."""
    body = draw(st.text("0123456789", min_size=PAN_MIN - 1, max_size=PAN_MAX - 1))
    digits = _with_check_digit(body)
    if not separated:
        return digits, digits
    seps = draw(st.lists(st.sampled_from(["", "", " ", "-"]), min_size=len(digits) - 1,
                         max_size=len(digits) - 1))
    written = digits[0] + "".join(s + d for s, d in zip(seps, digits[1:], strict=True))
    return digits, written


PAN_MIN, PAN_MAX = masking.PAN_MIN_DIGITS, masking.PAN_MAX_DIGITS
NOISE = st.text(st.sampled_from(list("abc XYZ-/.:;,é€\n\t0123456789")), max_size=40)


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


@given(pans())
def test_masked_pan_shows_at_most_its_last_four_digits(pan: tuple[str, str]) -> None:
    digits, written = pan
    masked = mask_value("pan", written)
    assert masked is not None and len(masked) == len(written)
    assert _digits(masked) == digits[-4:]
    assert [c for c in masked if not c.isdigit() and c != "*"] == [
        c for c in written if not c.isdigit()]


@given(st.text(max_size=60))
def test_masked_value_never_reveals_more_than_four_digits(value: str) -> None:
    masked = mask_value("pan", value)
    assert masked is not None and len(_digits(masked)) <= 4


@given(st.sampled_from(["pan", "last4", "redact", "null", "email"]), st.text(max_size=40))
def test_masking_is_idempotent(method: str, value: str) -> None:
    once = mask_value(method, value)
    assert mask_value(method, once) == once


@given(NOISE, pans(), NOISE)
def test_detector_finds_every_card_in_text(prefix: str, pan: tuple[str, str],
                                           suffix: str) -> None:
    digits, written = pan
    assume(not prefix[-1:].isdigit() and not suffix[:1].isdigit())
    text = prefix + written + suffix
    start, end = len(prefix), len(prefix) + len(written)
    spans = find_pans(text)
    assert any(a <= start and end <= b for a, b in spans), (text, spans)
    scrubbed = scrub_pans(text)
    assert len(scrubbed) == len(text)
    assert len(_digits(scrubbed[start:end])) <= 4
    assume(digits[:12] not in _digits(prefix) + _digits(suffix))
    assert digits[:12] not in _digits(scrubbed)


@given(st.text(st.sampled_from(list("abc XYZ/.:;,é\n")), max_size=30),
       st.text("0123456789", min_size=PAN_MIN, max_size=PAN_MAX),
       st.text(st.sampled_from(list("abc XYZ/.:;,é\n")), max_size=30))
def test_non_luhn_numbers_untouched(prefix: str, number: str, suffix: str) -> None:
    assume(not luhn_valid(number))
    text = prefix + number + suffix
    assert find_pans(text) == []
    assert scrub_pans(text) is text


@given(st.text(st.sampled_from(list("0123456789 -ab")), max_size=80))
def test_scrub_is_idempotent_and_keeps_length(text: str) -> None:
    once = scrub_pans(text)
    assert len(once) == len(text)
    assert scrub_pans(once) == once
    for a, b in find_pans(text):
        assert len(_digits(once[a:b])) <= 4


@given(st.text(st.sampled_from(list("0123456789 -ab")), max_size=60) | st.text(max_size=60))
def test_ascii_fast_path_agrees_with_the_regex(text: str) -> None:
    assert masking.may_hold_pan(text) == (masking._RUN.search(text) is not None)


_DIGITS_AND_SEPARATORS = list("0123456789 -ab\u0664\u0665")  # with Arabic-Indic digits


@given(st.binary(max_size=12),
       st.text(st.sampled_from(_DIGITS_AND_SEPARATORS), max_size=60) | st.text(max_size=60),
       st.binary(max_size=12))
def test_bytes_precheck_never_misses_what_the_text_scrubber_finds(
        before: bytes, text: str, after: bytes) -> None:
    if find_pans(text) or masking.may_hold_pan(text):
        assert masking.may_hold_pan_bytes(before + text.encode("utf-8") + after)


def test_bytes_precheck_passes_plain_rows() -> None:
    row = b"\x00\x03\x00\x00\x00\x011\x00\x00\x00\x03Ann\x00\x00\x00\x0a2024-02-29"
    assert not masking.may_hold_pan_bytes(row * 20)
    assert masking.may_hold_pan_bytes(row + b"\x00\x00\x00\x104111 1111 1111 1111")
    assert masking.may_hold_pan_bytes("١٢٣٤٥٦٧٨٩٠١٢٣".encode())  # other scripts: look closer


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30) | pans(separated=False).map(
        lambda p: p[1]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner,
                                                                max_size=4),
    max_leaves=20))
def test_scrub_document_leaves_no_card_number(doc: object) -> None:
    scrubbed = scrub_document(doc)

    def strings(obj: object) -> list[str]:
        if isinstance(obj, str):
            return [obj]
        if isinstance(obj, dict):
            return [s for k, v in obj.items() for s in strings(k) + strings(v)]
        if isinstance(obj, list | tuple):
            return [s for v in obj for s in strings(v)]
        if isinstance(obj, int) and not isinstance(obj, bool):
            return [str(obj)]
        return []

    assert all(find_pans(s) == [] for s in strings(scrubbed))
    assert scrub_document(scrubbed) == scrubbed
