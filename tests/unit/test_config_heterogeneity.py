"""The config keys of heterogeneous silos: multi-class models (refused by the binary pipeline),
personalisation, the training time budget. Every refusal names the key and what was wrong."""

from __future__ import annotations

import pytest
import yaml

from fl_core.errors import ConfigError
from fl_core.personalise import PersonalSpec
from infra.config import parse_config
from infra.synthetic import write_synthetic_federation


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    path = write_synthetic_federation(tmp_path_factory.mktemp("fed"), n_silos=3, rows=40)
    return yaml.safe_load(path.read_text())


def test_a_multiclass_model_is_refused_for_a_binary_contract(raw):
    with pytest.raises(ConfigError, match=r"model.classes: 10, but the contract's label has 2 classes"):
        parse_config({**raw, "model": {"kind": "logistic", "classes": 10}})


def test_personalisation_is_parsed_and_validated(raw):
    config = parse_config({**raw, "personalisation": {"steps": 7, "layers": "head", "lr": 0.01}})
    assert config.personalisation == PersonalSpec(steps=7, layers="head", lr=0.01)
    assert parse_config(raw).personalisation is None
    with pytest.raises(ConfigError, match="personalisation.steps must be an integer"):
        parse_config({**raw, "personalisation": {"steps": 0}})
    with pytest.raises(ConfigError, match="personalisation"):
        parse_config({**raw, "personalisation": {"steps": 5, "epochs": 2}})


@pytest.mark.parametrize("budget", [0, -1.0, float("inf")])
def test_a_training_time_budget_must_be_a_positive_number_of_seconds(raw, budget):
    with pytest.raises(ConfigError, match="time_budget_s must be a positive number"):
        parse_config({**raw, "training": {**raw.get("training", {}), "time_budget_s": budget}})


def test_the_time_budget_and_personalisation_change_the_config_hash(raw):
    base = parse_config(raw).config_hash()
    assert parse_config({**raw, "training": {**raw.get("training", {}), "time_budget_s": 5.0}}).config_hash() != base
    assert parse_config({**raw, "personalisation": {"steps": 3}}).config_hash() != base


def test_qffl_is_a_non_negative_q_and_is_refused_with_silo_level_dp(raw):
    agg = raw.get("aggregation", {})
    assert parse_config({**raw, "aggregation": {**agg, "qffl": 2.0}}).aggregation.qffl == 2.0
    with pytest.raises(ConfigError, match="qffl"):
        parse_config({**raw, "aggregation": {**agg, "qffl": -1.0}})
    privacy = {"epsilon": 8.0, "clip_norm": 1.0, "noise_multiplier": 1.0}
    with pytest.raises(ConfigError, match="DP-FedAvg caps every silo's weight at 1"):
        parse_config({**raw, "aggregation": {**agg, "qffl": 1.0, "privacy": privacy}})
