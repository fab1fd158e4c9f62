"""Models built from the federation config: logistic regression and a multilayer perceptron.

Both output one logit per record (binary classification). Weights are initialised from an
injected seed, never from torch's global generator, so that every party that builds the initial
model from the same config gets the same parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fl_core.seeding import torch_rng


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """``kind: logistic`` is one linear layer; ``kind: mlp`` adds ``hidden`` layers with ``activation``."""

    __pydantic_config__ = {"extra": "forbid"}

    kind: Literal["logistic", "mlp"] = "logistic"
    hidden: tuple[int, ...] = ()
    activation: Literal["relu", "tanh"] = "relu"

    def __post_init__(self) -> None:
        if self.kind not in ("logistic", "mlp"):
            raise ValueError(f"kind must be 'logistic' or 'mlp', got {self.kind!r}")
        if self.activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be 'relu' or 'tanh', got {self.activation!r}")
        if self.kind == "logistic" and self.hidden:
            raise ValueError(f"a logistic model has no hidden layers, got hidden={list(self.hidden)!r}")
        if self.kind == "mlp" and not self.hidden:
            raise ValueError("an mlp needs at least one hidden layer size, e.g. hidden: [16]")
        bad = [h for h in self.hidden if h < 1]
        if bad:
            raise ValueError(f"hidden layer sizes must be >= 1, got {list(self.hidden)!r}")


def build_model(spec: ModelSpec, n_inputs: int, seed: int) -> nn.Module:
    """A fresh model for `n_inputs` features, initialised deterministically from `seed`."""
    if n_inputs < 1:
        raise ValueError(f"a model needs at least one input, got n_inputs={n_inputs}")
    sizes = [n_inputs, *spec.hidden, 1]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU() if spec.activation == "relu" else nn.Tanh())
    model = nn.Sequential(*layers)
    generator = torch_rng(seed)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                # Same distribution as torch's default (Kaiming-uniform with a = sqrt(5)), own generator.
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
    return model
