"""The training, round and silo flows under Prefect's test harness, on synthetic federations."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fl_core.errors import QuorumError, StateError
from fl_core.simulation import SiloArrays, fedavg_rounds
from infra.config import load_config
from infra.dispatch import InProcessDispatcher
from infra.exchange import Exchange, LocalObjectStore, ObjectRef
from infra.silo_data import encode_table
from tasks.silo_round import SiloRound

pytestmark = pytest.mark.usefixtures("prefect_harness")


def client(state_home):
    from mlflow import MlflowClient

    uri = f"sqlite:///{state_home}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def exchange(state_home, federation="synth") -> Exchange:
    return Exchange(LocalObjectStore(state_home / "exchange"), federation)


def versions(state_home, name="synth"):
    return sorted(client(state_home).search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def aliases(state_home, name="synth") -> dict[str, str]:
    return {alias: str(v) for alias, v in client(state_home).get_registered_model(name).aliases.items()}


def train(config_path, rounds):
    from flows.training import training_flow

    return training_flow(config_path=str(config_path), rounds=rounds)


def overwrite_column(config_path, silo: str, column: str, values) -> None:
    path = load_config(config_path).silo_data_path(silo)
    table = pq.read_table(path)
    index = table.schema.get_field_index(column)
    pq.write_table(table.set_column(index, column, pa.array(values)), path)


class RecordingDispatcher(InProcessDispatcher):
    """The in-process dispatcher, keeping every delivery (the silos' signed manifests) for inspection."""

    seen: list = []

    def __init__(self, config, state):
        super().__init__(lambda silo, r, attempt: SiloRound(config, state, silo, r, attempt), 2, limit_threads=False)

    def run(self, call, on_done=None):
        deliveries = super().run(call, on_done)
        RecordingDispatcher.seen.extend(deliveries)
        return deliveries


def test_job_registers_one_version_per_round_with_lineage(federation, state_home):
    config_path = federation(3)
    config = load_config(config_path)
    result = train(config_path, rounds=2)

    assert [r["round"] for r in result["rounds"]] == [1, 2]
    found = versions(state_home)
    assert [v.tags["fedsilo.round"] for v in found] == ["1", "2"]
    first, second = found
    assert first.tags["fedsilo.parent_version"] == "none"
    assert second.tags["fedsilo.parent_version"] == str(first.version)
    for version in found:
        assert version.tags["fedsilo.silos_in"] == "s0,s1,s2"
        assert version.tags["fedsilo.silos_out"] == "none"
        assert version.tags["fedsilo.config_hash"] == config.config_hash()
        assert version.tags["fedsilo.contract_hash"] == config.contract.contract_hash()
        assert version.tags["fedsilo.code_version"]
        fingerprint = json.loads(version.tags["fedsilo.data.s1"])
        assert fingerprint["contract"] == "passed" and fingerprint["rows"] == 200
        assert len(fingerprint["schema_hash"]) == 64
    assert aliases(state_home)["candidate"] == str(second.version)

    mlflow = client(state_home)
    job = mlflow.get_run(result["job_run_id"])
    assert job.info.status == "FINISHED"
    history = mlflow.get_metric_history(job.info.run_id, "global.accuracy")
    assert sorted(m.step for m in history) == [1, 2]
    assert all(0.0 <= m.value <= 1.0 for m in history)
    assert {m.step for m in mlflow.get_metric_history(job.info.run_id, "silo.s2.accuracy")} == {1, 2}
    artifacts = {a.path for a in mlflow.list_artifacts(job.info.run_id, "validation")}
    assert {"validation/r001-train.json", "validation/r002-evaluate.json"} <= artifacts
    assert exchange(state_home).committed_rounds() == [0, 1, 2]


TRUSTED = {"mode": "trusted", "rule": "fedavg", "min_silos": 2}


@pytest.mark.parametrize("mode", ["trusted", "secure"])
def test_pipeline_reproduces_in_memory_fedavg(federation, state_home, mode):
    """Trusted mode: bit for bit. Secure mode: within quantisation error (24 bits, clip 10: a step
    of 1.2e-6 per coordinate and silo)."""
    overrides = {"aggregation": TRUSTED} if mode == "trusted" else {}
    config_path = federation(3, seed=5, overrides=overrides)
    config = load_config(config_path)
    result = train(config_path, rounds=3)

    record = result["rounds"][-1]
    pipeline = exchange(state_home).get_vector(ObjectRef.from_dict(record["global"]))
    silos = {}
    for silo in config.silo_ids:
        data = encode_table(pq.read_table(config.silo_data_path(silo)), config.contract)
        silos[silo] = SiloArrays(x_train=data.x_train, y_train=data.y_train)
    reference = fedavg_rounds(silos, config.model, config.training, config.seed, rounds=3)
    assert pipeline.dtype == np.float32
    if mode == "trusted":
        assert np.array_equal(pipeline, reference)
    else:
        np.testing.assert_allclose(pipeline, reference, rtol=0, atol=1e-4)
        assert not np.array_equal(pipeline, reference)  # it really went through quantisation


ALGORITHMS = {
    # FedProx's proximal term with server momentum; SCAFFOLD's control variates through the same sum
    # as the updates, with an adaptive server optimiser whose moments carry over rounds and jobs
    "fedprox+fedavgm": ({"objective": "fedprox", "prox_mu": 0.5}, {"kind": "fedavgm", "beta1": 0.8}, 0.5),
    "scaffold+fedadam": ({"objective": "scaffold"}, {"kind": "fedadam", "tau": 0.01}, 0.05),
}


@pytest.mark.parametrize("mode", ["trusted", "secure"])
@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_each_algorithm_reproduces_in_memory_and_a_resumed_job_continues_its_state(federation, state_home, mode,
                                                                                     algorithm):
    """Two jobs (2 rounds, then 1) against one uninterrupted in-memory run of 3 rounds: the server's
    state (momentum, moments, SCAFFOLD's control variate) and each silo's control variate survive the
    job boundary. Trusted mode: bit for bit; secure mode: within quantisation error (the control
    variates' deltas go through the sum too)."""
    from fl_core.server_opt import ServerOptimizer, ServerOptimizerSpec
    from fl_core.simulation import federated_rounds

    objective, server, lr = ALGORITHMS[algorithm]
    aggregation = {**(TRUSTED if mode == "trusted" else {"min_silos": 2}), "server_lr": lr, "server_optimizer": server}
    training = {"rounds": 3, "local_epochs": 1, "optimizer": "sgd", "lr": 0.1, "batch_size": 32, **objective}
    config_path = federation(3, seed=5, overrides={"aggregation": aggregation, "training": training})
    config = load_config(config_path)
    train(config_path, rounds=2)
    result = train(config_path, rounds=1)

    record = result["rounds"][-1]
    assert record["round"] == 3 and record["server"] is not None
    pipeline = exchange(state_home).get_vector(ObjectRef.from_dict(record["global"]))
    silos = {}
    for silo in config.silo_ids:
        data = encode_table(pq.read_table(config.silo_data_path(silo)), config.contract)
        silos[silo] = SiloArrays(x_train=data.x_train, y_train=data.y_train)
    reference = federated_rounds(silos, config.model, config.training, config.seed, rounds=3,
                                 server=ServerOptimizer(spec=ServerOptimizerSpec(**server), lr=lr))
    plain = fedavg_rounds(silos, config.model, config.training, config.seed, rounds=3)
    assert np.abs(reference.vector - plain).max() > 1e-3  # the algorithm changes the model
    if mode == "trusted":
        assert np.array_equal(pipeline, reference.vector)
    else:
        np.testing.assert_allclose(pipeline, reference.vector, rtol=0, atol=2e-4)
        assert not np.array_equal(pipeline, reference.vector)


def test_runs_are_named_for_people_and_every_step_is_a_recorded_task_run_of_its_round(federation, state_home):
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, TaskRunFilter, TaskRunFilterFlowRunId

    train(federation(2, federation="naming"), rounds=1)
    steps = {f"{s}/{step}" for s in ("s0", "s1") for step in ("validate", "train", "keys", "shares", "masked", "unmask",
                                                                 "evaluate")}
    coordinator = {"plan", "secure-open", "check-keys", "check-shares", "check-masked", "unmask-sum", "gate", "register"}
    with get_client(sync_client=True) as prefect:
        runs = {run.name: run for run in
                prefect.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_="naming/")))}
        assert set(runs) == {"naming/job", "naming/r001"}  # embedded: no flow run per silo, its steps are task runs
        round_run = runs["naming/r001"]
        deadline = time.monotonic() + 60
        while True:  # the server records task runs from their events, in batches
            tasks = prefect.read_task_runs(task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[round_run.id])))
            names = {t.name for t in tasks}
            if steps | coordinator <= names or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert steps | coordinator <= names
    assert all(t.state is not None and t.state.is_completed() for t in tasks if t.name in steps)
    assert round_run.parent_task_run_id is not None  # the round sits under the job in the run graph


def test_silos_return_plain_json_manifests_without_vectors(federation, state_home, monkeypatch):
    import flows.round

    RecordingDispatcher.seen = []
    monkeypatch.setattr(flows.round, "make_dispatcher", RecordingDispatcher)
    train(federation(2), rounds=1)

    assert len(RecordingDispatcher.seen) == 10  # 2 silos x (train, shares, masked, unmask, evaluate)
    for delivery in RecordingDispatcher.seen:
        json.dumps(delivery.signed)  # JSON, nothing pickled
        manifest = delivery.signed["body"]
        assert manifest["status"] == "ok"
        assert "update" not in manifest["result"]  # secure mode: the update never leaves the silo as such
        for ref in manifest["result"].get("objects", []):
            assert set(ref) == {"key", "sha256", "size"}  # references, not the vectors

        def longest_list(node) -> int:
            if isinstance(node, dict):
                return max((longest_list(v) for v in node.values()), default=0)
            if isinstance(node, list):
                return max([len(node), *(longest_list(v) for v in node)])
            return 0

        assert longest_list(delivery.signed) < 64  # summaries and refs, no parameter vectors


def test_silo_with_bad_data_sits_out_and_the_round_goes_on(federation, state_home):
    config_path = federation(3)
    overwrite_column(config_path, "s1", "f0", [f"x{i}" for i in range(200)])  # wrong type
    record = train(config_path, rounds=1)["rounds"][0]

    assert record["silos_in"] == ["s0", "s2"]
    assert "s1" in record["silos_out"] and "f0" in record["silos_out"]["s1"]
    version = versions(state_home)[0]
    assert "s1" in json.loads(version.tags["fedsilo.silos_out"])
    assert json.loads(version.tags["fedsilo.data.s1"])["contract"] == "failed"

    mlflow = client(state_home)
    path = mlflow.download_artifacts(record_job(state_home), "validation/r001-train.json")
    logged = json.loads(open(path).read())
    assert logged["summaries"]["s1"]["passed"] is False
    assert any("f0" in issue for issue in logged["summaries"]["s1"]["schema_issues"])


def record_job(state_home) -> str:
    mlflow = client(state_home)
    experiment = mlflow.get_experiment_by_name("synth")
    runs = mlflow.search_runs([experiment.experiment_id], "tags.`fedsilo.kind` = 'job'", order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id


def test_too_few_silos_abort_the_round_and_change_nothing(federation, state_home):
    config_path = federation(3)
    train(config_path, rounds=1)
    before_versions = [str(v.version) for v in versions(state_home)]
    before_aliases = aliases(state_home)

    overwrite_column(config_path, "s0", "f1", [99.0] * 200)  # out of the contract's range
    overwrite_column(config_path, "s2", "label", [7] * 200)  # label outside the classes
    with pytest.raises(QuorumError) as caught:
        train(config_path, rounds=1)

    message = str(caught.value)
    assert "min_silos=2" in message and "s0" in message and "s2" in message
    assert [str(v.version) for v in versions(state_home)] == before_versions
    assert aliases(state_home) == before_aliases
    assert exchange(state_home).committed_rounds() == [0, 1]
    failed = client(state_home).get_run(record_job(state_home))
    assert failed.info.status == "FAILED"
    assert "min_silos" in failed.data.tags["fedsilo.failure"]


def test_gate_failure_keeps_candidate_and_tags_the_reasons(federation, state_home):
    gate = {"metric": "accuracy", "min_worst": 0.999, "max_gap": 0.5, "max_regression": 0.2}
    record = train(federation(3, overrides={"gate": gate}), rounds=1)["rounds"][0]

    assert record["promoted"] is False
    version = versions(state_home)[0]
    assert version.tags["fedsilo.gate"] == "failed"
    assert version.tags["fedsilo.gate.floor"].startswith("FAIL: worst silo")
    assert "0.999" in version.tags["fedsilo.gate.summary"]
    assert aliases(state_home) == {"candidate": str(version.version)}


def _with_a_group_column(config_path, gate_groups) -> None:
    """Give every silo a categorical column ``group``: "a" / "b" by the silo's median of f0 (so
    predictions depend on it); on s0 three holdout rows of a small group "c" and three without a
    group (missing); and declare it in the contract with the gate's group checks."""
    config = load_config(config_path)
    for silo in config.silo_ids:
        path = config.silo_data_path(silo)
        table = pq.read_table(path)
        f0 = table.column("f0").to_numpy()
        labels = np.where(f0 > np.median(f0), "a", "b").astype(object)
        if silo == "s0":
            holdout = np.flatnonzero(table.column("split").to_numpy(zero_copy_only=False) == "holdout")
            labels[holdout[:3]] = "c"
            labels[holdout[3:6]] = None
        pq.write_table(table.append_column("group", pa.array(list(labels), type=pa.string())), path)
    raw = yaml.safe_load(config_path.read_text())
    raw["contract"]["features"].append({"name": "group", "dtype": "string", "categories": ["a", "b", "c"],
                                        "max_missing": 0.1})
    raw["gate"] = {**raw["gate"], "groups": gate_groups}
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_silos_report_only_suppressed_group_counts_and_a_tight_parity_bound_blocks_promotion(federation, state_home):
    config_path = federation(3)
    _with_a_group_column(config_path, {"column": "group", "max_dp_difference": 0.0, "max_eo_difference": 1.0,
                                       "min_group_size": 5})
    record = train(config_path, rounds=1)["rounds"][0]

    store = exchange(state_home)
    reports = {s: store.read_json_key(store.evaluation_key(1, s)) for s in ("s0", "s1", "s2")}
    for silo, report in reports.items():
        groups = report["groups"]
        assert (groups["column"], groups["min_group_size"], groups["threshold"]) == ("group", 5, 0.5)
        assert set(groups["counts"]) == {"a", "b"}  # s0's 3 rows of "c" are withheld; its 3 rows without a group too
        assert groups["suppressed"] == (1 if silo == "s0" else 0)
        described = sum(c["n"] for c in groups["counts"].values())
        assert described == report["metrics"]["candidate"]["n"] - (6 if silo == "s0" else 0)
    gate = record["gate"]
    pooled = gate["groups"]["federation"]["counts"]
    for group in ("a", "b"):
        assert pooled[group] == {k: sum(r["groups"]["counts"][group][k] for r in reports.values()) for k in pooled[group]}
    parity = next(c for c in gate["checks"] if c["name"] == "parity")
    assert not parity["passed"] and parity["value"] > 0.0 and parity["threshold"] == 0.0
    assert "s0" in parity["detail"] and "(1 group withheld)" in parity["detail"]
    assert next(c for c in gate["checks"] if c["name"] == "odds")["passed"]
    assert gate["groups"]["silos"]["s0"]["suppressed"] == 1
    assert record["promoted"] is False

    version = versions(state_home)[0]
    tags = version.tags
    assert tags["fedsilo.gate"] == "failed"
    assert tags["fedsilo.gate.parity"].startswith(f"FAIL: demographic parity difference on group {parity['value']:.3f} > 0.000")
    assert tags["fedsilo.gate.odds"].startswith("pass: equalised odds difference on group")
    assert f"federation parity {parity['value']:.3f}" in tags["fedsilo.gate.groups"]
    assert "s0 parity" in tags["fedsilo.gate.groups"] and "1 withheld" in tags["fedsilo.gate.groups"]
    assert aliases(state_home) == {"candidate": str(version.version)}


def test_one_class_silo_trains_and_its_undefined_auc_is_named(federation, state_home):
    gate = {"metric": "roc_auc", "min_worst": 0.0, "max_gap": 1.0, "max_regression": 1.0}
    config_path = federation(3, overrides={"gate": gate})
    overwrite_column(config_path, "s2", "label", [1] * 200)
    record = train(config_path, rounds=1)["rounds"][0]

    assert "s2" in record["silos_in"]
    assert record["gate"]["undefined"] == ["s2"]
    assert record["promoted"] is True


def test_an_interrupted_round_is_redone_and_registered_once(federation, state_home):
    config_path = federation(2)
    train(config_path, rounds=1)
    store = exchange(state_home)
    store.store.put(store.update_key(2, "s0"), b"left behind by a crash")  # an uncommitted attempt

    train(config_path, rounds=1)
    assert store.committed_rounds() == [0, 1, 2]
    # A crash after registration but before the commit: the redo must reuse the version.
    store.store.delete_prefix(store.round_prefix(2))
    train(config_path, rounds=1)
    round_two = [v for v in versions(state_home) if v.tags["fedsilo.round"] == "2"]
    assert len(round_two) == 1
    assert store.committed_rounds() == [0, 1, 2]


def test_a_tampered_update_is_rejected_in_trusted_mode(federation, state_home, monkeypatch):
    import flows.round

    class Tampering(RecordingDispatcher):
        def run(self, call, on_done=None):
            deliveries = super().run(call, on_done)
            for delivery in deliveries:  # the silos' signed manifests, before the round verifies them
                manifest = delivery.signed["body"]
                if delivery.silo_id == "s0" and manifest["phase"] == "train":
                    path = state_home / "exchange" / manifest["result"]["update"]["key"]
                    data = bytearray(path.read_bytes())
                    data[-40] ^= 0xFF
                    path.write_bytes(bytes(data))
            return deliveries

    monkeypatch.setattr(flows.round, "make_dispatcher", Tampering)
    record = train(federation(3, overrides={"aggregation": TRUSTED}), rounds=1)["rounds"][0]
    assert record["silos_in"] == ["s1", "s2"]
    assert "digest" in record["silos_out"]["s0"]


def test_a_silo_refuses_a_request_for_another_federation(federation, state_home):
    from flows.silo import silo_flow

    config_path = federation(2)
    state = silo_flow(federation="not-this-one", silo_id="s0", round_number=1, attempt="0123456789abcdef",
                      config_path=str(config_path), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="not-this-one"):
        state.result()


def test_a_different_model_on_existing_state_is_a_clear_error(federation, state_home, tmp_path):
    config_path = federation(2)
    train(config_path, rounds=1)
    text = config_path.read_text().replace("kind: logistic", "kind: mlp\n  hidden: [4]")
    config_path.write_text(text)
    with pytest.raises(StateError, match="parameters"):
        train(config_path, rounds=1)


def test_a_silo_out_of_time_contributes_the_steps_it_did(federation, state_home):
    """A time budget every silo overruns at once: each contributes its first step (the budget never
    takes the first), the record names both counts, and the global model is one step of each."""
    training = {"rounds": 1, "local_epochs": 3, "optimizer": "sgd", "lr": 0.1, "batch_size": 8, "time_budget_s": 1e-9}
    config_path = federation(3, seed=8, overrides={"aggregation": TRUSTED, "training": training})
    config = load_config(config_path)
    record = train(config_path, rounds=1)["rounds"][-1]
    for silo in config.silo_ids:
        n = record["train"][silo]["n_samples"]
        assert record["train"][silo]["steps"] == 1
        assert record["train"][silo]["planned_steps"] == 3 * -(-n // 8)
    from dataclasses import replace

    silos = {}
    for silo in config.silo_ids:
        data = encode_table(pq.read_table(config.silo_data_path(silo)), config.contract)
        silos[silo] = SiloArrays(x_train=data.x_train, y_train=data.y_train)
    one_step = fedavg_rounds(silos, config.model, replace(config.training, local_steps=1, time_budget_s=None),
                             config.seed, rounds=1)
    assert np.array_equal(exchange(state_home).get_vector(ObjectRef.from_dict(record["global"])), one_step)


def test_each_silo_reports_its_personalised_model_and_keeps_its_weights(federation, state_home):
    """With `personalisation`, every silo fine-tunes the candidate on its training rows, reports the
    personalised model's holdout metrics beside the candidate's and keeps its weights; the numbers
    are those of `fl_core.personalise` run on the same data and seed."""
    from fl_core.evaluation import evaluate
    from fl_core.models import build_model
    from fl_core.params import flatten, load_flat_inplace
    from fl_core.personalise import personalise
    from fl_core.seeding import derive_seed
    from infra.personal import PersonalStore
    from infra.state import StateDir

    config_path = federation(3, seed=9, overrides={"aggregation": TRUSTED,
                                                   "personalisation": {"steps": 6, "lr": 0.2}})
    config = load_config(config_path)
    record = train(config_path, rounds=1)["rounds"][-1]
    candidate = exchange(state_home).get_vector(ObjectRef.from_dict(record["global"]))
    state = StateDir(state_home)
    for silo in config.silo_ids:
        ex = exchange(state_home)
        report = json.loads(ex.store.get(ex.evaluation_key(1, silo)))
        assert set(report["metrics"]) == {"candidate", "personalised"}
        data = encode_table(pq.read_table(config.silo_data_path(silo)), config.contract)
        model = build_model(config.model, data.x_train.shape[1], seed=0)
        load_flat_inplace(model, candidate)
        personalise(model, data.x_train, data.y_train, config.training, config.personalisation,
                    derive_seed(config.seed, "personal", 1, silo))
        assert report["metrics"]["personalised"]["log_loss"] == pytest.approx(
            evaluate(model, data.x_holdout, data.y_holdout).log_loss, abs=1e-9)
        kept = PersonalStore(state, silo, config.federation).weights(1)
        assert np.array_equal(kept, flatten(model)) and not np.array_equal(kept, candidate)
        assert report["metrics"]["personalised"] != report["metrics"]["candidate"]
        assert record["personalised_metrics"][silo] == pytest.approx(report["metrics"]["personalised"])


@pytest.mark.parametrize("mode", ["trusted", "secure"])
def test_qffl_weights_each_silo_by_its_loss_as_the_in_memory_run_does(federation, state_home, mode):
    """q-FFL through the pipeline: each silo's weight n·F^q travels in its train result (in secure mode
    inside the sum, scaled by the largest announced weight) and the global model is the in-memory
    run's with the same weights: bit for bit trusted, within quantisation error secure."""
    from fl_core.simulation import Options, federated_rounds

    aggregation = {**(TRUSTED if mode == "trusted" else {"min_silos": 2}), "qffl": 3.0}
    training = {"rounds": 2, "local_epochs": 1, "optimizer": "sgd", "lr": 0.1, "batch_size": 32}
    config_path = federation(3, seed=6, overrides={"aggregation": aggregation, "training": training})
    config = load_config(config_path)
    record = train(config_path, rounds=2)["rounds"][-1]
    assert all(record["train"][s]["weight"] != record["train"][s]["n_samples"] for s in config.silo_ids)
    silos = {}
    for silo in config.silo_ids:
        data = encode_table(pq.read_table(config.silo_data_path(silo)), config.contract)
        silos[silo] = SiloArrays(x_train=data.x_train, y_train=data.y_train)
    reference = federated_rounds(silos, config.model, config.training, config.seed, rounds=2,
                                 options=Options(qffl=3.0)).vector
    plain = fedavg_rounds(silos, config.model, config.training, config.seed, rounds=2)
    assert np.abs(reference - plain).max() > 1e-4  # the weights change the model
    pipeline = exchange(state_home).get_vector(ObjectRef.from_dict(record["global"]))
    if mode == "trusted":
        assert np.array_equal(pipeline, reference)
    else:
        np.testing.assert_allclose(pipeline, reference, rtol=0, atol=2e-4)
