"""Update-level attacks, each against what its paper says it sends: sign flipping −λ·u; scaling by
γ = n/η replaces the global model under FedAvg; Gaussian updates of the given std; ALIE's μ − z·σ
within z·σ of the honest mean and its z_max formula; IPM's negative inner product with the honest mean."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import norm

from fl_core.aggregation import FedAvg, weighted_mean
from fl_core.attacks import (
    AttackError,
    AttackParameterError,
    alie_update,
    alie_z_max,
    gaussian_update,
    ipm_update,
    replacement_boost,
    scale_update,
    sign_flip,
)
from fl_core.errors import FedsiloError

finite = st.floats(-1e3, 1e3, allow_nan=False, width=64)
vectors = arrays(np.float64, st.integers(1, 40), elements=finite)


def honest_updates(n: int, d: int, seed: int) -> list[np.ndarray]:
    """n honest updates that share a direction (as non-IID silos descending one loss roughly do)."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d)
    return [(direction + rng.normal(scale=rng.uniform(0.1, 2.0), size=d)).astype(np.float32) for _ in range(n)]


@settings(max_examples=60, deadline=None)
@given(u=vectors, magnitude=st.floats(0.01, 100))
def test_sign_flip_sends_minus_lambda_times_the_update(u, magnitude):
    out = sign_flip(u, magnitude)
    np.testing.assert_array_equal(out, -magnitude * u)
    assert float(out @ u) <= 0.0
    assert out is not u


def test_sign_flip_keeps_float32_updates_float32():
    u = np.array([1.0, -2.0], dtype=np.float32)
    out = sign_flip(u)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [-1.0, 2.0])


@settings(max_examples=40, deadline=None)
@given(u=vectors, boost=st.floats(0.01, 1e3))
def test_scaling_multiplies_the_update_by_the_boost(u, boost):
    np.testing.assert_allclose(scale_update(u, boost), boost * u, rtol=1e-12, atol=0)


@pytest.mark.parametrize(("n", "server_lr"), [(10, 1.0), (10, 0.5), (3, 2.0), (100, 1.0)])
def test_the_replacement_boost_is_n_over_eta_for_equal_weights(n, server_lr):
    assert replacement_boost(float(n), 1.0, server_lr) == pytest.approx(n / server_lr)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 20), d=st.integers(1, 30), server_lr=st.floats(0.1, 2.0), seed=st.integers(0, 2**32 - 1))
def test_a_boosted_update_replaces_the_global_model_under_fedavg(n, d, server_lr, seed):
    # Bagdasaryan et al.: when the honest updates cancel out (here: are zero), a boost of
    # W / (η · w) makes the next global model exactly the attacker's model X.
    rng = np.random.default_rng(seed)
    global_vector = rng.normal(size=d).astype(np.float32)
    backdoored = rng.normal(size=d).astype(np.float32)
    weights = list(rng.integers(1, 500, size=n).astype(float))
    boost = replacement_boost(sum(weights), weights[0], server_lr)
    deltas = [scale_update(backdoored - global_vector, boost)] + [np.zeros(d, dtype=np.float32)] * (n - 1)
    new_global = FedAvg(server_lr=server_lr).step(global_vector, deltas, weights)
    np.testing.assert_allclose(new_global, backdoored, rtol=1e-4, atol=1e-4)


def test_gaussian_updates_have_the_given_std_and_come_from_the_generator():
    like = np.zeros(20_000, dtype=np.float32)
    out = gaussian_update(like, 3.0, np.random.default_rng(0))
    assert out.shape == like.shape and out.dtype == np.float32
    assert abs(float(out.std()) - 3.0) < 0.1 and abs(float(out.mean())) < 0.1
    np.testing.assert_array_equal(out, gaussian_update(like, 3.0, np.random.default_rng(0)))
    assert not np.array_equal(out, gaussian_update(like, 3.0, np.random.default_rng(1)))


@pytest.mark.parametrize(("n", "f", "expected"), [
    (2, 1, 0.0),                      # s = 1, quantile 1/2
    (3, 1, 0.4307272992954576),       # s = 1, quantile 2/3
    (10, 2, 0.2533471031357997),      # s = 4, quantile 0.6
    (50, 12, 0.5828415072712162),     # s = 14, quantile 0.72
    (100, 20, 0.4958503473474532),    # s = 31, quantile 0.69
])
def test_alie_z_max_matches_the_paper_formula(n, f, expected):
    s = math.floor(n / 2 + 1) - f
    assert alie_z_max(n, f) == pytest.approx(norm.ppf((n - s) / n), abs=1e-9)
    assert alie_z_max(n, f) == pytest.approx(expected, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 200), data=st.data())
def test_alie_z_max_agrees_with_scipy_and_grows_with_f(n, data):
    f = data.draw(st.integers(1, n // 2))
    s = math.floor(n / 2 + 1) - f
    assert alie_z_max(n, f) == pytest.approx(norm.ppf((n - s) / n), abs=1e-9)
    assert alie_z_max(n, f) >= 0.0
    if f > 1:
        assert alie_z_max(n, f) > alie_z_max(n, f - 1)


@pytest.mark.parametrize(("n", "f"), [(1, 1), (4, 0), (4, 3), (5, 3), (10, 6)])
def test_alie_z_max_is_refused_where_the_formula_breaks_down(n, f):
    with pytest.raises(AttackError, match="z_max"):
        alie_z_max(n, f)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 15), d=st.integers(1, 30), z=st.floats(0, 5), seed=st.integers(0, 2**32 - 1))
def test_alie_lies_within_z_sigma_of_the_honest_mean_coordinate_wise(n, d, z, seed):
    honest = honest_updates(n, d, seed)
    stacked = np.stack(honest).astype(np.float64)
    mu, sigma = stacked.mean(axis=0), stacked.std(axis=0)
    out = alie_update(honest, z)
    assert out.shape == (d,)
    assert np.all(np.abs(out - mu) <= z * sigma + 1e-9)
    np.testing.assert_allclose(out, mu - z * sigma, rtol=1e-12, atol=1e-12)


def test_alie_with_z_zero_is_the_honest_mean():
    honest = honest_updates(6, 8, 0)
    np.testing.assert_allclose(alie_update(honest, 0.0), np.mean(np.stack(honest).astype(np.float64), axis=0))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 15), d=st.integers(1, 30), epsilon=st.floats(0.01, 50), seed=st.integers(0, 2**32 - 1))
def test_ipm_has_a_negative_inner_product_with_the_honest_mean(n, d, epsilon, seed):
    honest = honest_updates(n, d, seed)
    mu = np.mean(np.stack(honest).astype(np.float64), axis=0)
    out = ipm_update(honest, epsilon)
    np.testing.assert_allclose(out, -epsilon * mu, rtol=1e-12, atol=1e-12)
    assert float(out @ mu) == pytest.approx(-epsilon * float(mu @ mu))
    assert float(out @ mu) < 0.0


@pytest.mark.parametrize(("n", "f"), [(10, 2), (10, 4), (7, 1)])
def test_ipm_turns_the_mean_around_once_epsilon_exceeds_n_minus_f_over_f(n, f):
    honest = honest_updates(n - f, 12, n * f)
    mu = np.mean(np.stack(honest).astype(np.float64), axis=0)
    threshold = (n - f) / f
    for epsilon, sign in ((0.5 * threshold, 1.0), (2.0 * threshold, -1.0)):
        sent = honest + [ipm_update(honest, epsilon).astype(np.float32)] * f
        aggregate = weighted_mean(sent, [1.0] * n).astype(np.float64)
        assert np.sign(float(aggregate @ mu)) == sign


@pytest.mark.parametrize(("call", "field"), [
    (lambda u: sign_flip(u, 0.0), "magnitude"),
    (lambda u: sign_flip(u, -1.0), "magnitude"),
    (lambda u: scale_update(u, math.inf), "boost"),
    (lambda u: gaussian_update(u, 0.0, np.random.default_rng(0)), "std"),
    (lambda u: alie_update([u], -0.5), "z"),
    (lambda u: alie_update([u], math.nan), "z"),
    (lambda u: ipm_update([u], 0.0), "epsilon"),
    (lambda u: replacement_boost(10.0, 0.0), "malicious_weight"),
    (lambda u: replacement_boost(10.0, 11.0), "malicious_weight"),
    (lambda u: replacement_boost(10.0, 1.0, 0.0), "server_lr"),
])
def test_bad_attack_parameters_are_refused_naming_them(call, field):
    with pytest.raises(AttackParameterError) as info:
        call(np.ones(3))
    assert info.value.field == field and field in str(info.value)


@pytest.mark.parametrize("updates", [
    [],
    [np.ones(3), np.ones(4)],
    [np.ones((2, 2))],
    [np.array([1.0, math.nan])],
])
def test_colluding_attacks_refuse_updates_they_cannot_compute_from(updates):
    for attack in (lambda: alie_update(updates, 1.0), lambda: ipm_update(updates, 0.1)):
        with pytest.raises(AttackError) as info:
            attack()
        assert isinstance(info.value, FedsiloError)


def test_attacks_on_one_update_refuse_non_flat_or_non_finite_updates():
    for bad in (np.ones((2, 2)), np.array([math.inf])):
        for attack in (sign_flip, lambda u: scale_update(u, 2.0), lambda u: gaussian_update(u, 1.0, np.random.default_rng(0))):
            with pytest.raises(AttackError):
                attack(bad)
