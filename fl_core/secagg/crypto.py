"""Cryptographic building blocks of the protocol, all from `cryptography` (pyca).

- Key agreement: X25519 (RFC 7748); every derived key goes through HKDF-SHA256 (RFC 5869) with an
  `info` that binds it to its purpose, the federation, the round and the parties, so a key from
  one round or pair is useless in another.
- Share encryption: AES-256-GCM with a fresh 96-bit nonce per message and the same binding as
  associated data.
- Signatures: Ed25519 (RFC 8032) over a canonical encoding of a message's header, body and, for a
  vector, its SHA-256.
- Commitments: SHA-256 of a domain tag, the binding and the secret (the secret is 32 random
  bytes, so the hash hides it).

Every integrity failure raises one opaque error (`BadSignature`, `BadCiphertext`) from None: a
caller learns that a check failed, never which byte or why.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fl_core.errors import BadCiphertext, BadSignature, StaleMessage, WrongLength, WrongSender

_RAW = serialization.Encoding.Raw
NONCE_BYTES = 12
MASK_KEY_BYTES = 16  # AES-128-CTR mask keys


def bind(*parts: str | int | bytes) -> bytes:
    """An unambiguous encoding of a tuple (each part length-prefixed)."""
    out = bytearray()
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, expected: int | None = None) -> bytes:
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, AttributeError, UnicodeEncodeError):
        raise WrongLength("a field is not valid base64") from None
    if base64.b64encode(data).decode("ascii") != text:  # one encoding per value: no malleable padding bits
        raise WrongLength("a field is not canonical base64")
    if expected is not None and len(data) != expected:
        raise WrongLength(f"a field has {len(data)} bytes, expected {expected}")
    return data


# -- X25519 -------------------------------------------------------------------------------------------
def new_x25519() -> tuple[bytes, bytes]:
    """A fresh key pair as raw bytes (private, public); the private key comes from the OS RNG."""
    private = X25519PrivateKey.generate()
    return (
        private.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()),
        private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw),
    )


def check_x25519_public(public: bytes) -> bytes:
    """`public` if it is a usable X25519 key. A low-order point (every agreement with it yields the
    all-zero secret, RFC 7748 section 6.1) raises `BadCiphertext`, as `agree` would later; the probe
    scalar is arbitrary, since clamping makes every scalar a multiple of the cofactor."""
    agree(bytes(32), public)
    return public


def x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def agree(private: bytes, public: bytes) -> bytes:
    if len(private) != 32 or len(public) != 32:
        raise WrongLength("X25519 keys are 32 bytes")
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # the all-zero shared secret of a low-order point
        raise BadCiphertext("key agreement failed") from None


def _hkdf(secret: bytes, length: int, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def pair_mask_key(shared: bytes, federation: str, round_number: int, low: str, high: str) -> bytes:
    """The AES key of the pairwise mask between `low` and `high` (ordered by roster position)."""
    return _hkdf(shared, MASK_KEY_BYTES, bind("fedsilo/secagg/pair-mask/v1", federation, round_number, low, high))


def self_mask_key(seed: bytes, federation: str, round_number: int, silo: str) -> bytes:
    return _hkdf(seed, MASK_KEY_BYTES, bind("fedsilo/secagg/self-mask/v1", federation, round_number, silo))


def commitment(seed: bytes, federation: str, round_number: int, silo: str) -> str:
    return hashlib.sha256(bind("fedsilo/secagg/self-seed-commitment/v1", federation, round_number, silo, seed)).hexdigest()


# -- share encryption ---------------------------------------------------------------------------------
def _share_binding(federation: str, round_number: int, sender: str, receiver: str) -> bytes:
    return bind("fedsilo/secagg/share/v1", federation, round_number, sender, receiver)


def encrypt_share(shared: bytes, federation: str, round_number: int, sender: str, receiver: str, plaintext: bytes) -> bytes:
    binding = _share_binding(federation, round_number, sender, receiver)
    key = _hkdf(shared, 32, binding)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, binding)


def decrypt_share(shared: bytes, federation: str, round_number: int, sender: str, receiver: str, blob: bytes) -> bytes:
    binding = _share_binding(federation, round_number, sender, receiver)
    key = _hkdf(shared, 32, binding)
    if len(blob) <= NONCE_BYTES:
        raise BadCiphertext("share ciphertext rejected") from None
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], binding)
    except InvalidTag:
        raise BadCiphertext("share ciphertext rejected") from None


# -- identities and signed envelopes ------------------------------------------------------------------
def new_identity() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def identity_public(identity: Ed25519PrivateKey) -> bytes:
    return identity.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def fingerprint(public: bytes) -> str:
    """A short, readable name for a public key (the first 80 bits of its SHA-256), for people to
    compare over a second channel when a silo enrols: ``3f2a:91c0:...``."""
    digest = hashlib.sha256(b"fedsilo/key/v1" + public).hexdigest()[:20]
    return ":".join(digest[i:i + 4] for i in range(0, 20, 4))


def vector_digest(vector: np.ndarray) -> str:
    """SHA-256 of a vector's little-endian bytes, with its dtype and length bound in."""
    data = np.ascontiguousarray(vector)
    if data.dtype.byteorder == ">":
        data = data.byteswap().view(data.dtype.newbyteorder("<"))
    head = bind("fedsilo/vector/v1", data.dtype.str.lstrip("<>|="), len(data))
    return hashlib.sha256(head + data.tobytes()).hexdigest()


FIELDS = frozenset({"header", "body", "vector_sha256", "signature"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A signed message: who sent it, in which federation, round and phase, and what it says.

    ``header`` = {"federation", "round", "phase", "sender"}; ``body`` is JSON-able; a message
    that accompanies a vector carries the vector's digest (the vector itself travels apart)."""

    header: dict[str, Any]
    body: dict[str, Any]
    vector_sha256: str | None = None
    signature: bytes = field(default=b"", repr=False)

    def signed_bytes(self) -> bytes:
        canonical = json.dumps(
            {"header": self.header, "body": self.body, "vector_sha256": self.vector_sha256},
            sort_keys=True, separators=(",", ":"), ensure_ascii=True,
        )
        return b"fedsilo/envelope/v1\n" + canonical.encode()

    def to_dict(self) -> dict[str, Any]:
        return {"header": self.header, "body": self.body, "vector_sha256": self.vector_sha256,
                "signature": b64(self.signature)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: Any) -> Envelope:
        if not isinstance(raw, dict) or set(raw) != FIELDS:  # exactly the fields `to_dict` writes
            raise BadSignature("message rejected")
        try:
            return cls(
                header=dict(raw["header"]), body=dict(raw["body"]), vector_sha256=raw.get("vector_sha256"),
                signature=unb64(raw["signature"], 64),
            )
        except (KeyError, TypeError, ValueError, AttributeError, WrongLength):
            raise BadSignature("message rejected") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Envelope:
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise BadSignature("message rejected") from None
        return cls.from_dict(raw)


def seal(identity: Ed25519PrivateKey, header: dict[str, Any], body: dict[str, Any], vector: np.ndarray | None = None) -> Envelope:
    unsigned = Envelope(header=dict(header), body=dict(body), vector_sha256=None if vector is None else vector_digest(vector))
    return Envelope(
        header=unsigned.header, body=unsigned.body, vector_sha256=unsigned.vector_sha256,
        signature=identity.sign(unsigned.signed_bytes()),
    )


def verify_signature(envelope: Envelope, public_key: bytes) -> None:
    """`envelope` carries `public_key`'s signature over its header, body and vector digest; else
    `BadSignature` (opaque). Checks nothing about what the header says: `open_envelope` does."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(envelope.signature, envelope.signed_bytes())
    except (InvalidSignature, ValueError, TypeError):
        raise BadSignature("message rejected") from None


def open_envelope(
    envelope: Envelope,
    public_key: bytes,
    *,
    federation: str,
    round_number: int,
    phase: str,
    sender: str,
    vector: np.ndarray | None = None,
) -> dict[str, Any]:
    """Verify `envelope` as `sender`'s message for this federation, round and phase; return its body.

    Checks, in order: the claimed sender (`WrongSender`), the binding (`StaleMessage`: another
    federation, round or phase, e.g. a replay), the signature and the vector's digest
    (`BadSignature`, one opaque error for both)."""
    header = envelope.header
    if header.get("sender") != sender:
        raise WrongSender(f"message claims sender {header.get('sender')!r}, expected {sender!r}")
    if (header.get("federation"), header.get("round"), header.get("phase")) != (federation, round_number, phase):
        raise StaleMessage(
            f"message from {sender} is bound to ({header.get('federation')}, round {header.get('round')}, "
            f"{header.get('phase')}), expected ({federation}, round {round_number}, {phase})"
        )
    verify_signature(envelope, public_key)
    if (vector is None) != (envelope.vector_sha256 is None):
        raise BadSignature("message rejected") from None
    if vector is not None and vector_digest(vector) != envelope.vector_sha256:
        raise BadSignature("message rejected") from None
    return envelope.body
