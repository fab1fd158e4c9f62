"""FedAvg: properties of the weighted mean and a differential test against an exact reference."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.aggregation import FedAvg, weighted_mean
from fl_core.errors import AggregationError

PROPERTY = settings(max_examples=60, deadline=None)

values = st.floats(min_value=-1e3, max_value=1e3, width=32, allow_subnormal=False)
positive_weights = st.floats(min_value=1e-2, max_value=1e4)


@st.composite
def updates(draw, weights=positive_weights, elements=values, min_updates=1):
    k = draw(st.integers(min_updates, 6))
    d = draw(st.integers(1, 8))
    vectors = [np.array(draw(st.lists(elements, min_size=d, max_size=d)), dtype=np.float32) for _ in range(k)]
    ws = draw(st.lists(weights, min_size=k, max_size=k))
    return vectors, ws


def _exact_mean(vectors, weights):
    """Σ wᵢ vᵢ / Σ wᵢ coordinate by coordinate in exact rational arithmetic, then to float64."""
    total_w = sum(Fraction(w) for w in weights)
    return np.array(
        [
            float(sum(Fraction(w) * Fraction(float(v[j])) for w, v in zip(weights, vectors)) / total_w)
            for j in range(len(vectors[0]))
        ]
    )


def _float32_tolerance(vectors):
    # One float32 rounding of the result plus float64 summation error, relative to the inputs' scale.
    scale = max(1.0, max(float(np.max(np.abs(v))) for v in vectors))
    return 4 * float(np.spacing(np.float32(scale)))


@PROPERTY
@given(data=updates())
def test_weighted_mean_matches_an_exact_reference(data):
    vectors, weights = data
    out = weighted_mean(vectors, weights)
    assert out.dtype == np.float32 and out.shape == vectors[0].shape
    np.testing.assert_allclose(
        out.astype(np.float64), _exact_mean(vectors, weights), rtol=1e-6, atol=_float32_tolerance(vectors)
    )


@PROPERTY
@given(data=updates(min_updates=2), perm_seed=st.integers(0, 2**32))
def test_weighted_mean_is_permutation_invariant(data, perm_seed):
    vectors, weights = data
    order = np.random.default_rng(perm_seed).permutation(len(vectors))
    shuffled = weighted_mean([vectors[i] for i in order], [weights[i] for i in order])
    np.testing.assert_allclose(shuffled, weighted_mean(vectors, weights), rtol=0, atol=_float32_tolerance(vectors))


@PROPERTY
@given(
    data=updates(weights=st.integers(0, 100).map(float), elements=st.integers(-1000, 1000).map(float), min_updates=2),
    perm_seed=st.integers(0, 2**32),
)
def test_weighted_mean_is_exactly_permutation_invariant_when_sums_are_exact(data, perm_seed):
    vectors, weights = data
    if sum(weights) == 0:
        weights[0] = 1.0
    order = np.random.default_rng(perm_seed).permutation(len(vectors))
    shuffled = weighted_mean([vectors[i] for i in order], [weights[i] for i in order])
    np.testing.assert_array_equal(shuffled, weighted_mean(vectors, weights))


@PROPERTY
@given(data=updates(), w=positive_weights)
def test_equal_weights_give_the_plain_mean(data, w):
    vectors, _ = data
    out = weighted_mean(vectors, [w] * len(vectors))
    plain = np.mean(np.stack(vectors).astype(np.float64), axis=0)
    np.testing.assert_allclose(out, plain, rtol=1e-6, atol=_float32_tolerance(vectors))


@PROPERTY
@given(data=updates(), scale=st.floats(min_value=1e-3, max_value=1e3))
def test_scaling_all_weights_changes_nothing(data, scale):
    vectors, weights = data
    np.testing.assert_allclose(
        weighted_mean(vectors, [w * scale for w in weights]),
        weighted_mean(vectors, weights),
        rtol=1e-6,
        atol=_float32_tolerance(vectors),
    )


@PROPERTY
@given(data=updates(min_updates=2))
def test_zero_weight_updates_do_not_count(data):
    vectors, weights = data
    with_ignored = weighted_mean([*vectors, np.full_like(vectors[0], 999.0)], [*weights, 0.0])
    np.testing.assert_array_equal(with_ignored, weighted_mean(vectors, weights))


@PROPERTY
@given(data=updates())
def test_the_mean_lies_within_the_coordinatewise_range(data):
    vectors, weights = data
    out = weighted_mean(vectors, weights)
    stack = np.stack(vectors)
    assert np.all(out >= stack.min(axis=0)) and np.all(out <= stack.max(axis=0))


@PROPERTY
@given(
    global_vector=st.lists(values, min_size=1, max_size=8),
    data=st.data(),
    weight=positive_weights,
)
def test_single_update_with_server_lr_one_gives_global_plus_delta(global_vector, data, weight):
    g = np.array(global_vector, dtype=np.float32)
    delta = np.array(data.draw(st.lists(values, min_size=len(g), max_size=len(g))), dtype=np.float32)
    out = FedAvg(server_lr=1.0).step(g, [delta], [weight])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, (g.astype(np.float64) + delta.astype(np.float64)).astype(np.float32))


@PROPERTY
@given(data=updates(), server_lr=st.floats(min_value=0.01, max_value=10.0))
def test_step_moves_the_global_model_by_server_lr_times_the_mean(data, server_lr):
    deltas, weights = data
    g = np.linspace(-1, 1, len(deltas[0])).astype(np.float32)
    out = FedAvg(server_lr=server_lr).step(g, deltas, weights)
    expected = g.astype(np.float64) + server_lr * _exact_mean(deltas, weights)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=server_lr * _float32_tolerance(deltas) + 1e-6)


def test_server_lr_one_averages_the_local_models_by_sample_count():
    g = np.array([1.0, 1.0], dtype=np.float32)
    local = [np.array([3.0, 1.0], dtype=np.float32), np.array([1.0, 5.0], dtype=np.float32)]
    out = FedAvg().step(g, [m - g for m in local], [30, 10])
    np.testing.assert_array_equal(out, np.array([2.5, 2.0], dtype=np.float32))


def test_inputs_are_not_mutated():
    g = np.array([1.0, 2.0], dtype=np.float32)
    deltas = [np.array([0.5, -0.5], dtype=np.float32), np.array([1.0, 1.0], dtype=np.float32)]
    weights = [1.0, 3.0]
    copies = (g.copy(), [d.copy() for d in deltas], list(weights))
    out = FedAvg(server_lr=0.5).step(g, deltas, weights)
    assert out is not g
    np.testing.assert_array_equal(g, copies[0])
    for d, c in zip(deltas, copies[1]):
        np.testing.assert_array_equal(d, c)
    assert weights == copies[2]


def test_lists_are_accepted_as_vectors():
    np.testing.assert_array_equal(
        weighted_mean([[1.0, 2.0], [3.0, 4.0]], [1, 1]), np.array([2.0, 3.0], dtype=np.float32)
    )


# --- errors --------------------------------------------------------------------------------------

V = np.zeros(3, dtype=np.float32)


@pytest.mark.parametrize(
    "vectors, weights, match",
    [
        ([], [], r"no updates"),
        ([V, V], [1.0], r"2 updates but 1 weights"),
        ([V, np.zeros(4, dtype=np.float32)], [1, 1], r"update 1 has shape \(4,\), expected \(3,\)"),
        ([np.zeros((2, 3), dtype=np.float32)], [1], r"update 0 has shape \(2, 3\).*1-D"),
        ([V, np.array([0, np.nan, 0], dtype=np.float32)], [1, 1], r"update 1 holds NaN or infinite"),
        ([np.array([np.inf, 0, 0], dtype=np.float32)], [1], r"update 0 holds NaN or infinite"),
        ([V, V], [1.0, -1.0], r"weights must be finite, non-negative and not all zero, got \[1.0, -1.0\]"),
        ([V, V], [0.0, 0.0], r"not all zero, got \[0.0, 0.0\]"),
        ([V], [math.nan], r"weights must be finite"),
        ([V], [math.inf], r"weights must be finite"),
    ],
)
def test_bad_updates_raise_aggregation_error(vectors, weights, match):
    with pytest.raises(AggregationError, match=match):
        weighted_mean(vectors, weights)


def test_step_refuses_updates_that_do_not_fit_the_global_model():
    with pytest.raises(AggregationError, match=r"updates have shape \(3,\), the global model \(4,\)"):
        FedAvg().step(np.zeros(4, dtype=np.float32), [V], [1])


@pytest.mark.parametrize("server_lr", [0.0, -1.0, math.nan, math.inf])
def test_fedavg_rejects_bad_server_lr(server_lr):
    with pytest.raises(ValueError, match=rf"server_lr must be a positive number, got {server_lr!r}"):
        FedAvg(server_lr=server_lr)
