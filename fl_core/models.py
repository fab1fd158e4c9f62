"""Models built from the federation config: logistic regression and a multilayer perceptron.

Both output one logit per record for two classes (binary cross-entropy) and one logit per class
for more (softmax cross-entropy; `ModelSpec.classes`). Weights are initialised from an
injected seed, never from torch's global generator, so that every party that builds the initial
model from the same config gets the same parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fl_core.seeding import torch_rng
from fl_core.specs import ModelSpec  # noqa: F401 (re-exported: the spec lives without torch)


def build_model(spec: ModelSpec, n_inputs: int, seed: int) -> nn.Module:
    """A fresh model for `n_inputs` features, initialised deterministically from `seed`."""
    if n_inputs < 1:
        raise ValueError(f"a model needs at least one input, got n_inputs={n_inputs}")
    sizes = [n_inputs, *spec.hidden, spec.outputs]
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


def output_classes(model: nn.Module) -> int:
    """How many classes `model` tells apart: 2 when its last linear layer has one output (a logit),
    else that layer's width."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError("the model has no linear output layer")
    width = last[-1].out_features
    return 2 if width == 1 else width
