"""The audit log's chain: append-only JSON lines, each entry carrying the hash of the one before it
and its writer's Ed25519 signature, and the check that names the first entry that breaks it.

A hash chain makes a log tamper-evident (Haber & Stornetta, "How to Time-Stamp a Digital
Document", J. Cryptology 1991; Schneier & Kelsey, "Secure Audit Logs to Support Computer
Forensics", ACM TISSEC 1999): editing, deleting, inserting or reordering an entry changes a hash
that the next entry names, and a signature by the writer's identity key (the coordinator's, or a
silo's for its own events) means that nobody else can write a valid entry in its name. What a
chain cannot show by itself is that entries were cut off its end: the verifier is therefore given
the head it must reach (`Head`: the number of entries and the last one's hash), which the signed
round records and the job's MLflow run carry, so that a truncated log fails too.

One line per entry: ``{"v", "seq", "prev", "actor", "kind", "round", "time", "body", "sig"}``;
``seq`` counts from 0, ``prev`` is the hex SHA-256 of the previous line's signed bytes (64 zeros for
the first), ``round`` never decreases, ``sig`` is the base64 signature of the entry without it
(canonical JSON, sorted keys). Bodies hold what an auditor needs (verdicts, counts, digests, ε),
never rows or secrets: callers put only such values in them. This module has no I/O: the pipeline
keeps the lines in the exchange and feeds them here.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fl_core.errors import FedsiloError
from fl_core.secagg.crypto import BadSignature, WrongLength, b64, unb64, verify_ed25519

VERSION = 1
GENESIS = "0" * 64
FIELDS = frozenset({"v", "seq", "prev", "actor", "kind", "round", "time", "body", "sig"})
_DOMAIN = b"fedsilo/audit/v1\n"


class AuditError(FedsiloError):
    """The audit log is not what its writers wrote: `index` names the first bad line (0-based)."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"audit log, entry {index}: {reason}")
        self.index, self.reason = index, reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    seq: int
    prev: str
    actor: str
    kind: str
    round: int
    time: float
    body: Mapping[str, Any]
    sig: bytes = b""

    def unsigned(self) -> dict[str, Any]:
        return {"v": VERSION, "seq": self.seq, "prev": self.prev, "actor": self.actor, "kind": self.kind,
                "round": self.round, "time": self.time, "body": dict(self.body)}

    def signed_bytes(self) -> bytes:
        return _DOMAIN + _canonical(self.unsigned()).encode()

    def digest(self) -> str:
        """What the next entry names as its ``prev``."""
        return hashlib.sha256(self.signed_bytes()).hexdigest()

    def line(self) -> str:
        return _canonical({**self.unsigned(), "sig": b64(self.sig)})


@dataclass(frozen=True, slots=True)
class Head:
    """Where a log must end: its number of entries and the last entry's digest."""

    count: int
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "digest": self.digest}


EMPTY = Head(0, GENESIS)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def append(head: Head, *, signer, actor: str, kind: str, round_number: int, time: float,
           body: Mapping[str, Any]) -> tuple[str, Head]:
    """The line of a new entry after `head`, signed by `signer` (an Ed25519 private key of
    `cryptography`) as `actor`, and the head after it. `body` must be JSON (no NaN: a value nobody
    measured is None)."""
    if not isinstance(round_number, int) or isinstance(round_number, bool) or round_number < 0:
        raise ValueError(f"round must be an integer >= 0, got {round_number!r}")
    if not actor or not kind:
        raise ValueError("an audit entry needs an actor and a kind")
    if not (isinstance(time, (int, float)) and math.isfinite(time)):
        raise ValueError(f"time must be a finite number, got {time!r}")
    entry = Entry(seq=head.count, prev=head.digest, actor=actor, kind=kind, round=round_number, time=float(time),
                  body=json.loads(_canonical(dict(body))))
    entry = Entry(**{**{f: getattr(entry, f) for f in Entry.__slots__ if f != "sig"},
                     "sig": signer.sign(entry.signed_bytes())})
    return entry.line(), Head(head.count + 1, entry.digest())


def parse(line: str, index: int) -> Entry:
    """One line as an entry; `AuditError` naming the line if it is not one."""
    try:
        raw = json.loads(line)
    except ValueError:
        raise AuditError(index, "not a JSON object") from None
    if not isinstance(raw, dict) or set(raw) != FIELDS:
        raise AuditError(index, f"fields must be exactly {sorted(FIELDS)}")
    if raw["v"] != VERSION:
        raise AuditError(index, f"version {raw['v']!r}, this reader knows {VERSION}")
    for name, kind in (("seq", int), ("round", int), ("prev", str), ("actor", str), ("kind", str)):
        if not isinstance(raw[name], kind) or isinstance(raw[name], bool):
            raise AuditError(index, f"field {name!r} must be {kind.__name__}")
    if not isinstance(raw["time"], (int, float)) or not isinstance(raw["body"], dict):
        raise AuditError(index, "field 'time' must be a number and 'body' an object")
    try:
        sig = unb64(raw["sig"], 64) if isinstance(raw["sig"], str) else None
    except WrongLength:
        sig = None
    if sig is None:
        raise AuditError(index, "field 'sig' is not a 64-byte signature in canonical base64")
    entry = Entry(seq=raw["seq"], prev=raw["prev"], actor=raw["actor"], kind=raw["kind"], round=raw["round"],
                  time=float(raw["time"]), body=raw["body"], sig=sig)
    if entry.line() != line.rstrip("\n"):
        raise AuditError(index, "not in canonical form (a line is written once, as its writer signed it)")
    return entry


def verify(lines: Iterable[str], key_of: Callable[[str, Entry], bytes | None], expected: Head | None = None
           ) -> tuple[list[Entry], Head]:
    """Check a whole log: every line an entry in canonical form, numbered in order, naming the
    previous entry's digest, signed by the key `key_of(actor, entry)` returns (the roster in force
    at that entry; None: the actor may not write), rounds never decreasing; and, given `expected`
    (a head recorded elsewhere), reaching it: entry ``expected.count - 1`` is the one it names (the
    log may have grown since). Returns the entries and the head; raises `AuditError` at the first
    bad entry (for a log cut short: at the first missing one)."""
    entries: list[Entry] = []
    head = EMPTY
    last_round = 0
    for index, line in enumerate(lines):
        entry = parse(line, index)
        if entry.seq != index:
            raise AuditError(index, f"numbered {entry.seq} (deleted, inserted or reordered entries)")
        if entry.prev != head.digest:
            raise AuditError(index, "does not follow the entry before it (its 'prev' hash differs)")
        key = key_of(entry.actor, entry)
        if key is None:
            raise AuditError(index, f"written as {entry.actor!r}, who may not write to this log")
        try:
            verify_ed25519(key, entry.sig, entry.signed_bytes())
        except BadSignature:
            raise AuditError(index, f"signature is not {entry.actor!r}'s (edited or forged)") from None
        if entry.round < last_round:
            raise AuditError(index, f"round {entry.round} after round {last_round}")
        last_round = entry.round
        entries.append(entry)
        head = Head(index + 1, entry.digest())
    if expected is not None and expected.count:
        if head.count < expected.count:
            raise AuditError(head.count, f"missing: the log ends after {head.count} entries, the recorded head "
                                         f"is at {expected.count} (truncated)")
        if entries[expected.count - 1].digest() != expected.digest:
            raise AuditError(expected.count - 1, "is not the entry the recorded head names (the log was rewritten)")
    return entries, head
