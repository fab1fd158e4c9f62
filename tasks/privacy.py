"""Silo-level DP in a round (user-level DP-FedAvg, McMahan et al. 2018), as the coordinator and
the silos both derive it from the federation config.

- What every party computes alike (`SiloLevel.of`): the noise multiplier z, the layer sizes for
  per-layer clipping and, with distributed noise, each silo's Skellam share.
- What only the coordinator does: keep the federation's ledger (`coordinator/privacy/`), refuse a
  round before any silo trains if its worst case would pass the budget (`refuse_if_over`), add the
  central noise, and charge the round with the noise actually present (`charge`) before the new
  global model is published.

Clipping and noise wrap the aggregation (see `fl_core.dp.fedavg`); the merge rule never knows.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from prefect import get_run_logger

from fl_core.dp.accounting import Event, GaussianEvent
from fl_core.dp.distributed import SkellamShares
from fl_core.dp.fedavg import capped_weights, clip_update
from fl_core.dp.policy import SiloPrivacy
from fl_core.preprocess import FeatureEncoder
from infra.config import FederationConfig
from infra.privacy_store import FEDERATION, LedgerStore
from infra.state import StateDir


@dataclass(frozen=True, slots=True, kw_only=True)
class SiloLevel:
    policy: SiloPrivacy
    noise_multiplier: float  # z, at the configured placement (distributed: with `threshold` shares)
    layers: tuple[int, ...] | None  # parameter sizes, for per-layer clipping
    shares: SkellamShares | None  # distributed placement
    sensitivity: float  # central placement: the L2 bound of one silo's influence on the sum, in update units

    @classmethod
    def of(cls, config: FederationConfig, n_parameters: int) -> SiloLevel | None:
        policy = config.aggregation.privacy
        if policy is None:
            return None
        rounds = config.training.rounds
        layers = None
        if policy.clipping == "per_layer":
            layers = _layer_sizes(config.model, config.contract.features)
        secure = config.aggregation.mode == "secure"
        scale = config.aggregation.secure.quantizer().scale
        shares = None
        if policy.placement == "distributed":
            threshold = config.aggregation.secure.threshold_for(len(config.silo_ids))
            shares = policy.skellam_shares(rounds, scale, n_parameters, threshold)
            z = shares.noise_multiplier
        else:
            z = policy.resolved_noise_multiplier(rounds)
        # Stochastic rounding moves each coordinate of a securely summed update by < one step.
        sensitivity = policy.clip_norm + (math.sqrt(n_parameters) / scale if secure else 0.0)
        return cls(policy=policy, noise_multiplier=z, layers=layers, shares=shares, sensitivity=sensitivity)

    # -- silo side ---------------------------------------------------------------------------------
    def weight(self, n_samples: int) -> float:
        return capped_weights([n_samples], self.policy.weight_cap)[0]

    def clip(self, delta: np.ndarray) -> tuple[np.ndarray, bool]:
        return clip_update(delta, self.policy.clip_norm, self.layers)

    def plan(self) -> dict:
        """What the coordinator's signed plan states, for every silo to check against its config."""
        return {"placement": self.policy.placement, "clip_norm": self.policy.clip_norm,
                "noise_multiplier": self.noise_multiplier, "clipping": self.policy.clipping,
                "weight_cap": self.policy.weight_cap}

    # -- coordinator side --------------------------------------------------------------------------
    def central_std(self) -> float:
        """The std of the coordinator's Gaussian noise on the weighted sum (0 when distributed)."""
        return 0.0 if self.shares is not None else self.noise_multiplier * self.sensitivity

    def event(self, shares_in_sum: int | None = None) -> Event:
        """A round's release: Gaussian (central) or Skellam with the shares actually summed."""
        if self.shares is None:
            return GaussianEvent(self.noise_multiplier, 1.0, 1)
        return self.shares.event(self.shares.threshold if shares_in_sum is None else shares_in_sum)


@functools.lru_cache(maxsize=16)
def _layer_sizes(model_spec, features) -> tuple[int, ...]:
    """Parameter sizes in flattening order (built once per model and contract, not per phase)."""
    from fl_core.models import build_model  # here: a protocol phase without silo-level DP needs no torch

    model = build_model(model_spec, FeatureEncoder(features).n_outputs, seed=0)
    return tuple(p.numel() for p in model.parameters())


def federation_ledger(config: FederationConfig, state: StateDir) -> LedgerStore:
    return LedgerStore(state, FEDERATION, config.federation)


def refuse_if_over(config: FederationConfig, state: StateDir, level: SiloLevel, round_number: int) -> None:
    """Raise `BudgetExceeded` if round `round_number`, at its least noise, would pass the budget."""
    ledger = federation_ledger(config, state).open(level.policy.budget)
    ledger.charge(round_number, level.event())  # a dry run: raises, or returns a ledger left unsaved


def charge(config: FederationConfig, state: StateDir, level: SiloLevel, round_number: int, event: Event,
           clipped_fraction: float) -> dict:
    """Charge the federation's ledger for a released aggregate; the round's privacy summary."""
    store = federation_ledger(config, state)
    charged = store.open(level.policy.budget).charge(round_number, event)
    store.save(charged)
    policy = level.policy
    summary = {
        "epsilon": charged.charges[-1].epsilon_after,
        "budget": policy.epsilon,
        "delta": policy.delta,
        "accountant": policy.accountant,
        "placement": policy.placement,
        "noise_multiplier": float(event.noise_multiplier),
        "clip_norm": policy.clip_norm,
        "clipped_fraction": clipped_fraction,
    }
    if level.shares is not None:
        summary["noise_shares"] = round(event.variance / level.shares.share_variance)
    get_run_logger().info(
        "silo-level DP (%s): ε = %.3f of %g spent (δ = %g, z = %.3f, C = %g)", policy.placement, summary["epsilon"],
        policy.epsilon, policy.delta, summary["noise_multiplier"], policy.clip_norm,
    )
    return summary
