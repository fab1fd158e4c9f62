"""A silo's record-level privacy policy: its budget and how its DP-SGD is tuned."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fl_core.dp.accounting import noise_for_epsilon
from fl_core.dp.dpsgd import DPSGDSpec, round_event
from fl_core.dp.ledger import PrivacyBudget
from fl_core.training import TrainSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordPrivacy:
    """``epsilon``/``delta``: the silo's budget over the federation's life; ``accountant``: ``rdp``
    or ``prv``; ``max_grad_norm``: the per-sample clipping bound C; and either ``noise_multiplier``
    (σ) or ``target_epsilon`` (σ chosen so that ``training.rounds`` rounds reach it)."""

    __pydantic_config__ = {"extra": "forbid"}

    epsilon: float
    delta: float = 1e-5
    accountant: Literal["rdp", "prv"] = "rdp"
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = None

    def __post_init__(self) -> None:
        PrivacyBudget(self.epsilon, self.delta, self.accountant)  # validates the three
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be a positive number, got {self.max_grad_norm!r}")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("set exactly one of noise_multiplier and target_epsilon")
        if self.noise_multiplier is not None and not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(f"noise_multiplier must be a positive number, got {self.noise_multiplier!r}")
        if self.target_epsilon is not None and not (0 < self.target_epsilon <= self.epsilon):
            raise ValueError(f"target_epsilon must be in (0, epsilon = {self.epsilon}], got {self.target_epsilon!r}")

    @property
    def budget(self) -> PrivacyBudget:
        return PrivacyBudget(self.epsilon, self.delta, self.accountant)

    def dpsgd(self, n_train: int, training: TrainSpec) -> DPSGDSpec:
        """DP-SGD settings for a silo with `n_train` rows training as `training` says."""
        if self.noise_multiplier is not None:
            z = self.noise_multiplier
        else:
            event = round_event(n_train, training, 1.0)
            z = noise_for_epsilon(self.target_epsilon, self.delta, event.sample_rate, event.steps * training.rounds,
                                  self.accountant)
        return DPSGDSpec(noise_multiplier=z, max_grad_norm=self.max_grad_norm)
