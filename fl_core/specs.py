"""The plain parts of the model, training and DP-SGD configuration: specs and the arithmetic of a
round's privacy cost, without torch, so that whoever only reads a config (a silo's protocol
phases, the command line) does not load it. `fl_core.models`, `fl_core.training` and
`fl_core.dp.dpsgd` re-export them next to the code that uses torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fl_core.dp.accounting import GaussianEvent
from fl_core.errors import PrivacyError


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """``kind: logistic`` is one linear layer; ``kind: mlp`` adds ``hidden`` layers with ``activation``.

    ``classes``: 2 (one logit, binary cross-entropy: what the federation's contract labels are) or
    more (one logit per class, softmax cross-entropy: multinomial logistic regression and MLPs for
    the experiments' multi-class federations, `fl_core.synthetic`, `fl_core.partition`)."""

    __pydantic_config__ = {"extra": "forbid"}

    kind: Literal["logistic", "mlp"] = "logistic"
    hidden: tuple[int, ...] = ()
    activation: Literal["relu", "tanh"] = "relu"
    classes: int = 2

    @property
    def outputs(self) -> int:
        """The width of the last layer: 1 logit for two classes, one per class otherwise."""
        return 1 if self.classes == 2 else self.classes

    def __post_init__(self) -> None:
        if isinstance(self.classes, bool) or not isinstance(self.classes, int) or self.classes < 2:
            raise ValueError(f"classes must be an integer >= 2, got {self.classes!r}")
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


def parameter_sizes(spec: ModelSpec, n_inputs: int) -> tuple[int, ...]:
    """The sizes of the model's parameters in flattening order (each linear layer's weight, then
    its bias), without building it: what per-layer clipping and the vector length need."""
    sizes = [n_inputs, *spec.hidden, spec.outputs]
    out: list[int] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        out += [fan_in * fan_out, fan_out]
    return tuple(out)


OBJECTIVES: tuple[str, ...] = ("fedavg", "fedprox", "scaffold")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainSpec:
    """How each silo trains in a round.

    ``local_epochs`` passes over the training split, or exactly ``local_steps`` minibatches when
    that is set (it then overrides epochs, so that silos of very different sizes do the same
    amount of work per round). ``time_budget_s``: the most wall-clock time a silo's round of
    training may take; a silo that runs out stops after the step it is in and contributes the
    steps it did (partial work, `fl_core.training.WorkBudget`; under DP-SGD it is charged for those
    steps only). ``objective``: what the local steps follow (`fl_core.objectives`):
    the silo's loss (``fedavg``), plus FedProx's proximal term of weight ``prox_mu`` (``fedprox``),
    or corrected by SCAFFOLD's control variates (``scaffold``, with SGD only).
    """

    __pydantic_config__ = {"extra": "forbid"}

    rounds: int = 10
    local_epochs: int = 1
    local_steps: int | None = None
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 32
    objective: Literal["fedavg", "fedprox", "scaffold"] = "fedavg"
    prox_mu: float = 0.0
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds!r}")
        if self.local_epochs < 1:
            raise ValueError(f"local_epochs must be >= 1, got {self.local_epochs!r}")
        if self.local_steps is not None and self.local_steps < 1:
            raise ValueError(f"local_steps must be >= 1 when set, got {self.local_steps!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.time_budget_s is not None and not (math.isfinite(self.time_budget_s) and self.time_budget_s > 0):
            raise ValueError(f"time_budget_s must be a positive number of seconds when set, got {self.time_budget_s!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not (math.isfinite(self.prox_mu) and self.prox_mu >= 0):
            raise ValueError(f"prox_mu must be a finite number >= 0, got {self.prox_mu!r}")
        if self.prox_mu > 0 and self.objective != "fedprox":
            raise ValueError(f"prox_mu is FedProx's proximal weight: set objective: fedprox (it is {self.objective})")
        if self.objective == "scaffold" and self.optimizer != "sgd":
            raise ValueError("objective scaffold needs optimizer sgd: its control variates assume a fixed step "
                             f"size, which {self.optimizer} does not take")


Clipping = Literal["auto", "hooks", "ghost"]
CLIPPING_MODES: tuple[str, ...] = ("auto", "hooks", "ghost")


@dataclass(frozen=True, slots=True, kw_only=True)
class DPSGDSpec:
    noise_multiplier: float
    max_grad_norm: float
    clipping: Clipping = "auto"  # how per-sample gradients are clipped; see `clipping_mode`

    def __post_init__(self) -> None:
        if self.clipping not in CLIPPING_MODES:
            raise PrivacyError(f"clipping must be one of {', '.join(map(repr, CLIPPING_MODES))}, got {self.clipping!r}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise PrivacyError(f"noise_multiplier must be a finite number >= 0, got {self.noise_multiplier!r}")
        if not (self.max_grad_norm > 0):  # math.inf allowed without noise: the machinery without clipping
            raise PrivacyError(f"max_grad_norm must be > 0, got {self.max_grad_norm!r}")
        if self.noise_multiplier > 0 and math.isinf(self.max_grad_norm):
            raise PrivacyError("noise needs a finite max_grad_norm (the noise std is noise_multiplier · max_grad_norm)")


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
