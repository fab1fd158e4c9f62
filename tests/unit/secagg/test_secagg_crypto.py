"""The fast paths of the cryptographic building blocks against slow, exact references: the low-order
test without a scalar multiplication against an agreement with a probe scalar; key agreement with
a private key decoded once against a fresh decoding; per-round key derivation with encoded prefixes
against the plain binding; the copy-free vector digest and the base64 decoder against their
straightforward definitions."""

from __future__ import annotations

import base64
import hashlib
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.errors import BadCiphertext, WrongLength
from fl_core.secagg import crypto

PROPERTY = settings(max_examples=200, deadline=None)
P25519 = 2**255 - 19
ORDER_8 = (
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
)


def probe_says_low_order(public: bytes) -> bool:
    """The slow reference: an agreement with a fixed scalar yields the all-zero secret (the
    library refuses it with ValueError) exactly for a point of small order."""
    try:
        X25519PrivateKey.from_private_bytes(bytes(32)).exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return True
    return False


def encodings(u: int) -> list[bytes]:
    """Every 32-byte encoding of the u-coordinate u mod p: u, u + p when it fits in 255 bits, and
    each with the ignored top bit set."""
    values = [u] + ([u + P25519] if u + P25519 < 2**255 else [])
    return [(v | top).to_bytes(32, "little") for v in values for top in (0, 2**255)]


@pytest.mark.parametrize("u", [0, 1, P25519 - 1, *ORDER_8])
def test_every_encoding_of_a_small_order_point_is_caught(u):
    for key in encodings(u):
        assert probe_says_low_order(key)
        assert crypto.is_low_order(key)
        with pytest.raises(BadCiphertext):
            crypto.check_x25519_public(key)


def test_the_blocklist_matches_the_probe_near_every_boundary():
    """Small u, u near p (non-canonical encodings), near 2^255, and neighbours of the listed points."""
    near = [*range(0, 40), *range(P25519 - 40, 2**255), *(u + k for u in ORDER_8 for k in (-2, -1, 1, 2))]
    for u in near:
        for key in encodings(u % 2**255):
            assert crypto.is_low_order(key) == probe_says_low_order(key), u


@PROPERTY
@given(key=st.binary(min_size=32, max_size=32))
def test_the_blocklist_matches_the_probe_on_any_key(key):
    assert crypto.is_low_order(key) == probe_says_low_order(key)


def test_real_keys_pass_and_wrong_lengths_are_refused():
    for _ in range(50):
        _, public = crypto.new_x25519()
        assert crypto.check_x25519_public(public) == public
    for size in (0, 31, 33):
        with pytest.raises(WrongLength):
            crypto.check_x25519_public(bytes(size))
        with pytest.raises(WrongLength):
            crypto.agree(bytes(32), bytes(size))
        with pytest.raises(WrongLength):
            crypto.agreement(bytes(size))


def test_agreement_with_a_decoded_key_equals_agree():
    private, _ = crypto.new_x25519()
    agree = crypto.agreement(private)
    for _ in range(20):
        other_private, other_public = crypto.new_x25519()
        assert agree(other_public) == crypto.agree(private, other_public) == crypto.agree(other_private, crypto.x25519_public(private))
    with pytest.raises(BadCiphertext):
        agree(bytes(32))  # u = 0: the all-zero secret


# -- per-round derivation -------------------------------------------------------------------------------
def hkdf(secret: bytes, length: int, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


names = st.text(min_size=0, max_size=12)


@PROPERTY
@given(a=st.lists(st.one_of(names, st.integers(), st.binary(max_size=8)), max_size=4),
       b=st.lists(st.one_of(names, st.integers(), st.binary(max_size=8)), max_size=4))
def test_bind_is_a_concatenation(a, b):
    assert crypto.bind(*a, *b) == crypto.bind(*a) + crypto.bind(*b)


@PROPERTY
@given(federation=names, round_number=st.integers(0, 10**9), low=names, high=names, secret=st.binary(min_size=32, max_size=32))
def test_round_keys_equal_the_plain_bindings(federation, round_number, low, high, secret):
    keys = crypto.RoundKeys(federation, round_number)
    assert keys.pair_mask_key(secret, low, high) == hkdf(
        secret, 16, crypto.bind("fedsilo/secagg/pair-mask/v1", federation, round_number, low, high)
    ) == crypto.pair_mask_key(secret, federation, round_number, low, high)
    assert keys.self_mask_key(secret, low) == hkdf(
        secret, 16, crypto.bind("fedsilo/secagg/self-mask/v1", federation, round_number, low)
    ) == crypto.self_mask_key(secret, federation, round_number, low)
    assert keys.commitment(secret, low) == hashlib.sha256(
        crypto.bind("fedsilo/secagg/self-seed-commitment/v1", federation, round_number, low, secret)
    ).hexdigest() == crypto.commitment(secret, federation, round_number, low)
    blob = keys.encrypt_share(secret, low, high, b"share")
    assert crypto.decrypt_share(secret, federation, round_number, low, high, blob) == b"share"
    binding = crypto.bind("fedsilo/secagg/share/v1", federation, round_number, low, high)
    assert keys.decrypt_share(secret, low, high, blob) == b"share"
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    assert AESGCM(hkdf(secret, 32, binding)).decrypt(blob[:12], blob[12:], binding) == b"share"


def test_round_keys_of_other_rounds_or_pairs_differ():
    secret = os.urandom(32)
    base = crypto.RoundKeys("f", 3)
    assert base == crypto.RoundKeys("f", 3)
    others = [crypto.RoundKeys("f", 4).pair_mask_key(secret, "a", "b"), crypto.RoundKeys("g", 3).pair_mask_key(secret, "a", "b"),
              base.pair_mask_key(secret, "b", "a"), base.pair_mask_key(secret, "a", "bb"), base.pair_mask_key(secret, "ab", "b")]
    assert len({base.pair_mask_key(secret, "a", "b"), *others}) == 6
    blob = base.encrypt_share(secret, "a", "b", b"x" * 66)
    for keys, sender, receiver in ((crypto.RoundKeys("f", 4), "a", "b"), (base, "b", "a")):
        with pytest.raises(BadCiphertext):
            keys.decrypt_share(secret, sender, receiver, blob)


# -- digests and base64 ---------------------------------------------------------------------------------
def digest_by_copy(vector: np.ndarray) -> str:
    data = np.ascontiguousarray(vector)
    if data.dtype.byteorder == ">":
        data = data.byteswap().view(data.dtype.newbyteorder("<"))
    head = crypto.bind("fedsilo/vector/v1", data.dtype.str.lstrip("<>|="), len(data))
    return hashlib.sha256(head + data.tobytes()).hexdigest()


@pytest.mark.parametrize("dtype", ["<u4", ">u4", "<i8", ">f8", "u1", "<f4", "bool"])
@pytest.mark.parametrize("shape", [(0,), (1,), (37,), (4, 5)])
def test_vector_digest_equals_hashing_a_copy(dtype, shape):
    vector = np.random.default_rng(0).integers(0, 200, size=shape).astype(dtype)
    assert crypto.vector_digest(vector) == digest_by_copy(vector)
    assert crypto.vector_digest(vector[::-1]) == digest_by_copy(vector[::-1])  # not contiguous
    assert crypto.vector_digest(vector.astype(np.dtype(dtype).newbyteorder("S"))) == crypto.vector_digest(vector)


def unb64_reference(text, expected=None):
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, AttributeError, UnicodeEncodeError):
        raise WrongLength("a field is not valid base64") from None
    if base64.b64encode(data).decode("ascii") != text:
        raise WrongLength("a field is not canonical base64")
    if expected is not None and len(data) != expected:
        raise WrongLength("wrong size")
    return data


@PROPERTY
@given(text=st.one_of(
    st.text(alphabet="ABCDabcd0189+/=-_ \n\té", max_size=12),
    st.binary(max_size=9).map(lambda b: base64.b64encode(b).decode()),
    st.binary(min_size=1, max_size=9).map(lambda b: base64.b64encode(b).decode()[:-1] + "B"),
))
def test_unb64_accepts_exactly_the_canonical_encodings(text):
    try:
        expected = unb64_reference(text)
    except WrongLength:
        with pytest.raises(WrongLength):
            crypto.unb64(text)
        return
    assert crypto.unb64(text) == expected
    with pytest.raises(WrongLength):
        crypto.unb64(text, len(expected) + 1)


def test_unb64_refuses_what_is_not_text():
    for value in (None, 5, b"AAAA"):
        with pytest.raises(WrongLength):
            crypto.unb64(value)
