"""Sign flipping: a malicious silo sends its own update reversed and optionally enlarged, −λ·u, so
that it pulls the average away from the direction the honest silos descend. The "sign-flipping
attack" of Li, Xu, Chen, Giannakis & Ling, "RSA: Byzantine-Robust Stochastic Aggregation Methods
for Distributed Learning from Heterogeneous Datasets" (AAAI 2019).

Needs no knowledge beyond the silo's own update.
"""

from __future__ import annotations

import numpy as np

from fl_core.attacks._checks import as_update, check_positive, float_dtype


def sign_flip(update: np.ndarray, magnitude: float = 1.0) -> np.ndarray:
    """−magnitude · update, as a new array of the update's (floating) dtype."""
    check_positive(magnitude, "magnitude")
    u = as_update(update)
    return (-magnitude * u.astype(np.float64)).astype(float_dtype(u))
