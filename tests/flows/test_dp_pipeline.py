"""Record-level DP inside the pipeline: each silo's DP-SGD charges its own ledger, ε reaches MLflow,
the round record and the model's lineage; a budget that runs out stops that silo at the right
round (across restarts); a damaged or missing ledger is an error, never a fresh budget."""

from __future__ import annotations

import json

import pytest
import yaml

from fl_core.dp.accounting import epsilon
from fl_core.dp.dpsgd import round_event
from fl_core.dp.ledger import Ledger
from infra.config import load_config

pytestmark = pytest.mark.usefixtures("prefect_harness")

POLICY = {"epsilon": 100.0, "delta": 1e-5, "accountant": "rdp", "max_grad_norm": 1.0, "noise_multiplier": 1.0}


def with_privacy(config_path, policies: dict[str, dict], mode: str = "trusted"):
    raw = yaml.safe_load(config_path.read_text())
    for silo in raw["silos"]:
        if silo["id"] in policies:
            silo["privacy"] = policies[silo["id"]]
    raw["aggregation"] = {"mode": mode, "rule": "fedavg", "min_silos": 2}
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config_path


def train(config_path, rounds=1):
    from flows.training import training_flow

    return training_flow(config_path=str(config_path), rounds=rounds)


def ledger(state_home, silo) -> Ledger:
    text = (state_home / "silos" / silo / "privacy" / "synth.json").read_text()
    return Ledger.from_json(text, owner=silo, federation="synth")


def client(state_home):
    from mlflow import MlflowClient

    uri = f"sqlite:///{state_home}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def round_cost(config_path, silo: str, z: float):
    config = load_config(config_path)
    import pyarrow.parquet as pq

    from infra.silo_data import encode_table

    data = encode_table(pq.read_table(config.silo_data_path(silo)), config.contract)
    return round_event(len(data.y_train), config.training, z)


@pytest.mark.parametrize("mode", ["secure", "trusted"])
def test_epsilon_is_charged_logged_and_tagged(federation, state_home, mode):
    config_path = with_privacy(federation(3), {"s0": POLICY, "s1": POLICY}, mode)  # s2 trains without DP
    result = train(config_path, rounds=2)
    records = result["rounds"]
    event = round_cost(config_path, "s0", 1.0)
    for r, record in enumerate(records, start=1):
        assert sorted(record["privacy"]) == ["s0", "s1"]
        assert record["privacy"]["s0"]["epsilon"] == pytest.approx(epsilon([event] * r, 1e-5))
    book = ledger(state_home, "s0")
    assert book.rounds == [1, 2] and book.events == [event, event]
    assert not (state_home / "silos" / "s2" / "privacy").exists()

    mlflow = client(state_home)
    job = mlflow.get_run(result["job_run_id"])
    history = mlflow.get_metric_history(job.info.run_id, "dp.silo.s0.epsilon")
    assert [m.step for m in history] == [1, 2]
    assert history[-1].value == pytest.approx(book.spent())
    assert mlflow.get_metric_history(job.info.run_id, "dp.silo.s1.noise_multiplier")[-1].value == 1.0
    assert "dp.silo.s2.epsilon" not in job.data.metrics
    version = mlflow.get_model_version("synth", records[-1]["version"])
    assert "epsilon" in version.tags["fedsilo.dp.s0"] and "fedsilo.dp.s2" not in version.tags


def test_a_budget_that_runs_out_stops_that_silo_at_the_right_round_across_restarts(federation, state_home):
    config_path = federation(3)
    event = round_cost(config_path, "s0", 1.0)
    # A budget that fits exactly three rounds of s0's DP-SGD.
    budget = (epsilon([event] * 3, 1e-5) + epsilon([event] * 4, 1e-5)) / 2
    with_privacy(config_path, {"s0": {**POLICY, "epsilon": budget}, "s1": POLICY})
    first = train(config_path, rounds=2)["rounds"]
    assert all("s0" in r["silos_in"] for r in first)
    second = train(config_path, rounds=2)["rounds"]  # a new job: the ledger is read back, not restarted
    assert [r["round"] for r in second] == [3, 4]
    assert "s0" in second[0]["silos_in"]
    assert "s0" not in second[1]["silos_in"]
    assert second[1]["silos_out"]["s0"].startswith("privacy budget: s0: round 4 would spend")
    book = ledger(state_home, "s0")
    assert book.rounds == [1, 2, 3]  # nothing charged for the refused round
    assert book.spent() <= budget
    # The federation went on with the others; s1's ledger kept counting.
    assert ledger(state_home, "s1").rounds == [1, 2, 3, 4]


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_damaged_ledger_stops_the_silo_and_is_left_as_it_is(federation, state_home, damage):
    config_path = with_privacy(federation(3), {"s0": POLICY, "s1": POLICY})
    train(config_path, rounds=1)
    path = state_home / "silos" / "s0" / "privacy" / "synth.json"
    if damage == "corrupt":
        raw = json.loads(path.read_text())
        raw["charges"] = []  # an edited ledger: its checksum no longer matches
        path.write_text(json.dumps(raw))
    else:
        path.unlink()
    before = path.read_bytes() if path.exists() else None
    record = train(config_path, rounds=1)["rounds"][0]
    assert "s0" not in record["silos_in"]
    assert "LedgerCorrupt" in record["silos_out"]["s0"]
    assert ("corrupt" if damage == "corrupt" else "missing") in record["silos_out"]["s0"]
    assert (path.read_bytes() if path.exists() else None) == before  # never replaced by a fresh budget


def test_a_round_redone_after_an_interruption_is_charged_again_not_refused(federation, state_home):
    from infra.exchange import Exchange, LocalObjectStore

    config_path = with_privacy(federation(3), {"s0": POLICY, "s1": POLICY})
    train(config_path, rounds=2)
    store = Exchange(LocalObjectStore(state_home / "exchange"), "synth")
    store.store.delete_prefix(store.round_prefix(2))  # round 2 never committed: the next job redoes it
    record = train(config_path, rounds=1)["rounds"][0]
    assert record["round"] == 2 and "s0" in record["silos_in"]
    book = ledger(state_home, "s0")
    assert book.rounds == [1, 2, 2]  # the second training of round 2 is a second use of the data
    assert record["privacy"]["s0"]["epsilon"] == pytest.approx(book.spent())


def test_a_silo_that_trained_and_then_dropped_out_of_the_sum_still_reports_its_spend(federation, state_home, monkeypatch):
    from pipeline_helpers import use

    config_path = with_privacy(federation(4), {s: POLICY for s in ("s0", "s1", "s2", "s3")}, mode="secure")
    use(monkeypatch, drops={"masked": {"s1"}})  # s1 trained (and charged its ledger), then vanished
    result = train(config_path, rounds=1)
    record = result["rounds"][0]
    assert "s1" not in record["silos_in"]
    assert ledger(state_home, "s1").rounds == [1]
    assert record["privacy"]["s1"]["epsilon"] == pytest.approx(ledger(state_home, "s1").spent())
    job = client(state_home).get_run(result["job_run_id"])
    assert job.data.metrics["dp.silo.s1.epsilon"] == pytest.approx(ledger(state_home, "s1").spent())
    version = client(state_home).get_model_version("synth", record["version"])
    assert "fedsilo.dp.s1" not in version.tags  # the model's lineage names only what went into it


def test_personalisation_under_record_level_dp_is_dp_sgd_charged_once_per_candidate(federation, state_home):
    """In the default secure mode with record-level DP, a silo's fine-tuning of the candidate is
    DP-SGD: its ledger carries the round's training charge and then the fine-tuning's (its own
    steps at the silo's noise), and the personalised metrics reach the round record; a silo without
    DP fine-tunes without a ledger."""
    import dataclasses

    from fl_core.personalise import PersonalSpec

    path = with_privacy(federation(3), {"s0": POLICY, "s1": POLICY}, mode="secure")
    raw = yaml.safe_load(path.read_text())
    raw["personalisation"] = {"steps": 5}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    record = train(path, rounds=1)["rounds"][-1]
    assert set(record["personalised_metrics"]) == {"s0", "s1", "s2"}
    config = load_config(path)
    for silo in ("s0", "s1"):
        charges = ledger(state_home, silo).charges
        assert [c.round_number for c in charges] == [1, 1]
        assert charges[0].event == round_cost(path, silo, 1.0)
        tuning = dataclasses.replace(config.training, local_steps=5)
        assert charges[1].event == round_cost_of(path, silo, tuning, 1.0)
        assert PersonalSpec(steps=5).train_spec(config.training).local_steps == 5
    assert not (state_home / "silos" / "s2" / "privacy").exists()


def round_cost_of(config_path, silo: str, spec, z: float):
    import pyarrow.parquet as pq

    from infra.silo_data import encode_table

    config = load_config(config_path)
    data = encode_table(pq.read_table(config.silo_data_path(silo)), config.contract)
    return round_event(len(data.y_train), spec, z)
