"""Centred clipping and norm bounding: against loop references, their influence bounds, and order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from robust_reference import ref_centered_clipping, ref_median, ref_norm_bounded_mean, update_sets

from fl_core.errors import NonFiniteUpdate, ShapeMismatch
from fl_core.robust import CenteredClipping, NormBounding, centered_clipping

PROPERTY = settings(max_examples=50, deadline=None)
values = st.floats(min_value=-100, max_value=100, width=32, allow_subnormal=False)
taus = st.floats(min_value=0.01, max_value=50.0)


def _scale(vectors):
    return max(1.0, max(float(np.max(np.abs(v))) for v in vectors))


@PROPERTY
@given(data=update_sets(max_n=8, elements=values), tau=taus, iterations=st.integers(1, 4))
def test_centered_clipping_from_the_median_matches_the_loop_reference(data, tau, iterations):
    vectors, weights = data
    out = CenteredClipping(tau=tau, iterations=iterations)(vectors, weights)
    assert out.dtype == np.float32
    expected = ref_centered_clipping(vectors, weights, tau, iterations, ref_median(vectors))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * _scale(vectors))


@PROPERTY
@given(data=update_sets(max_n=8, elements=values), tau=taus, start_seed=st.integers(0, 2**32 - 1))
def test_centered_clipping_from_a_given_start_matches_and_stays_within_iterations_times_tau(data, tau, start_seed):
    vectors, weights = data
    start = np.random.default_rng(start_seed).normal(size=vectors[0].shape) * 10
    out = centered_clipping(vectors, weights, tau=tau, iterations=2, start=start)
    expected = ref_centered_clipping(vectors, weights, tau, 2, start)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * _scale(vectors))
    assert np.linalg.norm(out.astype(np.float64) - start) <= 2 * tau * (1 + 1e-6) + 1e-5 * _scale(vectors)


def test_huge_byzantine_updates_move_centred_clipping_by_at_most_their_share_of_tau():
    rng = np.random.default_rng(4)
    honest = rng.normal(size=(18, 5)).astype(np.float32)
    byz = np.full((2, 5), 1e6, dtype=np.float32)
    w = [1.0] * 20
    start = np.median(honest, axis=0)
    clean = centered_clipping(honest, [1.0] * 18, tau=1.0, iterations=1, start=start)
    attacked = centered_clipping(np.vstack([honest, byz]), w, tau=1.0, iterations=1, start=start)
    # One step from the same start: the f = 2 Byzantine updates add at most (f/n)·τ, and reweighting the
    # honest ones from 1/18 to 1/20 changes their part by at most (1 − 18/20)·τ = (f/n)·τ: 2·(f/n)·τ in all.
    assert np.linalg.norm(attacked.astype(np.float64) - clean) <= 2 * (2 / 20) * 1.0 + 1e-6
    assert np.linalg.norm(x_mean(honest, byz) - start) > 1e4  # the mean goes far: the test has power
    assert np.linalg.norm(attacked.astype(np.float64) - start) <= 1.0 + 1e-6


def x_mean(honest, byz):
    return np.vstack([honest, byz]).astype(np.float64).mean(axis=0)


@PROPERTY
@given(data=update_sets(max_n=8, elements=values), bound=st.floats(min_value=0.01, max_value=500.0))
def test_norm_bounding_matches_the_loop_reference_and_bounds_the_output(data, bound):
    vectors, weights = data
    out = NormBounding(bound=bound)(vectors, weights)
    np.testing.assert_allclose(out, ref_norm_bounded_mean(vectors, weights, bound), rtol=1e-6,
                               atol=1e-6 * _scale(vectors))
    assert np.linalg.norm(out.astype(np.float64)) <= bound * (1 + 1e-6)


def test_norm_bounding_scales_huge_updates_instead_of_dropping_them():
    # ‖x‖² overflows float32 here; computed in float64 the update is scaled to the bound, not zeroed
    x = np.array([[3e30, 3e30], [0.0, 0.0]], dtype=np.float32)
    out = NormBounding(bound=2.0)(x, [1.0, 1.0])
    np.testing.assert_allclose(out, [np.sqrt(2) / 2, np.sqrt(2) / 2], rtol=1e-6)


@PROPERTY
@given(data=update_sets(min_n=2, max_n=8, elements=values), seed=st.integers(0, 2**32 - 1))
def test_order_invariant_to_float64_rounding(data, seed):
    vectors, weights = data
    order = np.random.default_rng(seed).permutation(len(vectors))
    shuffled, shuffled_w = [vectors[i] for i in order], [weights[i] for i in order]
    for rule in (CenteredClipping(tau=1.0), NormBounding(bound=5.0)):
        np.testing.assert_allclose(rule(shuffled, shuffled_w), rule(vectors, weights), rtol=1e-6,
                                   atol=1e-6 * _scale(vectors))


def test_refusals_and_parameter_checks():
    x = np.ones((3, 2), dtype=np.float32)
    x[1, 1] = np.nan
    for rule in (CenteredClipping(tau=1.0), CenteredClipping(tau=1.0, start=np.zeros(2)), NormBounding(bound=1.0)):
        with pytest.raises(NonFiniteUpdate, match="update 1"):
            rule(x, [1.0] * 3)
    with pytest.raises(ShapeMismatch, match="start"):
        CenteredClipping(tau=1.0, start=np.zeros(3))(np.ones((3, 2)), [1.0] * 3)
    for kwargs in ({"tau": 0.0}, {"tau": float("inf")}, {"tau": 1.0, "iterations": 0},
                   {"tau": 1.0, "start": np.array([np.nan])}):
        with pytest.raises(ValueError):
            CenteredClipping(**kwargs)
    with pytest.raises(ValueError, match="bound"):
        NormBounding(bound=-1.0)
