"""Stratified holdout: every class that can be split appears on both sides."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.partition import stratified_holdout

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
