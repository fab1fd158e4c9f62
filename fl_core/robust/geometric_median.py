"""Geometric median by smoothed Weiszfeld iterations: RFA, robust federated aggregation (Pillutla, Kakade
& Harchaoui, "Robust Aggregation for Federated Learning", IEEE Transactions on Signal Processing 2022).

The weighted geometric median minimises g(v) = Σ αᵢ ‖v − xᵢ‖. Weiszfeld's iteration re-weights the
mean: v ← Σ βᵢ xᵢ / Σ βᵢ with βᵢ = αᵢ / max(ν, ‖v − xᵢ‖); the smoothing ν keeps a step defined when v
comes close to an update. When v sits on updates (within ν) the plain step would stay stuck there
whether or not that is the minimum; the step then follows Vardi & Zhang ("The multivariate
L1-median and associated data depth", PNAS 2000): with η the weight v sits on and R the pull of the
others, Σ αᵢ (xᵢ − v)/‖xᵢ − v‖, v stays put if ‖R‖ ≤ η (it is the minimum) and otherwise moves
towards the others' Weiszfeld point by the fraction 1 − η/‖R‖. It starts from the coordinate-wise median, not the mean: far-away updates drag the
mean far off, and from there Weiszfeld's steps only shrink the distance by a constant factor each
(from 1e30-scale outliers that took hundreds of steps). It stops after `max_iter` steps or when a
step moves v by at most `tol` times the weighted median of the distances ‖v − xᵢ‖ — a scale that a
few far-away updates cannot inflate (a relative change of g would be dominated by their distances
and stop far too early).

Distances are computed in float64 block by block, the weighted sums likewise; each step is two
passes over the updates.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fl_core.robust._inputs import Updates, as_updates, as_weights
from fl_core.robust._kernels import combine, sq_distances_to
from fl_core.robust.coordinate import median_of


def weighted_median_value(values: np.ndarray, weights: np.ndarray) -> float:
    """The smallest value whose cumulative weight (in sorted order) reaches half the total."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def geometric_median_of(u: Updates, w: np.ndarray, *, max_iter: int, tol: float, smoothing: float,
                        threads: int | None = None) -> tuple[np.ndarray, int]:
    """The Weiszfeld estimate (float64) and the number of steps taken."""
    alpha = w / w.sum()
    v = median_of(u, threads).astype(np.float64)
    dist = np.sqrt(sq_distances_to(u, v, threads))
    steps = 0
    while steps < max_iter:
        new = _step(u, alpha, v, dist, smoothing, threads)
        step = float(np.linalg.norm(new - v))
        v = new
        dist = np.sqrt(sq_distances_to(u, v, threads))
        steps += 1
        if step <= tol * weighted_median_value(dist, alpha):
            break
    return v, steps


def _step(u: Updates, alpha: np.ndarray, v: np.ndarray, dist: np.ndarray, smoothing: float,
          threads: int | None) -> np.ndarray:
    """One Weiszfeld step from v, with Vardi & Zhang's rule for updates that v sits on (within `smoothing`)."""
    on = dist <= smoothing
    if np.all(on):
        return v
    beta = np.where(on, 0.0, alpha / np.maximum(dist, smoothing))
    target = combine(u, beta / beta.sum(), threads, np.float64)  # the plain step over the other updates
    coincident = float(alpha[on].sum())
    if coincident == 0.0:
        return target
    pull = beta.sum() * float(np.linalg.norm(target - v))  # ‖Σ αᵢ (xᵢ − v)/‖xᵢ − v‖‖ over the others
    keep = 1.0 if pull <= coincident else coincident / pull
    return (1.0 - keep) * target + keep * v


def geometric_median(updates: Sequence[np.ndarray] | np.ndarray, weights: Sequence[float], *,
                     max_iter: int = 100, tol: float = 1e-6, smoothing: float = 1e-6) -> np.ndarray:
    """Weighted geometric median of the updates (float32), by smoothed Weiszfeld iterations."""
    _check(max_iter, tol, smoothing)
    u = as_updates(updates)
    w = as_weights(weights, u.n)
    return geometric_median_of(u, w, max_iter=max_iter, tol=tol, smoothing=smoothing)[0].astype(np.float32)


def objective(updates: Sequence[np.ndarray] | np.ndarray, weights: Sequence[float], point: np.ndarray) -> float:
    """g(v) = Σ αᵢ ‖v − xᵢ‖ with α the weights normalised to sum 1 (float64)."""
    u = as_updates(updates)
    w = as_weights(weights, u.n)
    return float(np.dot(w / w.sum(), np.sqrt(sq_distances_to(u, np.asarray(point, dtype=np.float64)))))


def _check(max_iter: int, tol: float, smoothing: float) -> None:
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 0:
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    if not (isinstance(tol, numbers.Real) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if not (isinstance(smoothing, numbers.Real) and math.isfinite(smoothing) and smoothing > 0):
        raise ValueError(f"smoothing must be a positive number, got {smoothing!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class GeometricMedian:
    """Weighted geometric median (RFA): argmin_v Σ wᵢ ‖v − xᵢ‖, by at most `max_iter` smoothed Weiszfeld
    steps from the coordinate-wise median (stopping when a step is below `tol` × the weighted median distance).
    Uses the weights.

    Breakdown point 1/2 of the total weight: if the honest updates hold weight W_h > W_b, the Byzantine
    weight, and lie within r of a point z, the exact geometric median lies within 2·W_h·r / (W_h − W_b)
    of z (for equal weights and f Byzantine updates: 2(n − f)·r / (n − 2f)), however far away the
    Byzantine updates are. Order-invariant up to float64 rounding (and the stopping tolerance).
    Approximate: Weiszfeld converges linearly, and slowly when the minimum lies close to an update;
    raise `max_iter` or lower `tol` for a tighter answer.
    """

    max_iter: int = 100
    tol: float = 1e-6
    smoothing: float = 1e-6

    def __post_init__(self) -> None:
        _check(self.max_iter, self.tol, self.smoothing)

    def __call__(self, updates: Sequence[np.ndarray] | np.ndarray, weights: Sequence[float]) -> np.ndarray:
        u = as_updates(updates)
        w = as_weights(weights, u.n)
        v, _ = geometric_median_of(u, w, max_iter=self.max_iter, tol=self.tol, smoothing=self.smoothing)
        return v.astype(np.float32)
