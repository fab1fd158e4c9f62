"""Record-level differential privacy inside a silo: DP-SGD (Abadi et al., "Deep Learning with
Differential Privacy", CCS 2016) with Opacus's per-sample gradients and DP optimiser.

Each step takes a Poisson sample of the training rows (every row in with probability q =
batch_size / n, drawn from the seeded, injected ML generator, so batches are reproducible), clips
every row's gradient to L2 norm `max_grad_norm`, sums, adds Gaussian noise of std
`noise_multiplier · max_grad_norm` and divides by the expected batch size q·n (a fixed denominator,
as the analysis of the sampled Gaussian mechanism assumes; an empty sample still takes a noisy
step). A round is then one `GaussianEvent(noise_multiplier, q, steps)` for the silo's ledger.

The noise generator is a separate `torch.Generator`, which the caller seeds from `os.urandom`
(`noise_generator()`); Opacus's `secure_mode` would draw it from torchcsprng, which has no build
for this torch, so the noise is not hardened against floating-point attacks (Mironov, "On
Significance of the Least Significant Bits for Differential Privacy", CCS 2012).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fl_core.dp.accounting import GaussianEvent
from fl_core.errors import PrivacyError, TrainingError
from fl_core.seeding import torch_rng
from fl_core.training import TrainSpec, _optimizer, training_tensors


@dataclass(frozen=True, slots=True, kw_only=True)
class DPSGDSpec:
    noise_multiplier: float
    max_grad_norm: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise PrivacyError(f"noise_multiplier must be a finite number >= 0, got {self.noise_multiplier!r}")
        if not (self.max_grad_norm > 0):  # math.inf allowed without noise: the machinery without clipping
            raise PrivacyError(f"max_grad_norm must be > 0, got {self.max_grad_norm!r}")
        if self.noise_multiplier > 0 and math.isinf(self.max_grad_norm):
            raise PrivacyError("noise needs a finite max_grad_norm (the noise std is noise_multiplier · max_grad_norm)")


@dataclass(frozen=True, slots=True, kw_only=True)
class DPTrainResult:
    n_samples: int
    steps: int
    mean_loss: float
    event: GaussianEvent
    clipped_fraction: float  # of the per-sample gradients, over the round


def sample_rate(n: int, spec: TrainSpec) -> float:
    return min(1.0, spec.batch_size / n)


def steps_per_round(n: int, spec: TrainSpec) -> int:
    """`local_steps` if set, else `local_epochs` passes in expectation: ⌈epochs · n / batch⌉ steps."""
    if spec.local_steps is not None:
        return spec.local_steps
    return max(1, math.ceil(spec.local_epochs / sample_rate(n, spec)))


def round_event(n: int, spec: TrainSpec, noise_multiplier: float) -> GaussianEvent:
    """What one round of DP-SGD on `n` rows costs, known before training (for the budget check)."""
    return GaussianEvent(noise_multiplier, sample_rate(n, spec), steps_per_round(n, spec))


def noise_generator() -> torch.Generator:
    """A generator for DP noise, seeded from the operating system's entropy."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") & (2**63 - 1))


def poisson_batches(n: int, q: float, steps: int, generator: torch.Generator):
    for _ in range(steps):
        yield torch.nonzero(torch.rand(n, generator=generator) < q).flatten()


def train_local_dp(
    model: nn.Module, x: np.ndarray, y: np.ndarray, spec: TrainSpec, dp: DPSGDSpec, seed: int,
    noise: torch.Generator,
) -> DPTrainResult:
    """Train `model` in place with DP-SGD; the model keeps no Opacus hooks or per-sample state."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    features, labels = training_tensors(x, y)
    n = len(labels)
    event = round_event(n, spec, dp.noise_multiplier)
    expected = event.sample_rate * n

    wrapped = GradSampleModule(model, loss_reduction="sum")
    optimizer = DPOptimizer(
        _optimizer(model, spec), noise_multiplier=dp.noise_multiplier,
        max_grad_norm=min(dp.max_grad_norm, sys.float_info.max),  # clip factor 1 and noise std 0 when C = ∞, σ = 0
        expected_batch_size=max(1, round(expected)), loss_reduction="mean", generator=noise,
    )
    # Opacus divides by an integer expected batch size; keep the exact q·n instead.
    optimizer.expected_batch_size = expected
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    wrapped.train()
    total, seen, clipped = 0.0, 0, 0
    try:
        for index in poisson_batches(n, event.sample_rate, event.steps, torch_rng(seed)):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(wrapped(features[index]).squeeze(-1), labels[index])
            with warnings.catch_warnings():  # Opacus's hooks on a first layer whose input needs no grad
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            if len(index):
                norms = torch.stack([p.grad_sample.reshape(len(index), -1).norm(2, dim=1) for p in model.parameters()],
                                    dim=1).norm(2, dim=1)
                clipped += int((norms > dp.max_grad_norm).sum())
            else:  # an empty sample: no per-sample gradients, still a noisy step
                for p in model.parameters():
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
            optimizer.step()
            total += float(loss.detach())
            seen += len(index)
    finally:
        wrapped._close()
        for p in model.parameters():
            for attr in ("grad_sample", "summed_grad", "_processed"):
                if hasattr(p, attr):
                    delattr(p, attr)
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise TrainingError(f"DP training diverged (non-finite weights) at lr={spec.lr}")
    return DPTrainResult(
        n_samples=n, steps=event.steps, mean_loss=total / max(seen, 1), event=event,
        clipped_fraction=clipped / max(seen, 1),
    )
