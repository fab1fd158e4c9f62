"""Bulyan (El Mhamdi, Guerraoui & Rouault, "The Hidden Vulnerability of Distributed Learning in
Byzantium", ICML 2018).

Two stages, for n ≥ 4f + 3:

1. selection: θ = n − 2f updates picked one at a time by Krum, each pick removed from the candidates
   before the next; over r remaining candidates an update's score is the sum of its squared distances
   to its max(r − f − 2, 1) nearest remaining others (the distances come once from the Gram matrix,
   `krum.krum_geometry`);
2. aggregation: per coordinate, the average of the β = θ − 2f selected values closest to the median
   of the θ selected values (ties at equal distance go to the lower value).

The β values closest to the median are a contiguous run of the sorted θ values; the run starts at
s = #{t < 2f : |v[t + β] − med| < |v[t] − med|} (shifting the run right by one swaps v[t] out for
v[t + β], worth it exactly while v[t + β] is the nearer of the two; the sorted order makes the
condition hold for a prefix of t), so no per-coordinate loop is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fl_core.robust._inputs import BLOCK, Updates, as_updates, as_weights, raise_non_finite, require
from fl_core.robust._kernels import buffer, map_blocks
from fl_core.robust.krum import check_f, krum_geometry, rank


def bulyan_select(u: Updates, f: int) -> list[int]:
    """The θ = n − 2f updates stage 1 picks, in the order it picks them."""
    n = u.n
    theta = n - 2 * f
    dist, _ = krum_geometry(u, f, theta)
    remaining = list(range(n))
    picked: list[int] = []
    for _ in range(theta):
        r = len(remaining)
        k = max(r - f - 2, 1)
        sub = dist[np.ix_(remaining, remaining)]
        np.fill_diagonal(sub, np.inf)
        sub.sort(axis=1)
        scores = sub[:, :k].sum(axis=1)
        best = rank(scores, u.select(remaining))[0]
        picked.append(remaining.pop(best))
    return picked


def closest_to_median_mean(u: Updates, beta: int, threads: int | None = None) -> np.ndarray:
    """Per coordinate, the average of the `beta` values closest to the median of the n updates' values
    (float64 sum, float32 result)."""
    n, d = u.n, u.d
    spare = n - beta
    out = np.empty(d, dtype=np.float32)
    lo, hi = (n - 1) // 2, n // 2
    offsets = np.arange(beta)

    def work(start: int, stop: int, scratch: dict) -> bool:
        rows = u.block_t(start, stop, buffer(scratch, "t", (BLOCK, n), np.float32))
        rows.sort(axis=1)
        if not (np.all(np.isfinite(rows[:, 0])) and np.all(np.isfinite(rows[:, -1]))):
            return False
        med = (rows[:, lo].astype(np.float64) + rows[:, hi]) / 2
        if spare:
            left = np.abs(rows[:, :spare] - med[:, np.newaxis])
            right = np.abs(rows[:, beta:] - med[:, np.newaxis])
            first = np.count_nonzero(right < left, axis=1)
            window = np.take_along_axis(rows, first[:, np.newaxis] + offsets, axis=1)
        else:
            window = rows
        out[start:stop] = window.sum(axis=1, dtype=np.float64) / beta
        return True

    if not all(map_blocks(d, work, threads, n * d)):
        raise_non_finite(u)
    return out


def bulyan(updates: Sequence[np.ndarray] | np.ndarray, f: int) -> np.ndarray:
    """Bulyan's aggregate of the updates, float32; n ≥ 4f + 3."""
    check_f(f)
    return _bulyan(as_updates(updates), f)


def _bulyan(u: Updates, f: int) -> np.ndarray:
    require(u.n, 4 * f + 3, f"Bulyan with f = {f} (n ≥ 4f + 3)")
    theta = u.n - 2 * f
    return closest_to_median_mean(u.select(bulyan_select(u, f)), theta - 2 * f)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bulyan:
    """Bulyan: Krum picks θ = n − 2f updates one by one, then each coordinate is the average of the
    β = θ − 2f picked values closest to their median. Needs n ≥ 4f + 3 (`TooFewUpdates` otherwise).
    Ignores the weights (checks them).

    Breakdown: tolerates f Byzantine updates for n ≥ 4f + 3 (fraction < 1/4); updates far from every
    honest one are never picked, so each output coordinate stays within the honest values' range.
    Order-invariant up to float64 rounding of the per-coordinate average, except between Krum
    candidates whose scores agree to rounding (~1e-6 relative).
    """

    f: int

    def __post_init__(self) -> None:
        check_f(self.f)

    def __call__(self, updates: Sequence[np.ndarray] | np.ndarray, weights: Sequence[float]) -> np.ndarray:
        u = as_updates(updates)
        as_weights(weights, u.n)
        return _bulyan(u, self.f)
