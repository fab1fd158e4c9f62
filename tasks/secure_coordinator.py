"""The coordinator's secure-aggregation tasks: open the round, then after each silo phase verify
what arrived, fix the next participant set and sign it; finally unmask the sum and take the
FedAvg step. The coordinator holds public keys, commitments and the sum of masked vectors; it
never holds a silo's unmasked update.

In ``bucketed`` mode the same tasks run one instance of the protocol per bucket (the buckets are
the seeded shuffle `FederationConfig.buckets`, announced in the round's signed plan and checked by
every silo): a bucket that falls below its threshold leaves the round — its silos counted out with
the reason — while the others go on, and the configured robust rule merges the means of the buckets
that were unmasked (Karimireddy, He & Jaggi, ICLR 2022, with each bucket mean a secure sum). The
coordinator then holds one sum per bucket, each over at least a strict majority of the bucket's
``min_bucket`` or more silos, and still no single silo's update.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from fl_core.dp.distributed import noise_rng
from fl_core.errors import ThresholdError, TooFewUpdates
from fl_core.messages import BucketSum, ProtocolResult, SecAggStats
from fl_core.quorum import require_quorum
from fl_core.round_policy import Instance
from fl_core.secagg import client, crypto, server
from fl_core.secagg.client import RoundContext
from infra.config import FederationConfig
from infra.exchange import Exchange, exchange_for
from infra.keystore import coordinator_identity
from infra.secagg_channel import COORDINATOR, SecAggChannel, instance_name
from infra.state import StateDir
from tasks.aggregate import Aggregate, excluded_reasons, log_anomaly, server_step
from tasks.participation import Participation, privacy_spent, sort_outcomes
from tasks.plan import RoundPlan
from tasks.privacy import charge


@dataclass(frozen=True, slots=True, kw_only=True)
class Bucket:
    """One instance of the protocol in progress: the whole roster (secure mode) or one bucket."""

    instance: Instance
    ctx: RoundContext
    weight_scale: float = 1.0  # the largest weight in U1 (n_samples, or q-FFL's): weights travel as w / weight_scale
    identities: dict[str, bytes] = field(default_factory=dict, repr=False)
    adverts: server.Adverts | None = None
    advert_envelopes: dict[str, dict] = field(default_factory=dict, repr=False)  # U1's, as their senders signed them
    shares: server.Shares | None = None
    masked: server.Masked | None = None

    @property
    def index(self) -> int | None:
        return self.instance.index

    @property
    def name(self) -> str:
        return self.instance.name

    def channel(self, exchange: Exchange) -> SecAggChannel:
        return SecAggChannel(exchange, self.ctx.round_number, self.index)

    @classmethod
    def of(cls, federation: str, round_number: int, instance: Instance) -> Bucket:
        ctx = RoundContext(federation=instance_name(federation, instance.index), round_number=round_number,
                           roster=instance.silos, threshold=instance.threshold)
        return cls(instance=instance, ctx=ctx)


@dataclass(frozen=True, slots=True, kw_only=True)
class SecureRound:
    """The coordinator's public view of a round in progress."""

    round_number: int
    length: int
    buckets: tuple[Bucket, ...]  # the instances still running
    keys: dict[str, bytes] = field(default_factory=dict, repr=False)  # the roster's identity keys
    training: Participation | None = None  # the train phase: who trained, with which results
    validations: dict[str, dict] = field(default_factory=dict)
    out: dict[str, str] = field(default_factory=dict)  # silo -> why it is not in the sum
    lost: dict[str, str] = field(default_factory=dict)  # bucket -> why it left the round
    bytes: dict[str, int] = field(default_factory=dict)  # silo -> bytes it published
    clipped: dict[str, bool] = field(default_factory=dict)

    def _union(self, pick: Callable[[Bucket], list[str]]) -> list[str]:
        return sorted(s for bucket in self.buckets for s in pick(bucket))

    @property
    def u1(self) -> list[str]:
        return self._union(lambda b: b.adverts.u1)

    @property
    def u2(self) -> list[str]:
        return self._union(lambda b: b.shares.u2)

    @property
    def survivors(self) -> list[str]:
        return self._union(lambda b: b.masked.survivors)


def _announce(config: FederationConfig, state: StateDir, buckets: Sequence[Bucket], name: str,
              body: Callable[[Bucket], dict]) -> None:
    """Sign the coordinator's set `name` for each bucket (key and exchange opened once)."""
    identity, exchange = coordinator_identity(state), exchange_for(config, state)
    for bucket in buckets:
        envelope = crypto.seal(identity, bucket.ctx.header(name, COORDINATOR), body(bucket))
        bucket.channel(exchange).publish_set(name, envelope)


def _answered(sr: SecureRound, outcomes: list, phase: str) -> tuple[SecureRound, Participation]:
    """Fold a phase's outcomes into the round: who answered, who dropped (and why), bytes sent."""
    got = sort_outcomes(outcomes)
    out = {**sr.out, **{s: f"dropped at {phase}: {why}" for s, why in got.out.items()}}
    sent = dict(sr.bytes)
    for silo, manifest in got.manifests.items():
        sent[silo] = sent.get(silo, 0) + manifest.result.bytes
    return replace(sr, out=out, bytes=sent), got


Step = Callable[[Bucket], tuple[Bucket, dict[str, str]]]


def _advance(sr: SecureRound, phase: str, step: Step) -> SecureRound:
    """Run one coordinator step of `phase` on every live bucket; `step` returns the bucket and the
    silos whose messages failed a check (logged, and out of the round from here on). A bucket whose
    protocol falls below its threshold leaves the round in bucketed mode; in secure mode, where it is
    the only sum, the round ends."""
    logger = get_run_logger()
    live, out, lost = [], dict(sr.out), dict(sr.lost)
    for bucket in sr.buckets:
        try:
            bucket, rejected = step(bucket)
        except ThresholdError as exc:
            if bucket.index is None:
                reasons = "; ".join(f"{s}: {why}" for s, why in sorted(sr.out.items())) or "no silo answered"
                raise ThresholdError(f"round {sr.round_number} {phase}: {exc} ({reasons})") from None
            why = f"{bucket.name} fell below its threshold at {phase}: {exc}"
            logger.warning("round %d: %s; its silos leave the round", sr.round_number, why)
            lost[bucket.name] = why
            out.update({s: why for s in bucket.ctx.roster if s not in out})
            continue
        for silo, why in sorted(rejected.items()):
            logger.warning("round %d %s: %s rejected and treated as dropped: %s", sr.round_number, phase, silo, why)
            out[silo] = f"refused at {phase}: {why}"
        live.append(bucket)
    return replace(sr, buckets=tuple(live), out=out, lost=lost)


def _quorum(config: FederationConfig, sr: SecureRound, silos: list[str], phase: str) -> None:
    """Enough silos for the federation, and in bucketed mode enough buckets for the robust rule."""
    policy = config.policy()
    where = f"round {sr.round_number} {phase}"
    require_quorum(silos, sr.out, policy.min_silos, where)
    if policy.mode != "bucketed":
        return
    n = len(sr.buckets)
    lost = "; ".join(sr.lost.values()) or "none lost"
    if n == 0:
        raise TooFewUpdates(f"{where}: no bucket left ({lost})")
    try:
        policy.tolerated(n)
    except TooFewUpdates as exc:
        raise TooFewUpdates(f"{where}: {n} bucket(s) left ({lost}); {exc}") from None


@task(name="secure-open", task_run_name="secure-open", cache_policy=NONE, persist_result=False)
def secure_open(config: FederationConfig, state: StateDir, plan: RoundPlan) -> SecureRound:
    """Publish the round's signed plan: the silos in the sum (the roster's, or those sampled of them,
    with the eligible silos they were drawn from, so that every silo can redo the draw) and the
    threshold, or the buckets with theirs; vector length; clipping and quantisation; silo-level DP.
    Silos not sampled are in no instance of the protocol."""
    policy, r = config.policy(), plan.round_number
    trainers = list(plan.trainers)
    require_quorum(trainers, plan.absent, policy.min_silos, f"round {r} roster")
    instances = policy.instances(r, trainers)
    whole = Bucket.of(config.federation, r, Instance(index=None, silos=tuple(trainers),
                                                     threshold=policy.secure.threshold_for(len(trainers))))
    body: dict = {"roster": trainers}
    if plan.sample is not None:
        body["sample"] = {"eligible": list(plan.sample.eligible), "silos_per_round": plan.sample.per_round}
    if policy.mode == "bucketed":
        body["buckets"] = [{"silos": list(i.silos), "threshold": i.threshold} for i in instances]
        get_run_logger().info("round %d buckets: %s", r, "; ".join(f"{i.name} {','.join(i.silos)}" for i in instances))
    else:
        body["threshold"] = instances[0].threshold
    buckets = tuple(Bucket.of(config.federation, r, i) for i in instances)
    sr = SecureRound(round_number=r, length=policy.length, buckets=buckets, keys=plan.keys)
    body.update({"length": sr.length, "clip_norm": policy.secure.clip_norm, "bits": policy.secure.bits})
    if policy.privacy is not None:
        body["privacy"] = policy.plan_privacy()
    _announce(config, state, [whole], "plan", lambda _: body)
    return sr


@task(name="check-keys", task_run_name="check-keys", cache_policy=NONE, persist_result=False)
def secure_keys(config: FederationConfig, state: StateDir, sr: SecureRound, outcomes: list) -> SecureRound:
    """Verify the advertised keys (U1) and announce U1 with identities and the weight scale."""
    r = sr.round_number
    got = sort_outcomes(outcomes)
    sr = replace(sr, training=got, validations=dict(got.validations),
                 out={s: f"dropped at train: {why}" for s, why in got.out.items()},
                 bytes={s: got.train(s).bytes for s in got.manifests})
    require_quorum(got.silos_in, sr.out, config.policy().min_silos, f"round {r} training")
    exchange = exchange_for(config, state)
    identities = {s: sr.keys[s] for s in got.silos_in if s in sr.keys}

    def step(bucket: Bucket) -> tuple[Bucket, dict[str, str]]:
        present = [s for s in got.silos_in if s in bucket.ctx.roster]
        envelopes = bucket.channel(exchange).read(client.KEYS, present)
        adverts = server.collect_adverts(bucket.ctx, envelopes, identities)
        scale = config.policy().weight_scale_for([got.train(s).aggregation_weight for s in adverts.u1])
        return replace(bucket, adverts=adverts, identities={s: identities[s] for s in adverts.u1}, weight_scale=scale,
                       advert_envelopes={s: envelopes[s].to_dict() for s in adverts.u1}), adverts.rejected

    sr = _advance(sr, "keys", step)
    _quorum(config, sr, sr.u1, "keys")
    _announce(config, state, sr.buckets, "u1", lambda b: {
        "u1": b.adverts.u1, "identities": {s: crypto.b64(k) for s, k in b.identities.items()},
        "weight_scale": b.weight_scale,
        # U1's adverts relayed in one object, each still signed by its sender and checked by every silo
        # against the sender's identity: one read per silo instead of one per peer
        "adverts": b.advert_envelopes,
    })
    return sr


@task(name="check-shares", task_run_name="check-shares", cache_policy=NONE, persist_result=False)
def secure_shares(config: FederationConfig, state: StateDir, sr: SecureRound, outcomes: list) -> SecureRound:
    """Verify the signed shares messages (U2), forward each silo of U2 the ciphertexts addressed to
    it, and announce U2."""
    sr, got = _answered(sr, outcomes, "shares")
    answered = got.silos_in
    exchange = exchange_for(config, state)

    def step(bucket: Bucket) -> tuple[Bucket, dict[str, str]]:
        mine = [s for s in answered if s in bucket.ctx.roster]
        shares = server.collect_shares(bucket.ctx, bucket.adverts.u1, bucket.channel(exchange).read(client.SHARES, mine),
                                       bucket.identities)
        return replace(bucket, shares=shares), shares.rejected

    sr = _advance(sr, "shares", step)
    _quorum(config, sr, sr.u2, "shares")
    sr = _forward(config, state, sr)
    _announce(config, state, sr.buckets, "u2", lambda b: {"u2": b.shares.u2})
    return sr


def _forward(config: FederationConfig, state: StateDir, sr: SecureRound) -> SecureRound:
    """Publish, for every silo of each live bucket's U2, the ciphertexts addressed to it, in one bundle
    the coordinator signs (Bonawitz et al., CCS 2017, §4: the server forwards the shares), so that each
    silo reads its own shares and not every peer's message. The ciphertexts are then dropped from
    the round's view: the coordinator has no further use for them."""
    identity, exchange = coordinator_identity(state), exchange_for(config, state)
    buckets = []
    for bucket in sr.buckets:
        channel = bucket.channel(exchange)
        for recipient, ciphertexts in server.forward_shares(bucket.ctx, bucket.shares).items():
            channel.publish_forwarded(recipient, server.seal_forwarded(bucket.ctx, identity, recipient, ciphertexts))
        buckets.append(replace(bucket, shares=replace(bucket.shares, ciphertexts={})))
    return replace(sr, buckets=tuple(buckets))


@task(name="check-masked", task_run_name="check-masked", cache_policy=NONE, persist_result=False)
def secure_masked(config: FederationConfig, state: StateDir, sr: SecureRound, outcomes: list) -> SecureRound:
    """Verify and sum the masked inputs; announce the survivors and the dropped (U3, D)."""
    sr, got = _answered(sr, outcomes, "masked")
    answered = got.silos_in
    clipped = {s: _protocol(m).clipped for s, m in got.manifests.items()}
    exchange = exchange_for(config, state)

    def step(bucket: Bucket) -> tuple[Bucket, dict[str, str]]:
        mine = [s for s in answered if s in bucket.ctx.roster]
        masked = server.collect_masked(bucket.ctx, bucket.shares.u2, bucket.channel(exchange).read_masked(mine),
                                       bucket.identities, sr.length)
        return replace(bucket, masked=masked), masked.rejected

    sr = _advance(replace(sr, clipped=clipped), "masked input", step)
    _quorum(config, sr, sr.survivors, "masked input")
    _announce(config, state, sr.buckets, "u3", lambda b: {"survivors": b.masked.survivors, "dropped": b.masked.dropped})
    return sr


def _protocol(manifest) -> ProtocolResult:
    if not isinstance(manifest.result, ProtocolResult):
        raise TypeError(f"{manifest.silo}'s manifest is not a protocol manifest")
    return manifest.result


@task(name="unmask-sum", task_run_name="unmask-sum", cache_policy=NONE, persist_result=False)
def secure_unmask(config: FederationConfig, state: StateDir, sr: SecureRound, plan: RoundPlan, outcomes: list) -> Aggregate:
    """Remove the masks, decode the sum(s), merge by the round's policy (the one sum, or the robust
    rule over bucket means with anomaly screening), take the server step, publish the new global model."""
    began = time.perf_counter()
    sr, got = _answered(sr, outcomes, "unmask")
    answered = got.silos_in
    r = sr.round_number
    exchange = exchange_for(config, state)
    policy = config.policy()
    results: dict[str, server.Unmasked] = {}

    def step(bucket: Bucket) -> tuple[Bucket, dict[str, str]]:
        reveals = bucket.channel(exchange).read(client.UNMASK, [s for s in answered if s in bucket.masked.survivors])
        results[bucket.name] = server.unmask(bucket.ctx, bucket.masked, bucket.adverts, bucket.shares, reveals,
                                             bucket.identities)
        return bucket, {}

    sr = _advance(sr, "unmasking", step)
    _quorum(config, sr, sr.survivors, "unmasking")
    rng = noise_rng()  # central silo-level DP's noise, if any
    inputs = [policy.decode(b.instance, results[b.name].total, b.weight_scale, results[b.name].survivors, rng)
              for b in sr.buckets]
    merged = policy.merge(inputs, plan.anomaly_streaks, rng, plan.sample_rate)
    weights = {c.name: c.weight for c in inputs}  # Σ n_samples of each bucket's survivors
    del inputs
    log_anomaly(r, merged, per_silo=False)
    start = exchange.get_vector(plan.global_ref, expect={"federation": config.federation, "round": r - 1, "phase": "global"})
    excluded = set(merged.excluded)
    survivors = sorted(s for name, result in results.items() if name not in excluded for s in result.survivors)
    out = {s: why for s, why in sr.out.items() if s not in survivors}
    out.update(excluded_reasons(merged))
    ref, server_ref = server_step(config, exchange, plan, start, merged, survivors)
    privacy = None
    if merged.release is not None:
        clipped = sum(1 for s in survivors if sr.clipped.get(s)) / len(survivors)
        privacy = charge(config, state, policy.privacy, r, merged.release, clipped)
    training = sr.training
    kept = {s: training.manifests[s] for s in survivors}
    summed = sum(len(result.survivors) for result in results.values())
    stats = SecAggStats(
        masked=summed, dropped=len(sr.u1) - summed,
        recovered_silos=tuple(sorted(s for result in results.values() for s in result.recovered)),
        threshold=sr.buckets[0].ctx.threshold if policy.mode == "secure" else {b.name: b.ctx.threshold for b in sr.buckets},
        bytes=sr.bytes, clipped=tuple(sorted(s for s, c in sr.clipped.items() if c and s in survivors)),
        buckets=None if policy.mode != "bucketed" else {
            b.name: BucketSum(silos=b.ctx.roster, threshold=b.ctx.threshold, summed=tuple(results[b.name].survivors),
                              weight=weights[b.name])
            for b in sr.buckets},
        lost=sr.lost if policy.mode == "bucketed" else None,
    )
    return Aggregate(global_ref=ref, server_ref=server_ref, training=Participation(manifests=kept, out=out, validations=sr.validations),
                     aggregate_s=time.perf_counter() - began, secure=stats, privacy=privacy,
                     spent=privacy_spent(training), anomaly=merged.anomaly)
