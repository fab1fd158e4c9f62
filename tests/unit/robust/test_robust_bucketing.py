"""Bucketing: bucket size 1 is the inner rule, buckets are weighted means of a shuffle drawn from the
injected generator, and too few buckets for the inner rule is reported in bucket terms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from robust_reference import small_ints, update_sets

from fl_core.errors import NonFiniteUpdate, TooFewUpdates
from fl_core.robust import Bucketed, Krum, Mean, Median, TrimmedMean
from fl_core.robust.bucketing import bucket_plan

PROPERTY = settings(max_examples=50, deadline=None)


@PROPERTY
@given(data=update_sets(min_n=3, max_n=11, elements=small_ints), seed=st.integers(0, 2**32 - 1))
def test_bucket_size_one_is_the_inner_rule(data, seed):
    vectors, weights = data
    f = (len(vectors) - 3) // 2
    for inner in (Median(), Krum(f=f)):  # both exactly order-invariant on these inputs
        out = Bucketed(inner, 1, np.random.default_rng(seed))(vectors, weights)
        np.testing.assert_array_equal(out, inner(vectors, weights))


class Recorder:
    """An inner rule that remembers what it was given and returns the plain mean."""

    def __init__(self):
        self.calls = []

    def __call__(self, updates, weights):
        self.calls.append((np.array(updates, dtype=np.float64), np.array(weights, dtype=np.float64)))
        return np.mean(np.asarray(updates, dtype=np.float64), axis=0).astype(np.float32)


@PROPERTY
@given(data=update_sets(min_n=1, max_n=11), size=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_buckets_are_weighted_means_of_the_generators_shuffle(data, size, seed):
    vectors, weights = data
    recorder = Recorder()
    Bucketed(recorder, size, np.random.default_rng(seed))(vectors, weights)
    (means, bucket_weights), = recorder.calls
    order = np.random.default_rng(seed).permutation(len(vectors))  # the same draw, made here
    x, w = np.array(vectors, dtype=np.float64), np.array(weights)
    groups = [order[i:i + size] for i in range(0, len(vectors), size)]
    assert means.shape == (len(groups), x.shape[1])
    for b, members in enumerate(groups):
        expected = (w[members, None] * x[members]).sum(axis=0) / w[members].sum()
        np.testing.assert_allclose(means[b], expected.astype(np.float32), rtol=1e-6, atol=1e-4)
        assert bucket_weights[b] == pytest.approx(w[members].sum())


def test_zero_weight_buckets_get_the_plain_mean_and_weight_zero():
    coefs, bucket_weights = bucket_plan(np.array([0.0, 0.0, 1.0, 3.0, 2.0]), 2, np.array([0, 1, 2, 3, 4]))
    np.testing.assert_array_equal(coefs, [[0.5, 0.5, 0, 0, 0], [0, 0, 0.25, 0.75, 0], [0, 0, 0, 0, 1.0]])
    np.testing.assert_array_equal(bucket_weights, [0.0, 4.0, 2.0])


def test_the_same_seed_gives_the_same_buckets_and_a_huge_update_spoils_one_bucket_only():
    rng = np.random.default_rng(9)
    honest = rng.uniform(-1, 1, size=(19, 4)).astype(np.float32)
    x = np.vstack([honest, np.full((1, 4), 1e6, dtype=np.float32)])
    w = [1.0] * 20
    a = Bucketed(Median(), 2, np.random.default_rng(1))(x, w)
    b = Bucketed(Median(), 2, np.random.default_rng(1))(x, w)
    np.testing.assert_array_equal(a, b)
    assert np.all(a >= honest.min(axis=0)) and np.all(a <= honest.max(axis=0))
    out = Bucketed(TrimmedMean(beta=0.1), 2, np.random.default_rng(2))(x, w)
    assert np.all(out >= honest.min(axis=0)) and np.all(out <= honest.max(axis=0))
    moved = Bucketed(Mean(), 2, np.random.default_rng(2))(x, w)
    assert not np.all(moved <= honest.max(axis=0))  # the mean of buckets still moves: the test has power


def test_too_few_buckets_for_the_inner_rule_is_reported_in_buckets():
    with pytest.raises(TooFewUpdates, match="10 updates in buckets of 3 make 4 bucket means: Krum with f = 1"):
        Bucketed(Krum(f=1), 3, np.random.default_rng(0))(np.zeros((10, 2)), [1.0] * 10)


def test_refusals_and_parameter_checks():
    x = np.ones((4, 2), dtype=np.float32)
    x[3, 0] = np.nan
    with pytest.raises(NonFiniteUpdate, match="update 3"):
        Bucketed(Median(), 2, np.random.default_rng(0))(x, [1.0] * 4)
    for size in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="bucket_size"):
            Bucketed(Median(), size, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        Bucketed(Median(), 2, np.random.RandomState(0))


@PROPERTY
@given(n=st.integers(1, 120), min_bucket=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_assigned_buckets_partition_the_members_and_each_holds_at_least_the_floor(n, min_bucket, seed):
    from fl_core.robust import assign_buckets

    members = [f"s{i:03d}" for i in range(n)]
    if n < min_bucket:
        with pytest.raises(TooFewUpdates, match=f"at least {min_bucket}"):
            assign_buckets(members, min_bucket, np.random.default_rng(seed))
        return
    buckets = assign_buckets(members, min_bucket, np.random.default_rng(seed))
    assert len(buckets) == n // min_bucket
    assert sorted(s for b in buckets for s in b) == members  # every member exactly once
    sizes = [len(b) for b in buckets]
    assert min(sizes) >= min_bucket and max(sizes) - min(sizes) <= 1
    for bucket in buckets:  # roster order inside a bucket; buckets ordered by their first member
        assert list(bucket) == sorted(bucket, key=members.index)
    assert [b[0] for b in buckets] == sorted((b[0] for b in buckets), key=members.index)
    again = assign_buckets(members, min_bucket, np.random.default_rng(seed))
    assert again == buckets  # a seed fixes the assignment


def test_assigned_buckets_change_with_the_seed_and_reject_bad_input():
    from fl_core.robust import assign_buckets

    members = [f"s{i}" for i in range(12)]
    draws = {tuple(assign_buckets(members, 3, np.random.default_rng(seed))) for seed in range(20)}
    assert len(draws) > 15  # a shuffle, not a fixed split
    with pytest.raises(ValueError, match="min_bucket"):
        assign_buckets(members, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="repeat"):
        assign_buckets(["a", "a", "b"], 1, np.random.default_rng(0))
