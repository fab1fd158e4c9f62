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
