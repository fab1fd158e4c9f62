"""The coordinator's side of secure aggregation: verify what each phase brings, keep the
participant sets, sum the masked inputs and remove the masks.

Each ``collect_*`` verifies every message (sender, binding, signature, shape) and returns the
accepted silos and, for each refused one, why; a refused silo counts as dropped from then on.
Between the shares and the masked phase the coordinator forwards to each silo of U2 only the
ciphertexts addressed to it (`forward_shares`, `seal_forwarded`; Bonawitz et al., §4), which the
silo checks by authenticated decryption (see `fl_core.secagg.client` for why that suffices). The
coordinator never holds a single silo's unmasked input: it sums masked vectors, and unmasking
reconstructs only the survivors' self-mask seeds and the dropped silos' mask keys (Bonawitz et al.,
CCS 2017). Every reconstructed secret is checked against a public commitment (the advertised mask
public key; the hash of the self-mask seed), so a wrong share makes the round fail, never a
silently wrong sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fl_core.errors import SecAggError, ThresholdError, UnknownSilo, WrongLength, WrongSender
from fl_core.secagg import crypto, prg, shamir
from fl_core.secagg.client import COORDINATOR, FORWARDED, MASKED, SHARES, UNMASK, RoundContext, read_advert


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Adverts:
    keys: dict[str, dict[str, bytes]]
    rejected: dict[str, str] = field(default_factory=dict)

    @property
    def u1(self) -> list[str]:
        return list(self.keys)


def collect_adverts(ctx: RoundContext, adverts: Mapping[str, crypto.Envelope], identities: Mapping[str, bytes]) -> Adverts:
    keys, rejected = {}, {}
    for silo in sorted(adverts, key=lambda s: ctx.x(s) if s in ctx.roster else 10**9):
        try:
            if silo not in identities:
                raise UnknownSilo(f"{silo!r} has no identity in the roster")
            ctx.x(silo)
            keys[silo] = read_advert(ctx, silo, adverts[silo], identities[silo])
        except SecAggError as exc:
            rejected[silo] = _reason(exc)
    if len(keys) < ctx.threshold:
        raise ThresholdError(f"{len(keys)} silos advertised valid keys, the threshold is {ctx.threshold}")
    return Adverts(keys=keys, rejected=rejected)


@dataclass(frozen=True, slots=True, kw_only=True)
class Shares:
    commitments: dict[str, str]
    rejected: dict[str, str] = field(default_factory=dict)
    ciphertexts: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)  # sender -> receiver -> base64

    @property
    def u2(self) -> list[str]:
        return list(self.commitments)


def collect_shares(
    ctx: RoundContext, u1: Sequence[str], shares: Mapping[str, crypto.Envelope], identities: Mapping[str, bytes]
) -> Shares:
    members = ctx.check_set("U1", u1)
    commitments, rejected, accepted = {}, {}, {}
    for silo in sorted(shares, key=lambda s: ctx.x(s) if s in ctx.roster else 10**9):
        try:
            if silo not in members:
                raise UnknownSilo(f"{silo!r} is not in U1")
            body = crypto.open_envelope(
                shares[silo], identities[silo], federation=ctx.federation, round_number=ctx.round_number,
                phase=SHARES, sender=silo,
            )
            ciphertexts = body.get("ciphertexts")
            if not isinstance(ciphertexts, dict):
                raise WrongLength(f"{silo}'s ciphertexts are malformed")
            receivers = set(ciphertexts)
            expected = set(members) - {silo}
            if receivers != expected:
                raise UnknownSilo(f"{silo} sent shares for {sorted(receivers ^ expected)} against U1")
            if not all(isinstance(blob, str) for blob in ciphertexts.values()):
                raise WrongLength(f"{silo}'s ciphertexts are malformed")
            commitment = body.get("commitment")
            if not isinstance(commitment, str) or len(commitment) != 64:
                raise WrongLength(f"{silo}'s seed commitment is malformed")
            commitments[silo] = commitment
            accepted[silo] = dict(ciphertexts)
        except SecAggError as exc:
            rejected[silo] = _reason(exc)
    if len(commitments) < ctx.threshold:
        raise ThresholdError(f"{len(commitments)} silos shared their keys, the threshold is {ctx.threshold}")
    return Shares(commitments=commitments, rejected=rejected, ciphertexts=accepted)


def forward_shares(ctx: RoundContext, shares: Shares) -> dict[str, dict[str, str]]:
    """recipient -> {sender -> base64 ciphertext} for every recipient and every other sender in U2:
    what each silo of U2 is sent for the masked-input phase (only its own ciphertexts)."""
    u2 = ctx.check_set("U2", shares.u2)
    return {recipient: {sender: shares.ciphertexts[sender][recipient] for sender in u2 if sender != recipient}
            for recipient in u2}


def seal_forwarded(
    ctx: RoundContext, identity: Ed25519PrivateKey, recipient: str, ciphertexts: Mapping[str, str]
) -> crypto.Envelope:
    """The coordinator's signed bundle of `recipient`'s ciphertexts, bound to the round's federation
    (or bucket instance), round, phase and recipient (`client.open_forwarded` checks all four)."""
    ctx.x(recipient)
    return crypto.seal(identity, ctx.header(FORWARDED, COORDINATOR), {"recipient": recipient, "ciphertexts": dict(ciphertexts)})


@dataclass(frozen=True, slots=True, kw_only=True)
class Masked:
    total: np.ndarray  # Σ of the survivors' masked vectors, uint32
    survivors: list[str]
    dropped: list[str]  # U2 \ survivors
    rejected: dict[str, str] = field(default_factory=dict)
    reported: dict[str, list[str]] = field(default_factory=dict)  # silo -> peers whose shares it could not use


def collect_masked(
    ctx: RoundContext,
    u2: Sequence[str],
    masked: Mapping[str, tuple[crypto.Envelope, np.ndarray | None]],
    identities: Mapping[str, bytes],
    length: int,
) -> Masked:
    """Verify and sum the masked inputs. A silo that a peer reports as having sent bad shares is
    dropped too (its input is left out and its mask key recovered instead)."""
    members = ctx.check_set("U2", u2)
    accepted, rejected, reported = [], {}, {}
    for silo in sorted(masked, key=lambda s: ctx.x(s) if s in ctx.roster else 10**9):
        envelope, vector = masked[silo]
        try:
            if silo not in members:
                raise UnknownSilo(f"{silo!r} is not in U2")
            if vector is None:
                raise WrongLength(f"{silo}'s masked vector is missing or unreadable")
            if vector.dtype != np.uint32 or vector.shape != (length,):
                raise WrongLength(f"{silo}'s masked vector has shape {vector.shape} and dtype {vector.dtype}, expected ({length},) uint32")
            body = crypto.open_envelope(
                envelope, identities[silo], federation=ctx.federation, round_number=ctx.round_number,
                phase=MASKED, sender=silo, vector=vector,
            )
            if body.get("length") != length:
                raise WrongLength(f"{silo} declares length {body.get('length')}, expected {length}")
            bad = body.get("bad_senders", [])
            if not isinstance(bad, list) or not all(isinstance(v, str) for v in bad):
                raise WrongLength(f"{silo}'s bad_senders field is malformed")
            for v in bad:
                if v not in members:
                    raise UnknownSilo(f"{silo} reports {v!r}, which is not in U2")
            reported[silo] = list(bad)
            accepted.append(silo)
        except SecAggError as exc:
            rejected[silo] = _reason(exc)
    accused = {v for peers in reported.values() for v in peers}
    for v in sorted(accused & set(accepted)):
        rejected[v] = "dropped: a peer could not use the shares it sent"
    survivors = [s for s in accepted if s not in accused]
    if len(survivors) < ctx.threshold:
        raise ThresholdError(f"{len(survivors)} masked inputs survive, the threshold is {ctx.threshold}")
    total = np.zeros(length, dtype=np.uint32)
    for silo in survivors:
        np.add(total, masked[silo][1], out=total)
    dropped = [s for s in members if s not in survivors]
    return Masked(total=total, survivors=survivors, dropped=dropped, rejected=rejected, reported=reported)


@dataclass(frozen=True, slots=True, kw_only=True)
class Unmasked:
    total: np.ndarray  # Σ of the survivors' quantised inputs, uint32
    survivors: list[str]
    recovered: list[str]  # dropped silos whose pairwise masks were removed
    revealers: list[str]
    rejected: dict[str, str] = field(default_factory=dict)


def _reconstruct(ctx: RoundContext, shares: dict[int, int], check, what: str, cache: dict) -> bytes:
    """The secret from `shares` that passes `check`; tries the next window of t shares on failure."""
    xs = sorted(shares)
    if len(xs) < ctx.threshold:
        raise ThresholdError(f"{len(xs)} shares of {what}, the threshold is {ctx.threshold}")
    for start in range(0, len(xs) - ctx.threshold + 1):
        window = tuple(xs[start : start + ctx.threshold])
        if window not in cache:
            cache[window] = shamir.lagrange_at_zero(window)
        try:
            secret = shamir.combine({x: shares[x] for x in window}, ctx.threshold, cache[window])
        except WrongLength:
            continue
        if check(secret):
            return secret
    raise SecAggError(f"the revealed shares do not reconstruct {what}; the round cannot be unmasked")


def unmask(
    ctx: RoundContext,
    masked: Masked,
    adverts: Adverts,
    shares: Shares,
    reveals: Mapping[str, crypto.Envelope],
    identities: Mapping[str, bytes],
) -> Unmasked:
    """Remove every mask from ``masked.total``: survivors' self masks (from their reconstructed
    seeds) and the pairwise masks survivors share with dropped silos (from the dropped silos'
    reconstructed mask keys)."""
    survivors, dropped = masked.survivors, masked.dropped
    seed_shares: dict[str, dict[int, int]] = {u: {} for u in survivors}
    mask_shares: dict[str, dict[int, int]] = {v: {} for v in dropped}
    revealers, rejected = [], {}
    for silo in sorted(reveals, key=lambda s: ctx.x(s) if s in ctx.roster else 10**9):
        try:
            if silo not in survivors:
                raise UnknownSilo(f"{silo!r} is not a survivor; it cannot reveal shares")
            body = crypto.open_envelope(
                reveals[silo], identities[silo], federation=ctx.federation, round_number=ctx.round_number,
                phase=UNMASK, sender=silo,
            )
            seeds, keys = body.get("seed_shares", {}), body.get("mask_shares", {})
            if set(seeds) - set(survivors) or set(keys) - set(dropped):
                raise UnknownSilo(f"{silo} revealed shares for silos outside the survivor/dropped lists")
            if set(seeds) & set(keys):
                raise WrongSender(f"{silo} revealed both shares of one silo")
            parsed_seeds = {u: int(v, 16) for u, v in seeds.items()}
            parsed_keys = {v: int(k, 16) for v, k in keys.items()}
        except (SecAggError, TypeError, ValueError, AttributeError) as exc:
            rejected[silo] = _reason(exc) if isinstance(exc, SecAggError) else f"WrongLength: malformed shares from {silo}"
            continue
        x = ctx.x(silo)
        for u, share in parsed_seeds.items():
            seed_shares[u][x] = share
        for v, share in parsed_keys.items():
            mask_shares[v][x] = share
        revealers.append(silo)
    if len(revealers) < ctx.threshold:
        raise ThresholdError(f"{len(revealers)} survivors revealed their shares, the threshold is {ctx.threshold}")

    cache: dict = {}
    subtract, add = [], []
    position, keys = ctx.positions(), ctx.round_keys()
    for u in survivors:
        seed = _reconstruct(
            ctx, seed_shares[u],
            lambda s, u=u: keys.commitment(s, u) == shares.commitments[u],
            f"{u}'s self-mask seed", cache,
        )
        subtract.append(keys.self_mask_key(seed, u))
    for v in dropped:
        key = _reconstruct(
            ctx, mask_shares[v], lambda k, v=v: crypto.x25519_public(k) == adverts.keys[v]["mask"],
            f"{v}'s mask key", cache,
        )
        agree = crypto.agreement(key)
        for u in survivors:
            low, high = (u, v) if position[u] < position[v] else (v, u)
            pair = keys.pair_mask_key(agree(adverts.keys[u]["mask"]), low, high)
            # u added sign(u, v) * PRG(pair); take it back out.
            (subtract if low == u else add).append(pair)
    total = np.array(masked.total, dtype=np.uint32, copy=True)
    prg.apply_masks_inplace(total, add=add, subtract=subtract)
    return Unmasked(total=total, survivors=list(survivors), recovered=list(dropped), revealers=revealers, rejected=rejected)
