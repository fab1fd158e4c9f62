"""Label flipping: a data-level poisoning attack in which a malicious silo trains on labels it has
turned around (y -> 1 - y for binary labels), after Tolpegin, Truex, Gursoy & Liu, "Data Poisoning
Attacks Against Federated Learning Systems" (ESORICS 2020), who flip a source class to a target
class on the malicious participants' data and leave the training code untouched.

Applied to a malicious silo's training split before local training; only a chosen fraction of its
rows may be flipped (``round(fraction · rows)`` rows, drawn without replacement).
"""

from __future__ import annotations

import numpy as np

from fl_core.attacks._checks import binary_labels, check_fraction, rows_to_poison


def flip_labels(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of the binary labels `y` with ``round(fraction · len(y))`` of them, drawn by `rng`,
    replaced by 1 − y (every label when `fraction` is 1, without using `rng`)."""
    check_fraction(fraction, "fraction")
    y = binary_labels(y)
    out = y.copy()
    rows = rows_to_poison(len(y), fraction, rng)
    out[rows] = 1 - y[rows]
    return out
