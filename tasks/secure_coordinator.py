"""The coordinator's secure-aggregation tasks: open the round, then after each silo phase verify
what arrived, fix the next participant set and sign it; finally unmask the sum and take the
FedAvg step. The coordinator holds public keys, commitments and the sum of masked vectors; it
never holds a silo's unmasked update.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from fl_core.dp.distributed import noise_rng
from fl_core.errors import ThresholdError
from fl_core.quorum import require_quorum
from fl_core.secagg import client, crypto, server
from fl_core.secagg.client import RoundContext
from fl_core.secagg.weighting import mean_update
from infra.config import FederationConfig
from infra.dispatch import SiloOutcome
from infra.exchange import exchange_for
from infra.keystore import coordinator_identity
from infra.secagg_channel import COORDINATOR, SecAggChannel
from infra.state import StateDir
from tasks.common import binding
from tasks.coordinator import Aggregate, Participation, RoundPlan, privacy_spent, sort_outcomes
from tasks.privacy import SiloLevel, charge


@dataclass(frozen=True, slots=True, kw_only=True)
class SecureRound:
    """The coordinator's public view of a round in progress."""

    ctx: RoundContext
    length: int
    train: dict[str, dict] = field(default_factory=dict)  # train manifests of the participants
    validations: dict[str, dict] = field(default_factory=dict)
    out: dict[str, str] = field(default_factory=dict)  # silo -> why it is not in the sum
    bytes: dict[str, int] = field(default_factory=dict)  # silo -> bytes it published
    clipped: dict[str, bool] = field(default_factory=dict)
    identities: dict[str, bytes] = field(default_factory=dict, repr=False)
    adverts: server.Adverts | None = None
    shares: server.Shares | None = None
    masked: server.Masked | None = None


def _channel(config: FederationConfig, state: StateDir, round_number: int) -> SecAggChannel:
    return SecAggChannel(exchange_for(config, state), round_number)


def _sign_set(config: FederationConfig, state: StateDir, sr: SecureRound, name: str, body: dict) -> None:
    envelope = crypto.seal(coordinator_identity(state), sr.ctx.header(name, COORDINATOR), body)
    _channel(config, state, sr.ctx.round_number).publish_set(name, envelope)


def _answered(sr: SecureRound, outcomes: list[SiloOutcome], phase: str, federation: str) -> tuple[SecureRound, list[str]]:
    """Fold a phase's outcomes into the round: who answered, who dropped (and why), bytes sent."""
    got = sort_outcomes(outcomes, federation, sr.ctx.round_number, phase)
    out = {**sr.out, **{s: f"dropped at {phase}: {why}" for s, why in got.out.items()}}
    sent = dict(sr.bytes)
    for silo, manifest in got.manifests.items():
        sent[silo] = sent.get(silo, 0) + int(manifest.get("bytes", 0))
    return replace(sr, out=out, bytes=sent), got.silos_in


def _refused(sr: SecureRound, phase: str, rejected: dict[str, str]) -> SecureRound:
    """Silos whose messages failed a check: logged now, and out of the round from here on."""
    logger = get_run_logger()
    for silo, why in sorted(rejected.items()):
        logger.warning("round %d %s: %s rejected and treated as dropped: %s", sr.ctx.round_number, phase, silo, why)
    return replace(sr, out={**sr.out, **{s: f"refused at {phase}: {why}" for s, why in rejected.items()}})


def _threshold(sr: SecureRound, phase: str, exc: ThresholdError) -> ThresholdError:
    reasons = "; ".join(f"{s}: {why}" for s, why in sorted(sr.out.items())) or "no silo answered"
    return ThresholdError(f"round {sr.ctx.round_number} {phase}: {exc} ({reasons})")


@task(name="secure-open", cache_policy=NONE, persist_result=False)
def secure_open(config: FederationConfig, state: StateDir, plan: RoundPlan, n_parameters: int) -> SecureRound:
    """Publish the coordinator's identity and the round's signed plan (roster, threshold, length)."""
    spec = config.aggregation.secure
    ctx = RoundContext(
        federation=config.federation, round_number=plan.round_number, roster=tuple(config.silo_ids),
        threshold=spec.threshold_for(len(config.silo_ids)),
    )
    sr = SecureRound(ctx=ctx, length=n_parameters + 1)
    channel = _channel(config, state, plan.round_number)
    channel.publish_identity(COORDINATOR, crypto.identity_public(coordinator_identity(state)))
    body = {
        "roster": list(ctx.roster), "threshold": ctx.threshold, "length": sr.length,
        "clip_norm": spec.clip_norm, "bits": spec.bits,
    }
    level = SiloLevel.of(config, n_parameters)
    if level is not None:
        body["privacy"] = level.plan()
    _sign_set(config, state, sr, "plan", body)
    return sr


@task(name="secure-keys", cache_policy=NONE, persist_result=False)
def secure_keys(config: FederationConfig, state: StateDir, sr: SecureRound, outcomes: list[SiloOutcome]) -> SecureRound:
    """Verify the advertised keys (U1) and announce U1 with identities and the weight scale."""
    got = sort_outcomes(outcomes, config.federation, sr.ctx.round_number, "train")
    sr = replace(sr, train=got.manifests, validations=got.validations,
                 out={s: f"dropped at train: {why}" for s, why in got.out.items()})
    sr = replace(sr, bytes={s: int(m.get("bytes", 0)) for s, m in got.manifests.items()})
    require_quorum(got.silos_in, sr.out, config.aggregation.min_silos, f"round {sr.ctx.round_number} training")
    channel = _channel(config, state, sr.ctx.round_number)
    identities = channel.identities(got.silos_in)
    try:
        adverts = server.collect_adverts(sr.ctx, channel.read(client.KEYS, got.silos_in), identities)
    except ThresholdError as exc:
        raise _threshold(sr, "keys", exc) from None
    sr = _refused(sr, "keys", adverts.rejected)
    require_quorum(adverts.u1, sr.out, config.aggregation.min_silos, f"round {sr.ctx.round_number} keys")
    weight_scale = max(float(sr.train[s]["n_samples"]) for s in adverts.u1)
    _sign_set(config, state, sr, "u1", {
        "u1": adverts.u1, "identities": {s: crypto.b64(identities[s]) for s in adverts.u1}, "weight_scale": weight_scale,
    })
    return replace(sr, adverts=adverts, identities={s: identities[s] for s in adverts.u1})


@task(name="secure-shares", cache_policy=NONE, persist_result=False)
def secure_shares(config: FederationConfig, state: StateDir, sr: SecureRound, outcomes: list[SiloOutcome]) -> SecureRound:
    sr, answered = _answered(sr, outcomes, "shares", config.federation)
    channel = _channel(config, state, sr.ctx.round_number)
    try:
        shares = server.collect_shares(sr.ctx, sr.adverts.u1, channel.read(client.SHARES, answered), sr.identities)
    except ThresholdError as exc:
        raise _threshold(sr, "shares", exc) from None
    sr = _refused(sr, "shares", shares.rejected)
    require_quorum(shares.u2, sr.out, config.aggregation.min_silos, f"round {sr.ctx.round_number} shares")
    _sign_set(config, state, sr, "u2", {"u2": shares.u2})
    return replace(sr, shares=shares)


@task(name="secure-masked", cache_policy=NONE, persist_result=False)
def secure_masked(config: FederationConfig, state: StateDir, sr: SecureRound, outcomes: list[SiloOutcome]) -> SecureRound:
    """Verify and sum the masked inputs; announce the survivors and the dropped (U3, D)."""
    sr, answered = _answered(sr, outcomes, "masked", config.federation)
    clipped = {s: bool(m.get("clipped")) for s, m in sort_outcomes(outcomes, config.federation, sr.ctx.round_number, "masked").manifests.items()}
    channel = _channel(config, state, sr.ctx.round_number)
    try:
        masked = server.collect_masked(sr.ctx, sr.shares.u2, channel.read_masked(answered), sr.identities, sr.length)
    except ThresholdError as exc:
        raise _threshold(sr, "masked input", exc) from None
    sr = _refused(sr, "masked input", masked.rejected)
    require_quorum(masked.survivors, sr.out, config.aggregation.min_silos, f"round {sr.ctx.round_number} masked input")
    _sign_set(config, state, sr, "u3", {"survivors": masked.survivors, "dropped": masked.dropped})
    return replace(sr, masked=masked, clipped=clipped)


@task(name="secure-unmask", cache_policy=NONE, persist_result=False)
def secure_unmask(
    config: FederationConfig, state: StateDir, sr: SecureRound, plan: RoundPlan, outcomes: list[SiloOutcome]
) -> Aggregate:
    """Remove the masks, decode the sum, take the FedAvg step and publish the new global model."""
    began = time.perf_counter()
    sr, answered = _answered(sr, outcomes, "unmask", config.federation)
    r = sr.ctx.round_number
    channel = _channel(config, state, r)
    reveals = channel.read(client.UNMASK, [s for s in answered if s in sr.masked.survivors])
    try:
        result = server.unmask(sr.ctx, sr.masked, sr.adverts, sr.shares, reveals, sr.identities)
    except ThresholdError as exc:
        raise _threshold(sr, "unmasking", exc) from None
    decoded = config.aggregation.secure.quantizer().decode_sum(result.total)
    survivors = result.survivors
    level = SiloLevel.of(config, plan.n_parameters)
    if level is not None and level.central_std() > 0:  # central placement: noise on the decoded weighted sum
        decoded[:-1] += noise_rng().normal(0.0, level.central_std(), size=len(decoded) - 1)
    mean_delta, _ = mean_update(decoded)
    del decoded
    exchange = exchange_for(config, state)
    start = exchange.get_vector(plan.global_ref, expect={"federation": config.federation, "round": r - 1, "phase": "global"})
    new_global = config.aggregation.fedavg().apply(start, mean_delta)
    privacy = None
    if level is not None:
        clipped = sum(1 for s in survivors if sr.clipped.get(s)) / len(survivors)
        privacy = charge(config, state, level, r, level.event(len(survivors)), clipped)
    ref = exchange.put_vector(exchange.global_key(r), new_global, binding(config.federation, r, "global"))
    training = Participation(
        manifests={s: sr.train[s] for s in survivors},
        out={s: why for s, why in sr.out.items() if s not in survivors},
        validations=sr.validations,
    )
    stats = {
        "masked": len(survivors),
        "dropped": len(sr.adverts.u1) - len(survivors),
        "recovered": len(result.recovered),
        "recovered_silos": result.recovered,
        "threshold": sr.ctx.threshold,
        "bytes": sr.bytes,
        "clipped": sorted(s for s, c in sr.clipped.items() if c and s in survivors),
    }
    return Aggregate(global_ref=ref, training=training, aggregate_s=time.perf_counter() - began, secure=stats,
                     privacy=privacy, spent=privacy_spent(sr.train))
