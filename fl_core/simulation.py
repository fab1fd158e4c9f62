"""Federated training in one process, on arrays: the pipeline's arithmetic without the pipeline.

It derives every seed exactly as the pipeline does (initial weights: ``("init",)``; a silo's
training in round r: ``("train", r, silo)``) and uses the same training, flattening, averaging
and server code, so for the same config and data it produces the same global model as the
trusted pipeline, bit for bit: `fedavg_rounds` for FedAvg, `federated_rounds` for every local
objective (FedAvg, FedProx, SCAFFOLD: `fl_core.objectives`) and server optimiser
(`fl_core.server_opt`), with every silo in every round. Benchmarks use it to compare federated
training with pooled and local training; tests use it as the reference the Prefect pipeline must
reproduce.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from fl_core.aggregation import FedAvg, weighted_mean
from fl_core.models import ModelSpec, build_model
from fl_core.objectives import correction, scaffold_server_control, scaffold_silo_control
from fl_core.params import flatten, load_flat_inplace
from fl_core.seeding import derive_seed
from fl_core.server_opt import ServerOptimizer, ServerState
from fl_core.training import TrainSpec, train_local


@dataclass(frozen=True, slots=True, kw_only=True)
class SiloArrays:
    x_train: np.ndarray
    y_train: np.ndarray


def initial_vector(spec: ModelSpec, n_inputs: int, root_seed: int) -> np.ndarray:
    return flatten(build_model(spec, n_inputs, seed=derive_seed(root_seed, "init")))


def fedavg_rounds(
    silos: Mapping[str, SiloArrays],
    model_spec: ModelSpec,
    train_spec: TrainSpec,
    root_seed: int,
    rounds: int,
    server: FedAvg | None = None,
    start: np.ndarray | None = None,
    first_round: int = 1,
    on_round: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Run `rounds` FedAvg rounds over every silo (in sorted id order) and return the global vector
    (plain FedAvg whatever `train_spec.objective` says: the reference the other objectives are
    compared with)."""
    from dataclasses import replace

    from fl_core.server_opt import ServerOptimizerSpec

    train_spec = replace(train_spec, objective="fedavg", prox_mu=0.0)
    server = server or FedAvg()
    n_inputs = next(iter(silos.values())).x_train.shape[1]
    vector = initial_vector(model_spec, n_inputs, root_seed) if start is None else np.asarray(start, dtype=np.float32)
    return federated_rounds(silos, model_spec, train_spec, root_seed, rounds,
                            server=ServerOptimizer(spec=ServerOptimizerSpec(), lr=server.server_lr),
                            start=Federated(vector=vector, server=ServerState(), controls={}),
                            first_round=first_round, on_round=on_round).vector


@dataclass(frozen=True, slots=True, kw_only=True)
class Federated:
    """Where `federated_rounds` left the federation: the global model, the server's state and each
    silo's SCAFFOLD control variate (empty for other objectives)."""

    vector: np.ndarray
    server: ServerState
    controls: Mapping[str, np.ndarray]


def federated_rounds(
    silos: Mapping[str, SiloArrays],
    model_spec: ModelSpec,
    train_spec: TrainSpec,
    root_seed: int,
    rounds: int,
    *,
    server: ServerOptimizer | None = None,
    start: Federated | None = None,
    first_round: int = 1,
    on_round: Callable[[int, np.ndarray], None] | None = None,
) -> Federated:
    """`rounds` rounds of every silo (sorted id order) training by `train_spec.objective`, the
    sample-weighted mean of their updates, and the `server` step (FedAvg with server_lr 1 by default)."""
    from fl_core.server_opt import ServerOptimizerSpec

    server = server or ServerOptimizer(spec=ServerOptimizerSpec(), lr=1.0)
    n_inputs = next(iter(silos.values())).x_train.shape[1]
    if start is None:
        start = Federated(vector=initial_vector(model_spec, n_inputs, root_seed), server=ServerState(), controls={})
    vector, state, controls = np.asarray(start.vector, dtype=np.float32), start.server, dict(start.controls)
    scaffold = train_spec.objective == "scaffold"
    model = build_model(model_spec, n_inputs, seed=0)
    for r in range(first_round, first_round + rounds):
        updates, weights = [], []
        server_control = state.slots.get("control", np.zeros(len(vector), dtype=np.float32))
        for silo in sorted(silos):
            data = silos[silo]
            load_flat_inplace(model, vector)
            own = controls.get(silo, np.zeros(len(vector), dtype=np.float32))
            corr = (correction(model, train_spec, server_control=server_control, silo_control=own) if scaffold
                    else correction(model, train_spec, start=vector))
            result = train_local(model, data.x_train, data.y_train, train_spec,
                                 seed=derive_seed(root_seed, "train", r, silo), correction=corr)
            trained = flatten(model)
            update = trained - vector
            if scaffold:
                new = scaffold_silo_control(train_spec, vector, trained, result.steps, server_control, own)
                update = np.concatenate([update, new - own])
                controls[silo] = new
            updates.append(update)
            weights.append(result.n_samples)
        mean = weighted_mean(updates, weights)
        n = len(vector)
        vector, state = server.step(vector, mean[:n], state)
        if scaffold:
            control = scaffold_server_control(server_control, mean[n:], len(silos), len(silos))
            state = ServerState(steps=state.steps, slots={**state.slots, "control": control},
                                accepted={**state.accepted, **{silo: r for silo in silos}})
        if on_round is not None:
            on_round(r, vector)
    return Federated(vector=vector, server=state, controls=controls)
