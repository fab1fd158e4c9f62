"""Masks: AES-128-CTR keystreams read as little-endian uint32, added mod 2^32.

A mask key is used for one mask only (keys are derived per round and pair), so the counter starts
at zero. Masking n - 1 pairwise keystreams into a vector of d values is bound by the keystream
rate; `apply_masks_inplace` streams every keystream in cache-sized chunks straight into the
accumulator (no d-sized temporaries), so it runs close to (n - 1) * 4d bytes / keystream rate plus
the additions (measured in benchmarks/secagg.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fl_core.errors import WrongLength

CHUNK = 1 << 16  # uint32 values per chunk: 256 KiB of keystream, fits in L2
_ZERO_IV = bytes(16)


def _encryptor(key: bytes):
    if len(key) != 16:
        raise WrongLength(f"mask keys are 16 bytes, got {len(key)}")
    return Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()


def keystream(key: bytes, length: int) -> np.ndarray:
    """The whole mask of `length` values (a reference and test helper; masking streams instead)."""
    data = _encryptor(key).update(bytes(4 * length))
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def apply_masks_inplace(
    accumulator: np.ndarray, add: Sequence[bytes] = (), subtract: Sequence[bytes] = (), chunk: int = CHUNK
) -> None:
    """accumulator += Σ mask(k) for k in `add` − Σ mask(k) for k in `subtract` (mod 2^32)."""
    if accumulator.dtype != np.uint32 or accumulator.ndim != 1 or not accumulator.flags.c_contiguous:
        raise ValueError("the accumulator must be a contiguous 1-D uint32 array")
    streams = [(_encryptor(k), np.add) for k in add] + [(_encryptor(k), np.subtract) for k in subtract]
    if not streams:
        return
    zeros = bytes(4 * chunk)
    raw = bytearray(4 * chunk + 15)  # update_into needs room for one extra block
    block = np.frombuffer(raw, dtype="<u4", count=chunk)
    n = len(accumulator)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        size = stop - start
        segment = accumulator[start:stop]
        source = memoryview(zeros)[: 4 * size]
        mask = block[:size]
        for encryptor, op in streams:
            encryptor.update_into(source, raw)
            op(segment, mask, out=segment)
