"""The whole protocol in one process: every silo's four phases and the coordinator's checks, with
silos dropping out at any phase. Tests use it for correctness and privacy properties; benchmarks
for timing. The pipeline runs the same client and server functions, phase by phase, through the
exchange."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fl_core.secagg import client, crypto, server
from fl_core.secagg.client import RoundContext

PHASES = (client.KEYS, client.SHARES, client.MASKED, client.UNMASK)


@dataclass(frozen=True, slots=True, kw_only=True)
class Transcript:
    """What the coordinator held at the end of a round (for privacy tests)."""

    adverts: server.Adverts
    shares: server.Shares
    masked: server.Masked
    masked_vectors: dict[str, np.ndarray]
    result: server.Unmasked
    seconds: dict[str, float] = field(default_factory=dict)  # "<phase>.silos" (summed) and "<phase>.server"


def identities_for(ctx: RoundContext) -> dict[str, Ed25519PrivateKey]:
    return {silo: crypto.new_identity() for silo in ctx.roster}


def run_round(
    ctx: RoundContext,
    inputs: Mapping[str, np.ndarray],
    drop: Mapping[str, str] | None = None,
    identities: Mapping[str, Ed25519PrivateKey] | None = None,
) -> Transcript:
    """Run one round. ``drop[silo] = phase`` makes that silo send nothing from that phase on.

    The coordinator forwards each silo's ciphertexts to it in a bundle it signs with an identity
    of its own (made here), and each silo verifies its bundle before masking, as in the pipeline.
    The transcript's ``seconds`` holds each phase's work: all silos' summed and the coordinator's
    (forwarding and signing the bundles count to the coordinator's shares phase, opening one's
    bundle to the silos' masked phase; identity set-up and the simulation's own bookkeeping are
    outside every phase)."""
    drop = dict(drop or {})
    for silo, phase in drop.items():
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r} for {silo}")
    identities = dict(identities or identities_for(ctx))
    public = {silo: crypto.identity_public(key) for silo, key in identities.items()}
    coordinator = crypto.new_identity()
    coordinator_public = crypto.identity_public(coordinator)
    length = len(next(iter(inputs.values())))

    def active(silo: str, phase: str) -> bool:
        return silo not in drop or PHASES.index(phase) < PHASES.index(drop[silo])

    seconds = {f"{phase}.{party}": 0.0 for phase in PHASES for party in ("silos", "server")}

    def timed(key: str, step, *args):
        start = time.perf_counter()
        out = step(*args)
        seconds[key] += time.perf_counter() - start
        return out

    states, adverts = {}, {}
    for silo in ctx.roster:
        if silo in inputs and active(silo, client.KEYS):
            states[silo], adverts[silo] = timed("keys.silos", client.advertise, ctx, silo, identities[silo])
    collected_adverts = timed("keys.server", server.collect_adverts, ctx, adverts, public)

    share_messages = {}
    for silo in collected_adverts.u1:
        if active(silo, client.SHARES):
            states[silo], share_messages[silo] = timed(
                "shares.silos", client.share_keys, ctx, states[silo], identities[silo], collected_adverts.u1, adverts, public
            )
    collected_shares = timed("shares.server", server.collect_shares, ctx, collected_adverts.u1, share_messages, public)

    def forward() -> dict[str, crypto.Envelope]:
        return {recipient: server.seal_forwarded(ctx, coordinator, recipient, ciphertexts)
                for recipient, ciphertexts in server.forward_shares(ctx, collected_shares).items()}

    bundles = timed("shares.server", forward)

    def mask(silo: str):
        forwarded = client.open_forwarded(bundles[silo], coordinator_public, federation=ctx.federation,
                                          round_number=ctx.round_number, recipient=silo)
        return client.masked_input(ctx, states[silo], identities[silo], collected_shares.u2, forwarded, inputs[silo])

    masked = {}
    for silo in collected_shares.u2:
        if active(silo, client.MASKED):
            states[silo], envelope, vector = timed("masked.silos", mask, silo)
            masked[silo] = (envelope, vector)
    collected_masked = timed("masked.server", server.collect_masked, ctx, collected_shares.u2, masked, public, length)

    reveals = {}
    for silo in collected_masked.survivors:
        if active(silo, client.UNMASK):
            states[silo], reveals[silo] = timed(
                "unmask.silos", client.unmask,
                ctx, states[silo], identities[silo], collected_masked.survivors, collected_masked.dropped,
            )
    result = timed("unmask.server", server.unmask, ctx, collected_masked, collected_adverts, collected_shares, reveals, public)
    return Transcript(
        adverts=collected_adverts, shares=collected_shares, masked=collected_masked,
        masked_vectors={s: v for s, (_, v) in masked.items()}, result=result, seconds=seconds,
    )
