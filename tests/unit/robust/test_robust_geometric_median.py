"""Geometric median (smoothed Weiszfeld): its objective against a long plain-Weiszfeld reference, the
1-D case (the weighted median), weights as multiplicities, order, and the breakdown bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from robust_reference import ref_geometric_median, ref_objective, update_sets

from fl_core.errors import BadWeights, NonFiniteUpdate
from fl_core.robust import GeometricMedian, geometric_median

PROPERTY = settings(max_examples=40, deadline=None)
values = st.floats(min_value=-100, max_value=100, width=32, allow_subnormal=False)


@PROPERTY
@given(data=update_sets(min_n=1, max_n=8, max_d=4, elements=values))
def test_objective_is_as_low_as_a_long_reference_run(data):
    vectors, weights = data
    out = GeometricMedian(max_iter=1000, tol=1e-10, smoothing=1e-9)(vectors, weights)
    assert out.dtype == np.float32
    reference = ref_geometric_median(vectors, weights)
    g_out, g_ref = ref_objective(vectors, weights, out), ref_objective(vectors, weights, reference)
    scale = max(1.0, max(float(np.max(np.abs(v))) for v in vectors))
    # Weiszfeld converges slowly when the minimum sits close to an update: both runs are approximate.
    assert g_out <= g_ref * (1 + 1e-4) + 1e-5 * scale


@PROPERTY
@given(xs=st.lists(st.integers(-1000, 1000), min_size=1, max_size=9).filter(lambda v: len(v) % 2 == 1))
def test_in_one_dimension_with_odd_n_it_is_the_median(xs):
    vectors = [np.array([float(x)], dtype=np.float32) for x in xs]
    out = geometric_median(vectors, [1.0] * len(xs), max_iter=2000, tol=1e-12, smoothing=1e-12)
    assert abs(float(out[0]) - float(np.median(xs))) <= 1e-3 * (1 + abs(float(np.median(xs))))


def test_integer_weights_act_as_multiplicities():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    counts = [3, 1, 2, 1, 1]
    weighted = geometric_median(x, counts, max_iter=2000, tol=1e-12)
    repeated = geometric_median(np.repeat(x, counts, axis=0), [1.0] * sum(counts), max_iter=2000, tol=1e-12)
    np.testing.assert_allclose(weighted, repeated, rtol=1e-5, atol=1e-5)


@PROPERTY
@given(data=update_sets(min_n=2, max_n=8, max_d=4, elements=values), seed=st.integers(0, 2**32 - 1))
def test_order_invariant_to_tolerance(data, seed):
    vectors, weights = data
    order = np.random.default_rng(seed).permutation(len(vectors))
    rule = GeometricMedian(max_iter=1000, tol=1e-10)
    a = rule([vectors[i] for i in order], [weights[i] for i in order])
    b = rule(vectors, weights)
    scale = max(1.0, max(float(np.max(np.abs(v))) for v in vectors))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale)


@PROPERTY
@given(f=st.integers(1, 4), margin=st.integers(1, 5), d=st.integers(1, 6), seed=st.integers(0, 2**32 - 1),
       scale=st.sampled_from([1e3, 1e6, 1e30]))
def test_byzantine_updates_cannot_move_it_beyond_the_stated_bound(f, margin, d, seed, scale):
    rng = np.random.default_rng(seed)
    n = 2 * f + margin  # f < n / 2
    honest = rng.uniform(-1, 1, size=(n - f, d))
    byz = rng.uniform(-scale, scale, size=(f, d))
    x = np.vstack([honest, byz]).astype(np.float32)[rng.permutation(n)]
    out = GeometricMedian()(x, [1.0] * n).astype(np.float64)
    z = honest.astype(np.float32).astype(np.float64).mean(axis=0)
    r = np.max(np.linalg.norm(honest.astype(np.float32) - z, axis=1))
    bound = 2 * (n - f) * r / (n - 2 * f)
    assert np.linalg.norm(out - z) <= bound * (1 + 1e-3) + 1e-6
    if scale >= 1e6:  # the mean goes far past it: the test has power
        assert np.linalg.norm(x.astype(np.float64).mean(axis=0) - z) > bound


def test_refusals_and_parameter_checks():
    x = np.ones((4, 3), dtype=np.float32)
    x[2, 0] = np.inf
    with pytest.raises(NonFiniteUpdate, match="update 2"):
        GeometricMedian()(x, [1.0] * 4)
    with pytest.raises(BadWeights):
        GeometricMedian()(np.ones((4, 3)), [0.0] * 4)
    for kwargs in ({"max_iter": -1}, {"tol": -1.0}, {"smoothing": 0.0}, {"tol": float("nan")}):
        with pytest.raises(ValueError):
            GeometricMedian(**kwargs)
