"""Shared fixtures for the fl_core unit tests: small, seeded binary-classification data."""

from __future__ import annotations

import numpy as np
import pytest


def make_binary_data(n: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows from a fixed logistic ground truth; both classes appear whenever n >= 2."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)).astype(np.float32)
    w = np.linspace(-1.0, 1.0, n_features)
    y = (x @ w + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    if n >= 2:
        y[0], y[1] = 0, 1
    return x, y


@pytest.fixture
def binary_data():
    """Factory fixture: ``binary_data(n, n_features, seed)`` -> (x float32, y int64 in {0, 1})."""
    return make_binary_data
