"""Silo-level (user-level) differential privacy for federated averaging: DP-FedAvg after McMahan,
Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent Language Models" (ICLR 2018).

Written as wrappers around any aggregator `f(updates, weights) -> update`, so that clipping and
noising compose with whatever merges the updates:

- `Clipped(inner, clip_norm, layers)`: each update clipped to L2 norm C before `inner` sees it —
  flat, or per layer with C / √L for each of L layers (so the whole update stays within C);
- `FixedDenominatorMean(denominator)`: Σ wᵢ uᵢ / D with a public D (the roster's total weight),
  McMahan et al.'s estimator whose sensitivity does not depend on who took part;
- `GaussianNoised(inner, noise_multiplier, clip_norm, denominator, rng)`: adds N(0, (z·C·w_max / D)²)
  to `inner`'s output — the Gaussian mechanism on the weighted sum, rescaled like it. `noise_for`
  gives the same noise for an aggregate computed elsewhere (e.g. decoded from a secure sum).

With weights capped at 1 (w = min(n / cap, 1)) one silo moves the weighted sum by at most C, so a
round is a Gaussian mechanism of noise multiplier z on the sum: a `GaussianEvent(z, q, 1)` with q
the fraction of silos sampled (1 when every silo takes part in every round).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fl_core.aggregation import weighted_mean
from fl_core.errors import AggregationError, PrivacyError

Aggregator = Callable[[Sequence[np.ndarray], Sequence[float]], np.ndarray]


def clip_update(update: np.ndarray, clip_norm: float, layers: Sequence[int] | None = None) -> tuple[np.ndarray, bool]:
    """`update` scaled into L2 norm `clip_norm` (flat), or each of its `layers` (sizes, in order)
    into C / √L; and whether anything was scaled down. Non-finite values are refused."""
    u = np.asarray(update, dtype=np.float64)
    if u.ndim != 1:
        raise AggregationError(f"updates are flat vectors, got shape {u.shape}")
    if not np.all(np.isfinite(u)):
        raise AggregationError("cannot clip an update holding NaN or infinite values")
    if not clip_norm > 0:
        raise PrivacyError(f"clip_norm must be > 0, got {clip_norm!r}")
    if layers is None:
        bounds = [(0, len(u), clip_norm)]
    else:
        if sum(layers) != len(u) or any(size <= 0 for size in layers):
            raise AggregationError(f"layer sizes {list(layers)} do not cover an update of {len(u)} values")
        per_layer = clip_norm / math.sqrt(len(layers))
        starts = np.cumsum([0, *layers])
        bounds = [(int(a), int(b), per_layer) for a, b in zip(starts[:-1], starts[1:])]
    out, clipped = u.copy(), False
    for start, stop, bound in bounds:
        norm = float(np.linalg.norm(out[start:stop]))
        if norm > bound:
            out[start:stop] *= bound / norm
            clipped = True
    return out, clipped


def capped_weights(n_samples: Sequence[int], cap: float | None) -> list[float]:
    """w = min(n / cap, 1): a silo's weight, bounded by 1 so that its influence is bounded by C;
    uniform weights (1 each) without a cap."""
    if cap is None:
        return [1.0] * len(n_samples)
    if not cap > 0:
        raise PrivacyError(f"the weight cap must be > 0, got {cap!r}")
    return [min(n / cap, 1.0) for n in n_samples]


@dataclass(frozen=True, slots=True)
class Clipped:
    inner: Aggregator
    clip_norm: float
    layers: tuple[int, ...] | None = None

    def clip_all(self, updates: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
        """The clipped updates and the fraction of them that were scaled down."""
        pairs = [clip_update(u, self.clip_norm, self.layers) for u in updates]
        return [p[0] for p in pairs], (sum(p[1] for p in pairs) / len(pairs) if pairs else 0.0)

    def __call__(self, updates: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
        return self.inner(self.clip_all(updates)[0], weights)


@dataclass(frozen=True, slots=True)
class FixedDenominatorMean:
    """Σ wᵢ uᵢ / D for a public D; with D = Σ wᵢ this is exactly `weighted_mean`."""

    denominator: float

    def __call__(self, updates: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
        if not self.denominator > 0:
            raise AggregationError(f"the denominator must be > 0, got {self.denominator!r}")
        total = float(np.sum(np.asarray(weights, dtype=np.float64)))
        mean = weighted_mean(updates, weights).astype(np.float64)
        if total == self.denominator:
            return mean.astype(np.float32)
        return (mean * (total / self.denominator)).astype(np.float32)


@dataclass(frozen=True, slots=True)
class GaussianNoised:
    inner: Aggregator
    noise_multiplier: float
    clip_norm: float
    denominator: float
    rng: np.random.Generator
    max_weight: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise PrivacyError(f"noise_multiplier must be a finite number >= 0, got {self.noise_multiplier!r}")
        if self.noise_multiplier > 0 and not math.isfinite(self.clip_norm):
            raise PrivacyError("noise needs a finite clip_norm (its std is noise_multiplier · clip_norm)")

    @property
    def std(self) -> float:
        """The noise std on the aggregate: z · C · w_max / D."""
        if self.noise_multiplier == 0:
            return 0.0
        return self.noise_multiplier * self.clip_norm * self.max_weight / self.denominator

    def noise_for(self, aggregate: np.ndarray) -> np.ndarray:
        """`aggregate` plus this mechanism's noise (for an aggregate computed elsewhere)."""
        a = np.asarray(aggregate, dtype=np.float64)
        if self.std == 0:
            return a.astype(np.float32)
        return (a + self.rng.normal(0.0, self.std, size=a.shape)).astype(np.float32)

    def __call__(self, updates: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
        if len(weights) and max(weights) > self.max_weight:
            raise PrivacyError(f"a silo weight {max(weights)} exceeds the weight bound {self.max_weight} the noise assumes")
        return self.noise_for(self.inner(updates, weights))


def dp_fedavg(clip_norm: float, noise_multiplier: float, denominator: float, rng: np.random.Generator,
              layers: tuple[int, ...] | None = None) -> GaussianNoised:
    """McMahan et al.'s DP-FedAvg aggregate: clip, fixed-denominator mean, Gaussian noise."""
    return GaussianNoised(Clipped(FixedDenominatorMean(denominator), clip_norm, layers), noise_multiplier, clip_norm,
                          denominator, rng)
