"""Helpers shared by the pipeline tests: a dispatcher with injected faults, the in-memory reference
round, and readers for what a run left in the exchange and in MLflow."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from fl_core.simulation import SiloArrays, fedavg_rounds
from infra.config import load_config
from infra.dispatch import Delivery, InProcessDispatcher
from infra.exchange import Exchange, LocalObjectStore, ObjectRef
from infra.silo_data import encode_table
from tasks.silo_round import SiloRound


class Scripted(InProcessDispatcher):
    """The in-process dispatcher with injected faults: silos that vanish in a phase (or crash in it,
    raising inside their own part of the round), and a hook that may tamper with the exchange after
    a phase ran."""

    def __init__(self, config, state, drops=None, crashes=None, after=None, parallel=4):
        super().__init__(lambda silo, r, attempt: SiloRound(config, state, silo, r, attempt), parallel, limit_threads=False)
        self.drops = drops or {}
        self.crashes = crashes or {}
        self.after = after

    def _answer(self, silo, call):
        if silo in self.drops.get(call.phase, set()):
            return Delivery(silo_id=silo, signed=None, error="vanished (injected)")
        if silo in self.crashes.get(call.phase, set()):
            def crash(phase, signed):
                raise RuntimeError(f"{silo} crashed in {phase} (injected)")

            party, self.parties[silo] = self.parties[silo], type("Crashing", (), {"answer": staticmethod(crash)})()
            try:
                return super()._answer(silo, call)
            finally:
                self.parties[silo] = party
        return super()._answer(silo, call)

    def run(self, call, on_done=None):
        deliveries = super().run(call, on_done)
        if self.after is not None:
            self.after(call.phase, call.round_number)
        return deliveries


def use(monkeypatch, **kwargs):
    import flows.round

    monkeypatch.setattr(flows.round, "make_dispatcher", lambda config, state: Scripted(config, state, **kwargs))


def train(config_path, rounds=1):
    from flows.training import training_flow

    return training_flow(config_path=str(config_path), rounds=rounds)


def client(state_home):
    from mlflow import MlflowClient

    uri = f"sqlite:///{state_home}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def reference_round(config_path, silos):
    """Round 1 of in-memory FedAvg over `silos` only."""
    config = load_config(config_path)
    arrays = {}
    for silo in silos:
        data = encode_table(pq.read_table(config.silo_data_path(silo)), config.contract)
        arrays[silo] = SiloArrays(x_train=data.x_train, y_train=data.y_train)
    return fedavg_rounds(arrays, config.model, config.training, config.seed, rounds=1)


def global_of(state_home, record) -> np.ndarray:
    return Exchange(LocalObjectStore(state_home / "exchange"), "synth").get_vector(ObjectRef.from_dict(record["global"]))


def round_one_deltas(config_path, silos) -> dict[str, np.ndarray]:
    """Each silo's round-1 update, trained in memory from the initial model as the pipeline does."""
    from fl_core.models import build_model
    from fl_core.params import flatten, load_flat_inplace
    from fl_core.seeding import derive_seed
    from fl_core.simulation import initial_vector
    from fl_core.training import train_local

    config = load_config(config_path)
    out = {}
    for silo in silos:
        data = encode_table(pq.read_table(config.silo_data_path(silo)), config.contract)
        start = initial_vector(config.model, data.x_train.shape[1], config.seed)
        model = build_model(config.model, data.x_train.shape[1], seed=0)
        load_flat_inplace(model, start)
        train_local(model, data.x_train, data.y_train, config.training, seed=derive_seed(config.seed, "train", 1, silo))
        out[silo] = flatten(model) - start
    return out
