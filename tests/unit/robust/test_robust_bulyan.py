"""Bulyan: against a loop reference (iterated Krum, then the β values closest to each coordinate's
median), order, breakdown and the n ≥ 4f + 3 rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from robust_reference import ref_bulyan, small_ints, update_sets

from fl_core.errors import NonFiniteUpdate, TooFewUpdates
from fl_core.robust import Bulyan, bulyan
from fl_core.robust._inputs import as_updates
from fl_core.robust.bulyan import closest_to_median_mean

PROPERTY = settings(max_examples=50, deadline=None)


@PROPERTY
@given(data=update_sets(min_n=3, max_n=15, elements=small_ints), f_pick=st.integers(0, 3))
def test_bulyan_matches_the_loop_reference(data, f_pick):
    vectors, weights = data
    f = min(f_pick, (len(vectors) - 3) // 4)
    out = Bulyan(f=f)(vectors, weights)
    assert out.dtype == np.float32 and out.shape == vectors[0].shape
    np.testing.assert_allclose(out, ref_bulyan(vectors, f), rtol=1e-6, atol=1e-6)


@PROPERTY
@given(data=update_sets(min_n=7, max_n=15, elements=small_ints), seed=st.integers(0, 2**32 - 1))
def test_bulyan_is_order_invariant_even_with_ties(data, seed):
    vectors, weights = data
    f = (len(vectors) - 3) // 4
    order = np.random.default_rng(seed).permutation(len(vectors))
    shuffled = bulyan([vectors[i] for i in order], f)
    np.testing.assert_allclose(shuffled, bulyan(vectors, f), rtol=1e-7, atol=0)


def test_closest_to_median_picks_the_nearest_run_with_ties_to_the_lower_value():
    # one coordinate: values 0, 1, 2, 3, 10; median 2; the 3 closest are 1, 2, 3
    x = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]], dtype=np.float32)
    np.testing.assert_array_equal(closest_to_median_mean(as_updates(x), 3), [2.0])
    # 0, 2, 4 around median 2: 0 and 4 tie for the second place; the lower one wins
    x = np.array([[0.0], [2.0], [4.0]], dtype=np.float32)
    np.testing.assert_array_equal(closest_to_median_mean(as_updates(x), 2), [1.0])
    # a run that has to slide all the way to one side
    x = np.array([[-100.0], [-90.0], [5.0], [6.0], [7.0], [8.0]], dtype=np.float32)  # median 5.5
    np.testing.assert_array_equal(closest_to_median_mean(as_updates(x), 4), [6.5])


@PROPERTY
@given(f=st.integers(1, 3), extra=st.integers(0, 4), d=st.integers(1, 5), seed=st.integers(0, 2**32 - 1),
       same=st.booleans())
def test_huge_byzantine_updates_cannot_pull_bulyan_out_of_the_honest_box(f, extra, d, seed, same):
    rng = np.random.default_rng(seed)
    n = 4 * f + 3 + extra
    honest = rng.uniform(-1, 1, size=(n - f, d)).astype(np.float32)
    byz = np.tile(rng.uniform(-1e6, 1e6, size=d), (f, 1)) if same else rng.uniform(-1e6, 1e6, size=(f, d))
    x = np.vstack([honest, byz.astype(np.float32)])[rng.permutation(n)]
    out = Bulyan(f=f)(x, [1.0] * n)
    assert np.all(out >= honest.min(axis=0)) and np.all(out <= honest.max(axis=0))


def test_bulyan_refuses_too_few_updates_and_non_finite_values():
    with pytest.raises(TooFewUpdates, match=r"Bulyan with f = 2 \(n ≥ 4f \+ 3\) needs at least 11 updates, got 10"):
        Bulyan(f=2)(np.zeros((10, 2)), [1.0] * 10)
    x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    x[5, 2] = np.nan
    with pytest.raises(NonFiniteUpdate, match="update 5"):
        Bulyan(f=1)(x, [1.0] * 7)
    with pytest.raises(ValueError, match="f must be"):
        Bulyan(f=-1)
