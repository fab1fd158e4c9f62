"""Local training on one silo's data: minibatch SGD/Adam on binary cross-entropy (softmax
cross-entropy for a model with one logit per class).

Deterministic given the seed: the shuffling generator is injected and nothing reads torch's
global RNG. A silo whose training split holds one class still trains (its gradient only pulls
towards that class); FedAvg weighs it by its sample count like any other silo.

A `WorkBudget` caps the round's work (a step count, a deadline): a silo that runs out of time
stops after the step it is in and contributes the steps it did, as FedProx lets stragglers do
(Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, §3: γ-inexact
solutions), instead of being dropped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fl_core.errors import TrainingError
from fl_core.models import output_classes
from fl_core.objectives import Correction
from fl_core.seeding import torch_rng
from fl_core.specs import TrainSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalTrainResult:
    n_samples: int
    steps: int
    mean_loss: float
    planned: int = 0  # the steps the spec asked for (more than `steps` when a WorkBudget cut the round short)

    @property
    def partial(self) -> bool:
        return self.steps < self.planned


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkBudget:
    """How much of a round's planned work a silo may do: at most ``max_steps`` steps, and no step
    begun at or after ``deadline`` (a `time.monotonic()` value). The first step is always taken,
    so that a budget never turns a silo's round into nothing."""

    max_steps: int | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 when set, got {self.max_steps!r}")

    @classmethod
    def seconds(cls, seconds: float | None) -> WorkBudget | None:
        """A budget of `seconds` from now (None: no budget)."""
        return None if seconds is None else cls(deadline=time.monotonic() + seconds)

    def allows(self, steps_done: int) -> bool:
        if steps_done == 0:
            return True
        if self.max_steps is not None and steps_done >= self.max_steps:
            return False
        return self.deadline is None or time.monotonic() < self.deadline


def classification_loss(classes: int, reduction: str = "mean") -> nn.Module:
    """Binary cross-entropy on one logit for two classes, softmax cross-entropy for more."""
    return nn.BCEWithLogitsLoss(reduction=reduction) if classes == 2 else nn.CrossEntropyLoss(reduction=reduction)


def logits(outputs: torch.Tensor, classes: int) -> torch.Tensor:
    """The model's outputs as the loss takes them: (rows,) for one logit, (rows, classes) otherwise."""
    return outputs.squeeze(-1) if classes == 2 else outputs


def planned_steps(n: int, spec: TrainSpec) -> int:
    """The minibatches `_batches` yields for `n` rows: `local_steps`, or whole epochs of ⌈n/batch⌉."""
    return spec.local_steps if spec.local_steps is not None else spec.local_epochs * math.ceil(n / spec.batch_size)


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


def training_tensors(x: np.ndarray, y: np.ndarray, classes: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) as tensors, after checking that they line up (rows first; images keep
    their shape), that there are rows, and that labels are class indices below `classes`: float32
    0/1 labels for two classes (binary cross-entropy), int64 indices for more."""
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise TrainingError(f"features {x.shape} and labels {y.shape} do not line up")
    if x.shape[0] == 0:
        raise TrainingError("no training rows")
    if classes == 2:
        if not np.all(np.isin(y, (0, 1))):
            raise TrainingError("labels must be 0 or 1")
        return (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)))
    if not np.all(np.isin(y, np.arange(classes))):
        raise TrainingError(f"labels must be class indices 0..{classes - 1}")
    return (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)))


def train_local(model: nn.Module, x: np.ndarray, y: np.ndarray, spec: TrainSpec, seed: int,
                correction: Correction | None = None, budget: WorkBudget | None = None) -> LocalTrainResult:
    """Train `model` in place on (x, y) (class indices); returns what a report needs.
    `correction` (FedProx's proximal term, SCAFFOLD's control variates: `fl_core.objectives`) is
    added to every step's gradient; `budget` may end the round before its planned steps."""
    classes = output_classes(model)
    features, labels = training_tensors(x, y, classes)
    n = len(labels)
    optimizer = _optimizer(model, spec)
    parameters = list(model.parameters())
    loss_fn = classification_loss(classes)
    model.train()
    total, steps = 0.0, 0
    for index in _batches(n, spec, torch_rng(seed)):
        if budget is not None and not budget.allows(steps):
            break
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(logits(model(features[index]), classes), labels[index])
        loss.backward()
        if correction is not None:
            correction.apply(parameters)
        optimizer.step()
        total += float(loss.detach())
        steps += 1
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise TrainingError(f"training diverged (non-finite weights) at lr={spec.lr}")
    return LocalTrainResult(n_samples=n, steps=steps, mean_loss=total / max(steps, 1), planned=planned_steps(n, spec))
