"""Cryptographic building blocks of the protocol, from `cryptography` (pyca) and, to verify
signatures, libsodium (through PyNaCl).

- Key agreement: X25519 (RFC 7748); every derived key goes through HKDF-SHA256 (RFC 5869) with an
  `info` that binds it to its purpose, the federation, the round and the parties, so a key from
  one round or pair is useless in another (`RoundKeys` encodes a round's prefixes once for its
  many pairs). An advertised key of small order, with which every agreement yields the all-zero
  secret, is refused by comparing its u-coordinate with the five of small order (Bernstein,
  "Curve25519: new Diffie-Hellman speed records", PKC 2006).
- Share encryption: AES-256-GCM with a fresh 96-bit nonce per message and the same binding as
  associated data, under a key per ordered pair (`RoundKeys.share_key`) that a receiver derives
  once and keeps for the phase that decrypts.
- Signatures: Ed25519 (RFC 8032) over a canonical encoding of a message's header, body and, for a
  vector, its SHA-256; made with `cryptography`, verified with libsodium (`verify_ed25519`
  says why, and what libsodium refuses beyond RFC 8032).
- Commitments: SHA-256 of a domain tag, the binding and the secret (the secret is 32 random
  bytes, so the hash hides it).

Every integrity failure raises one opaque error (`BadSignature`, `BadCiphertext`) from None: a
caller learns that a check failed, never which byte or why.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from fl_core.errors import BadCiphertext, BadSignature, StaleMessage, WrongLength, WrongSender

_RAW = serialization.Encoding.Raw
NONCE_BYTES = 12
MASK_KEY_BYTES = 16  # AES-128-CTR mask keys


def bind(*parts: str | int | bytes) -> bytes:
    """An unambiguous encoding of a tuple (each part length-prefixed). It is a concatenation, so
    ``bind(*a, *b) == bind(*a) + bind(*b)``: a prefix shared by many bindings is encoded once."""
    chunks = []
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        chunks += (len(data).to_bytes(4, "big"), data)
    return b"".join(chunks)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, expected: int | None = None) -> bytes:
    try:
        raw = text.encode("ascii")
        data = binascii.a2b_base64(raw, strict_mode=True)
    except (ValueError, AttributeError, UnicodeEncodeError):  # binascii.Error is a ValueError
        raise WrongLength("a field is not valid base64") from None
    if binascii.b2a_base64(data, newline=False) != raw:  # one encoding per value: no malleable padding bits
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


# u-coordinates (mod p) of the points of small order: (0, 0) of order 2, u = 1 and u = p - 1 of
# order 4 (one on the curve, one on its twist) and the two of order 8 (Bernstein, PKC 2006, and
# cr.yp.to/ecdh.html). No other u-coordinate has a small order: every u is on the curve (order 8ℓ)
# or its twist (order 4ℓ'), and A² - 4 is not a square, so (0, 0) is the only point of order 2.
_P25519 = 2**255 - 19
_SMALL_ORDER_U = frozenset({
    0, 1, _P25519 - 1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
})


def is_low_order(public: bytes) -> bool:
    """Whether every X25519 agreement with `public` yields the all-zero secret (RFC 7748 section
    6.1). An X25519 scalar is clamped to a multiple of 8 in [2^254, 2^255), never a multiple of the
    large prime factor ℓ or ℓ' of the curve's or the twist's order, so the product is the neutral
    element exactly when the point has small order; and a u-coordinate is decoded with its top
    bit cleared, reduced mod p (RFC 7748 section 5), so the non-canonical encodings p and p + 1
    (of 0 and 1) and the top-bit variants are caught too. The same answer as an agreement with a
    probe scalar, without the scalar multiplication."""
    if len(public) != 32:
        raise WrongLength("X25519 keys are 32 bytes")
    return (int.from_bytes(public, "little") & ((1 << 255) - 1)) % _P25519 in _SMALL_ORDER_U


def check_x25519_public(public: bytes) -> bytes:
    """`public` if it is a usable X25519 key. A low-order point (every agreement with it yields the
    all-zero secret, RFC 7748 section 6.1) raises `BadCiphertext`, as `agree` would later."""
    if is_low_order(public):
        raise BadCiphertext("key agreement failed") from None
    return public


def x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def agree(private: bytes, public: bytes) -> bytes:
    return agreement(private)(public)


def agreement(private: bytes) -> Callable[[bytes], bytes]:
    """`lambda public: agree(private, public)` with the private key decoded once: decoding it
    costs a scalar multiplication (the library derives the public key), as much as the agreement."""
    if len(private) != 32:
        raise WrongLength("X25519 keys are 32 bytes")
    key = X25519PrivateKey.from_private_bytes(private)

    def exchange(public: bytes) -> bytes:
        if len(public) != 32:
            raise WrongLength("X25519 keys are 32 bytes")
        try:
            return key.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError:  # the all-zero shared secret of a low-order point
            raise BadCiphertext("key agreement failed") from None

    return exchange


def _hkdf(secret: bytes, length: int, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


@dataclass(frozen=True, slots=True)
class RoundKeys:
    """Key derivation, commitments and share encryption for one federation and round.

    Every binding starts with (purpose, federation, round); `bind` is a concatenation, so those
    prefixes are encoded once here and a pair's key encodes only the pair. The module's functions
    of the same names are these methods for a single use."""

    federation: str
    round_number: int
    _pair_mask: bytes = field(init=False, repr=False, compare=False)
    _self_mask: bytes = field(init=False, repr=False, compare=False)
    _commitment: bytes = field(init=False, repr=False, compare=False)
    _share: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, purpose in (
            ("_pair_mask", "fedsilo/secagg/pair-mask/v1"), ("_self_mask", "fedsilo/secagg/self-mask/v1"),
            ("_commitment", "fedsilo/secagg/self-seed-commitment/v1"), ("_share", "fedsilo/secagg/share/v1"),
        ):
            object.__setattr__(self, name, bind(purpose, self.federation, self.round_number))

    def pair_mask_key(self, shared: bytes, low: str, high: str) -> bytes:
        """The AES key of the pairwise mask between `low` and `high` (ordered by roster position)."""
        return _hkdf(shared, MASK_KEY_BYTES, self._pair_mask + bind(low, high))

    def self_mask_key(self, seed: bytes, silo: str) -> bytes:
        return _hkdf(seed, MASK_KEY_BYTES, self._self_mask + bind(silo))

    def commitment(self, seed: bytes, silo: str) -> str:
        return hashlib.sha256(self._commitment + bind(silo, seed)).hexdigest()

    def share_key(self, shared: bytes, sender: str, receiver: str) -> bytes:
        """The AES-256-GCM key of `sender`'s shares to `receiver` (one per ordered pair: the two
        directions of a pair have different keys)."""
        return _hkdf(shared, 32, self._share + bind(sender, receiver))

    def seal_share(self, key: bytes, sender: str, receiver: str, plaintext: bytes) -> bytes:
        """`plaintext` encrypted under `key` (from `share_key`) with the pair's binding as
        associated data; a fresh 96-bit nonce from the OS RNG leads the blob."""
        binding = self._share + bind(sender, receiver)
        nonce = os.urandom(NONCE_BYTES)
        return nonce + AESGCM(key).encrypt(nonce, plaintext, binding)

    def open_share(self, key: bytes, sender: str, receiver: str, blob: bytes) -> bytes:
        """The plaintext of `seal_share`'s blob; a blob changed in any byte, made under another
        key, or bound to another sender, receiver, federation or round: `BadCiphertext`."""
        if len(blob) <= NONCE_BYTES:
            raise BadCiphertext("share ciphertext rejected") from None
        try:
            return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], self._share + bind(sender, receiver))
        except (InvalidTag, ValueError, TypeError):  # ValueError: a key of the wrong size
            raise BadCiphertext("share ciphertext rejected") from None

    def encrypt_share(self, shared: bytes, sender: str, receiver: str, plaintext: bytes) -> bytes:
        return self.seal_share(self.share_key(shared, sender, receiver), sender, receiver, plaintext)

    def decrypt_share(self, shared: bytes, sender: str, receiver: str, blob: bytes) -> bytes:
        return self.open_share(self.share_key(shared, sender, receiver), sender, receiver, blob)


def pair_mask_key(shared: bytes, federation: str, round_number: int, low: str, high: str) -> bytes:
    """The AES key of the pairwise mask between `low` and `high` (ordered by roster position)."""
    return RoundKeys(federation, round_number).pair_mask_key(shared, low, high)


def self_mask_key(seed: bytes, federation: str, round_number: int, silo: str) -> bytes:
    return RoundKeys(federation, round_number).self_mask_key(seed, silo)


def commitment(seed: bytes, federation: str, round_number: int, silo: str) -> str:
    return RoundKeys(federation, round_number).commitment(seed, silo)


# -- share encryption ---------------------------------------------------------------------------------
def encrypt_share(shared: bytes, federation: str, round_number: int, sender: str, receiver: str, plaintext: bytes) -> bytes:
    """AES-256-GCM under a key derived from `shared` and bound (also as associated data) to the
    federation, round, sender and receiver; a fresh 96-bit nonce from the OS RNG leads the blob."""
    return RoundKeys(federation, round_number).encrypt_share(shared, sender, receiver, plaintext)


def decrypt_share(shared: bytes, federation: str, round_number: int, sender: str, receiver: str, blob: bytes) -> bytes:
    """The plaintext of `encrypt_share`'s blob; any change to it or to the binding: `BadCiphertext`."""
    return RoundKeys(federation, round_number).decrypt_share(shared, sender, receiver, blob)


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
    digest = hashlib.sha256(bind("fedsilo/vector/v1", data.dtype.str.lstrip("<>|="), len(data)))
    digest.update(data.tobytes() if data.dtype.hasobject else data.reshape(-1).view(np.uint8))  # no copy
    return digest.hexdigest()


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
        """The envelope in `text`; a text that is not JSON, or that names a key twice in one object
        (which JSON parsers resolve differently, so that two readers could see two messages under
        one signature), is refused."""
        try:
            raw = json.loads(text, object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError and _unique_keys's
            raise BadSignature("message rejected") from None
        return cls.from_dict(raw)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key occurs twice")
    return out


def seal(identity: Ed25519PrivateKey, header: dict[str, Any], body: dict[str, Any], vector: np.ndarray | None = None) -> Envelope:
    unsigned = Envelope(header=dict(header), body=dict(body), vector_sha256=None if vector is None else vector_digest(vector))
    return Envelope(
        header=unsigned.header, body=unsigned.body, vector_sha256=unsigned.vector_sha256,
        signature=identity.sign(unsigned.signed_bytes()),
    )


def verify_ed25519(public_key: bytes, signature: bytes, message: bytes) -> None:
    """`signature` is `public_key`'s Ed25519 signature of `message`; else `BadSignature` (opaque).

    Verified with libsodium's `crypto_sign_verify_detached` (through PyNaCl), about twice as fast
    here as `cryptography`'s OpenSSL (about 55 against 110 µs), which matters because every silo
    checks every peer's signed keys; signing stays with `cryptography`. Both libraries check the
    cofactorless equation [S]B = R + [k]A of RFC 8032 (section 5.1.7) with R compared as bytes, so
    a non-canonical encoding of R never passes, and both refuse S >= L (the malleable S + L).
    libsodium also refuses, before any point arithmetic, three things OpenSSL takes:
    - an R of small order (a point of order dividing 8, in any encoding), which no honest signer
      makes (R = [r]B lies in the prime-order subgroup);
    - a public key A of small order, under which (R, S) = (identity, 0) passes for chosen messages
      (for every message when A is the identity);
    - a public key A whose encoding is not canonical (y not reduced mod p).
    So every signature an honest signer makes verifies here as it does with `cryptography`, and
    what is refused on top comes only from keys or signers that are not honest Ed25519 ones
    (tests/unit/secagg/test_secagg_signatures.py builds signatures of each of these kinds that a
    permissive reference verifier takes, and shows them refused). The identity keys come from the
    signed roster; a small-order one is refused here whoever enrolled it."""
    if not isinstance(signature, bytes) or len(signature) != 64:  # PyNaCl reads None as "inside the message"
        raise BadSignature("message rejected") from None
    try:
        VerifyKey(public_key).verify(message, signature)
    except (CryptoError, ValueError, TypeError):  # nacl's ValueError and TypeError subclass CryptoError too
        raise BadSignature("message rejected") from None


def verify_signature(envelope: Envelope, public_key: bytes) -> None:
    """`envelope` carries `public_key`'s signature over its header, body and vector digest; else
    `BadSignature` (opaque). Checks nothing about what the header says: `open_envelope` does."""
    verify_ed25519(public_key, envelope.signature, envelope.signed_bytes())


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
