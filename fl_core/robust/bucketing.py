"""Bucketing (Karimireddy, He & Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
Bucketing", ICLR 2022): shuffle the n updates, average them in buckets of s, and hand the ⌈n/s⌉ bucket
means to a robust rule. Averaging shrinks the honest updates' spread (heterogeneous data makes honest
updates look like outliers to a robust rule) while f Byzantine updates still spoil at most f buckets.

The shuffle draws from an injected `np.random.Generator`. Within a bucket the mean is weighted by the
updates' weights, and the bucket's weight is their sum (a bucket whose weights are all zero gets the
plain mean of its updates and weight 0).

`assign_buckets` is the same shuffle over silo ids, for the pipeline's ``bucketed`` mode: there the
buckets are fixed before training, each is summed by its own secure-aggregation instance, and the
robust rule sees only bucket means. There the constraint is a floor, not a size: every bucket must
hold at least ``min_bucket`` silos so that no sum reveals a single silo, hence ⌊n / min_bucket⌋
buckets whose sizes differ by at most one.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fl_core.errors import TooFewUpdates
from fl_core.robust._inputs import as_updates, as_weights, raise_non_finite
from fl_core.robust._kernels import combine_many

Aggregator = Callable[[Sequence[np.ndarray], Sequence[float]], np.ndarray]


def bucket_plan(weights: np.ndarray, bucket_size: int, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (buckets, n) averaging matrix and the bucket weights for updates taken in `order`."""
    n = len(weights)
    starts = range(0, n, bucket_size)
    coefs = np.zeros((len(starts), n))
    bucket_weights = np.zeros(len(starts))
    for b, start in enumerate(starts):
        members = order[start:start + bucket_size]
        total = weights[members].sum()
        coefs[b, members] = weights[members] / total if total > 0 else 1.0 / len(members)
        bucket_weights[b] = total
    return coefs, bucket_weights


def assign_buckets(members: Sequence[str], min_bucket: int, rng: np.random.Generator) -> list[tuple[str, ...]]:
    """Shuffle `members` into ⌊n / min_bucket⌋ buckets of ⌊n/k⌋ or ⌈n/k⌉ members each (so every bucket
    holds at least `min_bucket`); within a bucket members keep their order in `members`. The buckets are
    ordered by their first member's position in `members`, so the result depends only on the shuffle."""
    if isinstance(min_bucket, bool) or not isinstance(min_bucket, numbers.Integral) or min_bucket < 1:
        raise ValueError(f"min_bucket must be an integer >= 1, got {min_bucket!r}")
    members = list(members)
    if len(set(members)) != len(members):
        raise ValueError("members repeat")
    n = len(members)
    if n < min_bucket:
        raise TooFewUpdates(f"{n} members cannot fill one bucket of at least {min_bucket}")
    k = n // min_bucket
    order = rng.permutation(n)
    buckets, start = [], 0
    for b in range(k):
        size = n // k + (1 if b < n % k else 0)
        buckets.append(tuple(members[i] for i in sorted(order[start:start + size])))
        start += size
    return sorted(buckets, key=lambda bucket: members.index(bucket[0]))


@dataclass(frozen=True, slots=True)
class Bucketed:
    """`inner` applied to the means of random buckets of `bucket_size` updates (the last bucket holds
    the rest when s does not divide n). Configure `inner` for ⌈n/s⌉ inputs: with f Byzantine updates at
    most f bucket means are spoilt, so an inner rule tolerating f of ⌈n/s⌉ keeps its guarantee
    (breakdown: the inner rule's, counted in buckets). `bucket_size = 1` is `inner` on shuffled updates.
    Order-invariant as a distribution (the shuffle is random anyway); for a fixed generator state the
    buckets depend on the input order.
    """

    inner: Aggregator
    bucket_size: int
    rng: np.random.Generator

    def __post_init__(self) -> None:
        if isinstance(self.bucket_size, bool) or not isinstance(self.bucket_size, numbers.Integral) \
                or self.bucket_size < 1:
            raise ValueError(f"bucket_size must be an integer >= 1, got {self.bucket_size!r}")
        if not isinstance(self.rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(self.rng).__name__}")

    def __call__(self, updates: Sequence[np.ndarray] | np.ndarray, weights: Sequence[float]) -> np.ndarray:
        u = as_updates(updates)
        w = as_weights(weights, u.n)
        coefs, bucket_weights = bucket_plan(w, self.bucket_size, self.rng.permutation(u.n))
        means = combine_many(u, coefs)
        if not np.all(np.isfinite(means)):
            raise_non_finite(u)
        try:
            return self.inner(means, bucket_weights)
        except TooFewUpdates as exc:
            raise TooFewUpdates(f"{u.n} updates in buckets of {self.bucket_size} make {len(means)} bucket means: "
                                f"{exc}") from None
