"""Inner-product manipulation (IPM), after Xie, Koyejo & Gupta, "Fall of Empires: Breaking
Byzantine-tolerant SGD by Inner Product Manipulation" (UAI 2019; PMLR vol. 115, 2020).

Every malicious silo sends −ε·μ, with μ the mean of the honest updates, so that the inner product
of the malicious vectors with the true descent direction is −ε‖μ‖² < 0. With a small ε the
malicious vectors sit close to the honest ones and pass median- and Krum-style filters while
dragging the aggregate's inner product with μ towards (or below) zero; with a large ε they flip
plain averaging outright (a mean over n silos of which f send −ε·μ has a negative inner product
with μ once ε > (n − f) / f).

A colluding attack that needs the honest updates (an omniscient attacker), or an estimate of their
mean from the attacker's own benign updates (see `AttackSpec.knowledge`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fl_core.attacks._checks import check_positive, stack_updates


def ipm_update(reference: Sequence[np.ndarray], epsilon: float) -> np.ndarray:
    """−ε · (the coordinate-wise mean of the `reference` updates), float64."""
    check_positive(epsilon, "epsilon")
    return -epsilon * stack_updates(reference, "reference").mean(axis=0)
