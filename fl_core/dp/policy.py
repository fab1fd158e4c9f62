"""Privacy policies from the federation config: a silo's record-level policy (its budget and how its
DP-SGD is tuned) and the federation's silo-level policy (its budget, clipping and noise)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Literal

from fl_core.dp.accounting import SkellamEvent, epsilon, noise_for_epsilon
from fl_core.dp.distributed import SkellamShares
from fl_core.dp.ledger import PrivacyBudget
from fl_core.specs import DPSGDSpec, TrainSpec, round_event


def _check_policy(policy, clip_name: str, clip: float) -> None:
    """What both policies share: a valid budget, a positive clip, and exactly one of a noise
    multiplier or a target ε (within the budget)."""
    PrivacyBudget(policy.epsilon, policy.delta, policy.accountant)  # validates the three
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"{clip_name} must be a positive number, got {clip!r}")
    z, target = policy.noise_multiplier, policy.target_epsilon
    if (z is None) == (target is None):
        raise ValueError("set exactly one of noise_multiplier and target_epsilon")
    if z is not None and not (math.isfinite(z) and z > 0):
        raise ValueError(f"noise_multiplier must be a positive number, got {z!r}")
    if target is not None and not (0 < target <= policy.epsilon):
        raise ValueError(f"target_epsilon must be in (0, epsilon = {policy.epsilon}], got {target!r}")


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
        _check_policy(self, "max_grad_norm", self.max_grad_norm)

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


@dataclass(frozen=True, slots=True, kw_only=True)
class SiloPrivacy:
    """Silo-level DP (user-level DP-FedAvg, McMahan et al. 2018) for the whole federation:
    ``epsilon``/``delta``/``accountant``: the federation's budget, kept by the coordinator;
    ``clip_norm`` C: each update's L2 bound (``clipping: flat``, or ``per_layer`` with C/√L per
    layer); ``noise_multiplier`` z or ``target_epsilon`` (z chosen so that ``training.rounds``
    rounds reach it): noise of std z·C on the sum of the updates; ``placement``: ``central`` (the
    coordinator adds the noise to the aggregate) or ``distributed`` (each silo adds an integer
    Skellam share under secure aggregation); ``weight_cap``: a silo's weight is min(n / cap, 1),
    every silo weighing 1 without a cap (the weight must stay <= 1 for the sensitivity to be C)."""

    __pydantic_config__ = {"extra": "forbid"}

    epsilon: float
    clip_norm: float
    delta: float = 1e-5
    accountant: Literal["rdp", "prv"] = "rdp"
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    placement: Literal["central", "distributed"] = "central"
    clipping: Literal["flat", "per_layer"] = "flat"
    weight_cap: float | None = None

    def __post_init__(self) -> None:
        _check_policy(self, "clip_norm", self.clip_norm)
        if self.weight_cap is not None and not (math.isfinite(self.weight_cap) and self.weight_cap > 0):
            raise ValueError(f"weight_cap must be a positive number, got {self.weight_cap!r}")
        if self.placement == "distributed" and self.accountant != "rdp":
            raise ValueError("distributed noise (Skellam) is accounted with the rdp accountant only")

    @property
    def budget(self) -> PrivacyBudget:
        return PrivacyBudget(self.epsilon, self.delta, self.accountant)

    def resolved_noise_multiplier(self, rounds: int, sample_rate: float = 1.0) -> float:
        """z: as configured, or the smallest that keeps `rounds` rounds within ``target_epsilon``,
        each round charged at `sample_rate` (1 when every silo takes part in every round; k / n of
        the roster when k silos are sampled per round, see `fl_core.round_policy.SiloLevel`)."""
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        return noise_for_epsilon(self.target_epsilon, self.delta, float(sample_rate), rounds, self.accountant)

    def skellam_shares(self, rounds: int, scale: float, dimension: int, threshold: int) -> SkellamShares:
        """Distributed noise for this policy on a quantiser of `scale` integers per unit; with a
        ``target_epsilon``, z is nudged up until the Skellam accounting (a hair above the
        Gaussian's) of `rounds` rounds with only `threshold` shares stays within the target.
        Remembered: every silo asks the same question in every phase of every round."""
        return _skellam_shares(self, rounds, scale, dimension, threshold)


@functools.lru_cache(maxsize=64)
def _skellam_shares(policy: SiloPrivacy, rounds: int, scale: float, dimension: int, threshold: int) -> SkellamShares:
    shares = SkellamShares(noise_multiplier=policy.resolved_noise_multiplier(rounds), clip_norm=policy.clip_norm,
                           scale=scale, dimension=dimension, threshold=threshold)
    if policy.target_epsilon is not None:
        while True:
            one = shares.event(threshold)
            if epsilon([SkellamEvent(one.variance, one.l2, one.l1, rounds)], policy.delta) <= policy.target_epsilon:
                return shares
            shares = replace(shares, noise_multiplier=shares.noise_multiplier * 1.001)
    return shares
