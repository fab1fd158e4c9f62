"""Bucketed mode end to end: silos are shuffled (seeded, recomputed by every silo) into buckets, each
bucket is summed by its own secure-aggregation instance, and the robust rule merges the bucket
means. The coordinator's stored state holds no single silo's update or local model; a bucket that
falls below its threshold leaves the round while the others merge; too few buckets for the rule
abort the round; a plan that moves silos to other buckets is refused by the silos; an anomalous
bucket mean is flagged and its silos' streaks carried."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import yaml
from pipeline_helpers import client, global_of, round_one_deltas, train, use

from fl_core.errors import QuorumError, TooFewUpdates
from fl_core.robust import make_aggregator
from fl_core.secagg.quantize import clip_by_norm
from fl_core.simulation import initial_vector
from infra.config import load_config
from infra.exchange import Exchange, LocalObjectStore

pytestmark = pytest.mark.usefixtures("prefect_harness")

SILOS = ["s0", "s1", "s2", "s3", "s4", "s5"]
LOOSE = {"max_norm_z": 20.0, "max_distance_z": 20.0}


def configure(config_path, rule: str = "median", robust: dict | None = None, min_bucket: int = 2, anomaly=None):
    raw = yaml.safe_load(config_path.read_text())
    raw["aggregation"] = {"mode": "bucketed", "min_bucket": min_bucket, "rule": rule, "robust": robust or {},
                          "min_silos": 3}
    if anomaly is not None:
        raw["aggregation"]["anomaly"] = anomaly
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config_path


def bucket_means(config_path, record, deltas) -> dict[str, tuple[np.ndarray, float]]:
    """Each summed bucket's sample-weighted mean of clipped updates, and its weight, in memory."""
    clip = load_config(config_path).aggregation.secure.clip_norm
    out = {}
    for name, bucket in record["secure"]["buckets"].items():
        n = {s: float(record["train"][s]["n_samples"]) for s in bucket["summed"]}
        total = sum(n.values())
        out[name] = (sum(clip_by_norm(deltas[s], clip)[0].astype(np.float64) * n[s] for s in n) / total, total)
    return out


def expected_global(config_path, rule, robust, means) -> np.ndarray:
    config = load_config(config_path)
    names = sorted(means)
    merged = make_aggregator(rule, **robust)([means[b][0] for b in names], [means[b][1] for b in names])
    return initial_vector(config.model, len(merged) - 1, config.seed) + merged


def stored_vectors(state_home) -> list[np.ndarray]:
    """Every numeric vector the run left in the exchange (models, masked inputs) as float64."""
    found = []
    for path in (state_home / "exchange").rglob("*.arrow"):
        table = pa.ipc.open_file(pa.BufferReader(path.read_bytes())).read_all()
        found += [column.to_numpy().astype(np.float64) for column in table.columns]
    return found


def holds(vector: np.ndarray, target: np.ndarray) -> bool:
    return vector.shape == target.shape and bool(np.allclose(vector, target, rtol=0, atol=1e-5))


def test_the_coordinator_merges_bucket_means_and_stores_no_single_silo_vector(federation, state_home):
    config_path = configure(federation(6))
    record = train(config_path)["rounds"][0]
    config = load_config(config_path)
    buckets = config.buckets(1)
    assert [tuple(b["silos"]) for b in record["secure"]["buckets"].values()] == buckets
    assert len(buckets) == 3 and all(len(b) == 2 for b in buckets)
    assert config.buckets(2) != buckets or config.buckets(3) != buckets  # reshuffled from round to round
    assert record["silos_in"] == SILOS and record["secure"]["lost"] == {}

    deltas = round_one_deltas(config_path, SILOS)
    means = bucket_means(config_path, record, deltas)
    np.testing.assert_allclose(global_of(state_home, record), expected_global(config_path, "median", {}, means),
                               rtol=0, atol=1e-5)

    start = initial_vector(config.model, len(deltas["s0"]) - 1, config.seed)
    vectors = stored_vectors(state_home)
    assert len(vectors) >= 2 + 6  # two global models and six masked inputs were scanned
    for silo, delta in deltas.items():
        for target in (delta, start + delta):  # its update, its local model
            assert not any(holds(v, target) for v in vectors), f"{silo}'s vector is in the coordinator's store"
        raw = np.asarray(delta, dtype=np.float32).tobytes()[:64]
        stores = [*(state_home / "exchange").rglob("*"), *(state_home / "mlartifacts").rglob("*"),
                  state_home / "mlflow.db", *(state_home / "coordinator").rglob("*")]
        assert not any(raw in p.read_bytes() for p in stores if p.is_file())

    # The scan can see a silo's vector when one is there: plant s0's update and look again.
    Exchange(LocalObjectStore(state_home / "exchange"), "synth").put_vector(
        "federations/synth/planted.arrow", deltas["s0"], {"federation": "synth"})
    assert any(holds(v, deltas["s0"]) for v in stored_vectors(state_home))

    version = client(state_home).get_model_version("synth", record["version"])
    assert version.tags["fedsilo.aggregation"] == "bucketed/median"
    assert version.tags["fedsilo.buckets"].count("threshold 2") == 3
    round_run = client(state_home).get_run(version.run_id)
    assert round_run.data.metrics["secagg.buckets"] == 3.0 and round_run.data.metrics["secagg.buckets_lost"] == 0.0


def test_a_bucket_below_its_threshold_leaves_the_round_and_the_others_merge(federation, state_home, monkeypatch):
    config_path = configure(federation(6))
    config = load_config(config_path)
    lost_bucket = next(b for b in config.buckets(1) if "s1" in b)
    use(monkeypatch, drops={"masked": {"s1"}})
    record = train(config_path)["rounds"][0]
    partner = next(s for s in lost_bucket if s != "s1")
    assert sorted(record["silos_out"]) == sorted(lost_bucket)
    assert "fell below its threshold at masked input" in record["silos_out"][partner]
    assert len(record["secure"]["buckets"]) == 2 and len(record["secure"]["lost"]) == 1
    kept = [s for s in SILOS if s not in lost_bucket]
    assert record["silos_in"] == kept
    means = bucket_means(config_path, record, round_one_deltas(config_path, kept))
    np.testing.assert_allclose(global_of(state_home, record), expected_global(config_path, "median", {}, means),
                               rtol=0, atol=1e-5)


def test_too_few_buckets_for_the_rule_abort_the_round(federation, state_home, monkeypatch):
    config_path = configure(federation(6), rule="krum", robust={"f": 0})  # Krum needs 3 bucket means
    use(monkeypatch, drops={"shares": {"s2"}})
    with pytest.raises(TooFewUpdates, match="2 bucket\\(s\\) left .*fell below its threshold at shares"):
        train(config_path)
    exchange = Exchange(LocalObjectStore(state_home / "exchange"), "synth")
    assert exchange.committed_rounds() == [0]
    assert not exchange.store.exists(exchange.global_key(1))
    assert client(state_home).search_model_versions("name = 'synth'") == []


def test_silos_refuse_a_plan_that_puts_them_in_other_buckets(federation, state_home, monkeypatch):
    from prefect import task
    from prefect.cache_policies import NONE

    import flows.round

    config_path = configure(federation(6))
    config = load_config(config_path)
    seed = next(s for s in range(1, 50) if config.model_copy(update={"seed": s}).buckets(1) != config.buckets(1))
    honest = flows.round.secure_open

    @task(name="secure-open", cache_policy=NONE, persist_result=False)
    def rogue(config, state, plan):  # a coordinator announcing buckets of its own choice
        return honest.fn(config.model_copy(update={"seed": seed}), state, plan)

    monkeypatch.setattr(flows.round, "secure_open", rogue)
    with pytest.raises(QuorumError, match="differ from the seeded shuffle"):
        train(config_path)
    assert Exchange(LocalObjectStore(state_home / "exchange"), "synth").committed_rounds() == [0]


def test_an_anomalous_bucket_mean_is_flagged_and_its_silos_streaks_carried(federation, state_home, monkeypatch):
    from test_robust_pipeline import boost

    config_path = configure(federation(6), anomaly={**LOOSE, "report_after": 2, "exclude": True})
    boost(monkeypatch, "s4", 50.0)  # clipped to the secure clip norm, still far out
    first, second = train(config_path, rounds=2)["rounds"]
    config = load_config(config_path)
    for record, r in ((first, 1), (second, 2)):
        bad = next(f"bucket-{k}" for k, b in enumerate(config.buckets(r)) if "s4" in b)
        assert record["anomaly"]["flagged"] == [bad] and record["anomaly"]["excluded"] == [bad]
        assert "s4" in record["anomaly"]["members"][bad]
        assert record["silos_out"]["s4"].startswith(f"excluded: {bad}'s mean is anomalous")
        assert record["anomaly"]["scores"][bad]["norm"] <= config.aggregation.secure.clip_norm  # clipped in the silo
    assert second["anomaly"]["streaks"]["s4"] == 2 and "s4" in second["anomaly"]["reported"]
