"""The hash chain: canonical encoding, record hashes, sortable ids, checkpoint seals, verification.

Owns the rules that make the trail tamper-evident. Each record's `hash` is SHA-256 over the
canonical encoding (sorted-key, compact, UTF-8 JSON) of every other field, `prev_hash` included,
so editing, deleting, inserting or reordering a record breaks the chain. `verify_chain` walks
records in sequence order and names the first one that is wrong and how.

Pure functions only: no I/O, no database, no clock other than what callers pass in. The storage
backends feed records in; this module never reaches back into them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64
"""`prev_hash` of the first record ever written to a trail."""

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
"""Two digits for each 10-bit value."""
_PAIR_SHIFTS = range(120, -10, -10)
_ULID_MASK = (1 << 130) - 1
_ULID_TEXT = re.compile(f"[{_CROCKFORD}]{{26}}")
_RANDOM_DIGITS = bytes(ord(_CROCKFORD[i & 31]) for i in range(256))
"""A random byte -> the digit of its low 5 bits (uniform: 256 is a multiple of 32)."""

json_string = json.encoder.encode_basestring
"""A str as JSON, exactly as `canonical_json` writes it (the C encoder's `ensure_ascii=False`
string function)."""


def canonical_json(obj: Any) -> str:
    """Sorted-key compact JSON; NaN and infinities are refused (they have no JSON form)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def format_ts(ts: datetime) -> str:
    """UTC, microseconds, `Z` suffix: fixed width, so the text sorts like the time."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class AuditRecord:
    """One link of the chain, exactly as stored."""

    seq: int
    id: str
    ts: str
    kind: str
    subject: str | None
    session_id: str | None
    decision_id: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str

    @property
    def time(self) -> datetime:
        return parse_ts(self.ts)

    def hashed_fields(self) -> dict[str, Any]:
        """Every field but `hash`: what the hash covers."""
        return {
            "seq": self.seq, "id": self.id, "ts": self.ts, "kind": self.kind,
            "subject": self.subject, "session_id": self.session_id,
            "decision_id": self.decision_id, "payload": self.payload,
            "prev_hash": self.prev_hash,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.hashed_fields(), "hash": self.hash}


def record_hash(fields: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical encoding of a record's fields other than `hash`."""
    return hashlib.sha256(canonical_json(fields).encode("utf-8")).hexdigest()


def json_or_null(value: str | None) -> str:
    """`json_string`, or `null` for None."""
    return "null" if value is None else json_string(value)


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """The parts of a record's canonical encoding that do not depend on its place in the chain.

    `canonical_json(fields)` of a record is, with the keys in sorted order, `head`, the id,
    `middle`, the prev_hash, `,"seq":`, the seq, `tail`, the ts, `}`; `hashed_text` joins them.
    Built once per event, so chaining a record re-encodes only its id, seq, ts and prev_hash.
    """

    head: str
    middle: str
    tail: str

    @classmethod
    def of(cls, kind: str, subject: str | None, session_id: str | None,
           decision_id: str | None, payload_json: str) -> EncodedEvent:
        """`payload_json` must be `canonical_json(payload)`."""
        return cls(f'{{"decision_id":{json_or_null(decision_id)},"id":',
                   f',"kind":{json_string(kind)},"payload":{payload_json},"prev_hash":',
                   f',"session_id":{json_or_null(session_id)},'
                   f'"subject":{json_or_null(subject)},"ts":')

    def hashed_text(self, seq: int, id: str, ts: str, prev_hash: str) -> str:
        """Equal to `canonical_json` of the record's fields other than `hash`."""
        return "".join((self.head, json_string(id), self.middle, json_string(prev_hash),
                        ',"seq":', int.__repr__(seq), self.tail, json_string(ts), "}"))

    def hash(self, seq: int, id: str, ts: str, prev_hash: str) -> str:
        """`record_hash` of the record, from the pre-encoded parts."""
        return hashlib.sha256(
            self.hashed_text(seq, id, ts, prev_hash).encode("utf-8")).hexdigest()


def compute_hash(record: AuditRecord) -> str:
    return record_hash(record.hashed_fields())


def _encode_ulid(value: int) -> str:
    """The 26 Crockford base32 digits of `value` (taken modulo 2**130), most significant first."""
    value &= _ULID_MASK
    return "".join([_CROCKFORD_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def _decode_base32(text: str) -> int:
    value = 0
    for ch in text:
        value = (value << 5) | _CROCKFORD.index(ch)
    return value


def _next_ulid(after: str) -> str:
    """The id right after `after`: +1 on its digits, as text when it is a well-formed ULID."""
    stripped = after.rstrip("Z")
    if len(after) == 26 and stripped and _ULID_TEXT.fullmatch(after):
        return (stripped[:-1] + _CROCKFORD[_CROCKFORD.index(stripped[-1]) + 1]
                + "0" * (26 - len(stripped)))
    return _encode_ulid(_decode_base32(after) + 1)


_ulid_prefix: tuple[int, str] = (-1, "")
"""The last millisecond an id was made for and its 10 digits (ids of one batch share it)."""


def new_ulid(ts: datetime, after: str | None = None) -> str:
    """A ULID (48-bit ms time + 80 random bits, Crockford base32) greater than `after`.

    Ids are minted under the trail's write lock, so passing the previous record's id keeps them
    strictly increasing even within one millisecond or if a replica's clock lags. The 80 random
    bits are the low 5 bits of 16 random bytes, mapped to their digits in one translation.
    """
    global _ulid_prefix
    ms = int(ts.timestamp() * 1000)
    known_ms, prefix = _ulid_prefix
    if ms != known_ms:
        prefix = _encode_ulid(ms << 80)[:10]
        _ulid_prefix = (ms, prefix)
    candidate = prefix + os.urandom(16).translate(_RANDOM_DIGITS).decode("ascii")
    if after is None or candidate > after:
        return candidate
    return _next_ulid(after)


# --- checkpoints -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """What pruning left behind: the last removed record's seq and hash, sealed.

    `seal` is HMAC-SHA256 under the operator's key when one is configured (`seal_alg`
    "hmac-sha256"), else plain SHA-256 ("sha256"), which detects accidents but not a forger.
    """

    through_seq: int
    through_hash: str
    pruned_count: int
    created_at: str
    seal_alg: str
    seal: str

    def sealed_fields(self) -> dict[str, Any]:
        return {"through_seq": self.through_seq, "through_hash": self.through_hash,
                "pruned_count": self.pruned_count, "created_at": self.created_at}


def seal_checkpoint(fields: dict[str, Any], key: bytes | None) -> tuple[str, str]:
    """(seal_alg, seal) over a checkpoint's canonical encoding."""
    data = canonical_json(fields).encode("utf-8")
    if key:
        return "hmac-sha256", hmac.new(key, data, hashlib.sha256).hexdigest()
    return "sha256", hashlib.sha256(data).hexdigest()


def checkpoint_problem(cp: Checkpoint, key: bytes | None) -> str | None:
    """Why a checkpoint cannot be trusted, or None."""
    if cp.seal_alg not in ("sha256", "hmac-sha256"):
        return f"checkpoint seal algorithm {cp.seal_alg!r} is unknown"
    if cp.seal_alg == "hmac-sha256" and not key:
        return "checkpoint is HMAC-sealed: configure the audit key to verify it"
    if key and cp.seal_alg != "hmac-sha256":
        return "checkpoint is not HMAC-sealed although a key is configured (checkpoint forged?)"
    _, expected = seal_checkpoint(cp.sealed_fields(), key)
    if not hmac.compare_digest(expected, cp.seal):
        return "checkpoint seal mismatch (checkpoint edited)"
    return None


# --- verification ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of walking the chain. `first_bad_seq` names the record that is wrong."""

    ok: bool
    count: int
    first_bad_seq: int | None = None
    problem: str | None = None
    checkpoint_seq: int | None = None

    def describe(self) -> str:
        if self.ok:
            start = f" from checkpoint at seq {self.checkpoint_seq}" if self.checkpoint_seq else ""
            return f"audit trail intact: {self.count} records verified{start}"
        where = f"record {self.first_bad_seq}" if self.first_bad_seq is not None else "trail"
        return f"audit trail BROKEN at {where}: {self.problem}"


@dataclass(frozen=True)
class Head:
    """The trail's own note of its last record, updated in the same transaction as each append."""

    seq: int
    hash: str


def verify_chain(
    records: Iterable[AuditRecord],
    *,
    checkpoint: Checkpoint | None = None,
    head: Head | None = None,
    key: bytes | None = None,
    seq_of_hash: Callable[[str], int | None] = lambda _h: None,
) -> VerifyResult:
    """Walk `records` (ascending seq) and report the first break.

    Checks, in order, for each record: its seq follows the previous one (else records were
    deleted); its `prev_hash` is the previous record's hash (else one was inserted, reordered or
    edited and re-hashed); its own hash matches its content (else it was edited). At the end the
    last record must be the one the head names (else the tail was cut or a record was added
    outside the log). `seq_of_hash` finds which stored record has a given hash; it is consulted
    only after a break, to say what happened.
    """
    cp_seq = checkpoint.through_seq if checkpoint else 0
    if checkpoint is not None:
        problem = checkpoint_problem(checkpoint, key)
        if problem:
            return VerifyResult(False, 0, checkpoint.through_seq, problem, cp_seq)
    prev_seq = cp_seq
    prev_hash = checkpoint.through_hash if checkpoint else GENESIS_HASH
    count = 0

    def broken(seq: int, problem: str) -> VerifyResult:
        return VerifyResult(False, count, seq, problem, cp_seq or None)

    for rec in records:
        if rec.seq != prev_seq + 1:
            if rec.seq > prev_seq + 1:
                missing = (f"record {prev_seq + 1}" if rec.seq == prev_seq + 2
                           else f"records {prev_seq + 1}-{rec.seq - 1}")
                return broken(prev_seq + 1,
                              f"sequence gap (record deleted): {missing} missing "
                              f"before record {rec.seq}")
            return broken(rec.seq, f"sequence out of order: record {rec.seq} "
                                   f"follows record {prev_seq}")
        own_ok = hmac.compare_digest(compute_hash(rec), rec.hash)
        if rec.prev_hash != prev_hash:
            linked = seq_of_hash(rec.prev_hash)
            if linked is not None and linked == prev_seq - 1:
                return broken(prev_seq, f"record inserted: record {rec.seq}'s prev_hash names "
                                        f"record {linked}, so record {prev_seq} does not belong")
            if linked is not None and linked != prev_seq:
                return broken(rec.seq, f"records reordered: record {rec.seq} was chained after "
                                       f"record {linked}, not record {prev_seq}")
            if own_ok and prev_seq > 0:
                return broken(prev_seq, f"prev_hash does not match previous record: record "
                                        f"{rec.seq} was chained to a different record "
                                        f"{prev_seq} (record {prev_seq} edited and re-hashed "
                                        f"or replaced)")
            return broken(rec.seq, "prev_hash does not match previous record")
        if not own_ok:
            return broken(rec.seq, "hash mismatch (record edited)")
        prev_seq, prev_hash = rec.seq, rec.hash
        count += 1

    if head is not None and (head.seq, head.hash) != (prev_seq, prev_hash):
        if head.seq > prev_seq:
            return broken(prev_seq + 1, f"tail truncated (record deleted): records "
                                        f"{prev_seq + 1}-{head.seq} missing at the end")
        if head.seq < prev_seq:
            return broken(head.seq + 1, f"record {head.seq + 1} was added outside the log "
                                        f"(the trail's head names record {head.seq})")
        return broken(prev_seq, "hash mismatch (record edited): the last record differs from "
                                "the one the trail's head names")
    return VerifyResult(True, count, None, None, cp_seq or None)
