"""fedsilo's ε against independent references: Google's `dp-accounting` (RDP and PLD) and the
figure published by Abadi et al. 2016.

Tolerances: the same method (RDP against dp-accounting's RDP, same orders' conversion) must agree
within 1 %: both evaluate the same closed forms for the sampled Gaussian's Rényi divergence, so
what remains is the grid of orders and floating point. PRV (fedsilo, Opacus) against PLD
(dp-accounting) are two numerical methods for the same exact privacy curve: each carries its own
discretisation error (PRV's ε error bound is 0.01 absolute; PLD's pessimistic discretisation
interval 1e-4 adds a little upward), so they must agree within 3 % + 0.02 absolute — and both
must be below the RDP bound, which is an upper bound on the exact curve.
"""

from __future__ import annotations

import math

import dp_accounting as dpa
import pytest
from dp_accounting import pld, rdp
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.dp.accounting import ORDERS, GaussianEvent, epsilon, noise_for_epsilon
from fl_core.errors import PrivacyError

# (noise multiplier, sampling rate, steps, δ): DP-SGD settings across the usual range, and two
# silo-level DP-FedAvg settings with every silo in every round (q = 1).
SETTINGS = [
    (1.1, 0.01, 1000, 1e-5),
    (1.1, 0.004, 15_000, 1e-5),
    (0.8, 0.02, 500, 1e-6),
    (2.0, 0.05, 2000, 1e-5),
    (4.0, 0.01, 10_000, 1e-5),
    (1.5, 0.1, 300, 1e-5),
    (0.6, 0.001, 50_000, 1e-6),
    (3.0, 0.25, 100, 1e-4),
    (1.0, 1.0, 50, 1e-5),
    (4.5, 1.0, 50, 1e-5),
]


def reference(noise: float, q: float, steps: int, delta: float, accountant) -> float:
    event = dpa.GaussianDpEvent(noise) if q == 1 else dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(noise))
    accountant.compose(event, steps)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("noise,q,steps,delta", SETTINGS)
def test_rdp_matches_dp_accounting_within_one_percent(noise, q, steps, delta):
    ours = epsilon([GaussianEvent(noise, q, steps)], delta, "rdp")
    theirs = reference(noise, q, steps, delta, rdp.RdpAccountant(orders=list(ORDERS)))
    assert ours == pytest.approx(theirs, rel=0.01)


@pytest.mark.parametrize("noise,q,steps,delta", SETTINGS)
def test_prv_matches_dp_accounting_pld(noise, q, steps, delta):
    ours = epsilon([GaussianEvent(noise, q, steps)], delta, "prv")
    theirs = reference(noise, q, steps, delta, pld.PLDAccountant(value_discretization_interval=1e-4))
    assert abs(ours - theirs) <= 0.03 * theirs + 0.02
    assert ours <= epsilon([GaussianEvent(noise, q, steps)], delta, "rdp") + 0.01


def test_abadi_et_al_figure_with_the_classic_conversion():
    """q = 0.01, σ = 4, δ = 1e-5, 10,000 steps: ε ≈ 1.26 (Abadi et al. 2016, moments accountant)."""
    events = [GaussianEvent(4.0, 0.01, 10_000)]
    assert epsilon(events, 1e-5, "rdp", conversion="classic") == pytest.approx(1.26, abs=0.005)
    # The improved conversion (Balle et al. 2020) and PRV are tighter.
    assert epsilon(events, 1e-5, "rdp") < 1.26 - 0.1
    assert epsilon(events, 1e-5, "prv") < epsilon(events, 1e-5, "rdp")


def test_the_issue_figures_for_silo_level_dp():
    assert epsilon([GaussianEvent(1.0, 1.0, 50)], 1e-5) == pytest.approx(57, abs=1)
    z = noise_for_epsilon(8.0, 1e-5, 1.0, 50)
    assert z == pytest.approx(4.5, abs=0.1)
    assert epsilon([GaussianEvent(z, 1.0, 50)], 1e-5) <= 8.0


def test_heterogeneous_composition_matches_dp_accounting():
    events = [GaussianEvent(1.1, 0.01, 400), GaussianEvent(2.0, 0.05, 100), GaussianEvent(1.1, 0.01, 600)]
    accountant = rdp.RdpAccountant(orders=list(ORDERS))
    for e in events:
        accountant.compose(dpa.PoissonSampledDpEvent(e.sample_rate, dpa.GaussianDpEvent(e.noise_multiplier)), e.steps)
    assert epsilon(events, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=0.01)
    # Composition does not depend on the order, and equal events fold together.
    assert epsilon(events[::-1], 1e-5) == pytest.approx(epsilon(events, 1e-5), rel=1e-12)
    assert epsilon([GaussianEvent(1.1, 0.01, 1000), events[1]], 1e-5) == pytest.approx(epsilon(events, 1e-5), rel=1e-12)


def test_edges():
    assert epsilon([], 1e-5) == 0.0
    assert epsilon([GaussianEvent(1.0, 0.0, 100), GaussianEvent(1.0, 0.5, 0)], 1e-5) == 0.0
    assert math.isinf(epsilon([GaussianEvent(0.0, 0.1, 1)], 1e-5))
    assert noise_for_epsilon(1.0, 1e-5, 0.1, 0) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": -1.0, "sample_rate": 0.1, "steps": 1},
        {"noise_multiplier": math.nan, "sample_rate": 0.1, "steps": 1},
        {"noise_multiplier": 1.0, "sample_rate": 1.5, "steps": 1},
        {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": -1},
        {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 2.5},
    ],
)
def test_bad_events_are_refused(kwargs):
    with pytest.raises(PrivacyError):
        GaussianEvent(**kwargs)


def test_bad_delta_accountant_and_target_are_refused():
    events = [GaussianEvent(1.0, 0.1, 10)]
    for delta in (0, 1, -1e-5, math.nan):
        with pytest.raises(PrivacyError, match="delta"):
            epsilon(events, delta)
    with pytest.raises(PrivacyError, match="accountant"):
        epsilon(events, 1e-5, "gdp")  # type: ignore[arg-type]
    with pytest.raises(PrivacyError, match="classic"):
        epsilon(events, 1e-5, "prv", conversion="classic")
    with pytest.raises(PrivacyError, match="target"):
        noise_for_epsilon(0.0, 1e-5, 0.1, 10)


@settings(max_examples=15, deadline=None)
@given(
    noise=st.floats(0.5, 8.0),
    q=st.floats(0.001, 1.0),
    steps=st.integers(1, 5000),
    more=st.integers(1, 5000),
)
def test_epsilon_grows_with_steps_and_falls_with_noise(noise, q, steps, more):
    base = epsilon([GaussianEvent(noise, q, steps)], 1e-5)
    assert epsilon([GaussianEvent(noise, q, steps + more)], 1e-5) >= base
    assert epsilon([GaussianEvent(noise * 1.5, q, steps)], 1e-5) <= base
    assert epsilon([GaussianEvent(noise, min(1.0, q * 1.5), steps)], 1e-5) >= base


@settings(max_examples=6, deadline=None)
@given(target=st.floats(0.5, 20.0), q=st.floats(0.005, 1.0), steps=st.integers(10, 3000))
def test_noise_for_epsilon_meets_its_target_tightly(target, q, steps):
    z = noise_for_epsilon(target, 1e-5, q, steps)
    assert epsilon([GaussianEvent(z, q, steps)], 1e-5) <= target
    assert epsilon([GaussianEvent(z * 0.97, q, steps)], 1e-5) > target * 0.99
