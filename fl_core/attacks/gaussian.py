"""Gaussian noise: a malicious silo sends a random vector drawn from N(0, σ² I) in place of its
update — the "Gaussian Byzantine workers" of Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine
Learning with Adversaries: Byzantine Tolerant Gradient Descent" (NeurIPS 2017).

Needs no knowledge at all (it does not even read the silo's update, only its length).
"""

from __future__ import annotations

import numpy as np

from fl_core.attacks._checks import as_update, check_positive, float_dtype


def gaussian_update(like: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """A random update shaped like `like` (of its floating dtype), each coordinate drawn from
    N(0, std²) by `rng`."""
    check_positive(std, "std")
    u = as_update(like)
    return rng.normal(0.0, std, size=u.shape).astype(float_dtype(u))
