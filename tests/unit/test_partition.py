"""Partitioners: the stratified holdout (every class that can be split appears on both sides), the
Dirichlet label-skew split between silos and the label-independent quantity-skew split."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.partition import dirichlet_label_skew, quantity_skew, stratified_holdout

PROPERTY = settings(max_examples=60, deadline=None)


def _expected_holdout(n_class, fraction):
    if n_class < 2:
        return 0
    return min(max(round(fraction * n_class), 1), n_class - 1)


@PROPERTY
@given(
    labels=st.lists(st.integers(0, 3), min_size=0, max_size=60),
    fraction=st.floats(min_value=0.01, max_value=0.99),
    seed=st.integers(0, 2**32),
)
def test_holdout_size_per_class_and_both_splits_see_every_splittable_class(labels, fraction, seed):
    labels = np.array(labels, dtype=np.int64)
    mask = stratified_holdout(labels, fraction, np.random.default_rng(seed))
    assert mask.dtype == bool and mask.shape == labels.shape
    for cls in np.unique(labels):
        in_class = labels == cls
        n = int(in_class.sum())
        k = int(mask[in_class].sum())
        assert k == _expected_holdout(n, fraction)
        if n >= 2:
            assert 1 <= k <= n - 1  # both train and holdout hold this class
        else:
            assert k == 0  # the only example stays in training


@PROPERTY
@given(
    labels=st.lists(st.integers(0, 2), min_size=1, max_size=40),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**32),
)
def test_same_generator_seed_gives_the_same_split(labels, fraction, seed):
    labels = np.array(labels)
    a = stratified_holdout(labels, fraction, np.random.default_rng(seed))
    b = stratified_holdout(labels, fraction, np.random.default_rng(seed))
    np.testing.assert_array_equal(a, b)


def test_different_seeds_pick_different_rows():
    labels = np.repeat([0, 1], 50)
    a = stratified_holdout(labels, 0.3, np.random.default_rng(1))
    b = stratified_holdout(labels, 0.3, np.random.default_rng(2))
    assert a.sum() == b.sum() == 30
    assert not np.array_equal(a, b)


def test_rounding_follows_python_round():
    # round() rounds half to even: 0.5 * 5 = 2.5 -> 2, 0.5 * 7 = 3.5 -> 4.
    labels = np.array([0] * 5 + [1] * 7)
    mask = stratified_holdout(labels, 0.5, np.random.default_rng(0))
    assert mask[labels == 0].sum() == 2
    assert mask[labels == 1].sum() == 4


def test_string_labels_and_a_singleton_class():
    labels = np.array(["yes", "no", "no", "no", "no"])
    mask = stratified_holdout(labels, 0.5, np.random.default_rng(0))
    assert not mask[0]
    assert mask[labels == "no"].sum() == 2


def test_labels_are_not_mutated():
    labels = np.array([1, 0, 1, 0, 1])
    stratified_holdout(labels, 0.4, np.random.default_rng(0))
    np.testing.assert_array_equal(labels, [1, 0, 1, 0, 1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5, math.nan])
def test_fraction_outside_the_open_interval_is_refused(fraction):
    with pytest.raises(ValueError, match=rf"holdout fraction must be in \(0, 1\), got {fraction!r}"):
        stratified_holdout(np.array([0, 1]), fraction, np.random.default_rng(0))


# --- Dirichlet label skew -------------------------------------------------------------------------


def _assert_partition(parts, n_rows, n_silos):
    assert len(parts) == n_silos
    for part in parts:
        assert part.dtype == np.int64 and part.ndim == 1
        assert np.all(np.diff(part) > 0)  # sorted, no repeats within a silo
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n_rows))


def _label_shares(labels, parts, n_classes):
    return np.array([np.bincount(labels[part], minlength=n_classes) / len(part) for part in parts])


@PROPERTY
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=80),
    n_silos=st.integers(1, 8),
    alpha=st.floats(0.05, 1e3),
    seed=st.integers(0, 2**32),
)
def test_dirichlet_split_is_a_partition(labels, n_silos, alpha, seed):
    labels = np.array(labels)
    n_silos = min(n_silos, len(labels))
    parts = dirichlet_label_skew(labels, n_silos, alpha, np.random.default_rng(seed), min_rows=0)
    _assert_partition(parts, len(labels), n_silos)


@PROPERTY
@given(
    n_rows=st.integers(20, 80),
    n_silos=st.integers(1, 5),
    alpha=st.floats(1.0, 100.0),
    data=st.data(),
)
def test_dirichlet_split_respects_min_rows(n_rows, n_silos, alpha, data):
    labels = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n_rows, max_size=n_rows)))
    min_rows = data.draw(st.integers(0, n_rows // (2 * n_silos)))
    seed = data.draw(st.integers(0, 2**32))
    parts = dirichlet_label_skew(labels, n_silos, alpha, np.random.default_rng(seed), min_rows=min_rows)
    _assert_partition(parts, n_rows, n_silos)
    assert min(len(part) for part in parts) >= min_rows


def test_large_alpha_gives_every_silo_the_global_label_mix():
    labels = np.repeat(np.arange(5), [300, 200, 200, 150, 150])
    global_mix = np.bincount(labels) / len(labels)
    for seed in range(5):
        parts = dirichlet_label_skew(labels, 8, 1e4, np.random.default_rng(seed))
        tv = 0.5 * np.abs(_label_shares(labels, parts, 5) - global_mix).sum(axis=1)
        assert tv.max() < 0.05
        sizes = [len(part) for part in parts]
        assert max(sizes) - min(sizes) <= 10  # and near-equal sizes: each class is split evenly


def test_small_alpha_lets_few_classes_dominate_each_silo():
    labels = np.repeat(np.arange(5), 200)
    top_small, top_large = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        top_small.append(_label_shares(labels, dirichlet_label_skew(labels, 10, 0.05, rng), 5).max(axis=1).mean())
        top_large.append(_label_shares(labels, dirichlet_label_skew(labels, 10, 100.0, rng), 5).max(axis=1).mean())
    assert np.mean(top_small) > 0.8
    assert np.mean(top_large) < 0.3  # the uniform mix has 0.2


def test_mean_label_counts_over_many_draws_are_uniform_over_silos():
    # E[p] = 1/n for p ~ Dir(alpha * 1_n): on average every silo gets the same share of every class,
    # so pooled over draws each silo's label mix is the global one.
    labels = np.repeat(np.arange(3), [600, 300, 100])
    n_silos, draws = 4, 400
    rng = np.random.default_rng(11)
    counts = np.zeros((n_silos, 3))
    for _ in range(draws):
        for silo, part in enumerate(dirichlet_label_skew(labels, n_silos, 0.5, rng)):
            counts[silo] += np.bincount(labels[part], minlength=3)
    expected = np.bincount(labels) / n_silos
    np.testing.assert_allclose(counts / draws, np.broadcast_to(expected, counts.shape), rtol=0.15)
    pooled_mix = counts / counts.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(pooled_mix, np.broadcast_to([0.6, 0.3, 0.1], pooled_mix.shape), atol=0.05)


def test_dirichlet_same_seed_same_split_different_seed_different_split():
    labels = np.repeat(np.arange(4), 50)
    a = dirichlet_label_skew(labels, 5, 0.5, np.random.default_rng(3))
    b = dirichlet_label_skew(labels, 5, 0.5, np.random.default_rng(3))
    c = dirichlet_label_skew(labels, 5, 0.5, np.random.default_rng(4))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(len(x) != len(z) or not np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def test_dirichlet_string_labels_and_one_silo():
    labels = np.array(["a", "b", "b", "c", "a"])
    (only,) = dirichlet_label_skew(labels, 1, 0.3, np.random.default_rng(0))
    np.testing.assert_array_equal(only, np.arange(5))


def test_dirichlet_labels_are_not_mutated():
    labels = np.array([2, 0, 1, 0, 2, 1])
    dirichlet_label_skew(labels, 2, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(labels, [2, 0, 1, 0, 2, 1])


def test_dirichlet_gives_up_with_a_clear_error_when_min_rows_cannot_be_met():
    labels = np.repeat([0, 1], 10)  # alpha tiny: each class lands in about one silo, 10 silos stay empty-ish
    with pytest.raises(ValueError, match=r"could not give each of 10 silos at least min_rows=2 rows .* in 5 attempts"):
        dirichlet_label_skew(labels, 10, 1e-3, np.random.default_rng(0), min_rows=2, max_attempts=5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, r"alpha must be a finite number > 0, got 0\.0"),
        ({"alpha": -1.0}, r"alpha must be a finite number > 0, got -1\.0"),
        ({"alpha": math.inf}, r"alpha must be a finite number > 0, got inf"),
        ({"alpha": math.nan}, r"alpha must be a finite number > 0, got nan"),
        ({"n_silos": 0}, r"n_silos must be an integer >= 1, got 0"),
        ({"n_silos": 2.5}, r"n_silos must be an integer >= 1, got 2\.5"),
        ({"n_silos": 7}, r"n_silos must be <= the number of rows \(6\), got 7"),
        ({"min_rows": -1}, r"min_rows must be an integer >= 0, got -1"),
        ({"min_rows": 4}, r"min_rows=4 for each of 2 silos needs 8 rows, only 6 given"),
    ],
)
def test_dirichlet_bad_inputs_are_refused(kwargs, message):
    args = {"n_silos": 2, "alpha": 1.0, "min_rows": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        dirichlet_label_skew(np.array([0, 1, 0, 1, 0, 1]), rng=np.random.default_rng(0), **args)


def test_dirichlet_refuses_labels_that_are_not_one_dimensional():
    with pytest.raises(ValueError, match=r"labels must be one-dimensional, got shape \(2, 2\)"):
        dirichlet_label_skew(np.zeros((2, 2)), 2, 1.0, np.random.default_rng(0))


# --- quantity skew --------------------------------------------------------------------------------


@PROPERTY
@given(
    n_rows=st.integers(1, 300),
    n_silos=st.integers(1, 12),
    skew=st.one_of(
        st.tuples(st.just("alpha"), st.floats(0.01, 1e4)), st.tuples(st.just("power"), st.floats(0.2, 20.0))
    ),
    data=st.data(),
)
def test_quantity_skew_is_a_partition_with_min_rows(n_rows, n_silos, skew, data):
    n_silos = min(n_silos, n_rows)
    min_rows = data.draw(st.integers(0, n_rows // n_silos))
    seed = data.draw(st.integers(0, 2**32))
    parts = quantity_skew(n_rows, n_silos, np.random.default_rng(seed), min_rows=min_rows, **{skew[0]: skew[1]})
    _assert_partition(parts, n_rows, n_silos)
    sizes = [len(part) for part in parts]
    assert sum(sizes) == n_rows
    assert min(sizes) >= min_rows


def _size_ratios(**kwargs):
    ratios = []
    for seed in range(20):
        sizes = [len(part) for part in quantity_skew(2000, 20, np.random.default_rng(seed), **kwargs)]
        ratios.append(max(sizes) / min(sizes))
    return np.array(ratios)


def test_quantity_skew_large_alpha_gives_near_equal_sizes():
    assert _size_ratios(alpha=1e4).max() < 1.15  # 100 rows each, give or take a few


def test_quantity_skew_small_alpha_or_heavy_power_law_gives_very_unequal_sizes():
    assert np.median(_size_ratios(alpha=0.1)) > 100
    heavy, light = _size_ratios(power=0.8), _size_ratios(power=10.0)
    assert np.median(heavy) > 10
    assert np.median(light) < 2  # Pareto with shape 10 stays within about [1, 1.5]
    assert np.all(heavy > light)


def test_quantity_skew_min_rows_floor_and_determinism():
    a = quantity_skew(500, 10, np.random.default_rng(5), alpha=0.05, min_rows=30)
    b = quantity_skew(500, 10, np.random.default_rng(5), alpha=0.05, min_rows=30)
    assert min(len(part) for part in a) >= 30
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_quantity_skew_rows_are_shuffled_not_contiguous():
    parts = quantity_skew(1000, 2, np.random.default_rng(0), alpha=100.0)
    assert not np.array_equal(parts[0], np.arange(len(parts[0])))


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((10, 2), {}, r"give exactly one of alpha or power, got alpha=None, power=None"),
        ((10, 2), {"alpha": 1.0, "power": 2.0}, r"give exactly one of alpha or power, got alpha=1\.0, power=2\.0"),
        ((10, 2), {"alpha": 0.0}, r"alpha must be a finite number > 0, got 0\.0"),
        ((10, 2), {"power": -2.0}, r"power must be a finite number > 0, got -2\.0"),
        ((10, 2), {"power": math.inf}, r"power must be a finite number > 0, got inf"),
        ((0, 1), {"alpha": 1.0}, r"n_rows must be an integer >= 1, got 0"),
        ((10, 0), {"alpha": 1.0}, r"n_silos must be an integer >= 1, got 0"),
        ((10, 11), {"alpha": 1.0}, r"n_silos must be <= the number of rows \(10\), got 11"),
        ((10, 3), {"alpha": 1.0, "min_rows": 4}, r"min_rows=4 for each of 3 silos needs 12 rows, only 10 given"),
    ],
)
def test_quantity_skew_bad_inputs_are_refused(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        quantity_skew(*args, np.random.default_rng(0), **kwargs)
