"""Coordinate-wise median and trimmed mean: against sorted-list references, order, input forms,
threads, the breakdown point, and non-finite values wherever they sit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from robust_reference import moderate, ref_median, ref_trimmed_mean, update_sets

from fl_core.errors import NonFiniteUpdate, TooFewUpdates
from fl_core.robust import Median, TrimmedMean, coordinate_median, coordinate_trimmed_mean

PROPERTY = settings(max_examples=60, deadline=None)


def _trimmed_tolerance(vectors):
    # The kept values are summed in float32 by BLAS: a few float32 ulps of the largest magnitude.
    scale = max(1.0, max(float(np.max(np.abs(v))) for v in vectors))
    return len(vectors) * float(np.spacing(np.float32(scale)))


@PROPERTY
@given(data=update_sets(max_n=12))
def test_median_matches_a_sorted_list_reference_exactly(data):
    vectors, weights = data
    out = Median()(vectors, weights)
    assert out.dtype == np.float32 and out.shape == vectors[0].shape
    np.testing.assert_array_equal(out, ref_median(vectors))


@PROPERTY
@given(data=update_sets(max_n=12), beta=st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.34, 0.49]))
def test_trimmed_mean_matches_a_sorted_list_reference(data, beta):
    vectors, weights = data
    if beta > 0 and math.floor(beta * len(vectors)) == 0:
        with pytest.raises(TooFewUpdates, match="cuts nothing"):
            TrimmedMean(beta=beta)(vectors, weights)
        return
    out = TrimmedMean(beta=beta)(vectors, weights)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref_trimmed_mean(vectors, beta), rtol=1e-6, atol=_trimmed_tolerance(vectors))


@PROPERTY
@given(data=update_sets(min_n=2, max_n=12), seed=st.integers(0, 2**32 - 1))
def test_median_and_trimmed_mean_are_exactly_order_invariant(data, seed):
    vectors, weights = data
    order = np.random.default_rng(seed).permutation(len(vectors))
    shuffled, shuffled_w = [vectors[i] for i in order], [weights[i] for i in order]
    np.testing.assert_array_equal(Median()(shuffled, shuffled_w), Median()(vectors, weights))
    beta = 0.2 if len(vectors) >= 5 else 0.0
    np.testing.assert_array_equal(TrimmedMean(beta=beta)(shuffled, shuffled_w), TrimmedMean(beta=beta)(vectors, weights))


@PROPERTY
@given(data=update_sets(min_n=5), other=st.lists(st.floats(0.0, 5.0), min_size=9, max_size=9))
def test_weights_are_ignored_but_checked(data, other):
    vectors, weights = data
    reweighted = [w + 1.0 for w in other[: len(vectors)]]
    np.testing.assert_array_equal(Median()(vectors, reweighted), Median()(vectors, weights))
    np.testing.assert_array_equal(TrimmedMean(beta=0.2)(vectors, reweighted), TrimmedMean(beta=0.2)(vectors, weights))


def test_a_matrix_a_list_and_float64_inputs_give_the_same_result():
    x = np.random.default_rng(0).normal(size=(9, 300)).astype(np.float32)
    w = [1.0] * 9
    for rule in (Median(), TrimmedMean(beta=0.2)):
        expected = rule(list(x), w)
        np.testing.assert_array_equal(rule(x, w), expected)
        np.testing.assert_array_equal(rule(x.astype(np.float64), w), expected)
        np.testing.assert_array_equal(rule(np.asfortranarray(x), w), expected)


@pytest.mark.parametrize("n", [7, 8])
def test_blocks_spread_over_threads_give_the_same_result_as_one_thread(n):
    # 10 000 coordinates are three blocks: the pool path runs, and must not change a single bit.
    x = np.random.default_rng(n).normal(size=(n, 10_000)).astype(np.float32)
    one = coordinate_median(x, threads=1)
    np.testing.assert_array_equal(coordinate_median(x, threads=3), one)
    np.testing.assert_array_equal(coordinate_median(list(x), threads=2), one)
    np.testing.assert_array_equal(one, np.median(x.astype(np.float64), axis=0).astype(np.float32))
    np.testing.assert_array_equal(coordinate_trimmed_mean(x, 0.25, threads=3), coordinate_trimmed_mean(x, 0.25, threads=1))


def test_median_handles_signed_zeros_denormals_and_extremes():
    big = float(np.finfo(np.float32).max)
    tiny = float(np.finfo(np.float32).smallest_subnormal)
    x = np.array([[-0.0, big, -tiny], [0.0, -big, tiny], [-0.0, big, 0.0]], dtype=np.float32)
    out = Median()(x, [1, 1, 1])
    np.testing.assert_array_equal(out, ref_median(list(x)))
    # the mean of the two middle values of {-big, big} must not overflow
    np.testing.assert_array_equal(Median()(x[:2], [1, 1]), np.array([0.0, 0.0, 0.0], dtype=np.float32))


# ---- breakdown: f Byzantine updates anywhere cannot leave the honest values' range -----------------

byzantine_values = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.sampled_from([1e6, -1e6, 3e38, -3e38]),
)


@st.composite
def attacked(draw, fraction):
    honest_n = draw(st.integers(3, 10))
    f = draw(st.integers(1, max(1, fraction(honest_n))))
    d = draw(st.integers(1, 4))
    honest = [np.array(draw(st.lists(moderate, min_size=d, max_size=d)), dtype=np.float32) for _ in range(honest_n)]
    byz = [np.array(draw(st.lists(byzantine_values, min_size=d, max_size=d)), dtype=np.float32) for _ in range(f)]
    positions = draw(st.permutations(range(honest_n + f)))
    everything = honest + byz
    return [everything[i] for i in positions], np.array(honest)


def _inside_honest_box(out, honest):
    return bool(np.all(out >= honest.min(axis=0)) and np.all(out <= honest.max(axis=0)))


@PROPERTY
@given(case=attacked(lambda h: h - 1))  # f < h, i.e. f < n/2
def test_median_stays_within_the_honest_range_for_f_below_half(case):
    vectors, honest = case
    assert _inside_honest_box(Median()(vectors, [1.0] * len(vectors)), honest)


@PROPERTY
@given(case=attacked(lambda h: h // 3), beta=st.sampled_from([0.25, 0.3, 0.4]))
def test_trimmed_mean_stays_within_the_honest_range_for_f_up_to_beta_n(case, beta):
    vectors, honest = case
    f = len(vectors) - len(honest)
    if f > math.floor(beta * len(vectors)):
        return  # beyond the breakdown point this rule states
    assert _inside_honest_box(TrimmedMean(beta=beta)(vectors, [1.0] * len(vectors)), honest)


def test_huge_updates_move_the_mean_but_not_the_median_or_trimmed_mean():
    rng = np.random.default_rng(3)
    honest = rng.uniform(-1, 1, size=(17, 6)).astype(np.float32)
    byz = np.full((3, 6), 1e6, dtype=np.float32)
    x = np.vstack([honest, byz])
    w = [1.0] * 20
    assert not _inside_honest_box(x.astype(np.float64).mean(axis=0), honest)  # the test has power
    assert _inside_honest_box(Median()(x, w), honest)
    assert _inside_honest_box(TrimmedMean(beta=0.15)(x, w), honest)


# ---- non-finite values: found wherever they sit, named by update ------------------------------------

@pytest.mark.parametrize("bad", [np.nan, -np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("rule", [Median(), TrimmedMean(beta=0.2)], ids=["median", "trimmed_mean"])
def test_non_finite_values_are_refused_naming_the_update(rule, bad):
    x = np.random.default_rng(0).normal(size=(6, 5000)).astype(np.float32)
    x[4, 4321] = bad
    with pytest.raises(NonFiniteUpdate, match="update 4"):
        rule(x, [1.0] * 6)
    nan_bits = np.array([0xFFC00001], dtype=np.uint32).view(np.float32)[0]  # a negative NaN payload
    x[4, 4321] = nan_bits
    with pytest.raises(NonFiniteUpdate, match="update 4"):
        rule(list(x), [1.0] * 6)


def test_trimmed_mean_parameters_are_checked():
    for beta in (-0.1, 0.5, 1.0, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="beta"):
            TrimmedMean(beta=beta)
    with pytest.raises(TooFewUpdates, match="needs at least 10 updates, got 9"):
        TrimmedMean(beta=0.1)(np.zeros((9, 3)), [1.0] * 9)
