"""Synthetic silos used by benchmarks and tests: reproducible, bounded, binary."""

from __future__ import annotations

import numpy as np
import pytest

from fl_core.synthetic import synthetic_silos


def test_shapes_names_bounds_and_labels():
    silos = synthetic_silos(n_silos=11, rows=20, n_features=3, seed=0, bound=2.0)
    assert list(silos) == [f"s{i:02d}" for i in range(11)]
    for silo in silos.values():
        assert silo.x.shape == (20, 3) and silo.y.shape == (20,)
        assert np.all(np.abs(silo.x) <= 2.0)
        assert set(np.unique(silo.y)) <= {0, 1}


def test_same_seed_same_data_different_seed_different_data():
    a = synthetic_silos(3, 15, 2, seed=4)
    b = synthetic_silos(3, 15, 2, seed=4)
    c = synthetic_silos(3, 15, 2, seed=5)
    for name in a:
        np.testing.assert_array_equal(a[name].x, b[name].x)
        np.testing.assert_array_equal(a[name].y, b[name].y)
        assert not np.array_equal(a[name].x, c[name].x)


def test_adding_a_silo_leaves_the_others_unchanged():
    small = synthetic_silos(2, 10, 2, seed=1)
    large = synthetic_silos(3, 10, 2, seed=1)
    for i in range(2):
        np.testing.assert_array_equal(small[f"s{i}"].x, large[f"s{i}"].x)


@pytest.mark.parametrize("args", [(0, 10, 2), (2, 0, 2), (2, 10, 0)])
def test_sizes_below_one_are_refused(args):
    with pytest.raises(ValueError, match=r"need n_silos, rows, n_features >= 1"):
        synthetic_silos(*args, seed=0)
