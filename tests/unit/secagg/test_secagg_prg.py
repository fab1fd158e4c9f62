"""Mask expansion: the streamed, chunked accumulator update equals the slow reference built from
whole keystreams, for any length and chunk size; a mask added and subtracted cancels."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_harness import MODULUS

from fl_core.errors import WrongLength
from fl_core.secagg import prg

PROPERTY = settings(max_examples=60, deadline=None)

keys = st.binary(min_size=16, max_size=16)


def reference(accumulator: np.ndarray, add, subtract) -> np.ndarray:
    """accumulator + Σ keystream(add) − Σ keystream(subtract) mod 2^32, in Python-sized integers."""
    total = accumulator.astype(np.int64)
    for k in add:
        total += prg.keystream(k, len(accumulator)).astype(np.int64)
    for k in subtract:
        total -= prg.keystream(k, len(accumulator)).astype(np.int64)
    return (total % MODULUS).astype(np.uint32)


def test_keystream_is_aes_ctr_from_a_zero_counter():
    """Each 16-byte block i is AES_k(i as a 128-bit big-endian counter), read as 4 little-endian uint32."""
    key = bytes(range(16))
    length = 4 * 5 + 3  # not a whole number of blocks
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    blocks = b"".join(ecb.update(i.to_bytes(16, "big")) for i in range(6))
    expected = np.frombuffer(blocks[: 4 * length], dtype="<u4")
    np.testing.assert_array_equal(prg.keystream(key, length), expected)
    assert prg.keystream(key, length).dtype == np.uint32


@PROPERTY
@given(key=keys, short=st.integers(0, 300), extra=st.integers(0, 300))
def test_keystream_prefixes_agree(key, short, extra):
    np.testing.assert_array_equal(prg.keystream(key, short + extra)[:short], prg.keystream(key, short))


@PROPERTY
@given(
    length=st.integers(0, 3000),
    chunk=st.one_of(st.none(), st.integers(1, 700)),
    add=st.lists(keys, max_size=4),
    subtract=st.lists(keys, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_streamed_masks_equal_the_reference(length, chunk, add, subtract, seed):
    accumulator = np.random.default_rng(seed).integers(0, MODULUS, size=length, dtype=np.uint32)
    expected = reference(accumulator, add, subtract)
    kwargs = {} if chunk is None else {"chunk": chunk}
    assert prg.apply_masks_inplace(accumulator, add=add, subtract=subtract, **kwargs) is None
    np.testing.assert_array_equal(accumulator, expected)


@pytest.mark.parametrize("length", [prg.CHUNK - 1, prg.CHUNK, prg.CHUNK + 1, 2 * prg.CHUNK + 12345])
def test_streamed_masks_across_default_chunks(length):
    rng = np.random.default_rng(length)
    accumulator = rng.integers(0, MODULUS, size=length, dtype=np.uint32)
    add, subtract = [rng.bytes(16), rng.bytes(16)], [rng.bytes(16)]
    expected = reference(accumulator, add, subtract)
    prg.apply_masks_inplace(accumulator, add=add, subtract=subtract)
    np.testing.assert_array_equal(accumulator, expected)


@PROPERTY
@given(key_list=st.lists(keys, min_size=1, max_size=5), length=st.integers(1, 500), chunk=st.integers(1, 97))
def test_masks_with_the_same_key_cancel(key_list, length, chunk):
    original = np.arange(length, dtype=np.uint32) * np.uint32(2654435761)
    accumulator = original.copy()
    prg.apply_masks_inplace(accumulator, add=key_list, subtract=list(reversed(key_list)), chunk=chunk)
    np.testing.assert_array_equal(accumulator, original)
    prg.apply_masks_inplace(accumulator, add=key_list[:1], chunk=chunk)
    assert not np.array_equal(accumulator, original)  # a single mask does change it
    prg.apply_masks_inplace(accumulator, subtract=key_list[:1])  # removed with another chunking
    np.testing.assert_array_equal(accumulator, original)


def test_no_keys_leave_the_accumulator_alone():
    accumulator = np.arange(10, dtype=np.uint32)
    prg.apply_masks_inplace(accumulator)
    np.testing.assert_array_equal(accumulator, np.arange(10, dtype=np.uint32))


def test_bad_keys_and_accumulators_are_refused():
    with pytest.raises(WrongLength):
        prg.keystream(bytes(15), 4)
    with pytest.raises(WrongLength):
        prg.apply_masks_inplace(np.zeros(4, dtype=np.uint32), add=[bytes(32)])
    for bad in (np.zeros(4, dtype=np.int64), np.zeros((2, 2), dtype=np.uint32), np.zeros(8, dtype=np.uint32)[::2]):
        with pytest.raises(ValueError):
            prg.apply_masks_inplace(bad, add=[bytes(16)])
