"""Personalisation: a silo's own model, fine-tuned from the federation's global model on its data.

One global model serves the federation's average silo; a silo whose data differ (another
population, another label balance) can do better with a model adapted to it. Two ways, each a few
local steps from the global weights, taken on the silo and never sent anywhere:

- ``layers: all``: fine-tune every parameter (Wang et al., "Federated Evaluation of On-device
  Personalization", 2019; Yu, Bagdasaryan & Shmatikov, "Salvaging Federated Learning by Local
  Adaptation", 2020);
- ``layers: head``: fine-tune only the output layer over the shared representation, the body
  frozen (Arivazhagan et al., "Federated Learning with Personalization Layers", 2019; Collins et
  al., "Exploiting Shared Representations for Personalized Federated Learning", ICML 2021). For a
  logistic model the head is the whole model.

The registry keeps the global model; the silo keeps its personalised weights in its state folder
and reports both models' metrics on its holdout. Under record-level DP the fine-tuning is DP-SGD
with the silo's noise and clip and is charged to its ledger like training: the personalised model's
holdout metric leaves the silo, and it depends on the training rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from fl_core.specs import TrainSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class PersonalSpec:
    """``steps`` minibatches of fine-tuning (batch size and optimiser from ``training``) at ``lr``
    (``training.lr`` when unset), on ``layers``: every parameter or the output layer only."""

    __pydantic_config__ = {"extra": "forbid"}

    steps: int = 20
    layers: Literal["all", "head"] = "all"
    lr: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 100_000:
            raise ValueError(f"personalisation.steps must be an integer in [1, 100000], got {self.steps!r}")
        if self.layers not in ("all", "head"):
            raise ValueError(f"personalisation.layers must be 'all' or 'head', got {self.layers!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"personalisation.lr must be a positive number when set, got {self.lr!r}")

    def train_spec(self, training: TrainSpec) -> TrainSpec:
        """The training spec of the fine-tuning: the federation's, for `steps` steps of the silo's own
        loss (no proximal term, no control variates: there is no server to stay close to)."""
        return replace(training, local_steps=self.steps, lr=self.lr or training.lr, objective="fedavg", prox_mu=0.0)


def freeze_body(model, layers: str) -> list:
    """Make only the trained part of `model` require gradients (``head``: its last linear layer);
    returns the parameters frozen, for `thaw`."""
    from torch import nn

    if layers == "all":
        return []
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    keep = {id(p) for p in head.parameters()}
    frozen = [p for p in model.parameters() if id(p) not in keep and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    return frozen


def thaw(frozen: list) -> None:
    for p in frozen:
        p.requires_grad_(True)


def personalise(model, x, y, training: TrainSpec, spec: PersonalSpec, seed: int, *, dp=None, noise=None):
    """Fine-tune `model` in place from the global weights it holds on (x, y); returns the training
    result (`LocalTrainResult`, or `DPTrainResult` with its privacy event when `dp` is given, with
    `noise` its noise generator). Opacus's wrappers leave frozen parameters alone, so the head-only
    variant clips and noises only the head's gradients."""
    from fl_core.training import train_local

    tuning = spec.train_spec(training)
    frozen = freeze_body(model, spec.layers)
    try:
        if dp is None:
            return train_local(model, x, y, tuning, seed=seed)
        from fl_core.dp.dpsgd import train_local_dp

        return train_local_dp(model, x, y, tuning, dp, seed, noise=noise)
    finally:
        thaw(frozen)
