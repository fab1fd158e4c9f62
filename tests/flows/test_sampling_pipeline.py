"""Silo sampling inside the pipeline (``aggregation.silos_per_round``): each round trains only the
silos drawn from the seed and the round — the others get no train order, publish nothing and are
in no sum, and are not dropouts — while every silo evaluates the candidate; the draw is in the
signed round record, MLflow and the lineage; the global model is the in-memory reference run on
each round's drawn silos; silos refuse a secure plan whose sum is not the seeded draw."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
from pipeline_helpers import client, global_of, train

from fl_core.errors import QuorumError
from fl_core.sampling import sample_silos
from fl_core.simulation import Federated, SiloArrays, federated_rounds
from infra.config import load_config
from infra.exchange import Exchange, LocalObjectStore
from infra.silo_data import encode_table
from infra.state import StateDir
from tasks.plan import read_record

pytestmark = pytest.mark.usefixtures("prefect_harness")


@contextlib.contextmanager
def logged():
    """The lines logged while the block runs (Prefect's run loggers included)."""
    from prefect.logging.configuration import setup_logging

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    setup_logging()  # configure Prefect's logging now, so that a later first setup cannot drop this handler
    handler, root = Keep(level=logging.INFO), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def arrays_of(config) -> dict[str, SiloArrays]:
    out = {}
    for silo in config.silo_ids:
        data = encode_table(pq.read_table(config.silo_data_path(silo)), config.contract)
        out[silo] = SiloArrays(x_train=data.x_train, y_train=data.y_train)
    return out


def reference_on_samples(config, rounds: int, k: int) -> list[np.ndarray]:
    """The in-memory reference, one round at a time on that round's drawn silos only."""
    arrays, at, out = arrays_of(config), None, []
    for r in range(1, rounds + 1):
        drawn = sample_silos(config.silo_ids, k, config.seed, r)
        at = federated_rounds({s: arrays[s] for s in drawn}, config.model, config.training, config.seed, rounds=1,
                              start=at, first_round=r)
        assert isinstance(at, Federated)
        out.append(at.vector)
    return out


def check_sample(config, state_home, record, k: int) -> tuple[str, ...]:
    """The round's draw as the records name it: the returned record, and the signed round.json."""
    r, n = record["round"], len(config.silo_ids)
    drawn = sample_silos(config.silo_ids, k, config.seed, r)
    exchange = Exchange(LocalObjectStore(state_home / "exchange"), config.federation)
    signed = read_record(config, StateDir(state_home), exchange, r)
    for rec in (record, signed):
        sample = rec["sample"]
        assert tuple(sample["sampled"]) == drawn
        assert (sample["k"], sample["n"], sample["rate"], sample["silos_per_round"]) == (k, n, k / n, k)
        assert sorted(sample["sampled"] + sample["not_sampled"]) == sorted(config.silo_ids)
        assert rec["silos_in"] == list(drawn)
        assert rec["silos_out"] == {}  # the silos not drawn are not dropouts
        assert sorted(rec["evaluated"]) == sorted(config.silo_ids)  # every holdout scores the candidate
        assert set(rec["metrics"]) == set(config.silo_ids)
        assert set(rec["train"]) == set(drawn)
    return drawn


def test_trusted_rounds_train_only_the_drawn_silos_and_match_the_reference_on_them(federation, state_home):
    k, rounds = 2, 3
    aggregation = {"mode": "trusted", "rule": "fedavg", "min_silos": 2, "silos_per_round": k}
    config_path = federation(4, seed=5, overrides={"aggregation": aggregation})
    config = load_config(config_path)
    with logged() as lines:
        result = train(config_path, rounds=rounds)

    exchange = Exchange(LocalObjectStore(state_home / "exchange"), config.federation)
    reference = reference_on_samples(config, rounds, k)
    draws = []
    for record, expected in zip(result["rounds"], reference, strict=True):
        r = record["round"]
        drawn = check_sample(config, state_home, record, k)
        draws.append(drawn)
        updates = {key.rsplit("/", 1)[-1].removesuffix(".arrow")
                   for key in exchange.store.list(f"{exchange.round_prefix(r)}/train/")}
        assert updates == set(drawn)  # only the drawn silos published an update
        assert set(record["gate"]["intervals"]) == set(config.silo_ids)  # the gate's intervals on every holdout
        assert np.array_equal(global_of(state_home, record), expected)  # bit for bit, round by round
    assert len(set(draws)) > 1  # the draw changes from round to round (seed 5: it does)
    for r, drawn in enumerate(draws, start=1):
        assert any(f"round {r}: sampled 2 of 4 silos (q = 0.5): {', '.join(drawn)}" in line for line in lines)

    mlflow = client(state_home)
    job = result["job_run_id"]
    sampled = mlflow.get_metric_history(job, "silos.sampled")
    assert sorted((m.step, m.value) for m in sampled) == [(r, 2.0) for r in range(1, rounds + 1)]
    assert {m.value for m in mlflow.get_metric_history(job, "silos.sample_rate")} == {0.5}
    assert {m.step for m in mlflow.get_metric_history(job, "silo.s0.accuracy")} == set(range(1, rounds + 1))
    round_runs = mlflow.search_runs([mlflow.get_experiment_by_name("synth").experiment_id],
                                    "tags.`fedsilo.kind` = 'round'", order_by=["attributes.start_time ASC"])
    assert [run.data.tags["fedsilo.sampled"] for run in round_runs] == [",".join(d) for d in draws]
    assert all(run.data.tags["fedsilo.sample"] == "2 of 4" for run in round_runs)
    assert all(run.data.metrics["silos.sampled"] == 2.0 for run in round_runs)
    versions = sorted(mlflow.search_model_versions("name = 'synth'"), key=lambda v: int(v.version))
    assert [v.tags["fedsilo.sampled"] for v in versions] == [",".join(d) for d in draws]
    assert [v.tags["fedsilo.silos_in"] for v in versions] == [",".join(d) for d in draws]


def test_secure_rounds_sum_only_the_drawn_silos_and_record_the_draw(federation, state_home):
    k, rounds = 3, 2
    aggregation = {"mode": "secure", "min_silos": 2, "silos_per_round": k}
    config_path = federation(5, seed=5, overrides={"aggregation": aggregation})
    config = load_config(config_path)
    result = train(config_path, rounds=rounds)

    exchange = Exchange(LocalObjectStore(state_home / "exchange"), config.federation)
    reference = reference_on_samples(config, rounds, k)
    for record, expected in zip(result["rounds"], reference, strict=True):
        r = record["round"]
        drawn = check_sample(config, state_home, record, k)
        assert record["secure"]["masked"] == k and record["secure"]["dropped"] == 0
        assert record["secure"]["threshold"] == 2  # the threshold of a sum of 3, not of the 5 eligible
        for phase in ("keys", "masked"):
            published = {key.rsplit("/", 1)[-1].split(".", 1)[0]
                         for key in exchange.store.list(f"{exchange.round_prefix(r)}/secagg/{phase}/")}
            assert published == set(drawn), phase  # the others are in no instance of the protocol
        np.testing.assert_allclose(global_of(state_home, record), expected, rtol=0, atol=2e-4)
        assert not np.array_equal(global_of(state_home, record), expected)  # it went through the secure sum


def test_silos_refuse_a_secure_plan_whose_sum_is_not_the_seeded_draw(federation, state_home, monkeypatch):
    """A coordinator that hand-picks the silos of a sum (here: the first three, whatever the draw) is
    refused by every silo it picks: each redoes the draw from the eligible set the plan names."""
    from tasks.plan import RoundPlan

    config_path = federation(5, seed=5, overrides={"aggregation": {"mode": "secure", "min_silos": 2,
                                                                   "silos_per_round": 3}})
    config = load_config(config_path)
    drawn = sample_silos(config.silo_ids, 3, config.seed, 1)
    picked = ("s0", "s1", "s2") if drawn != ("s0", "s1", "s2") else ("s2", "s3", "s4")
    monkeypatch.setattr(RoundPlan, "trainers", property(lambda self: picked))
    with pytest.raises(QuorumError) as caught:
        train(config_path, rounds=1)
    message = str(caught.value)
    assert "differ from the seeded draw" in message
    assert all(s in message for s in picked)
    assert Exchange(LocalObjectStore(state_home / "exchange"), config.federation).committed_rounds() == [0]
