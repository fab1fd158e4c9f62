"""Silo-level DP with k of n silos sampled per round: each round is charged as the sampled Gaussian
mechanism at q = k / n (central noise), which costs less than q = 1 and is exactly what the
accountant says of those events (and within 1 % of Google's dp-accounting for the Poisson-sampled
Gaussian); distributed (Skellam) noise is charged without amplification; the ε of the same charges
at q = 1, the bound for a party that knows who was sampled, is kept beside it."""

from __future__ import annotations

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting import rdp

from fl_core.dp.accounting import ORDERS, GaussianEvent, SkellamEvent, epsilon
from fl_core.dp.ledger import Ledger, PrivacyBudget
from fl_core.dp.policy import SiloPrivacy
from fl_core.messages import FederationPrivacy
from fl_core.round_policy import Contribution, build_policy
from fl_core.secagg.spec import SecureSpec

LAYERS = (12, 1)
Z, DELTA, ROUNDS = 1.0, 1e-5, 50


def policy(mode="trusted", n_silos=10, silos_per_round=None, **privacy):
    spec = SiloPrivacy(epsilon=1e6, clip_norm=1.0, **({"noise_multiplier": Z} | privacy))
    return build_policy(mode=mode, rule="fedavg", robust_params={}, server_lr=1.0, min_silos=2, min_bucket=3,
                        secure=SecureSpec(), privacy=spec, anomaly=None, seed=3, rounds=ROUNDS, layers=LAYERS,
                        n_silos=n_silos, silos_per_round=silos_per_round)


def contributions(names, rng):
    return [Contribution(name=s, vector=rng.normal(0, 0.1, sum(LAYERS)).astype(np.float32), weight=100.0, members=(s,))
            for s in names]


@pytest.mark.parametrize("k", [1, 3, 5, 9])
def test_a_trusted_round_of_k_sampled_silos_releases_the_sampled_gaussian_at_k_over_n(k):
    p = policy(n_silos=10, silos_per_round=k)
    sample = p.sample(4, [f"s{i}" for i in range(10)])
    assert sample.k == k and sample.rate == k / 10
    rng = np.random.default_rng(0)
    merged = p.merge(contributions(sample.sampled, rng), {}, rng, sample.rate)
    assert merged.release == GaussianEvent(Z, k / 10, 1)


def test_a_secure_round_charges_the_central_noise_at_the_sampling_rate():
    p = policy(mode="secure", n_silos=6, silos_per_round=3)
    sample = p.sample(2, [f"s{i}" for i in range(6)])
    (instance,) = p.instances(2, sample.sampled)
    assert instance.silos == sample.sampled and instance.threshold == 2  # the sum of the 3 drawn
    decoded = Contribution(name=instance.name, vector=np.zeros(sum(LAYERS), dtype=np.float32), weight=3.0,
                           members=sample.sampled)  # what the sum decodes to does not matter for the charge
    merged = p.merge([decoded], {}, np.random.default_rng(0), sample.rate)
    assert merged.release == GaussianEvent(Z, 0.5, 1)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_sampled_rounds_cost_less_than_full_ones_and_exactly_what_the_accountant_says(accountant):
    p = policy(n_silos=10, silos_per_round=2, accountant=accountant)
    level = p.privacy
    budget = PrivacyBudget(1e6, DELTA, accountant)
    ledger = Ledger(owner="federation", federation="f", budget=budget)
    rounds = 10  # each charge recomputes ε from the whole ledger: a few rounds keep this quick
    for r in range(1, rounds + 1):
        ledger = ledger.charge(r, level.event(sample_rate=p.sample(r, [f"s{i}" for i in range(10)]).rate))
    sampled = ledger.spent()
    assert sampled == epsilon([GaussianEvent(Z, 0.2, 1)] * rounds, DELTA, accountant)  # the accountant, called directly
    assert sampled == epsilon([GaussianEvent(Z, 0.2, rounds)], DELTA, accountant)
    full = epsilon([GaussianEvent(Z, 1.0, rounds)], DELTA, accountant)
    assert sampled < full / 3  # q = 0.2 amplifies a lot at z = 1
    assert ledger.spent_without_sampling() == pytest.approx(full, rel=1e-12)  # what a party knowing the sample gets


def test_the_sampled_charge_matches_dp_accounting_for_the_poisson_sampled_gaussian():
    """The accountant's bound is the Poisson-sampled Gaussian's (see SiloLevel on exact-k draws)."""
    ours = epsilon([policy(n_silos=8, silos_per_round=2).privacy.event(sample_rate=0.25)] * ROUNDS, DELTA)
    accountant = rdp.RdpAccountant(orders=list(ORDERS))
    accountant.compose(dpa.PoissonSampledDpEvent(0.25, dpa.GaussianDpEvent(Z)), ROUNDS)
    assert ours == pytest.approx(accountant.get_epsilon(DELTA), rel=0.01)


def test_without_sampling_every_round_is_still_charged_at_q_1():
    p = policy(n_silos=10)
    assert p.silos_per_round is None
    sample = p.sample(1, [f"s{i}" for i in range(10)])
    assert sample.rate == 1.0
    rng = np.random.default_rng(1)
    assert p.merge(contributions(sample.sampled, rng), {}, rng, sample.rate).release == GaussianEvent(Z, 1.0, 1)
    ledger = Ledger(owner="federation", federation="f", budget=PrivacyBudget(1e6, DELTA)).charge(1, p.privacy.event())
    assert ledger.spent_without_sampling() == ledger.spent()


def test_distributed_noise_is_charged_without_amplification():
    p = policy(mode="secure", n_silos=6, silos_per_round=3, placement="distributed")
    event = p.privacy.event(3, sample_rate=0.5)
    assert isinstance(event, SkellamEvent) and event.sample_rate == 1.0
    assert event == p.privacy.shares.event(3)


def test_the_round_summary_carries_the_rate_and_the_unamplified_epsilon():
    summary = FederationPrivacy(epsilon=1.5, budget=8.0, delta=DELTA, accountant="rdp", placement="central",
                                noise_multiplier=Z, clip_norm=1.0, clipped_fraction=0.0, sample_rate=0.25,
                                epsilon_without_sampling=6.0)
    assert FederationPrivacy.from_dict(summary.to_dict()) == summary
    assert summary.metrics()["dp.sample_rate"] == 0.25 and summary.metrics()["dp.epsilon_without_sampling"] == 6.0
    assert "knows the sample" in summary.describe()
    plain = FederationPrivacy(epsilon=1.5, budget=8.0, delta=DELTA, accountant="rdp", placement="central",
                              noise_multiplier=Z, clip_norm=1.0, clipped_fraction=0.0)
    assert "sample_rate" not in plain.to_dict() and "dp.sample_rate" not in plain.metrics()
    assert FederationPrivacy.from_dict(plain.to_dict()) == plain
