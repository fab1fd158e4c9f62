"""Distributed DP: Skellam shares sum to the target noise whatever the survivors, pass through the
32-bit modular sum exactly, and are accounted by Agarwal et al.'s bound, which tends to the
Gaussian's as the noise grows; settings that could wrap are refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.dp.accounting import GaussianEvent, SkellamEvent, epsilon, event_from_dict, rdp_curve
from fl_core.dp.distributed import SkellamShares, add_share, noise_rng
from fl_core.dp.ledger import Ledger, PrivacyBudget
from fl_core.dp.policy import SiloPrivacy
from fl_core.errors import HeadroomError, PrivacyError
from fl_core.secagg.quantize import Quantizer

QUANT = Quantizer(bound=10.0, bits=24)


def shares(z=1.0, clip=1.0, d=1000, t=3) -> SkellamShares:
    return SkellamShares(noise_multiplier=z, clip_norm=clip, scale=QUANT.scale, dimension=d, threshold=t)


def test_skellam_accounting_tends_to_the_gaussian_and_never_undercuts_it():
    for z, steps, gap in [(0.8, 10, 0.03), (2.0, 50, 0.03), (5.0, 200, 0.03), (10.0, 20, 0.002)]:
        gauss = epsilon([GaussianEvent(z, 1.0, steps)], 1e-5)
        for l2 in (10.0, 1e3, 1e6):
            skellam = epsilon([SkellamEvent((z * l2) ** 2, l2, 30 * l2, steps)], 1e-5)
            assert skellam >= gauss * (1 - 1e-9)  # Gaussian RDP at integer orders is the Skellam bound's first term
            if l2 >= 1e6:  # the same, but for orders below 2, where the integer bound at 2 stands in (large ε only)
                assert skellam == pytest.approx(gauss, rel=gap)
    # Coarse integer noise costs visibly more than the Gaussian of the same ratio.
    assert epsilon([SkellamEvent(4.0, 2.0, 6.0, 10)], 1e-5) > 1.05 * epsilon([GaussianEvent(1.0, 1.0, 10)], 1e-5)


@settings(max_examples=60, deadline=None)
@given(mu=st.floats(1.0, 1e12), l2=st.floats(1.0, 1e4), ratio=st.floats(1.0, 100.0), order=st.integers(2, 256))
def test_skellam_rdp_is_the_published_bound(mu, l2, ratio, order):
    l1 = l2 * ratio
    event = SkellamEvent(mu, l2, l1, 3)
    expected = order * l2 ** 2 / (2 * mu) + min(((2 * order - 1) * l2 ** 2 + 6 * l1) / (4 * mu ** 2), 3 * l1 / (2 * mu))
    assert event.rdp(order) == pytest.approx(3 * expected, rel=1e-12)
    between = event.rdp(order + 0.5)  # interpolated: within the neighbours' bounds
    assert event.rdp(order) <= between * (1 + 1e-12) and between <= event.rdp(order + 1) * (1 + 1e-12)


def test_events_compose_and_survive_a_ledger_round_trip():
    gaussian, skellam = GaussianEvent(1.0, 1.0, 1), SkellamEvent(1e10, 1e5, 3e6, 1)
    curve = rdp_curve([gaussian, skellam])
    assert curve == pytest.approx([a + b for a, b in zip(rdp_curve([gaussian]), rdp_curve([skellam]))])
    ledger = Ledger("@federation", "heart", PrivacyBudget(50.0, 1e-5)).charge(1, skellam).charge(2, gaussian)
    back = Ledger.from_json(ledger.to_json(), owner="@federation", federation="heart")
    assert back == ledger and back.spent() == pytest.approx(epsilon([gaussian, skellam], 1e-5))
    assert event_from_dict(skellam.to_dict()) == skellam
    with pytest.raises(PrivacyError, match="rdp accountant only"):
        epsilon([skellam], 1e-5, "prv")
    with pytest.raises(PrivacyError, match="unknown privacy event kind"):
        event_from_dict({"kind": "laplace"})
    with pytest.raises(PrivacyError, match="L1 sensitivity"):
        SkellamEvent(1.0, 2.0, 1.0, 1)


@pytest.mark.parametrize("present", [3, 4, 5])
def test_shares_sum_to_at_least_the_target_noise_and_are_accounted_as_present(present):
    spec = shares(z=0.5, d=20_000, t=3)
    rng = np.random.default_rng(7)
    total = sum(spec.sample(rng) for _ in range(present))
    expected_var = present * spec.share_variance
    assert total.dtype == np.int64
    assert total.var() / expected_var == pytest.approx(1.0, abs=0.05)  # ±5 standard errors at d = 20,000
    assert abs(total.mean()) < 5 * math.sqrt(expected_var / total.size)
    assert expected_var >= spec.target_variance
    event = spec.event(present)
    assert event.variance == pytest.approx(expected_var)
    assert spec.effective_noise_multiplier(present) == pytest.approx(0.5 * math.sqrt(present / 3))
    with pytest.raises(PrivacyError, match="at least threshold = 3"):
        spec.event(2)


def test_sensitivity_covers_stochastic_rounding():
    spec = shares(clip=1.0, d=400)
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = rng.normal(size=399)
        v = np.concatenate([v / np.linalg.norm(v), [0.0]])  # norm exactly C; the last coordinate is the weight
        codes = QUANT.encode(v, rng).view(np.int32).astype(np.float64)
        assert np.linalg.norm(codes) <= spec.l2
        assert np.abs(codes).sum() <= spec.l1


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 8), d=st.integers(1, 50), seed=st.integers(0, 2**32 - 1))
def test_noisy_shares_pass_the_modular_sum_exactly(n, d, seed):
    rng = np.random.default_rng(seed)
    spec = shares(z=3.0, clip=10.0, d=d, t=max(2, n // 2 + 1))
    values = [rng.uniform(-10.0, 10.0, size=d + 1) for _ in range(n)]
    codes = [QUANT.encode(v, rng) for v in values]
    noise = [spec.sample(rng) for _ in range(n)]
    summed = np.zeros(d + 1, dtype=np.uint32)
    for c, e in zip(codes, noise):
        summed += add_share(c.copy(), e)
    exact = sum(c.view(np.int32).astype(np.int64) for c in codes)
    exact[:d] += sum(noise)
    assert np.array_equal(summed.view(np.int32).astype(np.int64), exact)  # no wrap-around: headroom holds
    spec.check_headroom(n, QUANT.bits)


def test_settings_that_could_wrap_are_refused():
    with pytest.raises(HeadroomError, match="lower aggregation.secure.bits"):
        shares(z=50.0, clip=10.0).check_headroom(5, 24)
    shares(z=5.0).check_headroom(5, 24)


def test_noise_generators_are_not_reproducible():
    assert not np.array_equal(noise_rng().integers(0, 2**63, 4), noise_rng().integers(0, 2**63, 4))


def test_silo_policy_validates_and_calibrates_distributed_noise_to_its_target():
    with pytest.raises(ValueError, match="exactly one of"):
        SiloPrivacy(epsilon=8.0, clip_norm=1.0)
    with pytest.raises(ValueError, match="weight_cap"):
        SiloPrivacy(epsilon=8.0, clip_norm=1.0, noise_multiplier=1.0, weight_cap=0.0)
    policy = SiloPrivacy(epsilon=8.0, clip_norm=1.0, target_epsilon=4.0, placement="distributed")
    spec = policy.skellam_shares(20, QUANT.scale, 500, 3)
    one = spec.event(3)
    spent = epsilon([SkellamEvent(one.variance, one.l2, one.l1, 20)], 1e-5)
    assert 3.9 <= spent <= 4.0  # calibrated to the target, from below
    assert spec.noise_multiplier >= policy.resolved_noise_multiplier(20)
