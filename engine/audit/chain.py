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


# --- the sealed head and anchors ------------------------------------------------------------

HEAD_SEAL_ALG = "hmac-sha256"


def seal_head(seq: int, digest: str, key: bytes) -> str:
    """HMAC-SHA256 over the head's (seq, hash): what every commit writes with a key configured.

    The sealed text names what it seals, so a checkpoint's seal can never pass for a head's."""
    data = canonical_json({"sealed": "ordinance.audit.head", "seq": seq, "hash": digest})
    return hmac.new(key, data.encode("utf-8"), hashlib.sha256).hexdigest()


def head_seal_problem(seq: int, digest: str, seal: str | None, key: bytes | None) -> str | None:
    """Why a writer must not extend this head, or None. A writer extends only a head it can
    trust: with the key, a sealed head whose seal matches (or the empty trail's); without the
    key, an unsealed head (it could not reseal a sealed one, which would hide the next cut)."""
    if key and seal is not None and not hmac.compare_digest(seal_head(seq, digest, key), seal):
        return ("the trail's head seal does not match: the head was rewritten (records cut "
                "from the tail?) or the key changed; refusing to extend it (run `ordinance "
                "audit verify`)")
    if key and seal is None and seq > 0:
        return ("the trail's head is not sealed although this writer has the audit key: "
                "refusing to extend it (a trail written without the key is adopted once with "
                "`ordinance audit seal`, which verifies it first)")
    if not key and seal is not None:
        return ("the trail's head is sealed but this writer has no audit key "
                "(ORDINANCE_AUDIT_KEY): every writer of a sealed trail needs it")
    return None


@dataclass(frozen=True)
class Head:
    """The trail's own note of its last record, updated in the same transaction as each append.

    `seal` is `seal_head` of (seq, hash) when the last writer had the key, else None."""

    seq: int
    hash: str
    seal: str | None = None


ANCHOR_FORMAT = "ordinance-audit-anchor/1"


@dataclass(frozen=True)
class Anchor:
    """A head exported for write-once storage (`ordinance audit anchor`).

    `seal` is the head's HMAC seal (`seal_alg` "hmac-sha256") or None ("none") without a key;
    `verify --anchor` checks that the trail still holds record `seq` with this `hash`."""

    seq: int
    hash: str
    record_id: str | None
    record_ts: str | None
    exported_at: str
    seal_alg: str
    seal: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"format": ANCHOR_FORMAT, "seq": self.seq, "hash": self.hash,
                "record_id": self.record_id, "record_ts": self.record_ts,
                "exported_at": self.exported_at, "seal_alg": self.seal_alg, "seal": self.seal}

    @classmethod
    def from_dict(cls, doc: Any) -> Anchor:
        """Raise ValueError naming what is wrong with an anchor document."""
        if not isinstance(doc, dict) or doc.get("format") != ANCHOR_FORMAT:
            raise ValueError(f"not an audit anchor (expected \"format\": \"{ANCHOR_FORMAT}\")")
        seq, digest, alg, seal = doc.get("seq"), doc.get("hash"), doc.get("seal_alg"), \
            doc.get("seal")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError("anchor `seq` must be a non-negative integer")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError("anchor `hash` must be 64 lowercase hex digits")
        if alg not in (HEAD_SEAL_ALG, "none") or (alg == "none") != (seal is None) \
                or (seal is not None and not isinstance(seal, str)):
            raise ValueError("anchor `seal_alg`/`seal` must be \"hmac-sha256\" with a seal or "
                             "\"none\" with null")
        return cls(seq, digest, doc.get("record_id"), doc.get("record_ts"),
                   str(doc.get("exported_at", "")), alg, seal)


def anchor_problem(anchor: Anchor, key: bytes | None) -> str | None:
    """Why an anchor's own seal cannot be trusted, or None."""
    if anchor.seal_alg == "none":
        return None
    if not key:
        return "the anchor is HMAC-sealed: configure the audit key to verify it"
    if not hmac.compare_digest(seal_head(anchor.seq, anchor.hash, key), anchor.seal or ""):
        return "the anchor's seal does not match (anchor edited, or made with another key)"
    return None


# --- verification ----------------------------------------------------------------------------

Damage = str
"""What `verify_chain` found: "deleted", "edited", "inserted", "duplicated", "reordered",
"broken_link", "tail_cut", "added_outside", "head_rewritten", "head_unsealed", "checkpoint",
"anchor"."""


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of walking the chain. `first_bad_seq` names the record that is wrong, `damage`
    the kind of damage."""

    ok: bool
    count: int
    first_bad_seq: int | None = None
    problem: str | None = None
    checkpoint_seq: int | None = None
    damage: Damage | None = None
    head_sealed: bool = False
    """The head's seal was checked and matches."""
    head_seal_unchecked: bool = False
    """The head is sealed but no key was given to check it."""

    def describe(self) -> str:
        if self.ok:
            start = f" from checkpoint at seq {self.checkpoint_seq}" if self.checkpoint_seq else ""
            sealed = (", head seal valid" if self.head_sealed else
                      ", head sealed (set ORDINANCE_AUDIT_KEY to check its seal)"
                      if self.head_seal_unchecked else "")
            return f"audit trail intact: {self.count} records verified{start}{sealed}"
        where = f" at record {self.first_bad_seq}" if self.first_bad_seq is not None else ""
        return f"audit trail BROKEN{where}: {self.problem}"


def verify_chain(
    records: Iterable[AuditRecord],
    *,
    checkpoint: Checkpoint | None = None,
    head: Head | None = None,
    key: bytes | None = None,
    anchor: Anchor | None = None,
    seq_of_hash: Callable[[str], int | None] = lambda _h: None,
    seq_of_id: Callable[[str], int | None] = lambda _i: None,
) -> VerifyResult:
    """Walk `records` (ascending seq) and report the first break, naming its kind.

    For each record: its seq follows the previous one (else records were deleted); its
    `prev_hash` is the previous record's hash and its own hash matches its content. When one of
    those fails, the record is examined before blaming an edit: a copy of an earlier record
    (same hash or id) is *duplicated*; a record the next one skips over (the next links to the
    one before) is *inserted*. At the end the last record must be the one the head names (else
    the tail was cut or a record was added outside the log) and, with a key, the head's seal
    must match (else the head was rewritten, e.g. after cutting the tail). An `anchor` (an
    exported head) must still be in the trail. `seq_of_hash`/`seq_of_id` find which stored
    record has a given hash or id; they are consulted only after a break, to say what happened.
    """
    cp_seq = checkpoint.through_seq if checkpoint else 0
    if checkpoint is not None:
        problem = checkpoint_problem(checkpoint, key)
        if problem:
            return VerifyResult(False, 0, checkpoint.through_seq, problem, cp_seq, "checkpoint")
    if anchor is not None:
        problem = anchor_problem(anchor, key)
        if problem:
            return VerifyResult(False, 0, None, problem, cp_seq or None, "anchor")
    prev_seq = cp_seq
    prev_hash = checkpoint.through_hash if checkpoint else GENESIS_HASH
    count = 0

    def broken(seq: int | None, damage: Damage, problem: str) -> VerifyResult:
        return VerifyResult(False, count, seq, problem, cp_seq or None, damage)

    def copy_of(rec: AuditRecord) -> int | None:
        """The earlier record `rec` is a copy of (same hash, or same id), if any."""
        for found in (seq_of_hash(rec.hash), seq_of_id(rec.id)):
            if found is not None and found < rec.seq:
                return found
        return None

    walk = iter(records)
    rec = next(walk, None)
    while rec is not None:
        nxt = next(walk, None)
        if rec.seq <= prev_seq:
            if rec.hash == prev_hash:
                return broken(rec.seq, "duplicated", f"record duplicated: record {prev_seq} "
                                                     f"appears again as record {rec.seq}")
            return broken(rec.seq, "reordered", f"sequence out of order: record {rec.seq} "
                                                 f"follows record {prev_seq}")
        if rec.seq > prev_seq + 1:
            missing = (f"record {prev_seq + 1}" if rec.seq == prev_seq + 2
                       else f"records {prev_seq + 1}-{rec.seq - 1}")
            return broken(prev_seq + 1, "deleted", f"sequence gap (record deleted): {missing} "
                                                   f"missing before record {rec.seq}")
        own_ok = hmac.compare_digest(compute_hash(rec), rec.hash)
        linked = seq_of_hash(rec.prev_hash) if rec.prev_hash != prev_hash else prev_seq
        if rec.prev_hash != prev_hash or not own_ok or (head is not None and rec.seq > head.seq):
            original = copy_of(rec)
            if original is not None:
                return broken(rec.seq, "duplicated", f"record duplicated: record {rec.seq} is a "
                                                     f"copy of record {original}")
            if linked is not None and linked > prev_seq:
                return broken(rec.seq, "reordered", f"records reordered: record {rec.seq} was "
                                                    f"chained after record {linked}")
            if nxt is not None and nxt.prev_hash == prev_hash:
                return broken(rec.seq, "inserted", f"record inserted: record {nxt.seq} is "
                                                   f"chained to record {prev_seq}, so record "
                                                   f"{rec.seq} does not belong")
        if rec.prev_hash != prev_hash:
            if linked is not None and linked == prev_seq - 1:
                return broken(prev_seq, "inserted", f"record inserted: record {rec.seq}'s "
                                                    f"prev_hash names record {linked}, so "
                                                    f"record {prev_seq} does not belong")
            if linked is not None and linked != prev_seq:
                return broken(rec.seq, "reordered", f"records reordered: record {rec.seq} was "
                                                    f"chained after record {linked}, not record "
                                                    f"{prev_seq}")
            if own_ok and prev_seq > 0:
                return broken(prev_seq, "edited", f"prev_hash does not match previous record: "
                                                  f"record {rec.seq} was chained to a "
                                                  f"different record {prev_seq} (record "
                                                  f"{prev_seq} edited and re-hashed or "
                                                  f"replaced)")
            return broken(rec.seq, "broken_link", "prev_hash does not match previous record "
                                                  "(broken link)")
        if not own_ok:
            return broken(rec.seq, "edited", "hash mismatch (record edited)")
        if anchor is not None and rec.seq == anchor.seq and rec.hash != anchor.hash:
            return broken(rec.seq, "anchor", f"record {rec.seq} is not the record the anchor "
                                             f"names (trail rewritten since it was anchored)")
        prev_seq, prev_hash = rec.seq, rec.hash
        count += 1
        rec = nxt

    sealed = False
    if head is not None:
        if key and head.seal is None:
            return broken(None, "head_unsealed",
                          f"the trail's head (record {head.seq}) is not sealed although a key "
                          f"is configured: its seal was removed, or a writer ran without "
                          f"the audit key")
        if key and head.seal is not None:
            if not hmac.compare_digest(seal_head(head.seq, head.hash, key), head.seal):
                return broken(None, "head_rewritten",
                              f"the trail's head was rewritten: its seal does not match (it "
                              f"names record {head.seq}; records after the true head may have "
                              f"been deleted)")
            sealed = True
        if (head.seq, head.hash) != (prev_seq, prev_hash):
            if head.seq > prev_seq:
                return broken(prev_seq + 1, "tail_cut",
                              f"tail truncated (record deleted): records {prev_seq + 1}-"
                              f"{head.seq} missing at the end")
            if head.seq < prev_seq:
                return broken(head.seq + 1, "added_outside",
                              f"record {head.seq + 1} was added outside the log (the trail's "
                              f"head names record {head.seq})")
            return broken(prev_seq, "edited", "hash mismatch (record edited): the last record "
                                              "differs from the one the trail's head names")
    if anchor is not None:
        if anchor.seq > prev_seq:
            return broken(prev_seq + 1, "anchor",
                          f"the trail ends at record {prev_seq} but the anchor names record "
                          f"{anchor.seq}: the tail was cut and the head rewritten (or rolled "
                          f"back) since the anchor was taken")
        if anchor.seq == cp_seq and checkpoint is not None and \
                anchor.hash != checkpoint.through_hash:
            return broken(anchor.seq, "anchor", f"the checkpoint at record {anchor.seq} is not "
                                                f"the record the anchor names")
        if anchor.seq == 0 and cp_seq == 0 and anchor.hash != GENESIS_HASH:
            return broken(0, "anchor", "the anchor names no record of this trail")
    unchecked = head is not None and head.seal is not None and not key
    return VerifyResult(True, count, None, None, cp_seq or None, None, sealed, unchecked)
