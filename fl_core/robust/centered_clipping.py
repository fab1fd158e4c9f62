"""Centred clipping (Karimireddy, He & Jaggi, "Learning from History for Byzantine Robust Optimization",
ICML 2021).

From a starting point v₀ (the previous round's aggregate, or by default the coordinate-wise median of
the updates), each iteration moves v by the weighted mean of the updates' differences from v, each
difference first clipped to norm τ:

    v ← v + Σ αᵢ · (xᵢ − v) · min(1, τ / ‖xᵢ − v‖),   αᵢ = wᵢ / Σ wⱼ.

An update far away pulls v by at most αᵢ·τ per iteration whatever its size, so the output lies
within `iterations`·τ of the start. Distances and sums are computed in float64, block by block.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fl_core.errors import ShapeMismatch
from fl_core.robust._inputs import Updates, as_updates, as_weights
from fl_core.robust._kernels import combine, sq_distances_to
from fl_core.robust.coordinate import median_of


def centered_clipping_of(u: Updates, w: np.ndarray, *, tau: float, iterations: int,
                         start: np.ndarray | None) -> np.ndarray:
    """The clipped-mean iterate after `iterations` steps from `start` (None: the coordinate-wise median), float64."""
    alpha = w / w.sum()
    if start is None:
        v = median_of(u).astype(np.float64)
    else:
        v = np.asarray(start, dtype=np.float64)
        if v.shape != (u.d,):
            raise ShapeMismatch(f"start has shape {v.shape}, the updates have length {u.d}")
    for _ in range(iterations):
        dist = np.sqrt(sq_distances_to(u, v))
        with np.errstate(divide="ignore"):
            scale = np.minimum(1.0, tau / dist)
        coef = alpha * scale
        v = v * (1.0 - coef.sum()) + combine(u, coef, dtype=np.float64)
    return v


def _check(tau: float, iterations: int, start: np.ndarray | None) -> None:
    if not (isinstance(tau, numbers.Real) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive number, got {tau!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    if start is not None:
        s = np.asarray(start)
        if s.ndim != 1 or not np.all(np.isfinite(s)):
            raise ValueError(f"start must be a finite flat vector or None, got shape {s.shape}")


def centered_clipping(updates: Sequence[np.ndarray] | np.ndarray, weights: Sequence[float], *, tau: float,
                      iterations: int = 3, start: np.ndarray | None = None) -> np.ndarray:
    """Centred clipping of the updates (float32); see `CenteredClipping`."""
    _check(tau, iterations, start)
    u = as_updates(updates)
    w = as_weights(weights, u.n)
    return centered_clipping_of(u, w, tau=tau, iterations=iterations, start=start).astype(np.float32)


@dataclass(frozen=True, slots=True, kw_only=True)
class CenteredClipping:
    """Centred clipping: `iterations` steps v ← v + Σ αᵢ clip_τ(xᵢ − v) from `start` (None: the
    coordinate-wise median of the updates; pass the previous round's aggregate for the momentum-style
    start of the paper). Uses the weights (αᵢ = wᵢ / Σ w).

    Breakdown: Karimireddy et al. prove it robust for a Byzantine fraction δ up to about 0.1 with τ
    tuned to the honest spread (`tolerated_faults` reports ⌊0.1·n⌋). Whatever the number of Byzantine
    updates, the output stays within `iterations`·τ of the start, and a Byzantine update of weight
    share αᵢ moves each step by at most αᵢ·τ. Order-invariant up to float64 rounding.
    """

    tau: float
    iterations: int = 3
    start: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check(self.tau, self.iterations, self.start)
        if self.start is not None:  # a private, read-only copy: the caller's array may change later
            start = np.array(self.start, dtype=np.float64)
            start.flags.writeable = False
            object.__setattr__(self, "start", start)

    def __call__(self, updates: Sequence[np.ndarray] | np.ndarray, weights: Sequence[float]) -> np.ndarray:
        u = as_updates(updates)
        w = as_weights(weights, u.n)
        v = centered_clipping_of(u, w, tau=self.tau, iterations=self.iterations, start=self.start)
        return v.astype(np.float32)
