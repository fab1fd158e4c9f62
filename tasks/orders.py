"""A silo's side of the signed dispatch: the coordinator's order checked before the silo acts on it,
and the manifest the silo returns signed with its own identity (see infra/dispatch.py)."""

from __future__ import annotations

from infra.dispatch import open_order, seal_manifest
from infra.exchange import Exchange
from infra.keystore import silo_identity
from infra.secagg_channel import SecAggChannel, pinned_coordinator
from infra.state import StateDir


def coordinator_key(exchange: Exchange, state: StateDir, silo_id: str) -> bytes:
    """The coordinator's public key as this silo pinned it (at `fedsilo silo init`, or on first sight)."""
    return pinned_coordinator(SecAggChannel(exchange, 0), state.silo(silo_id) / "trust")


def verify_order(exchange: Exchange, state: StateDir, silo_id: str, round_number: int, phase: str,
                 order: dict) -> dict:
    """The references of the coordinator's order, once its signature and binding check out."""
    return open_order(order, coordinator_key(exchange, state, silo_id), exchange.federation, round_number, phase,
                      silo_id)


def sign_manifest(state: StateDir, silo_id: str, manifest: dict) -> dict:
    return seal_manifest(silo_identity(state, silo_id), manifest)
