"""The round's aggregation policy, built once from the settings: who sums with whom, what a silo
feeds the secure sum and what the coordinator decodes from it, and the merge with its wrappers
(DP-FedAvg, anomaly screening) against plain reference computations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.aggregation import weighted_mean
from fl_core.anomaly import AnomalySpec
from fl_core.dp.policy import SiloPrivacy
from fl_core.errors import ConfigError
from fl_core.round_policy import Contribution, build_policy
from fl_core.secagg.quantize import MODULUS_BITS
from fl_core.secagg.spec import SecureSpec

LAYERS = (12, 1)  # a logistic model on 12 inputs


def policy(mode="secure", rule="fedavg", n_silos=6, privacy=None, anomaly=None, min_bucket=3, robust=None,
           secure=None, min_silos=2):
    return build_policy(mode=mode, rule=rule, robust_params=robust or {}, server_lr=1.0, min_silos=min_silos,
                        min_bucket=min_bucket, secure=secure or SecureSpec(), privacy=privacy, anomaly=anomaly, seed=7, rounds=10,
                        layers=LAYERS, n_silos=n_silos)


def test_the_instances_of_a_round_follow_the_mode():
    silos = [f"s{i}" for i in range(7)]
    (whole,) = policy("secure", n_silos=7).instances(3, silos)
    assert whole.index is None and whole.silos == tuple(silos) and whole.threshold == 4 and whole.name == "sum"
    buckets = policy("bucketed", rule="median", n_silos=7).instances(3, silos)
    assert sorted(s for b in buckets for s in b.silos) == silos and all(len(b.silos) >= 3 for b in buckets)
    assert [b.name for b in buckets] == ["bucket-0", "bucket-1"]
    assert buckets == policy("bucketed", rule="median", n_silos=7).instances(3, silos)  # seeded: every silo agrees
    assert policy("trusted").instances(3, silos) == ()
    assert policy().length == sum(LAYERS) + 1


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 8), seed=st.integers(0, 2**32 - 1))
def test_the_decoded_secure_sum_is_the_sample_weighted_mean_within_quantisation(n, seed):
    p = policy(n_silos=n)
    rng = np.random.default_rng(seed)
    deltas = [rng.normal(0, 0.5, size=p.n_parameters).astype(np.float32) for _ in range(n)]
    weights = [int(w) for w in rng.integers(1, 500, size=n)]
    scale = p.weight_scale_for(weights)
    total = np.zeros(p.length, dtype=np.uint64)
    for i, (delta, w) in enumerate(zip(deltas, weights)):
        codes, clipped = p.encode(delta, w, scale, np.random.default_rng(i))
        assert not clipped  # well inside the clip norm of 10
        total += codes
    total = (total % 2**MODULUS_BITS).astype(np.uint32)
    (instance,) = p.instances(1, [f"s{i}" for i in range(n)])
    got = p.decode(instance, total, scale, instance.silos, np.random.default_rng(0))
    expected = weighted_mean(deltas, weights)
    assert np.allclose(got.vector, expected, atol=n * p.quantizer.step * 2)
    assert got.weight == pytest.approx(sum(weights), rel=1e-4)
    merged = p.merge([got], {}, np.random.default_rng(0))
    assert merged.release is None and merged.kept == ("sum",)


def test_an_update_beyond_the_clip_norm_is_clipped_before_it_is_summed():
    p = policy(secure=SecureSpec(clip_norm=1.0))
    codes, clipped = p.encode(np.full(p.n_parameters, 3.0, dtype=np.float32), 10, 10.0, np.random.default_rng(0))
    assert clipped
    decoded = p.quantizer.decode_sum(codes)
    assert np.linalg.norm(decoded[:-1]) <= 1.0 + p.n_parameters * p.quantizer.step


def test_trusted_dp_fedavg_without_noise_or_clipping_is_the_capped_weighted_mean():
    private = SiloPrivacy(epsilon=1e9, clip_norm=10.0, noise_multiplier=1e-9, weight_cap=100.0)  # norms ~3.6: no clip
    p = policy("trusted", privacy=private)
    rng = np.random.default_rng(3)
    inputs = [Contribution(name=f"s{i}", vector=rng.normal(size=p.n_parameters).astype(np.float32),
                           weight=float(w), members=(f"s{i}",)) for i, w in enumerate([50, 200, 80])]
    merged = p.merge(inputs, {}, np.random.default_rng(0))
    capped = [0.5, 1.0, 0.8]
    np.testing.assert_allclose(merged.mean_delta, weighted_mean([c.vector for c in inputs], capped), rtol=1e-5)
    assert merged.release is not None and merged.clipped_fraction == 0.0


def test_trusted_dp_fedavg_adds_noise_of_the_std_its_accounting_assumes():
    private = SiloPrivacy(epsilon=1e9, clip_norm=1.0, noise_multiplier=2.0)
    p = policy("trusted", privacy=private)
    inputs = [Contribution(name=f"s{i}", vector=np.zeros(2000, dtype=np.float32), weight=10.0, members=(f"s{i}",))
              for i in range(4)]
    merged = p.merge(inputs, {}, np.random.default_rng(0))
    assert np.std(merged.mean_delta) == pytest.approx(2.0 * 1.0 / 4, rel=0.05)  # z·C / Σw with w = 1 each


def test_secure_central_dp_noise_goes_on_the_decoded_sum_and_the_release_counts_the_sum():
    private = SiloPrivacy(epsilon=1e9, clip_norm=1.0, noise_multiplier=3.0)
    p = policy(privacy=private)
    assert p.privacy is not None and p.privacy.central_std() > 0
    (instance,) = p.instances(1, ["s0", "s1", "s2"])
    total = np.zeros(p.length, dtype=np.uint32)
    total[-1] = p.quantizer.encode(np.array([3.0]), np.random.default_rng(0))[0]  # weight 3, zero update
    noisy = p.decode(instance, total, 1.0, instance.silos, np.random.default_rng(1))
    assert np.any(noisy.vector != 0)
    assert p.merge([noisy], {}, np.random.default_rng(0)).release.noise_multiplier == 3.0


def test_anomaly_screening_flags_an_outlier_and_excludes_it_only_when_asked_and_quorum_holds():
    rng = np.random.default_rng(5)
    inputs = [Contribution(name=f"s{i}", vector=rng.normal(0, 0.1, size=13).astype(np.float32), weight=10.0,
                           members=(f"s{i}",)) for i in range(6)]
    inputs[2] = Contribution(name="s2", vector=np.full(13, 40.0, dtype=np.float32), weight=10.0, members=("s2",))
    flagging = policy("trusted", rule="median", anomaly=AnomalySpec(report_after=2))
    merged = flagging.merge(inputs, {"s2": 1}, np.random.default_rng(0))
    assert merged.anomaly.flagged == ("s2",) and merged.excluded == () and merged.anomaly.reported == ("s2",)
    excluding = policy("trusted", rule="median", anomaly=AnomalySpec(exclude=True))
    merged = excluding.merge(inputs, {}, np.random.default_rng(0))
    assert merged.excluded == ("s2",) and "s2" not in merged.kept
    strict = policy("trusted", rule="median", anomaly=AnomalySpec(exclude=True), min_silos=6)
    assert strict.merge(inputs, {}, np.random.default_rng(0)).excluded == ()  # 5 would be fewer than min_silos


def test_bucket_means_are_screened_per_bucket_and_a_silo_in_a_flagged_bucket_carries_the_streak():
    p = policy("bucketed", rule="median", anomaly=AnomalySpec(), n_silos=9)
    rng = np.random.default_rng(2)
    inputs = [Contribution(name=f"bucket-{k}", vector=rng.normal(0, 0.1, size=13).astype(np.float32), weight=30.0,
                           members=tuple(f"s{3 * k + j}" for j in range(3))) for k in range(3)]
    inputs[1] = Contribution(name="bucket-1", vector=np.full(13, 9.0, dtype=np.float32), weight=30.0,
                             members=("s3", "s4", "s5"))
    merged = p.merge(inputs, {"s4": 4}, np.random.default_rng(0))
    assert merged.anomaly.flagged == ("bucket-1",)
    assert merged.anomaly.streaks["s4"] == 5 and merged.anomaly.streaks["s0"] == 0
    assert merged.anomaly.members["bucket-1"] == ("s3", "s4", "s5")


def test_distributed_dp_settings_that_could_wrap_the_sum_are_refused_when_the_policy_is_built():
    private = SiloPrivacy(epsilon=10.0, clip_norm=1.0, noise_multiplier=1e4, placement="distributed")
    with pytest.raises(ConfigError, match="aggregation.privacy"):
        policy(privacy=private, n_silos=50, secure=SecureSpec(bits=24))
    share = policy(privacy=SiloPrivacy(epsilon=10.0, clip_norm=1.0, noise_multiplier=1.0, placement="distributed"))
    noise = share.noise_share(np.random.default_rng(0))
    assert noise is not None and noise.shape == (share.n_parameters,)
    assert policy().noise_share(np.random.default_rng(0)) is None
