"""Local training on one silo's data: minibatch SGD/Adam on binary cross-entropy.

Deterministic given the seed: the shuffling generator is injected and nothing reads torch's
global RNG. A silo whose training split holds one class still trains (its gradient only pulls
towards that class); FedAvg weighs it by its sample count like any other silo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fl_core.errors import TrainingError
from fl_core.objectives import Correction
from fl_core.seeding import torch_rng
from fl_core.specs import TrainSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalTrainResult:
    n_samples: int
    steps: int
    mean_loss: float


def _optimizer(model: nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    if spec.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def _batches(n: int, spec: TrainSpec, generator: torch.Generator):
    """Index batches: whole epochs of a fresh permutation each, cut at `local_steps` if set."""
    steps_left = spec.local_steps
    epochs = spec.local_epochs if steps_left is None else math.inf
    epoch = 0
    while epoch < epochs:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, spec.batch_size):
            if steps_left is not None:
                if steps_left == 0:
                    return
                steps_left -= 1
            yield order[start : start + spec.batch_size]
        epoch += 1


def training_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) as float32 tensors, after checking that they line up (rows first; images
    keep their shape), that there are rows, and that labels are 0 or 1."""
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise TrainingError(f"features {x.shape} and labels {y.shape} do not line up")
    if x.shape[0] == 0:
        raise TrainingError("no training rows")
    if not np.all(np.isin(y, (0, 1))):
        raise TrainingError("labels must be 0 or 1")
    return (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)))


def train_local(model: nn.Module, x: np.ndarray, y: np.ndarray, spec: TrainSpec, seed: int,
                correction: Correction | None = None) -> LocalTrainResult:
    """Train `model` in place on (x, y) with labels in {0, 1}; returns what a report needs.
    `correction` (FedProx's proximal term, SCAFFOLD's control variates: `fl_core.objectives`) is
    added to every step's gradient."""
    features, labels = training_tensors(x, y)
    n = len(labels)
    optimizer = _optimizer(model, spec)
    parameters = list(model.parameters())
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    total, steps = 0.0, 0
    for index in _batches(n, spec, torch_rng(seed)):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(features[index]).squeeze(-1), labels[index])
        loss.backward()
        if correction is not None:
            correction.apply(parameters)
        optimizer.step()
        total += float(loss.detach())
        steps += 1
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise TrainingError(f"training diverged (non-finite weights) at lr={spec.lr}")
    return LocalTrainResult(n_samples=n, steps=steps, mean_loss=total / max(steps, 1))
