"""A Little Is Enough (ALIE), after Baruch, Baruch & Goldberg, "A Little Is Enough: Circumventing
Defenses For Distributed Learning" (NeurIPS 2019).

Every malicious silo sends the same vector, μ − z·σ, where μ and σ are the coordinate-wise mean
and (population) standard deviation of the benign updates. A small shift within the spread of the
honest updates moves each coordinate consistently in one direction while staying inside the range
that median-, trimmed-mean- and distance-based defences accept. The paper chooses z as large as it
can while, with the honest coordinates modelled as normal, enough honest silos still lie farther
from the mean than the malicious value for the f malicious silos and those s to form a majority:
with n silos, s = ⌊n/2 + 1⌋ − f and z_max = Φ⁻¹((n − s) / n), Φ the standard normal CDF
(`alie_z_max`).

A colluding attack: the statistics come from updates the attacker can see — the honest silos'
updates (an omniscient attacker) or only its own silos' benign updates, which is what the paper
assumes an attacker can estimate (see `AttackSpec.knowledge`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from fl_core.attacks._checks import check_non_negative, stack_updates
from fl_core.attacks.errors import AttackError


def alie_z_max(n_silos: int, n_malicious: int) -> float:
    """z_max = Φ⁻¹((n − s) / n) with s = ⌊n/2 + 1⌋ − f. Defined for 1 <= f <= ⌊n/2⌋ (for larger f,
    s <= 0 and the quantile is 1 or more)."""
    n, f = n_silos, n_malicious
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (n, f)) or n < 2 or not 1 <= f <= n // 2:
        raise AttackError(f"ALIE's z_max needs n >= 2 silos and 1 <= f <= n // 2 malicious ones, got n={n!r}, f={f!r}")
    s = math.floor(n / 2 + 1) - f
    return NormalDist().inv_cdf((n - s) / n)


def alie_update(reference: Sequence[np.ndarray], z: float) -> np.ndarray:
    """μ − z·σ over the `reference` updates (coordinate-wise mean and population std), float64."""
    check_non_negative(z, "z")
    stacked = stack_updates(reference, "reference")
    return stacked.mean(axis=0) - z * stacked.std(axis=0)
