"""Server optimisers: how the coordinator moves the global model by a round's aggregated update.

The aggregated update Δ (the weighted mean of the silos' deltas, from one secure sum, bucket means
merged by a robust rule, or single updates) is treated as a pseudo-gradient (its negative):

- ``fedavg``: x ← x + η Δ (McMahan et al., AISTATS 2017; η = 1 is plain model averaging);
- ``fedavgm``: server momentum, m ← β₁ m + Δ, x ← x + η m (Hsu, Qi & Brown, "Measuring the Effects
  of Non-Identical Data Distribution for Federated Visual Classification", 2019);
- ``fedadagrad``, ``fedadam``, ``fedyogi``: the adaptive optimisers of Reddi et al., "Adaptive
  Federated Optimization", ICLR 2021 (Algorithm 2): m ← β₁ m + (1 − β₁) Δ, then
  v ← v + Δ² (Adagrad), v ← β₂ v + (1 − β₂) Δ² (Adam) or v ← v − (1 − β₂) Δ² sign(v − Δ²) (Yogi),
  and x ← x + η m / (√v + τ), coordinate-wise, without bias correction, v starting at τ² as the
  paper's v₋₁ ≥ τ² and m at 0.

The optimiser's state (m, v and the number of steps taken) is a `ServerState`, returned with every
step and kept in the round's record by the coordinator, so that a resumed job continues with the
same moments. SCAFFOLD's server control variate lives in the same state (slot ``control``).
Arithmetic in float64, results in float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fl_core.errors import AggregationError, StateError

ServerKind = Literal["fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi"]
SERVER_OPTIMIZERS: tuple[str, ...] = ("fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi")
_ADAPTIVE = ("fedadagrad", "fedadam", "fedyogi")
_SLOT_ORDER = ("m", "v", "control")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerState:
    """What the server carries from round to round: named vectors of the model's length, the steps taken,
    and for SCAFFOLD the round in which each silo's control variate was last in the sum."""

    steps: int = 0
    slots: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)
    accepted: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.slots) - set(_SLOT_ORDER))
        if unknown:
            raise StateError(f"server state has unknown slots {unknown}")

    @property
    def empty(self) -> bool:
        return not self.slots and not self.accepted and self.steps == 0

    def flat(self) -> tuple[np.ndarray, dict[str, str]]:
        """One vector (the slots in a fixed order) and the metadata that names its parts."""
        names = [name for name in _SLOT_ORDER if name in self.slots]
        vector = (np.concatenate([np.asarray(self.slots[n], dtype=np.float32) for n in names]) if names
                  else np.zeros(0, dtype=np.float32))
        meta = {"slots": ",".join(names), "steps": str(self.steps),
                "accepted": ",".join(f"{s}:{r}" for s, r in sorted(self.accepted.items()))}
        return vector, meta

    @classmethod
    def from_flat(cls, vector: np.ndarray, meta: Mapping[str, str], length: int) -> ServerState:
        """The inverse of `flat` for a model of `length` parameters; `StateError` if they disagree."""
        try:
            names = [n for n in meta.get("slots", "").split(",") if n]
            steps = int(meta.get("steps", "0"))
            accepted = {}
            for item in (i for i in meta.get("accepted", "").split(",") if i):
                silo, _, r = item.rpartition(":")
                accepted[silo] = int(r)
        except ValueError:
            raise StateError("server state: unreadable metadata") from None
        if len(vector) != length * len(names):
            raise StateError(f"server state holds {len(vector)} values, {len(names)} slots of {length} need "
                             f"{length * len(names)}")
        slots = {n: np.asarray(vector[i * length:(i + 1) * length], dtype=np.float32).copy() for i, n in enumerate(names)}
        return cls(steps=steps, slots=slots, accepted=accepted)

    def with_slots(self, **slots: np.ndarray) -> ServerState:
        return ServerState(steps=self.steps, slots={**self.slots, **slots}, accepted=self.accepted)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerOptimizerSpec:
    """``kind`` and its hyper-parameters; the learning rate is ``aggregation.server_lr``. ``beta1``:
    FedAvgM's momentum and the adaptive optimisers' first-moment decay; ``beta2``: Adam's and Yogi's
    second-moment decay; ``tau``: the adaptivity (a floor under the step's denominator)."""

    __pydantic_config__ = {"extra": "forbid"}

    kind: ServerKind = "fedavg"
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if self.kind not in SERVER_OPTIMIZERS:
            raise ValueError(f"kind must be one of {', '.join(SERVER_OPTIMIZERS)}, got {self.kind!r}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value < 1.0):
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"tau must be a positive number, got {self.tau!r}")

    @property
    def stateful(self) -> bool:
        return self.kind != "fedavg"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerOptimizer:
    spec: ServerOptimizerSpec
    lr: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"server_lr must be a positive number, got {self.lr!r}")

    def step(self, global_vector: np.ndarray, mean_delta: np.ndarray, state: ServerState) -> tuple[np.ndarray, ServerState]:
        """The new global model and the new state, from the aggregated update `mean_delta`."""
        if np.shape(mean_delta) != np.shape(global_vector):
            raise AggregationError(f"updates have shape {np.shape(mean_delta)}, the global model {np.shape(global_vector)}")
        if not np.all(np.isfinite(mean_delta)):
            raise AggregationError("the mean update holds NaN or infinite values")
        x = np.asarray(global_vector, dtype=np.float64)
        delta = np.asarray(mean_delta, dtype=np.float64)
        kind, spec = self.spec.kind, self.spec
        slots: dict[str, np.ndarray] = {}
        if kind == "fedavg":
            move = delta
        elif kind == "fedavgm":
            m = spec.beta1 * self._slot(state, "m", x, 0.0) + delta
            move, slots["m"] = m, m
        else:
            m = spec.beta1 * self._slot(state, "m", x, 0.0) + (1.0 - spec.beta1) * delta
            v = self._slot(state, "v", x, spec.tau ** 2)
            square = delta * delta
            if kind == "fedadagrad":
                v = v + square
            elif kind == "fedadam":
                v = spec.beta2 * v + (1.0 - spec.beta2) * square
            else:  # fedyogi
                v = v - (1.0 - spec.beta2) * square * np.sign(v - square)
            move = m / (np.sqrt(v) + spec.tau)
            slots["m"], slots["v"] = m, v
        with np.errstate(over="ignore"):
            new = (x + self.lr * move).astype(np.float32)
        if not np.all(np.isfinite(new)):
            raise AggregationError(f"the {kind} step made the global model non-finite (server_lr = {self.lr})")
        kept = {k: v for k, v in state.slots.items() if k == "control"}
        return new, ServerState(
            steps=state.steps + 1, slots={**kept, **{k: v.astype(np.float32) for k, v in slots.items()}},
            accepted=state.accepted)

    @staticmethod
    def _slot(state: ServerState, name: str, like: np.ndarray, initial: float) -> np.ndarray:
        value = state.slots.get(name)
        if value is None:
            return np.full(like.shape, initial, dtype=np.float64)
        if np.shape(value) != like.shape:
            raise StateError(f"server state slot {name} has {np.shape(value)}, the model {like.shape}")
        return np.asarray(value, dtype=np.float64)
