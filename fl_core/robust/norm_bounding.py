"""Norm bounding (Sun, Kairouz, Suresh & McMahan, "Can You Really Backdoor Federated Learning?", 2019):
every update is scaled down to L2 norm at most M, then the weighted mean is taken.

It does not locate the honest updates the way a median does; it bounds how far any one update can
pull the aggregate. Norms are computed in float64 (a float32 sum of squares would overflow to ∞ for
values above ~1e19 and wrongly zero the update instead of scaling it).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fl_core.robust._inputs import Updates, as_updates, as_weights
from fl_core.robust._kernels import combine, sq_distances_to


def norm_bounded_mean_of(u: Updates, w: np.ndarray, bound: float) -> np.ndarray:
    """Σ wᵢ·min(1, M/‖xᵢ‖)·xᵢ / Σ wᵢ, float32 (float64 sums)."""
    norms = np.sqrt(sq_distances_to(u, None))
    with np.errstate(divide="ignore"):
        scale = np.minimum(1.0, bound / norms)
    return combine(u, w * scale / w.sum())


def _check(bound: float) -> None:
    if not (isinstance(bound, numbers.Real) and math.isfinite(bound) and bound > 0):
        raise ValueError(f"bound must be a positive number, got {bound!r}")


def norm_bounded_mean(updates: Sequence[np.ndarray] | np.ndarray, weights: Sequence[float], bound: float) -> np.ndarray:
    """The weighted mean of the updates each scaled to norm ≤ `bound` (float32)."""
    _check(bound)
    u = as_updates(updates)
    return norm_bounded_mean_of(u, as_weights(weights, u.n), bound)


@dataclass(frozen=True, slots=True, kw_only=True)
class NormBounding:
    """Weighted mean after scaling each update to L2 norm ≤ `bound` (M). Uses the weights.

    Breakdown point 0 in the classical sense (it does not recover the honest mean; tolerates f = 0),
    but the influence is bounded: the output's norm is ≤ M, and replacing updates of total weight W_b
    moves it by at most 2·M·W_b / Σ w. Order-invariant up to float64 rounding.
    """

    bound: float

    def __post_init__(self) -> None:
        _check(self.bound)

    def __call__(self, updates: Sequence[np.ndarray] | np.ndarray, weights: Sequence[float]) -> np.ndarray:
        u = as_updates(updates)
        return norm_bounded_mean_of(u, as_weights(weights, u.n), self.bound)
