"""The aggregation section of a federation config: which mode goes with which rule, and the
bucketed mode's buckets. Every refusal names the key and what was wrong."""

from __future__ import annotations

import pytest
import yaml

from fl_core.errors import ConfigError
from infra.config import parse_config
from infra.synthetic import write_synthetic_federation


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    path = write_synthetic_federation(tmp_path_factory.mktemp("fed"), n_silos=7, rows=40)
    return yaml.safe_load(path.read_text())


def parse(raw, **aggregation):
    return parse_config({**raw, "aggregation": aggregation})


@pytest.mark.parametrize(("aggregation", "message"), [
    ({"mode": "bucketed"}, "aggregation.rule: bucketed mode merges bucket means with a robust rule"),
    ({"mode": "bucketed", "rule": "median", "secure": {"threshold": 4}},
     "aggregation.secure.threshold: in bucketed mode each bucket's threshold"),
    ({"mode": "bucketed", "rule": "median", "min_bucket": 8}, "aggregation.min_bucket: 8 exceeds the 7 silos"),
    ({"mode": "bucketed", "rule": "median", "min_bucket": 1}, "aggregation.min_bucket = 1"),
    ({"mode": "bucketed", "rule": "krum", "min_bucket": 2, "robust": {"f": 1}},
     "krum with f = 1 needs more buckets than the 3 of at least 2 silos"),
    ({"mode": "bucketed", "rule": "krum", "min_bucket": 3, "robust": {"f": 0}},
     "krum needs at least 3 updates .*, got 2 \\(2 buckets\\)"),
    ({"mode": "bucketed", "rule": "krum", "min_bucket": 3}, "aggregation rule 'krum' needs f$"),
    ({"mode": "trusted", "rule": "bulyan", "robust": {"f": 2}}, "bulyan with f = 2 needs more silos than the 7 in the roster"),
    ({"mode": "secure", "rule": "median"}, "needs to see each update \\(mode: trusted\\) or bucket means \\(mode: bucketed\\)"),
    ({"mode": "secure", "anomaly": {}}, "aggregation.anomaly: scoring needs each update"),
    ({"mode": "bucketed", "rule": "median", "privacy": {"epsilon": 4.0, "clip_norm": 1.0, "noise_multiplier": 1.0}},
     "silo-level DP is accounted for fedavg only"),
])
def test_aggregation_settings_that_cannot_work_are_refused_by_name(raw, aggregation, message):
    with pytest.raises(ConfigError, match=message):
        parse(raw, **aggregation)


@pytest.mark.parametrize("min_bucket", [2, 3, 4, 7])
def test_bucketed_rounds_shuffle_the_roster_into_buckets_of_at_least_min_bucket(raw, min_bucket):
    config = parse(raw, mode="bucketed", rule="median", min_bucket=min_bucket)
    rounds = [config.buckets(r) for r in range(1, 9)]
    for buckets in rounds:
        assert sorted(s for b in buckets for s in b) == sorted(config.silo_ids)
        assert len(buckets) == 7 // min_bucket and min(len(b) for b in buckets) >= min_bucket
    assert rounds[0] == config.buckets(1)  # seeded: the silos recompute the same buckets
    if len(rounds[0]) > 1:
        assert len({tuple(b) for b in rounds}) > 1  # and reshuffled from round to round
    other = parse({**raw, "seed": 1}, mode="bucketed", rule="median", min_bucket=min_bucket)
    if len(rounds[0]) > 1:
        assert [other.buckets(r) for r in range(1, 9)] != rounds


def test_anomaly_scores_are_accepted_on_bucket_means(raw):
    config = parse(raw, mode="bucketed", rule="trimmed_mean", robust={"beta": 0.34}, min_bucket=2,
                   anomaly={"max_norm_z": 5.0})
    assert config.aggregation.n_buckets(7) == 3


@pytest.mark.parametrize(("attack", "message"), [
    ({"kind": "sign_flip", "silos": ["s9"]}, "attack.silos: \\['s9'\\] are not in the roster"),
    ({"kind": "alie", "silos": ["s1"]}, "attack.kind: alie computes its update from other silos' updates"),
    ({"kind": "model_replacement", "silos": ["s1"], "trigger_columns": [0], "trigger_values": [4.0]},
     "attack.boost: model replacement here needs an explicit boost"),
    ({"kind": "backdoor", "silos": ["s1"], "trigger_columns": [8], "trigger_values": [4.0]},
     "attack.trigger_columns: \\[8\\] index the model's 8 encoded inputs"),
    ({"kind": "sign_flip", "silos": ["s1"], "std": 2.0}, "std is not a parameter of sign_flip attacks"),
    ({"kind": "teleport", "silos": ["s1"]}, "attack.kind"),
])
def test_attacks_the_pipeline_cannot_run_are_refused_by_name(raw, attack, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({**raw, "attack": attack})


def test_no_attack_unless_one_is_named(raw):
    assert parse_config(raw).attack is None
    named = parse_config({**raw, "attack": {"kind": "scaling", "silos": ["s2"], "boost": 5.0}})
    assert named.attack.silos == ("s2",) and named.config_hash() != parse_config(raw).config_hash()


# -- silos_per_round: k of the roster's silos train each round -----------------------------------------
@pytest.mark.parametrize(("aggregation", "message"), [
    ({"silos_per_round": 0}, "aggregation.silos_per_round = 0: Input should be greater than or equal to 1"),
    ({"silos_per_round": 8}, "aggregation.silos_per_round = 8 exceeds the 7 silos in the roster"),
    ({"silos_per_round": 2, "min_silos": 3},
     "aggregation.silos_per_round: 2 sampled silos can never reach aggregation.min_silos = 3"),
    ({"mode": "secure", "silos_per_round": 1, "min_silos": 1},
     "aggregation.silos_per_round: 1 silo per round is too few for a secure sum .*a sum of one silo is that "
     "silo's update"),
    ({"mode": "secure", "silos_per_round": 3, "secure": {"threshold": 4}},
     "aggregation.silos_per_round: 3 sampled silos are too few for the secure sum's threshold: threshold 4 must be "
     "in \\(1, 3\\]"),
    ({"mode": "bucketed", "rule": "median", "min_bucket": 3, "silos_per_round": 2},
     "aggregation.min_bucket: 3 exceeds the 2 silos sampled per round"),
    ({"mode": "trusted", "rule": "bulyan", "robust": {"f": 1}, "silos_per_round": 6},
     "bulyan with f = 1 needs more silos than the 6 sampled per round"),
    ({"mode": "bucketed", "rule": "krum", "min_bucket": 2, "robust": {"f": 1}, "silos_per_round": 5},
     "krum needs at least 3 updates .*got 2 \\(2 buckets\\)"),  # the buckets of 5 sampled silos, not of all 7
])
def test_a_sample_too_small_for_the_round_is_refused_saying_why(raw, aggregation, message):
    with pytest.raises(ConfigError, match=message):
        parse(raw, **aggregation)


def test_silos_per_round_is_accepted_where_the_round_can_run_and_reaches_the_policy(raw):
    assert parse(raw).policy().silos_per_round is None
    secure = parse(raw, silos_per_round=3).policy()
    assert secure.silos_per_round == 3
    sample = secure.sample(5, [f"s{i}" for i in range(7)])
    assert sample.k == 3 and sample.n == 7
    assert secure.instances(5, sample.sampled)[0].threshold == 2  # the threshold of the sum of 3
    assert parse(raw, mode="trusted", silos_per_round=1, min_silos=1).policy().sample(1, ["s0", "s1"]).k == 1
    assert parse(raw, silos_per_round=7).policy().sample(1, [f"s{i}" for i in range(7)]).rate == 1.0
    bucketed = parse(raw, mode="bucketed", rule="median", min_bucket=2, silos_per_round=4)
    drawn = bucketed.policy().sample(1, bucketed.silo_ids).sampled
    assert len(drawn) == 4 and len(bucketed.buckets(1, drawn)) == 2  # buckets of the 4 drawn silos


def test_silo_level_dp_calibrates_a_target_epsilon_at_the_sampling_rate(raw):
    from fl_core.dp.accounting import GaussianEvent, epsilon, noise_for_epsilon

    privacy = {"epsilon": 8.0, "target_epsilon": 4.0, "clip_norm": 1.0}
    full = parse(raw, privacy=privacy).policy().privacy
    sampled = parse(raw, privacy=privacy, silos_per_round=2).policy().privacy
    rounds = parse(raw).training.rounds
    assert full.noise_multiplier == noise_for_epsilon(4.0, 1e-5, 1.0, rounds)
    assert sampled.noise_multiplier == noise_for_epsilon(4.0, 1e-5, 2 / 7, rounds)
    assert sampled.noise_multiplier < full.noise_multiplier  # amplification: less noise for the same target
    spent = epsilon([GaussianEvent(sampled.noise_multiplier, 2 / 7, 1)] * rounds, 1e-5)
    assert spent <= 4.0 and spent == pytest.approx(4.0, rel=0.02)


def test_distributed_noise_shares_are_sized_for_the_threshold_of_the_sampled_sum(raw):
    privacy = {"epsilon": 8.0, "noise_multiplier": 1.0, "clip_norm": 1.0, "placement": "distributed"}
    assert parse(raw, privacy=privacy).policy().privacy.shares.threshold == 4  # 7 silos
    level = parse(raw, privacy=privacy, silos_per_round=3).policy().privacy
    assert level.shares.threshold == 2  # 3 silos a round
    assert level.event(3, sample_rate=3 / 7) == level.shares.event(3)  # Skellam: charged without amplification
