"""Sample-weighted federated averaging (McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017).

Silos send deltas (local model minus the global model they started from); the server moves the
global model by ``server_lr`` times their weighted mean. With ``server_lr = 1`` this is exactly
averaging the local models, weighted by training-set size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fl_core.errors import AggregationError


def weighted_mean(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Σ wᵢ vᵢ / Σ wᵢ in float64, returned as float32. Order of inputs does not matter."""
    if len(vectors) == 0:
        raise AggregationError("nothing to aggregate: no updates")
    if len(vectors) != len(weights):
        raise AggregationError(f"{len(vectors)} updates but {len(weights)} weights")
    shape = np.shape(vectors[0])
    for i, v in enumerate(vectors):
        if np.shape(v) != shape or np.ndim(v) != 1:
            raise AggregationError(f"update {i} has shape {np.shape(v)}, expected {shape} (1-D)")
        if not np.all(np.isfinite(v)):
            raise AggregationError(f"update {i} holds NaN or infinite values")
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise AggregationError(f"weights must be finite, non-negative and not all zero, got {w.tolist()}")
    total = np.zeros(shape, dtype=np.float64)
    for wi, v in zip(w, vectors):
        total += wi * np.asarray(v, dtype=np.float64)
    return (total / w.sum()).astype(np.float32)


@dataclass(frozen=True, slots=True, kw_only=True)
class FedAvg:
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.server_lr) and self.server_lr > 0):
            raise ValueError(f"server_lr must be a positive number, got {self.server_lr!r}")

    def step(self, global_vector: np.ndarray, deltas: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
        return self.apply(global_vector, weighted_mean(deltas, weights))

    def apply(self, global_vector: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        """The server step from an already averaged update (e.g. one decoded from a secure sum)."""
        if np.shape(mean_delta) != np.shape(global_vector):
            raise AggregationError(f"updates have shape {np.shape(mean_delta)}, the global model {np.shape(global_vector)}")
        if not np.all(np.isfinite(mean_delta)):
            raise AggregationError("the mean update holds NaN or infinite values")
        return (np.asarray(global_vector, dtype=np.float64) + self.server_lr * np.asarray(mean_delta, dtype=np.float64)).astype(np.float32)
