"""What every robust rule promises, checked on all of them: the aggregator signature, typed refusals,
no mutation, order invariance, agreement on identical updates, composition with `Clipped`; and the
registry (`make_aggregator`, `tolerated_faults`)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core import errors
from fl_core.aggregation import weighted_mean
from fl_core.dp.fedavg import Clipped, clip_update
from fl_core.errors import (
    AggregationError,
    BadWeights,
    NonFiniteUpdate,
    ShapeMismatch,
    TooFewUpdates,
    UnknownAggregator,
)
from fl_core.robust import (
    NAMES,
    Bucketed,
    Bulyan,
    CenteredClipping,
    GeometricMedian,
    Krum,
    Mean,
    Median,
    MultiKrum,
    NormBounding,
    TrimmedMean,
    make_aggregator,
    parameters,
    tolerated_faults,
)

N = 11  # enough for every rule below: Bulyan with f = 2 needs 11

RULES = {
    "mean": lambda: Mean(),
    "median": lambda: Median(),
    "trimmed_mean": lambda: TrimmedMean(beta=0.2),
    "krum": lambda: Krum(f=3),
    "multi_krum": lambda: MultiKrum(f=3),
    "bulyan": lambda: Bulyan(f=2),
    "geometric_median": lambda: GeometricMedian(),
    "centered_clipping": lambda: CenteredClipping(tau=1.0),
    "norm_bounding": lambda: NormBounding(bound=1e3),
    "bucketed_median": lambda: Bucketed(Median(), 2, np.random.default_rng(0)),
}
IDS = list(RULES)
# Order invariance as each rule states it: exact, or to float64 rounding of a sum / the stopping tolerance.
EXACT = {"median", "trimmed_mean", "krum"}


def _data(seed=0, n=N, d=7):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32), [1.0 + i % 3 for i in range(n)]


@pytest.mark.parametrize("name", IDS)
def test_returns_a_new_float32_vector_and_leaves_the_inputs_alone(name):
    x, w = _data()
    vectors = list(x.copy())
    before = x.copy()
    out = RULES[name]()(vectors, w)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (7,)
    assert all(not np.shares_memory(out, v) for v in vectors)
    np.testing.assert_array_equal(np.array(vectors), before)
    np.testing.assert_array_equal(RULES[name]()(x, w), out)  # the (n, d) array form gives the same


@pytest.mark.parametrize("name", IDS)
def test_typed_refusals(name):
    rule = RULES[name]()
    x, w = _data()
    with pytest.raises(TooFewUpdates, match="no updates"):
        rule([], [])
    with pytest.raises(TooFewUpdates, match="no updates"):
        rule(np.zeros((0, 3), dtype=np.float32), [])
    with pytest.raises(ShapeMismatch, match="update 4"):
        rule(list(x[:4]) + [np.zeros(6, dtype=np.float32)] + list(x[5:]), w)
    with pytest.raises(ShapeMismatch, match="update 0"):
        rule([x[:2]] + list(x[1:]), w)
    with pytest.raises(ShapeMismatch):
        rule(np.zeros((N, 2, 2)), w)
    with pytest.raises(ShapeMismatch, match="length 0"):
        rule(np.zeros((N, 0)), w)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[6, 3] = bad
        with pytest.raises(NonFiniteUpdate, match="update 6"):
            rule(y, w)
    for weights in (w[:-1], [-1.0] + w[1:], [np.nan] + w[1:], [0.0] * N, [np.inf] + w[1:]):
        with pytest.raises(BadWeights):
            rule(x, weights)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), perm_seed=st.integers(0, 2**32 - 1))
def test_order_invariance_as_stated(seed, perm_seed):
    x, w = _data(seed)
    order = np.random.default_rng(perm_seed).permutation(N)
    for name in IDS:
        if name == "bucketed_median":
            continue  # random by design; its bucket-size-1 case is tested against the inner rule
        a, b = RULES[name]()(x[order], [w[i] for i in order]), RULES[name]()(x, w)
        if name in EXACT:
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("name", IDS)
def test_identical_updates_aggregate_to_that_update(name):
    v = np.random.default_rng(1).normal(size=5).astype(np.float32)
    out = RULES[name]()([v] * N, [1.0] * N)
    np.testing.assert_allclose(out, v, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", IDS)
def test_composes_with_clipping(name):
    x, w = _data(2)
    clipped = [clip_update(v, 2.0)[0] for v in x]
    np.testing.assert_array_equal(Clipped(RULES[name](), 2.0)(list(x), w), RULES[name]()(clipped, w))


def test_mean_is_the_weighted_mean():
    x, w = _data(3)
    np.testing.assert_array_equal(Mean()(x, w), weighted_mean(list(x), w))


# ---- registry ---------------------------------------------------------------------------------------------

REQUIRED = {"krum": {"f": 3}, "multi_krum": {"f": 3}, "bulyan": {"f": 2}, "centered_clipping": {"tau": 1.0},
            "norm_bounding": {"bound": 1e3}, "trimmed_mean": {"beta": 0.2}}


@pytest.mark.parametrize("name", NAMES)
def test_make_aggregator_builds_the_same_rule_as_the_class(name):
    x, w = _data(4)
    built = make_aggregator(name, **REQUIRED.get(name, {}))
    np.testing.assert_array_equal(built(x, w), RULES[name]()(x, w))


def test_registry_refusals():
    with pytest.raises(UnknownAggregator, match="'krumm'.*known: mean, median"):
        make_aggregator("krumm")
    with pytest.raises(UnknownAggregator, match="'median' has no parameter 'beta'; it takes no parameters"):
        make_aggregator("median", beta=0.1)
    with pytest.raises(UnknownAggregator, match="has no parameter 'tau'; it takes f, m"):
        make_aggregator("multi_krum", f=1, tau=2.0)
    with pytest.raises(ValueError, match="'krum' needs f"):
        make_aggregator("krum")
    with pytest.raises(ValueError, match="beta must be"):
        make_aggregator("trimmed_mean", beta=0.6)
    with pytest.raises(UnknownAggregator):
        tolerated_faults("nope", 10)
    assert parameters("geometric_median") == ("max_iter", "tol", "smoothing")


def test_tolerated_faults_by_rule():
    assert tolerated_faults("mean", 10) == 0
    assert tolerated_faults("norm_bounding", 10) == 0
    assert tolerated_faults("median", 10) == 4 and tolerated_faults("median", 11) == 5
    assert tolerated_faults("geometric_median", 7) == 3
    assert tolerated_faults("trimmed_mean", 10, beta=0.25) == 2 and tolerated_faults("trimmed_mean", 10) == 1
    assert tolerated_faults("krum", 9) == 3 and tolerated_faults("multi_krum", 9, m=7) == 2
    assert tolerated_faults("bulyan", 10) == 1 and tolerated_faults("bulyan", 11) == 2
    assert tolerated_faults("centered_clipping", 25) == 2
    with pytest.raises(TooFewUpdates):
        tolerated_faults("krum", 2)
    with pytest.raises(TooFewUpdates):
        tolerated_faults("median", 0)
    with pytest.raises(TooFewUpdates, match="m = 8"):
        tolerated_faults("multi_krum", 7, m=8)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 30))
def test_tolerated_faults_is_exactly_what_krum_and_bulyan_accept(n):
    x = np.random.default_rng(n).normal(size=(n, 3)).astype(np.float32)
    w = [1.0] * n
    f = tolerated_faults("krum", n)
    Krum(f=f)(x, w)
    with pytest.raises(TooFewUpdates):
        Krum(f=f + 1)(x, w)
    f = tolerated_faults("bulyan", n)
    Bulyan(f=f)(x, w)
    with pytest.raises(TooFewUpdates):
        Bulyan(f=f + 1)(x, w)


def test_new_errors_are_aggregation_errors_and_not_value_errors():
    for cls in (errors.TooFewUpdates, errors.ShapeMismatch, errors.NonFiniteUpdate, errors.BadWeights,
                errors.UnknownAggregator):
        assert issubclass(cls, AggregationError) and issubclass(cls, errors.FedsiloError)
        assert not issubclass(cls, (ValueError, RuntimeError, KeyError))


def test_block_kernels_give_the_same_bits_on_any_number_of_threads():
    from fl_core.robust._inputs import as_updates
    from fl_core.robust._kernels import combine_many, sq_distances_to

    x = np.random.default_rng(6).normal(size=(9, 10_000)).astype(np.float32)  # three blocks
    coefs = np.random.default_rng(7).uniform(size=(3, 9))
    for u in (as_updates(x), as_updates(list(x))):
        one = combine_many(u, coefs, threads=1)
        np.testing.assert_array_equal(combine_many(u, coefs, threads=3), one)
        np.testing.assert_allclose(one, coefs @ x.astype(np.float64), rtol=1e-6, atol=1e-6)
        point = x[0].astype(np.float64) + 0.5
        sq = sq_distances_to(u, point, threads=1)
        np.testing.assert_array_equal(sq_distances_to(u, point, threads=2), sq)
        np.testing.assert_allclose(sq, ((x.astype(np.float64) - point) ** 2).sum(axis=1), rtol=1e-12)
    with pytest.raises(ValueError, match="threads"):
        combine_many(as_updates(x), coefs, threads=0)
