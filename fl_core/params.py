"""A model's parameters as one flat float32 vector, and back.

The order is the module's ``named_parameters()`` order; ``layout`` records names and shapes so
that a vector can be checked against the model it is loaded into.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def layout(model: nn.Module) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flatten(model: nn.Module) -> np.ndarray:
    """A new float32 vector holding every parameter of `model`."""
    with torch.no_grad():
        parts = [p.detach().reshape(-1).to(torch.float32) for p in model.parameters()]
        return torch.cat(parts).numpy().copy() if parts else np.zeros(0, dtype=np.float32)


def load_flat_inplace(model: nn.Module, vector: np.ndarray) -> None:
    """Copy `vector` into `model`'s parameters; the length must match exactly."""
    vector = np.asarray(vector)
    expected = count(model)
    if vector.ndim != 1 or vector.shape[0] != expected:
        raise ValueError(f"parameter vector has shape {vector.shape}, the model needs ({expected},)")
    if not np.all(np.isfinite(vector)):
        raise ValueError("parameter vector holds NaN or infinite values")
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(torch.from_numpy(np.ascontiguousarray(vector[offset : offset + n], dtype=np.float32)).reshape(p.shape))
            offset += n
