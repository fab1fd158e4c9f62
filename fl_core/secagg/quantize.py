"""From float updates to integers mod 2^32 and back, without wrap-around.

Each silo clips its update to L2 norm C, so every coordinate lies in [-C, C] (the federation's
extra coordinates, such as a weight in [0, 1], must respect the same `bound`). Coordinates are
scaled by s = (2^(b-1) - 1) / bound and rounded stochastically (unbiased: E[q] = x s) with an
injected generator, then stored in two's complement mod 2^32. The sum of n silos' values lies in
[-n (2^(b-1) - 1), n (2^(b-1) - 1)], which must fit the signed range of the modulus:
n (2^(b-1) - 1) <= 2^31 - 1. `check_headroom` refuses settings that could wrap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fl_core.errors import HeadroomError

MODULUS_BITS = 32
_SIGNED_MAX = 2 ** (MODULUS_BITS - 1) - 1


def max_bits(n_silos: int) -> int:
    """The largest per-coordinate bit width b with n (2^(b-1) - 1) <= 2^31 - 1."""
    if n_silos < 1:
        raise ValueError(f"n_silos must be >= 1, got {n_silos}")
    return 1 + int(math.floor(math.log2(_SIGNED_MAX / n_silos + 1)))


def check_headroom(n_silos: int, bits: int) -> None:
    if bits < 2:
        raise HeadroomError(f"quantisation bits must be >= 2, got {bits}")
    if n_silos * (2 ** (bits - 1) - 1) > _SIGNED_MAX:
        raise HeadroomError(
            f"bits = {bits} with {n_silos} silos could wrap: the sum of {n_silos} clipped updates needs "
            f"{bits + math.ceil(math.log2(n_silos))} bits, the modulus has {MODULUS_BITS}; use bits <= {max_bits(n_silos)}"
        )


def clip_by_norm(vector: np.ndarray, clip_norm: float) -> tuple[np.ndarray, bool]:
    """A new vector scaled down to L2 norm `clip_norm` if it is longer; and whether it was."""
    v = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm):
        raise ValueError("cannot clip a vector holding NaN or infinite values")
    if norm <= clip_norm:
        return v.copy(), False
    return v * (clip_norm / norm), True


@dataclass(frozen=True, slots=True, kw_only=True)
class Quantizer:
    bound: float
    bits: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise ValueError(f"bound must be a positive number, got {self.bound!r}")
        if not 2 <= self.bits <= MODULUS_BITS:
            raise ValueError(f"bits must be in [2, {MODULUS_BITS}], got {self.bits!r}")

    @property
    def scale(self) -> float:
        return (2 ** (self.bits - 1) - 1) / self.bound

    @property
    def step(self) -> float:
        """The quantisation step: one unit of the integer grid, in the input's units."""
        return 1.0 / self.scale

    def encode(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint32 codes of `values` (each |value| <= bound), stochastically rounded."""
        x = np.asarray(values, dtype=np.float64)
        if x.size and float(np.max(np.abs(x))) > self.bound * (1 + 1e-12):
            raise ValueError(f"values exceed the quantiser's bound {self.bound} (clip first)")
        scaled = x * self.scale
        low = np.floor(scaled)
        q = low + (rng.random(x.shape) < (scaled - low))
        limit = 2 ** (self.bits - 1) - 1
        q = np.clip(q, -limit, limit).astype(np.int64)
        return (q & 0xFFFFFFFF).astype(np.uint32)

    def decode_sum(self, codes: np.ndarray) -> np.ndarray:
        """Float values of a sum of codes (two's complement mod 2^32)."""
        signed = np.asarray(codes, dtype=np.uint32).view(np.int32).astype(np.float64)
        return signed / self.scale
