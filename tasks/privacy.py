"""The federation's privacy ledger on the coordinator's side (silo-level DP-FedAvg, McMahan et al.
2018): refuse a round before any silo trains if its worst case would pass the budget
(`refuse_if_over`), and charge the round with the noise actually present (`charge`) just before its
global model is published. What every party derives alike — z, per-layer clipping, each silo's
Skellam share — is the round policy's `fl_core.round_policy.SiloLevel`."""

from __future__ import annotations

from prefect import get_run_logger

from fl_core.dp.accounting import Event
from fl_core.messages import FederationPrivacy
from fl_core.round_policy import SiloLevel
from infra.config import FederationConfig
from infra.privacy_store import FEDERATION, LedgerStore
from infra.state import StateDir


def federation_ledger(config: FederationConfig, state: StateDir) -> LedgerStore:
    return LedgerStore(state, FEDERATION, config.federation)


def refuse_if_over(config: FederationConfig, state: StateDir, level: SiloLevel, round_number: int) -> None:
    """Raise `BudgetExceeded` if round `round_number`, at its least noise, would pass the budget."""
    ledger = federation_ledger(config, state).open(level.policy.budget)
    ledger.charge(round_number, level.event())  # a dry run: raises, or returns a ledger left unsaved


def charge(config: FederationConfig, state: StateDir, level: SiloLevel, round_number: int, event: Event,
           clipped_fraction: float) -> FederationPrivacy:
    """Charge the federation's ledger for a released aggregate; the round's privacy summary."""
    store = federation_ledger(config, state)
    charged = store.open(level.policy.budget).charge(round_number, event)
    store.save(charged)
    policy = level.policy
    summary = FederationPrivacy(
        epsilon=charged.charges[-1].epsilon_after, budget=policy.epsilon, delta=policy.delta,
        accountant=policy.accountant, placement=policy.placement, noise_multiplier=float(event.noise_multiplier),
        clip_norm=policy.clip_norm, clipped_fraction=clipped_fraction, noise_shares=level.noise_shares(event),
    )
    get_run_logger().info(
        "silo-level DP (%s): ε = %.3f of %g spent (δ = %g, z = %.3f, C = %g)", policy.placement, summary.epsilon,
        policy.epsilon, policy.delta, summary.noise_multiplier, policy.clip_norm,
    )
    return summary
