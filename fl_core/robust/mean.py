"""The plain weighted mean (federated averaging, McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017) behind the robust rules' interface: the baseline they
are measured against, and what they must reduce to when nobody attacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fl_core.aggregation import weighted_mean
from fl_core.robust._inputs import as_updates, as_weights, check_finite


@dataclass(frozen=True, slots=True, kw_only=True)
class Mean:
    """Σ wᵢ xᵢ / Σ wᵢ, computed in float64 by `fl_core.aggregation.weighted_mean`, returned as float32.

    Breakdown point 0: a single update can move the output anywhere (tolerates f = 0). Order-invariant
    up to float64 rounding of the sum.
    """

    def __call__(self, updates: Sequence[np.ndarray] | np.ndarray, weights: Sequence[float]) -> np.ndarray:
        u = as_updates(updates)
        w = as_weights(weights, u.n)
        check_finite(u)
        return weighted_mean(list(u.rows), list(w))
