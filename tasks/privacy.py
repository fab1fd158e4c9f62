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


def refuse_if_over(config: FederationConfig, state: StateDir, level: SiloLevel, round_number: int,
                   sample_rate: float = 1.0) -> None:
    """Raise `BudgetExceeded` if round `round_number`, at its least noise (distributed: only the
    threshold's shares) and with `sample_rate` of the eligible silos drawn, would pass the budget."""
    ledger = federation_ledger(config, state).open(level.policy.budget)
    ledger.charge(round_number, level.event(sample_rate=sample_rate))  # a dry run: raises, or returns a ledger left unsaved


def charge(config: FederationConfig, state: StateDir, level: SiloLevel, round_number: int, event: Event,
           clipped_fraction: float) -> FederationPrivacy:
    """Charge the federation's ledger for a released aggregate; the round's privacy summary."""
    store = federation_ledger(config, state)
    charged = store.open(level.policy.budget).charge(round_number, event)
    store.save(charged)
    policy = level.policy
    # With sampling, the amplified ε holds only against whoever does not learn the sample; the ε of the
    # same charges at q = 1 holds against everyone (see fl_core.round_policy.SiloLevel): recorded beside it.
    sampled = any(0 < e.sample_rate < 1 for e in charged.events)
    summary = FederationPrivacy(
        epsilon=charged.charges[-1].epsilon_after, budget=policy.epsilon, delta=policy.delta,
        accountant=policy.accountant, placement=policy.placement, noise_multiplier=float(event.noise_multiplier),
        clip_norm=policy.clip_norm, clipped_fraction=clipped_fraction, noise_shares=level.noise_shares(event),
        sample_rate=float(event.sample_rate),
        epsilon_without_sampling=charged.spent_without_sampling() if sampled else None,
    )
    get_run_logger().info(
        "silo-level DP (%s): ε = %.3f of %g spent (δ = %g, z = %.3f, C = %g%s)", policy.placement, summary.epsilon,
        policy.epsilon, policy.delta, summary.noise_multiplier, policy.clip_norm,
        "" if not sampled else f", q = {summary.sample_rate:.3g}; ε = {summary.epsilon_without_sampling:.3f} "
                               "against a party that knows who was sampled",
    )
    return summary
