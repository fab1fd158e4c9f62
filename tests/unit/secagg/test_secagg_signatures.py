"""Ed25519 verification through libsodium (`crypto.verify_ed25519`) against what signs:
`cryptography`'s signer, whose every signature must verify, and a slow, permissive reference
verifier written from RFC 8032 (section 5.1.7, the cofactorless equation, no canonicity or
small-order checks), which shows that each signature refused below beyond that equation is one a
lenient verifier would take: S + L, an R of small order in any of its encodings, a public key of
small order, the identity as a public key in a non-canonical encoding. (A non-canonical encoding of
a key of large order cannot be tested this way: a signature under it needs its discrete log.)"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.errors import BadSignature
from fl_core.secagg import crypto

PROPERTY = settings(max_examples=150, deadline=None)

# -- a slow reference: edwards25519 in extended coordinates (RFC 8032, sections 5.1.1-5.1.4) ------------
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # the prime order of the base point
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1, 1, 0)


def _add(p, q):
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a, b = (y1 - x1) * (y2 - x2) % P, (y1 + x1) * (y2 + x2) % P
    c, d = 2 * t1 * t2 * D % P, 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % P, g * h % P, f * g % P, e * h % P


def _mul(k: int, p):
    out = IDENTITY
    while k:
        if k & 1:
            out = _add(out, p)
        p, k = _add(p, p), k >> 1
    return out


def _equal(p, q) -> bool:
    return (p[0] * q[2] - q[0] * p[2]) % P == 0 and (p[1] * q[2] - q[1] * p[2]) % P == 0


def _decode(data: bytes):
    """A point from 32 bytes, permissively: y is reduced mod p and x = 0 with the sign bit set is
    taken (RFC 8032 refuses both); None when there is no such point."""
    n = int.from_bytes(data, "little")
    sign, y = n >> 255, (n & (2**255 - 1)) % P
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if v * x * x % P == -u % P:
        x = x * SQRT_M1 % P
    if v * x * x % P != u:
        return None
    if x & 1 != sign:
        x = -x % P
    return x, y, 1, x * y % P


def _encode(point) -> bytes:
    x, y, z, _ = point
    inverse = pow(z, P - 2, P)
    x, y = x * inverse % P, y * inverse % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


BASE = _decode((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))


def _k(r: bytes, public: bytes, message: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + public + message).digest(), "little") % L


def permissive_verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """[S]B = R + [k]A as points, with S, R and A taken as they come."""
    a, r = _decode(public), _decode(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    return _equal(_mul(s, BASE), _add(r, _mul(_k(signature[:32], public, message), a)))


def key_pair():
    """A fresh identity, its raw public key and its secret scalar a (RFC 8032, section 5.1.5)."""
    identity = crypto.new_identity()
    seed = identity.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption())
    a = int.from_bytes(hashlib.sha512(seed).digest()[:32], "little")
    a = (a & (2**254 - 8)) | 2**254
    return identity, crypto.identity_public(identity), a


def refused(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        crypto.verify_ed25519(public, signature, message)
    except BadSignature:
        return True
    return False


def test_the_reference_agrees_with_cryptography_on_its_keys_and_signatures():
    """The reference is sound enough to judge the cases below: it derives the library's public
    key from the secret scalar and accepts the library's signatures."""
    for message in (b"", b"fedsilo", bytes(range(256))):
        identity, public, a = key_pair()
        assert _encode(_mul(a, BASE)) == public
        signature = identity.sign(message)
        assert permissive_verify(public, signature, message)
        assert not permissive_verify(public, signature, message + b"!")


# -- every honest signature verifies ------------------------------------------------------------------
KEYS = [crypto.new_identity() for _ in range(4)]


@PROPERTY
@given(message=st.binary(max_size=20_000), which=st.integers(0, len(KEYS) - 1))
def test_every_signature_cryptography_makes_verifies(message, which):
    identity = KEYS[which]
    crypto.verify_ed25519(crypto.identity_public(identity), identity.sign(message), message)


@PROPERTY
@given(header=st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=4),
       body=st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=50), st.integers()), max_size=6))
def test_every_sealed_envelope_opens(header, body):
    identity = KEYS[0]
    envelope = crypto.seal(identity, header, body)
    crypto.verify_signature(envelope, crypto.identity_public(identity))
    with pytest.raises(BadSignature):
        crypto.verify_signature(envelope, crypto.identity_public(KEYS[1]))


# -- any flipped bit is refused -------------------------------------------------------------------------
def _flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_every_bit_of_signature_and_key_matters():
    identity = KEYS[1]
    public, message = crypto.identity_public(identity), b"the round's keys"
    signature = identity.sign(message)
    crypto.verify_ed25519(public, signature, message)
    for bit in range(512):
        assert refused(public, _flip_bit(signature, bit), message), bit
    for bit in range(256):
        assert refused(_flip_bit(public, bit), signature, message), bit


@PROPERTY
@given(message=st.binary(min_size=1, max_size=3000), data=st.data())
def test_any_flipped_bit_of_the_message_is_refused(message, data):
    identity = KEYS[2]
    signature = identity.sign(message)
    bit = data.draw(st.integers(0, 8 * len(message) - 1))
    assert refused(crypto.identity_public(identity), signature, _flip_bit(message, bit))
    assert refused(crypto.identity_public(identity), signature, message + b"\x00")
    assert refused(crypto.identity_public(identity), signature, message[:-1])


@pytest.mark.parametrize("bad", [b"", bytes(63), bytes(65), None, "a" * 64, bytearray(64)])
def test_signatures_and_keys_of_the_wrong_shape_are_refused(bad):
    identity = KEYS[0]
    public, signature = crypto.identity_public(identity), identity.sign(b"m")
    assert refused(public, bad, b"m")
    assert refused(bad, signature, b"m")


def test_an_envelope_without_a_signature_is_refused_not_read_as_a_signed_message():
    """PyNaCl's `verify(message, None)` reads the signature from the front of the message; an
    envelope whose signature is missing must not get that reading."""
    identity = KEYS[0]
    envelope = crypto.seal(identity, {"phase": "keys"}, {"x": 1})
    unsigned = crypto.Envelope(header=envelope.header, body=envelope.body, signature=None)
    with pytest.raises(BadSignature):
        crypto.verify_signature(unsigned, crypto.identity_public(identity))


# -- what libsodium refuses beyond the equation ----------------------------------------------------------
def test_the_malleable_s_plus_l_is_refused():
    identity, public, _ = key_pair()
    message = b"shares"
    signature = identity.sign(message)
    s = int.from_bytes(signature[32:], "little")
    malleable = signature[:32] + (s + L).to_bytes(32, "little")  # < 2^253: fits, and [S + L]B = [S]B
    assert permissive_verify(public, malleable, message)
    assert refused(public, malleable, message)
    assert refused(public, signature[:32] + (2**256 - 1).to_bytes(32, "little"), message)


def _torsion() -> list:
    """The eight points of order dividing 8: multiples of [L]Q for a point Q whose torsion part has
    order 8 (found by trying y = 2, 3, ...)."""
    y = 2
    while True:
        q = _decode(y.to_bytes(32, "little"))
        y += 1
        if q is None:
            continue
        t = _mul(L, q)
        if not _equal(_mul(4, t), IDENTITY):
            return [_mul(k, t) for k in range(8)]


def _order(point) -> int:
    return next(o for o in (1, 2, 4, 8) if _equal(_mul(o, point), IDENTITY))


IDENTITY_ENCODINGS = [
    (1).to_bytes(32, "little"),  # canonical
    (P + 1).to_bytes(32, "little"),  # y = p + 1: not reduced
    (1 | 2**255).to_bytes(32, "little"),  # x = 0 with the sign bit set
]


@pytest.mark.parametrize("r", IDENTITY_ENCODINGS, ids=["canonical", "y+p", "sign bit"])
def test_a_small_order_r_is_refused(r):
    """With the secret scalar a, (R, S) = (identity, k·a) satisfies the equation for any message
    (R + [k]A = [k·a]B); no honest signer makes it, and libsodium refuses it."""
    _, public, a = key_pair()
    message = b"an advert"
    signature = r + (_k(r, public, message) * a % L).to_bytes(32, "little")
    assert permissive_verify(public, signature, message)
    assert refused(public, signature, message)


def test_small_order_public_keys_are_refused():
    """Under a public key A of order o, (R, S) = (identity, 0) satisfies the equation for every
    message whose k is a multiple of o — for every message when A is the identity."""
    points = _torsion()
    assert sorted(_order(p) for p in points) == [1, 2, 4, 4, 8, 8, 8, 8]
    signature = IDENTITY_ENCODINGS[0] + bytes(32)
    for point in points:
        public, order = _encode(point), _order(point)
        message = next(m for m in (b"m%d" % i for i in range(10_000)) if _k(signature[:32], public, m) % order == 0)
        assert permissive_verify(public, signature, message)
        assert refused(public, signature, message)
    for public in IDENTITY_ENCODINGS[1:]:  # the identity as a non-canonical key
        assert permissive_verify(public, signature, b"any message")
        assert refused(public, signature, b"any message")

