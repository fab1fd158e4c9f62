"""Local objectives for heterogeneous silos: what each silo's local steps follow besides its own loss.

- FedAvg (McMahan et al., AISTATS 2017): the silo's loss alone.
- FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020): the loss plus
  the proximal term μ/2 ‖w − w_global‖², which keeps a silo's local model near the round's global
  model however many steps it takes; its gradient is μ (w − w_global). With μ = 0 it is FedAvg.
- SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning",
  ICML 2020): each local step follows g(w) − cᵢ + c, the silo's gradient corrected by the difference
  between the server's control variate c and the silo's own cᵢ, which removes the client drift that
  non-IID silos cause. After K local steps of size η the silo's new control variate is (option II)
  cᵢ⁺ = cᵢ − c + (w_global − w) / (K η), and it sends Δcᵢ = cᵢ⁺ − cᵢ with its model update; the
  server moves c by |S|/N times the mean of the Δcᵢ (`scaffold_server_control`). With identical
  silos every cᵢ equals c and the correction vanishes: SCAFFOLD is then FedAvg.

Both terms are data-independent, so they are added to the parameters' gradients just before each
optimiser step, after DP-SGD has clipped and noised the data's part (`Correction.apply`): the
record-level privacy guarantee covers the data's gradients and what follows is post-processing.
With SGD momentum SCAFFOLD's step size in the control-variate update is the effective one,
η / (1 − momentum); with Adam there is no single step size, and SCAFFOLD is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fl_core.errors import ConfigError
from fl_core.specs import OBJECTIVES, TrainSpec  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # torch is imported where a silo trains, not where the round's policy is read
    import torch
    from torch import nn


def _split(model: nn.Module, vector: np.ndarray) -> list[torch.Tensor]:
    """`vector` (the flattening order of `fl_core.params`) as tensors shaped like the model's parameters."""
    import torch

    parts, offset = [], 0
    for p in model.parameters():
        n = p.numel()
        parts.append(torch.from_numpy(np.ascontiguousarray(vector[offset:offset + n], dtype=np.float32)).reshape(p.shape))
        offset += n
    if offset != len(vector):
        raise ValueError(f"a vector of {len(vector)} values for a model of {offset} parameters")
    return parts


@dataclass(frozen=True, slots=True)
class Correction:
    """The data-independent part of each local step's gradient: μ (w − anchor) + offset, per parameter."""

    mu: float
    anchor: tuple[torch.Tensor, ...] | None  # FedProx: the round's global model
    offset: tuple[torch.Tensor, ...] | None  # SCAFFOLD: c − cᵢ

    def apply(self, parameters: Sequence[torch.Tensor]) -> None:
        """Add the correction to every parameter's `.grad` (a parameter with no gradient gets one)."""
        import torch

        with torch.no_grad():
            for i, p in enumerate(parameters):
                extra = None
                if self.mu and self.anchor is not None:
                    extra = self.mu * (p.detach() - self.anchor[i])
                if self.offset is not None:
                    extra = self.offset[i] if extra is None else extra + self.offset[i]
                if extra is None:
                    continue
                if p.grad is None:
                    p.grad = extra.clone()
                else:
                    p.grad.add_(extra)


def correction(model: nn.Module, spec: TrainSpec, start: np.ndarray | None = None,
               server_control: np.ndarray | None = None, silo_control: np.ndarray | None = None) -> Correction | None:
    """The correction `spec.objective` adds to local steps from the round's global model `start`
    (FedProx) or the control variates c and cᵢ (SCAFFOLD); None for FedAvg (or FedProx with μ = 0)."""
    if spec.objective == "fedprox" and spec.prox_mu > 0:
        if start is None:
            raise ValueError("FedProx needs the round's global model")
        return Correction(mu=spec.prox_mu, anchor=tuple(_split(model, start)), offset=None)
    if spec.objective == "scaffold":
        if server_control is None or silo_control is None:
            raise ValueError("SCAFFOLD needs the server's and the silo's control variates")
        return Correction(mu=0.0, anchor=None, offset=tuple(_split(model, np.asarray(server_control, np.float64)
                                                                   - np.asarray(silo_control, np.float64))))
    return None


def effective_lr(spec: TrainSpec) -> float:
    """The step size SCAFFOLD's control-variate update divides by: η, or η / (1 − momentum) for SGD
    with momentum (the heavy ball's step in the steady state)."""
    if spec.optimizer != "sgd":
        raise ConfigError(f"training.objective: scaffold needs optimizer sgd (its control variates assume a "
                          f"fixed step size), not {spec.optimizer}")
    return spec.lr / (1.0 - spec.momentum)


def scaffold_silo_control(spec: TrainSpec, start: np.ndarray, trained: np.ndarray, steps: int,
                          server_control: np.ndarray, silo_control: np.ndarray) -> np.ndarray:
    """cᵢ⁺ = cᵢ − c + (x − yᵢ) / (K η) (option II of Karimireddy et al.), in float64 then float32."""
    if steps < 1:
        return np.asarray(silo_control, dtype=np.float32).copy()
    scale = 1.0 / (steps * effective_lr(spec))
    new = (np.asarray(silo_control, np.float64) - np.asarray(server_control, np.float64)
           + (np.asarray(start, np.float64) - np.asarray(trained, np.float64)) * scale)
    if not np.all(np.isfinite(new)):
        raise ValueError("the silo's new control variate holds NaN or infinite values")
    return new.astype(np.float32)


def scaffold_server_control(control: np.ndarray, mean_delta: np.ndarray, in_sum: int, n_silos: int) -> np.ndarray:
    """c ← c + (|S| / N) · mean of the Δcᵢ of the |S| silos in the sum, out of the federation's N."""
    if not 0 < in_sum <= n_silos:
        raise ValueError(f"{in_sum} silos in the sum of a federation of {n_silos}")
    if np.shape(mean_delta) != np.shape(control):
        raise ValueError(f"control deltas of shape {np.shape(mean_delta)} for a control of {np.shape(control)}")
    out = np.asarray(control, np.float64) + (in_sum / n_silos) * np.asarray(mean_delta, np.float64)
    return out.astype(np.float32)

