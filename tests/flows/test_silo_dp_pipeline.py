"""Silo-level DP (DP-FedAvg) inside the pipeline: the noise that reaches the global model has the
std the accounting assumes, in every placement; distributed noise is accounted with the shares
that actually made it into the sum; the federation's ledger refuses a round before any silo
trains, across restarts; ε reaches MLflow, the round record and the lineage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from pipeline_helpers import client, global_of, reference_round, train, use

from fl_core.dp.accounting import GaussianEvent, SkellamEvent, epsilon
from fl_core.dp.ledger import Ledger
from fl_core.errors import BudgetExceeded, ConfigError
from infra.config import load_config
from infra.privacy_store import FEDERATION

pytestmark = pytest.mark.usefixtures("prefect_harness")

CAP = 1000.0  # weight cap above every silo's size: weights stay proportional to n, as in FedAvg
CLIP = 10.0  # above these updates' norms: nothing is clipped, so only the noise separates DP from FedAvg


def with_silo_dp(config_path, mode: str, **privacy):
    raw = yaml.safe_load(config_path.read_text())
    raw["model"] = {"kind": "mlp", "hidden": [48]}  # a few hundred parameters: enough to measure a std
    raw["aggregation"] = {
        "mode": mode, "rule": "fedavg", "min_silos": 2, "secure": {"threshold": 3, "clip_norm": CLIP, "bits": 24},
        "privacy": {"epsilon": 1e9, "clip_norm": CLIP, "weight_cap": CAP, "noise_multiplier": 0.01, **privacy},
    }
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config_path


def federation_ledger(state_home) -> Ledger:
    text = (state_home / "coordinator" / "privacy" / "synth.json").read_text()
    return Ledger.from_json(text, owner=FEDERATION, federation="synth")


def n_train(config_path, silos) -> dict[str, int]:
    import pyarrow.parquet as pq

    from infra.silo_data import encode_table

    config = load_config(config_path)
    return {s: len(encode_table(pq.read_table(config.silo_data_path(s)), config.contract).y_train) for s in silos}


@pytest.mark.parametrize(
    ("mode", "placement", "drop"),
    [
        ("trusted", "central", None),
        ("secure", "central", None),
        ("secure", "distributed", None),
        ("secure", "distributed", "masked"),  # s1 vanished after sharing keys: 3 noise shares in the sum
    ],
)
def test_the_noise_in_the_global_model_has_the_std_the_accounting_assumes(
    federation, state_home, monkeypatch, mode, placement, drop
):
    config_path = with_silo_dp(federation(4), mode, placement=placement)
    if drop:
        use(monkeypatch, drops={drop: {"s1"}})
    record = train(config_path)["rounds"][0]
    in_sum = record["silos_in"]
    assert in_sum == (["s0", "s2", "s3"] if drop else ["s0", "s1", "s2", "s3"])
    dp = record["federation_privacy"]
    assert dp["placement"] == placement and dp["clipped_fraction"] == 0.0

    # The global model minus the noiseless FedAvg of the same silos is the noise, divided by Σ w.
    residual = global_of(state_home, record).astype(np.float64) - reference_round(config_path, in_sum)
    weight = sum(n / CAP for n in n_train(config_path, in_sum).values())
    config = load_config(config_path)
    scale = config.aggregation.secure.quantizer().scale
    d = residual.size
    sensitivity = CLIP + (math.sqrt(d) / scale if mode == "secure" else 0.0)
    z = 0.01 * (math.sqrt(len(in_sum) / 3) if placement == "distributed" else 1.0)  # k shares of variance 1/t each
    expected = z * sensitivity / weight
    assert d > 300
    assert residual.std() / expected == pytest.approx(1.0, abs=0.15)  # ±5 standard errors at d > 300
    assert abs(residual.mean()) < 5 * expected / math.sqrt(d)

    # Accounted with the noise actually present.
    assert dp["noise_multiplier"] == pytest.approx(z, rel=1e-6)
    if placement == "distributed":
        assert dp["noise_shares"] == len(in_sum)
        event = federation_ledger(state_home).events[0]
        assert isinstance(event, SkellamEvent) and event.noise_multiplier == pytest.approx(z, rel=1e-6)
    else:
        assert federation_ledger(state_home).events == [GaussianEvent(0.01, 1.0, 1)]
    assert dp["epsilon"] == pytest.approx(federation_ledger(state_home).spent())


def test_the_federation_budget_refuses_a_round_before_any_silo_trains_across_restarts(federation, state_home):
    config_path = federation(3)
    z = 2.0
    budget = (epsilon([GaussianEvent(z, 1.0, 2)], 1e-5) + epsilon([GaussianEvent(z, 1.0, 3)], 1e-5)) / 2
    raw = yaml.safe_load(config_path.read_text())
    raw["aggregation"] = {"mode": "trusted", "min_silos": 2,
                          "privacy": {"epsilon": budget, "clip_norm": 1.0, "noise_multiplier": z}}
    raw["silos"][0]["privacy"] = {"epsilon": 100.0, "max_grad_norm": 1.0, "noise_multiplier": 1.0}
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))

    first = train(config_path, rounds=1)["rounds"]
    assert first[0]["federation_privacy"]["epsilon"] == pytest.approx(epsilon([GaussianEvent(z, 1.0, 1)], 1e-5))
    with pytest.raises(BudgetExceeded, match=r"round 3 would spend ε"):
        train(config_path, rounds=2)  # a new job: round 2 fits, round 3 does not
    assert federation_ledger(state_home).rounds == [1, 2]
    # Nothing trained for the refused round: s0's record-level ledger stops at round 2.
    s0 = Ledger.from_json((state_home / "silos" / "s0" / "privacy" / "synth.json").read_text(), owner="s0",
                          federation="synth")
    assert s0.rounds == [1, 2]
    rounds = state_home / "exchange" / "federations" / "synth" / "rounds"
    assert (rounds / "2" / "round.json").exists() and not (rounds / "3").exists()
    with pytest.raises(BudgetExceeded):
        train(config_path, rounds=1)  # and again after a restart: the ledger is read back
    assert federation_ledger(state_home).rounds == [1, 2]

    mlflow = client(state_home)
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("synth").experiment_id], "tags.`fedsilo.kind` = 'job'",
                              order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED", "FAILED"]
    assert "round 3 would spend" in runs[-1].data.tags["fedsilo.failure"]
    history = mlflow.get_metric_history(runs[1].info.run_id, "dp.epsilon")
    assert [m.step for m in history] == [2]
    assert history[0].value == pytest.approx(federation_ledger(state_home).spent())
    version = mlflow.get_model_version("synth", "2")
    assert "silo-level DP-FedAvg, central noise: epsilon" in version.tags["fedsilo.dp.federation"]


def test_config_refuses_what_silo_level_dp_cannot_do(federation):
    config_path = federation(3)
    raw = yaml.safe_load(config_path.read_text())
    raw["aggregation"] = {"mode": "trusted", "privacy": {"epsilon": 8, "clip_norm": 1.0, "noise_multiplier": 1.0,
                                                         "placement": "distributed"}}
    config_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="distributed noise needs aggregation.mode: secure"):
        load_config(config_path)
    raw["aggregation"] = {"mode": "secure", "secure": {"clip_norm": 1.0},
                          "privacy": {"epsilon": 8, "clip_norm": 2.0, "noise_multiplier": 1.0}}
    config_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="privacy.clip_norm: 2.0 exceeds aggregation.secure.clip_norm"):
        load_config(config_path)
    raw["aggregation"] = {"mode": "secure", "privacy": {"epsilon": 8, "clip_norm": 1.0, "noise_multiplier": 1.0,
                                                        "placement": "distributed", "accountant": "prv"}}
    config_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="rdp accountant only"):
        load_config(config_path)
