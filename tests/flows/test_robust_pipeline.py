"""Robust merging and anomaly scores in trusted mode: the global model is the configured rule over
the silos' updates, an outlying update is flagged (and left out when the policy says so), streaks
carry across rounds, and all of it reaches the round record, MLflow and the lineage."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from pipeline_helpers import client, global_of, round_one_deltas, train

from fl_core.robust import make_aggregator
from fl_core.simulation import initial_vector
from infra.config import load_config

pytestmark = pytest.mark.usefixtures("prefect_harness")

SILOS = ["s0", "s1", "s2", "s3", "s4"]
# Five non-IID silos make a thin yardstick: an honest silo trained on shifted data can sit 7 robust
# standard deviations out on distance. The 50× attacker sits at 150–270; thresholds of 20 separate them.
LOOSE = {"max_norm_z": 20.0, "max_distance_z": 20.0}


def configure(config_path, rule: str, robust: dict, anomaly: dict | None = None):
    raw = yaml.safe_load(config_path.read_text())
    raw["aggregation"] = {"mode": "trusted", "rule": rule, "robust": robust, "min_silos": 3}
    if anomaly is not None:
        raw["aggregation"]["anomaly"] = anomaly
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config_path


def boost(monkeypatch, silo: str, factor: float):
    """Make `silo` send `factor` times its honest update (a scaling attacker)."""
    import tasks.silo

    honest = tasks.silo._train

    def attacked(config, silo_id, *args, **kwargs):
        delta, report = honest(config, silo_id, *args, **kwargs)
        return (delta * factor if silo_id == silo else delta), report

    monkeypatch.setattr(tasks.silo, "_train", attacked)


def expected_global(config_path, rule, robust, deltas: dict[str, np.ndarray]) -> np.ndarray:
    config = load_config(config_path)
    merged = make_aggregator(rule, **robust)([deltas[s] for s in sorted(deltas)], [1.0] * len(deltas))
    start = initial_vector(config.model, len(next(iter(deltas.values()))) - 1, config.seed)
    return start + merged


@pytest.mark.parametrize(("rule", "robust"), [("median", {}), ("trimmed_mean", {"beta": 0.2}), ("krum", {"f": 1})])
def test_the_global_model_is_the_configured_rule_over_the_updates(federation, state_home, rule, robust):
    config_path = configure(federation(5), rule, robust)
    record = train(config_path)["rounds"][0]
    assert record["silos_in"] == SILOS
    deltas = round_one_deltas(config_path, SILOS)
    np.testing.assert_allclose(global_of(state_home, record), expected_global(config_path, rule, robust, deltas),
                               rtol=0, atol=1e-6)
    version = client(state_home).get_model_version("synth", record["version"])
    assert version.tags["fedsilo.aggregation"].startswith(f"trusted/{rule}")


def test_an_outlying_update_is_flagged_reported_after_k_rounds_and_logged(federation, state_home, monkeypatch):
    config_path = configure(federation(5), "median", {}, {**LOOSE, "report_after": 2})
    boost(monkeypatch, "s3", 50.0)
    result = train(config_path, rounds=2)
    first, second = result["rounds"]
    assert first["anomaly"]["flagged"] == ["s3"] and "norm" in first["anomaly"]["scores"]["s3"]["flags"]
    assert first["anomaly"]["reported"] == [] and second["anomaly"]["reported"] == ["s3"]
    assert second["anomaly"]["streaks"]["s3"] == 2 and second["anomaly"]["streaks"]["s0"] == 0
    assert "s3" in second["silos_in"]  # reported, not excluded: the policy does not say so
    job = client(state_home).get_run(result["job_run_id"])
    assert job.data.metrics["anomaly.s3.flagged"] == 1.0 and job.data.metrics["anomaly.s0.flagged"] == 0.0
    assert job.data.metrics["anomaly.reported"] == 1.0
    version = client(state_home).get_model_version("synth", second["version"])
    assert version.tags["fedsilo.anomaly"].startswith("flagged s3; excluded none; reported s3")


def test_the_policy_may_leave_flagged_updates_out_of_the_merge(federation, state_home, monkeypatch):
    config_path = configure(federation(5), "median", {}, {**LOOSE, "exclude": True})
    boost(monkeypatch, "s3", 50.0)
    record = train(config_path)["rounds"][0]
    assert record["anomaly"]["excluded"] == ["s3"]
    assert record["silos_out"]["s3"].startswith("excluded: anomalous update (norm")
    honest = {s: d for s, d in round_one_deltas(config_path, SILOS).items() if s != "s3"}
    np.testing.assert_allclose(global_of(state_home, record),
                               expected_global(config_path, "median", {}, honest), rtol=0, atol=1e-6)


def test_an_attack_named_in_the_config_is_run_by_its_silo_and_marked_everywhere(federation, state_home):
    config_path = configure(federation(5), "median", {})
    raw = yaml.safe_load(config_path.read_text())
    raw["attack"] = {"kind": "sign_flip", "silos": ["s3"], "magnitude": 4.0}
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = train(config_path)
    record = result["rounds"][0]
    deltas = round_one_deltas(config_path, SILOS)
    attacked = {**deltas, "s3": -4.0 * deltas["s3"]}  # what s3 sent instead of its update
    np.testing.assert_allclose(global_of(state_home, record), expected_global(config_path, "median", {}, attacked),
                               rtol=0, atol=1e-6)
    tag = "s3 ran the sign_flip attack named in the config (an experiment)"
    assert client(state_home).get_run(result["job_run_id"]).data.tags["fedsilo.attack"] == tag
    assert client(state_home).get_model_version("synth", record["version"]).tags["fedsilo.attack"] == tag
