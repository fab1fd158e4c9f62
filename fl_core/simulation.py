"""Federated averaging in one process, on arrays: the pipeline's arithmetic without the pipeline.

It derives every seed exactly as the pipeline does (initial weights: ``("init",)``; a silo's
training in round r: ``("train", r, silo)``) and uses the same training, flattening and FedAvg
code, so for the same config and data it produces the same global model, bit for bit. Benchmarks
use it to compare federated training with pooled and local training; tests use it as the
reference the Prefect pipeline must reproduce.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from fl_core.aggregation import FedAvg
from fl_core.models import ModelSpec, build_model
from fl_core.params import flatten, load_flat_inplace
from fl_core.seeding import derive_seed
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
    """Run `rounds` FedAvg rounds over every silo (in sorted id order) and return the global vector."""
    server = server or FedAvg()
    n_inputs = next(iter(silos.values())).x_train.shape[1]
    vector = initial_vector(model_spec, n_inputs, root_seed) if start is None else np.asarray(start, dtype=np.float32)
    model = build_model(model_spec, n_inputs, seed=0)
    for r in range(first_round, first_round + rounds):
        deltas, weights = [], []
        for silo in sorted(silos):
            data = silos[silo]
            load_flat_inplace(model, vector)
            result = train_local(model, data.x_train, data.y_train, train_spec, seed=derive_seed(root_seed, "train", r, silo))
            deltas.append(flatten(model) - vector)
            weights.append(result.n_samples)
        vector = server.step(vector, deltas, weights)
        if on_round is not None:
            on_round(r, vector)
    return vector
