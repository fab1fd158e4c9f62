"""Sample-weighted FedAvg when the coordinator sees only a sum.

Silo i sends ``[clip(Δ_i, C) · w_i / W, w_i / W]`` where w_i is its training-set size and W a
public upper bound on the weights of the round (the coordinator's largest announced w_i). The
secure sum then holds Σ w_i clip(Δ_i) / W and Σ w_i / W, whose ratio is the weighted mean update;
individual weights stay hidden in the sum like the updates. Every coordinate stays within the
quantiser's bound max(C, 1).
"""

from __future__ import annotations

import numpy as np

from fl_core.errors import AggregationError
from fl_core.secagg.quantize import clip_by_norm


def contribution(delta: np.ndarray, weight: float, weight_scale: float, clip_norm: float) -> tuple[np.ndarray, bool]:
    """The vector a silo contributes (length d + 1) and whether its update was clipped."""
    if not 0 < weight <= weight_scale:
        raise AggregationError(f"weight {weight} must be in (0, weight_scale = {weight_scale}]")
    clipped, was_clipped = clip_by_norm(delta, clip_norm)
    share = weight / weight_scale
    return np.concatenate([clipped * share, [share]]), was_clipped


def mean_update(summed: np.ndarray) -> tuple[np.ndarray, float]:
    """(weighted mean update, Σ w_i / W) from the decoded sum of contributions."""
    total_weight = float(summed[-1])
    if not total_weight > 0:
        raise AggregationError(f"the secure sum carries no weight ({total_weight}); nothing to average")
    return (summed[:-1] / total_weight).astype(np.float32), total_weight
