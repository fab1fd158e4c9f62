"""Synthetic silos for tests and benchmarks: a logistic ground truth with per-silo covariate shift.

Each silo draws its features from a normal distribution centred on its own offset (``shift``
controls how non-IID the federation is) and labels from one shared logistic model, so a federated
model can learn what no silo's sample shows alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fl_core.seeding import derive_seed, numpy_rng


@dataclass(frozen=True, slots=True, kw_only=True)
class SyntheticSilo:
    x: np.ndarray  # (rows, features), float64, within [-bound, bound]
    y: np.ndarray  # (rows,), int64 in {0, 1}


def synthetic_silos(
    n_silos: int, rows: int, n_features: int, seed: int, shift: float = 1.0, bound: float = 5.0
) -> dict[str, SyntheticSilo]:
    if n_silos < 1 or rows < 1 or n_features < 1:
        raise ValueError(f"need n_silos, rows, n_features >= 1, got {n_silos}, {rows}, {n_features}")
    truth = numpy_rng(derive_seed(seed, "synthetic", "truth")).normal(size=n_features)
    silos = {}
    width = len(str(n_silos - 1))
    for i in range(n_silos):
        rng = numpy_rng(derive_seed(seed, "synthetic", i))
        offset = rng.normal(scale=shift, size=n_features)
        x = np.clip(rng.normal(loc=offset, size=(rows, n_features)), -bound, bound)
        p = 1.0 / (1.0 + np.exp(-(x @ truth)))
        y = (rng.random(rows) < p).astype(np.int64)
        silos[f"s{i:0{width}d}"] = SyntheticSilo(x=x, y=y)
    return silos
