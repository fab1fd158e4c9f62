"""Stratified train/holdout split of one silo's rows."""

from __future__ import annotations

import numpy as np


def stratified_holdout(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of holdout rows: in every class, ``round(fraction * n_class)`` rows drawn by
    `rng`, at least one when the class has two or more rows (so both splits see every class that
    can be split) and none when it has one (the only example stays in training)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction!r}")
    labels = np.asarray(labels)
    holdout = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        k = int(round(fraction * len(rows)))
        if len(rows) >= 2:
            k = min(max(k, 1), len(rows) - 1)
        else:
            k = 0
        holdout[rng.choice(rows, size=k, replace=False)] = True
    return holdout
