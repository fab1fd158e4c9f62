"""Record-level differential privacy inside a silo: DP-SGD (Abadi et al., "Deep Learning with
Differential Privacy", CCS 2016) with Opacus's per-sample gradients and DP optimiser.

Each step takes a Poisson sample of the training rows (every row in with probability q =
batch_size / n, drawn from the seeded, injected ML generator, so batches are reproducible), clips
every row's gradient to L2 norm `max_grad_norm`, sums, adds Gaussian noise of std
`noise_multiplier · max_grad_norm` and divides by the expected batch size q·n (a fixed denominator,
as the analysis of the sampled Gaussian mechanism assumes; an empty sample still takes a noisy
step). A round is then one `GaussianEvent(noise_multiplier, q, steps)` for the silo's ledger.

Two clipping modes compute the same update (`DPSGDSpec.clipping`): "hooks" materialises every
row's gradient (Opacus's GradSampleModule + DPOptimizer); "ghost" is Opacus's fast gradient
clipping with ghost norms (GradSampleModuleFastGradientClipping + DPOptimizerFastGradientClipping +
DPLossFastGradientClipping), which gets the rows' gradient norms without their gradients and then
backpropagates the clip-weighted loss. "auto" (the default) picks per model and batch size, from
measurements (`clipping_mode`, benchmarks/dp_overhead.py).

The noise generator is a separate `torch.Generator`, which the caller seeds from `os.urandom`
(`noise_generator()`); Opacus's `secure_mode` would draw it from torchcsprng, which has no build
for this torch, so the noise is not hardened against floating-point attacks (Mironov, "On
Significance of the Least Significant Bits for Differential Privacy", CCS 2012).
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fl_core.dp.accounting import GaussianEvent
from fl_core.errors import PrivacyError, TrainingError
from fl_core.models import output_classes
from fl_core.objectives import Correction
from fl_core.seeding import torch_rng
from fl_core.specs import (  # noqa: F401 (re-exported: the specs live without torch)
    CLIPPING_MODES,
    Clipping,
    DPSGDSpec,
    round_event,
    sample_rate,
    steps_per_round,
)
from fl_core.training import TrainSpec, WorkBudget, _optimizer, classification_loss, logits, training_tensors


@dataclass(frozen=True, slots=True, kw_only=True)
class DPTrainResult:
    n_samples: int
    steps: int
    mean_loss: float
    event: GaussianEvent  # what the round cost: its steps are those taken, fewer than planned if a budget ended it
    clipped_fraction: float  # of the per-sample gradients, over the round
    clipping: str  # the mode that ran: "hooks" or "ghost"
    planned: int = 0  # the steps the round was planned (and its budget checked) for

    @property
    def partial(self) -> bool:
        return self.steps < self.planned


def noise_generator() -> torch.Generator:
    """A generator for DP noise, seeded from the operating system's entropy."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") & (2**63 - 1))


def poisson_batches(n: int, q: float, steps: int, generator: torch.Generator):
    for _ in range(steps):
        yield torch.nonzero(torch.rand(n, generator=generator) < q).flatten()


def ghost_supported(model: nn.Module) -> bool:
    """Whether every trainable layer of `model` has a ghost norm sampler in Opacus (its per-sample
    gradient norms come from activations and backprops alone, with no per-sample gradients)."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    layers = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    return bool(layers) and all(type(m) in GradSampleModuleFastGradientClipping.NORM_SAMPLERS for m in layers)


# Ghost clipping pays a second backward pass and more Python per step; the hooks mode pays for
# materialising, norming and clip-summing batch × parameters per-sample gradient entries. Measured
# on one core with Opacus 1.6 (linear models, batch 64 to 1024), ghost clipping breaks even at a
# few hundred thousand entries (MLP 30-32-16 at batch 256, ~0.4M: 0.96× the hooks mode's step
# time) and wins from 2^19 on (MLP 30-64 at batch 256, ~0.5M: 0.76×; MLP 30-64-32, ~1M: 0.6–0.8×;
# MLP 30-128-64, ~3M: 0.54×), while below it the hooks mode is faster (logistic on 30 features,
# 8K: ghost 1.25–1.9× slower; MLP 30-32, 0.26M: 1.3×). Logistic models gain least, being one
# layer of output width 1 (3000 features at batch 256, 0.77M: 0.97×; 1000 at batch 1024, 1M: 1.08×).
GHOST_MIN_GRAD_SAMPLE_ENTRIES = 2**19


def clipping_mode(model: nn.Module, requested: str = "auto", *, batch_size: float) -> str:
    """The clipping mode that runs for `model` at (expected) `batch_size`: `requested` unless it is
    "auto", which picks ghost clipping when every trainable layer is one Opacus clips without
    per-sample gradients (linear layers: logistic regression and MLPs) and the per-sample gradients
    the hooks mode would materialise number at least `GHOST_MIN_GRAD_SAMPLE_ENTRIES`, else hooks.
    Convolutions get hooks: Opacus 1.6 has no ghost norm for them, so ghost mode materialises their
    per-sample gradients anyway, adds a second backward pass and measures slower (small CNN, batch
    256: 2.7× a plain step against 2.2×; benchmarks/dp_overhead.py)."""
    if requested not in CLIPPING_MODES:
        raise PrivacyError(f"clipping must be one of {', '.join(map(repr, CLIPPING_MODES))}, got {requested!r}")
    if requested != "auto":
        return requested
    entries = batch_size * sum(p.numel() for p in model.parameters() if p.requires_grad)
    return "ghost" if ghost_supported(model) and entries >= GHOST_MIN_GRAD_SAMPLE_ENTRIES else "hooks"


# A mode's setup returns (wrapped module, DP optimiser, step): step(features, labels) runs the
# forward and backward passes for one batch and leaves the clipped, summed gradient for the
# optimiser; it returns the summed loss and the per-sample gradient norms before clipping.
def _hooks_mode(model: nn.Module, spec: TrainSpec, dp: DPSGDSpec, clip: float, noise: torch.Generator,
                classes: int = 2):
    """Opacus's hooks: per-sample gradients in `p.grad_sample`, clipped and summed by DPOptimizer."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    wrapped = GradSampleModule(model, loss_reduction="sum")
    optimizer = DPOptimizer(_optimizer(model, spec), noise_multiplier=dp.noise_multiplier, max_grad_norm=clip,
                            expected_batch_size=1, loss_reduction="mean", generator=noise)
    loss_fn = classification_loss(classes, reduction="sum")

    def step(features: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
        loss = loss_fn(logits(wrapped(features), classes), labels)
        loss.backward()
        trained = [p for p in model.parameters() if p.requires_grad]  # frozen layers (personalisation) have none
        if len(labels):
            norms = torch.stack([p.grad_sample.reshape(len(labels), -1).norm(2, dim=1) for p in trained],
                                dim=1).norm(2, dim=1)
        else:  # an empty sample: no per-sample gradients, still a noisy step
            norms = torch.zeros(0)
            for p in trained:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
        return float(loss.detach()), norms

    return wrapped, optimizer, step


def _ghost_mode(model: nn.Module, spec: TrainSpec, dp: DPSGDSpec, clip: float, noise: torch.Generator,
                classes: int = 2):
    """Opacus's fast gradient clipping with ghost norms (Li et al., "Large Language Models Can Be
    Strong Differentially Private Learners", ICLR 2022; Bu et al., "Differentially Private
    Optimization on Large Model at Small Cost", ICML 2023): a first backward pass computes only the
    per-sample gradient norms (for linear layers from the layer's activations and backprops, without
    per-sample gradients), a second one, with the hooks off, backpropagates Σ_i c_i·loss_i with the
    clip factors c_i = min(1, C / (‖g_i‖ + 1e-6)), so that `p.grad` is already the clipped sum.

    Opacus requires the module, the optimiser, the criterion and the loss wrapper to share one
    reduction. It is "mean" here: the optimiser then divides by `expected_batch_size` (set to q·n by
    the caller, as in the hooks mode); the module scales the first pass's backprops back up by the
    actual batch size, so the norms are those of the per-row losses; and the second pass sums
    whatever the reduction, so `p.grad` is Σ_i c_i·g_i exactly as DPOptimizer's in the hooks mode."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    wrapped = GradSampleModuleFastGradientClipping(model, loss_reduction="mean", max_grad_norm=clip,
                                                   use_ghost_clipping=True)
    optimizer = DPOptimizerFastGradientClipping(
        _optimizer(model, spec), noise_multiplier=dp.noise_multiplier, max_grad_norm=clip, expected_batch_size=1,
        loss_reduction="mean", generator=noise,
    )
    loss_fn = DPLossFastGradientClipping(wrapped, optimizer, classification_loss(classes, reduction="mean"),
                                         loss_reduction="mean")

    def step(features: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
        # An empty sample works as is: no rows, no norms, a zero gradient, still a noisy step.
        loss = loss_fn(logits(wrapped(features), classes), labels)
        loss.backward()
        # Opacus keeps the norms the clip factors came from (also in each parameter's `_norm_sample`).
        return float(loss.loss_per_sample.detach().sum()), wrapped.per_sample_gradient_norms

    return wrapped, optimizer, step


_MODES = {"hooks": _hooks_mode, "ghost": _ghost_mode}

# What Opacus leaves on parameters and modules beyond what its `_close()` removes.
_PARAMETER_STATE = ("grad_sample", "summed_grad", "_processed", "_norm_sample", "_forward_counter",
                    "_current_grad_sample")
_MODULE_STATE = ("activations", "max_batch_len", "autograd_grad_sample_hooks", "ft_compute_sample_grad")


def _strip_opacus_state(model: nn.Module) -> None:
    for p in model.parameters():
        for attr in _PARAMETER_STATE:
            if hasattr(p, attr):
                delattr(p, attr)
    for module in model.modules():
        for attr in _MODULE_STATE:
            if attr in module.__dict__:
                delattr(module, attr)


def train_local_dp(
    model: nn.Module, x: np.ndarray, y: np.ndarray, spec: TrainSpec, dp: DPSGDSpec, seed: int,
    noise: torch.Generator, correction: Correction | None = None, budget: WorkBudget | None = None,
) -> DPTrainResult:
    """Train `model` in place with DP-SGD; the model keeps no Opacus hooks or per-sample state.
    `correction` (`fl_core.objectives`: FedProx, SCAFFOLD) is added to each step's gradient after
    it was clipped, noised and scaled (Opacus's step hook): it does not touch the data, so the
    guarantee is that of DP-SGD alone.

    Both clipping modes run the same Poisson batches (from `torch_rng(seed)`), clip the same way,
    draw the same noise from `noise` in the same order (one normal tensor per parameter, in
    parameter order) and divide by the same q·n, so they agree up to float reassociation.

    `budget` may end the round early (a straggler's partial work): the result's event then counts
    the steps taken, which is what the round cost in privacy (each step is one sampled Gaussian
    mechanism; steps not taken released nothing)."""
    classes = output_classes(model)
    features, labels = training_tensors(x, y, classes)
    n = len(labels)
    event = round_event(n, spec, dp.noise_multiplier)
    expected = event.sample_rate * n
    mode = clipping_mode(model, dp.clipping, batch_size=expected)
    clip = min(dp.max_grad_norm, sys.float_info.max)  # clip factor 1 and noise std 0 when C = ∞, σ = 0
    wrapped, optimizer, step = _MODES[mode](model, spec, dp, clip, noise, classes)
    # Opacus divides by an integer expected batch size; keep the exact q·n instead.
    optimizer.expected_batch_size = expected
    if correction is not None:
        parameters = list(model.parameters())
        optimizer.step_hook = lambda _optimizer: correction.apply(parameters)
    wrapped.train()
    total, seen, clipped, steps = 0.0, 0, 0, 0
    try:
        for index in poisson_batches(n, event.sample_rate, event.steps, torch_rng(seed)):
            if budget is not None and not budget.allows(steps):
                break
            optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # Opacus's hooks on a first layer whose input needs no grad
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss, norms = step(features[index], labels[index])
            clipped += int((norms > dp.max_grad_norm).sum())
            optimizer.step()
            total += loss
            seen += len(index)
            steps += 1
    finally:
        wrapped._close()
        _strip_opacus_state(model)
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise TrainingError(f"DP training diverged (non-finite weights) at lr={spec.lr}")
    taken = event if steps == event.steps else GaussianEvent(event.noise_multiplier, event.sample_rate, steps)
    return DPTrainResult(
        n_samples=n, steps=steps, mean_loss=total / max(seen, 1), event=taken,
        clipped_fraction=clipped / max(seen, 1), clipping=mode, planned=event.steps,
    )
