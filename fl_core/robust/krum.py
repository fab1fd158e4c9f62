"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS 2017).

Each update is scored by the sum of its squared distances to its n − f − 2 nearest other updates.
Krum returns the update with the lowest score; Multi-Krum the plain average of the m lowest-scoring
updates (m = n − f by default). Both need n ≥ 2f + 3 and ignore the weights (a Byzantine update could
claim any weight; they are still checked).

Distances come from the Gram matrix, ‖xᵢ − xⱼ‖² = Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ with G = Y Yᵀ and Y = X − r for a
reference vector r: one BLAS product of n·n·d/2 multiply-adds, computed over column blocks (float32
products, summed in float64) so that no (n, d) temporary is made. The catch is cancellation: when the
updates share a component much larger than their differences, Gᵢᵢ + Gⱼⱼ and 2Gᵢⱼ are nearly equal and
float32 rounding swamps the distance. So the first pass uses r = 0 (accurate for updates that do not
share a large offset, and not pulled around by Byzantine updates as the mean would be), then checks,
for every update that could be selected, how large its distances' rounding error can be relative to
its score ((k·‖yᵢ‖² + Σⱼ ‖yⱼ‖²) / scoreᵢ over its k neighbours j); if that ratio is large it recomputes
the Gram matrix with r = the provisional winner — an update inside the majority cluster, which
removes the shared offset. Values whose squares overflow float32 (‖x‖² > 3·10³⁸) switch the product
to float64. Random, unrelated updates never need the second pass; near-identical ones (all sharing a
component ≳ 3× their differences) pay for two Gram products.

Ties between equal scores are broken by the updates' contents (lexicographically), so the choice does
not depend on the order the updates came in. Scores that differ only by rounding (relative ~1e-6) can
swap order when the inputs are permuted: that is the stated tolerance of the order invariance.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fl_core.errors import ShapeMismatch
from fl_core.robust._inputs import Updates, as_updates, as_weights, blocks, raise_non_finite, require
from fl_core.robust._kernels import combine

GRAM_BLOCK = 16384
# Relative rounding error of one Gram entry (float32 block products summed in float64), with margin.
_GRAM_EPS = {np.float32: 1e-5, np.float64: 1e-13}
# Recompute with a better reference when a candidate's distance scale exceeds its score this much.
_RATIO_LIMIT = 10.0


def gram_sq_distances(u: Updates, reference: np.ndarray | None = None,
                      dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray, type]:
    """Squared distances (n, n) float64 through the Gram matrix of the updates minus `reference`, the
    squared norms ‖xᵢ − r‖², and the precision the products ran in (float64 after a float32 overflow)."""
    n, d = u.n, u.d
    width = min(GRAM_BLOCK, d)
    rows = np.empty((n, width), dtype=np.float32) if (u.matrix is None or reference is not None) else None
    wide = np.empty((n, width), dtype=np.float64) if dtype is np.float64 else None
    gram = np.zeros((n, n), dtype=np.float64)
    for start, stop in blocks(d, width):
        block = u.block(start, stop, rows)
        if wide is not None:
            y = wide[:, : stop - start]
            np.copyto(y, block)
            if reference is not None:  # in float64: the float32 difference may be what overflowed
                np.subtract(y, reference[start:stop], out=y)
        elif reference is not None:
            y = rows[:, : stop - start]
            np.subtract(block, reference[start:stop], out=y)
        else:
            y = block
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            gram += y @ y.T
    if not np.all(np.isfinite(gram)):
        raise_non_finite(u)  # a NaN or an infinity in the input; otherwise float32 overflowed
        if dtype is np.float32:
            return gram_sq_distances(u, reference, np.float64)
    gram = (gram + gram.T) / 2
    sq = gram.diagonal().copy()
    dist = sq[:, np.newaxis] + sq[np.newaxis, :] - 2 * gram
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return dist, sq, dtype


def pairwise_sq_distances(updates: Sequence[np.ndarray] | np.ndarray,
                          reference: np.ndarray | None = None) -> np.ndarray:
    """‖xᵢ − xⱼ‖² for all pairs, (n, n) float64, through the Gram matrix of the updates minus `reference`
    (None: no shift). A reference close to the updates (e.g. one of them) keeps near-identical updates'
    distances accurate; far from them, rounding grows with ‖xᵢ − r‖² / ‖xᵢ − xⱼ‖²."""
    u = as_updates(updates)
    ref = None
    if reference is not None:
        ref = np.ascontiguousarray(reference, dtype=np.float32)
        if ref.shape != (u.d,):
            raise ShapeMismatch(f"reference has shape {ref.shape}, the updates have length {u.d}")
        if not np.all(np.isfinite(ref)):
            raise ValueError("reference must be finite")
    return gram_sq_distances(u, ref)[0]


def krum_scores(distances: np.ndarray, f: int) -> np.ndarray:
    """Each update's Krum score: the sum of its squared distances to its n − f − 2 nearest others."""
    return _scores(distances, f)[0]


def _scores(distances: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores, and the (n, k) indices of each update's k = n − f − 2 nearest others."""
    n = distances.shape[0]
    k = n - f - 2
    others = distances.copy()
    np.fill_diagonal(others, np.inf)
    nearest = np.argsort(others, axis=1, kind="stable")[:, :k]
    # Summed in sorted order, so the score does not depend on how the others are numbered.
    return np.take_along_axis(others, nearest, axis=1).sum(axis=1), nearest


def _compare_rows(u: Updates, i: int, j: int) -> int:
    a, b = u.rows[i], u.rows[j]
    differ = np.flatnonzero(a != b)
    if differ.size == 0:
        return 0
    k = differ[0]
    return -1 if a[k] < b[k] else 1


def rank(scores: np.ndarray, u: Updates) -> list[int]:
    """Indices by increasing score; equal scores ordered by the updates' contents (lexicographically)."""
    order = list(np.argsort(scores, kind="stable"))
    ranked: list[int] = []
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and scores[order[j]] == scores[order[i]]:
            j += 1
        group = [int(x) for x in order[i:j]]
        if len(group) > 1:
            group.sort(key=functools.cmp_to_key(lambda a, b: _compare_rows(u, a, b)))
        ranked.extend(group)
        i = j
    return ranked


def _needs_new_reference(scores: np.ndarray, nearest: np.ndarray, sq: np.ndarray, chosen: int,
                         eps: float) -> bool:
    """Whether rounding in the Gram distances could decide the selection of `chosen` updates."""
    k = nearest.shape[1]
    scale = k * sq + sq[nearest].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(scale == 0, 0.0, scale / scores)
    cutoff = np.sort(scores)[chosen - 1]
    contenders = (scores <= 2 * cutoff) | (eps * ratio > 0.25)
    return bool(np.any(contenders & (ratio > _RATIO_LIMIT)))


def krum_geometry(u: Updates, f: int, chosen: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances and Krum scores, accurate enough to pick the `chosen` best (see the module
    docstring: a second Gram pass from a better reference when rounding could decide)."""
    dist, sq, dtype = gram_sq_distances(u)
    scores, nearest = _scores(dist, f)
    if _needs_new_reference(scores, nearest, sq, chosen, _GRAM_EPS[dtype]):
        reference = u.rows[rank(scores, u)[0]]
        dist, sq, dtype = gram_sq_distances(u, reference, dtype)
        scores, _ = _scores(dist, f)
    return dist, scores


def check_f(f: int, name: str = "f") -> None:
    if isinstance(f, bool) or not isinstance(f, numbers.Integral) or f < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {f!r}")


def select(u: Updates, f: int, m: int) -> list[int]:
    """Indices of the m updates with the lowest Krum scores, best first (after the n checks)."""
    require(u.n, max(2 * f + 3, m + f),
            f"Krum with f = {f} (n ≥ 2f + 3)" if m == 1
            else f"Multi-Krum with f = {f} and m = {m} (n ≥ 2f + 3 and n ≥ m + f)")
    return rank(krum_geometry(u, f, m)[1], u)[:m]


def average_of(u: Updates, chosen: Sequence[int]) -> np.ndarray:
    """The plain average of the chosen updates (float64 sum, float32 result)."""
    coef = np.zeros(u.n)
    coef[list(chosen)] = 1.0 / len(chosen)
    return combine(u, coef)


def krum_select(updates: Sequence[np.ndarray] | np.ndarray, f: int, m: int = 1) -> list[int]:
    """Indices of the m updates Multi-Krum averages (Krum's choice for m = 1), best first."""
    check_f(f)
    return select(as_updates(updates), f, m)


def krum(updates: Sequence[np.ndarray] | np.ndarray, f: int) -> np.ndarray:
    """Krum's choice among the updates (a float32 copy of it)."""
    check_f(f)
    u = as_updates(updates)
    return u.rows[select(u, f, 1)[0]].copy()


def multi_krum(updates: Sequence[np.ndarray] | np.ndarray, f: int, m: int | None = None) -> np.ndarray:
    """The plain average (float64 sum, float32 result) of Multi-Krum's m choices; m = n − f by default."""
    check_f(f)
    u = as_updates(updates)
    return average_of(u, select(u, f, u.n - f if m is None else m))


@dataclass(frozen=True, slots=True, kw_only=True)
class Krum:
    """Krum: the update whose n − f − 2 nearest neighbours are closest (sum of squared distances).
    Needs n ≥ 2f + 3 (`TooFewUpdates` otherwise). Ignores the weights (checks them).

    Breakdown: tolerates f Byzantine updates for n ≥ 2f + 3 (fraction < 1/2): the output is always
    one of the inputs, and updates far from every honest one (e.g. scaled by 1e6) are never chosen.
    Order-invariant exactly except between candidates whose scores agree to rounding (~1e-6 relative).
    """

    f: int

    def __post_init__(self) -> None:
        check_f(self.f)

    def __call__(self, updates: Sequence[np.ndarray] | np.ndarray, weights: Sequence[float]) -> np.ndarray:
        u = as_updates(updates)
        as_weights(weights, u.n)
        return u.rows[select(u, self.f, 1)[0]].copy()


@dataclass(frozen=True, slots=True, kw_only=True)
class MultiKrum:
    """Multi-Krum: the plain average of the m updates with the lowest Krum scores (m = n − f when None).
    Needs n ≥ 2f + 3 and n ≥ m + f, so that the average can be all honest (`TooFewUpdates` otherwise).
    Ignores the weights (checks them).

    Breakdown: tolerates f Byzantine updates for n ≥ 2f + 3; updates far from every honest one are
    never among the m chosen. Order-invariant up to float64 rounding of the average, except between
    candidates whose scores agree to rounding (~1e-6 relative) at the m-th place.
    """

    f: int
    m: int | None = None

    def __post_init__(self) -> None:
        check_f(self.f)
        if self.m is not None and (isinstance(self.m, bool) or not isinstance(self.m, numbers.Integral)
                                   or self.m < 1):
            raise ValueError(f"m must be a positive integer or None (n − f), got {self.m!r}")

    def __call__(self, updates: Sequence[np.ndarray] | np.ndarray, weights: Sequence[float]) -> np.ndarray:
        u = as_updates(updates)
        as_weights(weights, u.n)
        return average_of(u, select(u, self.f, u.n - self.f if self.m is None else self.m))
