"""Silo-level DP-FedAvg wrappers: no noise and no clipping is exactly FedAvg; clipped updates stay
within C (flat and per layer); the noise has std z·C/D; they wrap any aggregator."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fl_core.aggregation import weighted_mean
from fl_core.dp.fedavg import Clipped, FixedDenominatorMean, GaussianNoised, capped_weights, clip_update, dp_fedavg
from fl_core.errors import AggregationError, PrivacyError

finite = st.floats(-1e6, 1e6, allow_nan=False, width=64)


def updates_and_weights(n: int, d: int, seed: int):
    rng = np.random.default_rng(seed)
    return [rng.normal(scale=rng.uniform(0.01, 10), size=d).astype(np.float32) for _ in range(n)], \
        list(rng.integers(1, 300, size=n).astype(float))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), d=st.integers(1, 50), seed=st.integers(0, 2**31))
def test_no_noise_and_no_clipping_is_exactly_fedavg(n, d, seed):
    updates, weights = updates_and_weights(n, d, seed)
    # Uniform weights (silo-level DP's default) over the roster.
    uniform = dp_fedavg(math.inf, 0.0, float(n), np.random.default_rng(0))
    np.testing.assert_array_equal(uniform(updates, [1.0] * n), weighted_mean(updates, [1.0] * n))
    assert uniform.std == 0.0
    # Sample weights, with the denominator their sum.
    total = float(np.sum(weights))
    weighted = GaussianNoised(Clipped(FixedDenominatorMean(total), math.inf), 0.0, math.inf, total,
                              np.random.default_rng(0), max_weight=max(weights))
    np.testing.assert_array_equal(weighted(updates, weights), weighted_mean(updates, weights))


@settings(max_examples=60, deadline=None)
@given(u=arrays(np.float64, st.integers(1, 60), elements=finite), clip=st.floats(1e-3, 1e3))
def test_clipped_updates_are_within_the_norm_and_unclipped_ones_unchanged(u, clip):
    out, was = clip_update(u, clip)
    assert np.linalg.norm(out) <= clip * (1 + 1e-9)
    if np.linalg.norm(u) <= clip:
        assert not was and np.array_equal(out, u)
    else:
        assert was
        # Same direction.
        np.testing.assert_allclose(out * (np.linalg.norm(u) / np.linalg.norm(out)), u, rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 20), min_size=1, max_size=6), seed=st.integers(0, 2**31), clip=st.floats(1e-2, 10))
def test_per_layer_clipping_bounds_each_layer_and_the_whole(sizes, seed, clip):
    u = np.random.default_rng(seed).normal(scale=5, size=sum(sizes))
    out, _ = clip_update(u, clip, sizes)
    starts = np.cumsum([0, *sizes])
    for a, b in zip(starts[:-1], starts[1:]):
        assert np.linalg.norm(out[a:b]) <= clip / math.sqrt(len(sizes)) * (1 + 1e-9)
    assert np.linalg.norm(out) <= clip * (1 + 1e-9)


def test_noise_std_over_many_draws_is_z_c_over_d():
    z, clip, denominator, d = 1.3, 0.5, 4.0, 200_000
    mechanism = dp_fedavg(clip, z, denominator, np.random.default_rng(11))
    zeros = [np.zeros(d, dtype=np.float32)] * 4
    out = mechanism(zeros, [1.0] * 4)
    assert mechanism.std == pytest.approx(z * clip / denominator)
    assert out.std() == pytest.approx(z * clip / denominator, rel=0.01)
    assert abs(out.mean()) < 5 * mechanism.std / math.sqrt(d)


def test_the_wrappers_compose_with_another_aggregator():
    def coordinate_median(updates, weights):
        return np.median(np.stack(updates), axis=0).astype(np.float32)

    updates = [np.array([3.0, 4.0]), np.array([30.0, 40.0]), np.array([0.3, 0.4])]
    clipped = Clipped(coordinate_median, clip_norm=1.0)
    np.testing.assert_allclose(clipped(updates, [1, 1, 1]), [0.6, 0.8], rtol=1e-6)
    noised = GaussianNoised(clipped, 0.0, 1.0, 3.0, np.random.default_rng(0))
    np.testing.assert_allclose(noised(updates, [1, 1, 1]), [0.6, 0.8], rtol=1e-6)


def test_fixed_denominator_and_weight_bounds():
    updates = [np.ones(3), np.ones(3)]
    np.testing.assert_allclose(FixedDenominatorMean(4.0)(updates, [1.0, 1.0]), 0.5)
    assert capped_weights([50, 200, 400], cap=200) == [0.25, 1.0, 1.0]
    assert capped_weights([50, 200], cap=None) == [1.0, 1.0]
    with pytest.raises(PrivacyError, match="weight bound"):
        dp_fedavg(1.0, 1.0, 2.0, np.random.default_rng(0))(updates, [1.0, 2.0])
    clipped, fraction = Clipped(FixedDenominatorMean(2.0), 1.0).clip_all([np.ones(4), np.full(4, 0.1)])
    assert fraction == 0.5 and np.linalg.norm(clipped[0]) == pytest.approx(1.0)


def test_bad_inputs_are_refused():
    with pytest.raises(AggregationError, match="NaN"):
        clip_update(np.array([1.0, np.nan]), 1.0)
    with pytest.raises(AggregationError, match="layer sizes"):
        clip_update(np.ones(5), 1.0, [2, 2])
    with pytest.raises(PrivacyError):
        clip_update(np.ones(5), 0.0)
    with pytest.raises(PrivacyError, match="finite clip_norm"):
        GaussianNoised(FixedDenominatorMean(1.0), 1.0, math.inf, 1.0, np.random.default_rng(0))
    with pytest.raises(PrivacyError):
        GaussianNoised(FixedDenominatorMean(1.0), -1.0, 1.0, 1.0, np.random.default_rng(0))
    with pytest.raises(PrivacyError):
        capped_weights([1, 2], cap=0)
