"""Distributed DP under secure aggregation: every silo adds an integer noise share to its quantised
update, so that the sum the coordinator unmasks already carries the noise and no party ever sees
a noiseless aggregate.

The shares are symmetric Skellam noise, Sk(λ, λ) = Poisson(λ) − Poisson(λ) with variance 2λ
(Agarwal, Kairouz & Liu, "The Skellam Mechanism for Differentially Private Federated Learning",
NeurIPS 2021; the distributed setting after Kairouz, Liu & Steinke, "The Distributed Discrete
Gaussian Mechanism for Federated Learning with Secure Aggregation", ICML 2021). A sum of
independent Skellam variables is Skellam, so k shares of variance μ/t sum to exactly Sk of
variance kμ/t: with the Shamir threshold t, any sum secure aggregation can complete (k >= t
survivors) carries at least the target variance μ = (z Δ₂)², and the round is accounted with the
variance actually present (`SkellamShares.event(k)`).

Sensitivity in integer units: a silo's contribution is its update clipped to C (and weighted by
w <= 1), scaled by the quantiser's s and stochastically rounded; rounding moves each of the d
coordinates by less than 1, so Δ₂ <= s C + √d and Δ₁ <= √d Δ₂. Adjacency is zero-out: one silo's
update replaced by zero (its participation and weight are public to the coordinator).

The share of a silo never leaves it unmasked: it is added before the pairwise and self masks, and
it is drawn from a generator seeded from the operating system's entropy, not the federation seed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from fl_core.dp.accounting import SkellamEvent
from fl_core.errors import HeadroomError, PrivacyError
from fl_core.secagg.quantize import MODULUS_BITS

TAIL_SIGMAS = 10.0  # noise beyond 10 std of the sum is treated as impossible (P < 1e-23 per coordinate)
_SIGNED_MAX = 2 ** (MODULUS_BITS - 1) - 1


def noise_rng() -> np.random.Generator:
    """A generator for noise shares, seeded from the operating system's entropy."""
    return np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(32), "little")))


@dataclass(frozen=True, slots=True, kw_only=True)
class SkellamShares:
    """``noise_multiplier`` z: noise std over Δ₂ when exactly ``threshold`` shares are in the sum;
    ``clip_norm`` C and ``scale`` s: the update's bound and the quantiser's integers per unit;
    ``dimension`` d: the coordinates that carry noise."""

    noise_multiplier: float
    clip_norm: float
    scale: float
    dimension: int
    threshold: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise PrivacyError(f"distributed noise needs a noise_multiplier > 0, got {self.noise_multiplier!r}")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise PrivacyError(f"clip_norm must be a positive number, got {self.clip_norm!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise PrivacyError(f"the quantiser scale must be a positive number, got {self.scale!r}")
        if self.dimension < 1 or self.threshold < 1:
            raise PrivacyError(f"dimension and threshold must be >= 1, got {self.dimension}, {self.threshold}")

    @property
    def l2(self) -> float:
        return self.scale * self.clip_norm + math.sqrt(self.dimension)

    @property
    def l1(self) -> float:
        return math.sqrt(self.dimension) * self.l2

    @property
    def target_variance(self) -> float:
        return (self.noise_multiplier * self.l2) ** 2

    @property
    def share_variance(self) -> float:
        """What one silo adds: the target split over the `threshold` shares that are certain."""
        return self.target_variance / self.threshold

    def event(self, shares: int) -> SkellamEvent:
        """The round's release when `shares` silos' noise is in the sum (`shares` >= threshold)."""
        if shares < self.threshold:
            raise PrivacyError(f"only {shares} noise shares in the sum; at least threshold = {self.threshold} are needed")
        return SkellamEvent(shares * self.share_variance, self.l2, self.l1, 1)

    def effective_noise_multiplier(self, shares: int) -> float:
        return self.event(shares).noise_multiplier

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One silo's share: d int64 values of Sk(λ, λ), λ = share variance / 2."""
        lam = self.share_variance / 2
        return rng.poisson(lam, self.dimension) - rng.poisson(lam, self.dimension)

    def check_headroom(self, n_silos: int, bits: int) -> None:
        """Refuse settings whose noisy sum of `n_silos` could wrap around the 32-bit modulus: the
        clipped values (n (2^(b-1) - 1)) plus TAIL_SIGMAS standard deviations of all n shares. (Any
        setting it accepts is also well inside the Poisson sampler's range.)"""
        values = n_silos * (2 ** (bits - 1) - 1)
        noise = TAIL_SIGMAS * math.sqrt(n_silos * self.share_variance)
        if values + noise > _SIGNED_MAX:
            raise HeadroomError(
                f"distributed noise could wrap the sum: {n_silos} silos' values ({values:.3g}) plus "
                f"{TAIL_SIGMAS:g} std of their noise ({noise:.3g}) exceed 2^31 - 1; lower aggregation.secure.bits "
                f"(now {bits}) or the noise multiplier"
            )


def add_share(codes: np.ndarray, share: np.ndarray) -> np.ndarray:
    """uint32 codes (two's complement mod 2^32) plus an int64 noise share on their first
    len(share) coordinates, mod 2^32, in place: the int32 view wraps exactly as the modulus does."""
    if codes.dtype != np.uint32 or share.shape[0] > codes.shape[0]:
        raise PrivacyError(f"a noise share of {share.shape[0]} values for a vector of {codes.shape[0]} {codes.dtype} codes")
    head = codes.view(np.int32)[: share.shape[0]]
    np.add(head, share, out=head, casting="unsafe")  # computed in int64, wrapped to 32 bits
    return codes
