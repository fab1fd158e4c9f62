"""A silo's secure-aggregation tasks, one per protocol phase.

Each loads the round's secrets from the silo's own state folder, verifies the coordinator's signed
set for the phase (its key pinned on first sight), runs one `fl_core.secagg.client` function and
publishes the signed message to the exchange. What it returns through Prefect is a manifest of
object references and sizes; secrets, shares and the unmasked update never leave the silo's disk.
These tasks neither persist results nor cache.
"""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NONE

from fl_core.dp.distributed import add_share
from fl_core.errors import ConfigError, StateError, WrongSender
from fl_core.secagg import client, crypto
from fl_core.secagg.client import RoundContext
from fl_core.secagg.weighting import contribution
from fl_core.seeding import derive_seed, numpy_rng
from infra.config import FederationConfig
from infra.exchange import exchange_for
from infra.keystore import RoundSecrets, silo_identity
from infra.secagg_channel import SecAggChannel, instance_name
from infra.state import StateDir
from tasks.orders import coordinator_key
from tasks.privacy import SiloLevel


class _Session:
    """The round as this silo sees it, after checking the coordinator's plan. In bucketed mode the
    silo recomputes the round's seeded buckets itself and refuses a plan that places it otherwise
    (so a coordinator cannot hand-pick a bucket around one silo); it then talks only to its bucket's
    instance of the protocol."""

    def __init__(self, config: FederationConfig, silo_id: str, round_number: int, state: StateDir):
        self.config, self.silo, self.round_number = config, silo_id, round_number
        exchange = exchange_for(config, state)
        self.channel = SecAggChannel(exchange, round_number)
        self.coordinator = coordinator_key(exchange, state, silo_id)
        plan = self.channel.read_set("plan", self.coordinator, config.federation)
        spec = config.aggregation.secure
        if (float(plan["clip_norm"]), int(plan["bits"])) != (spec.clip_norm, spec.bits):
            raise ConfigError(
                f"the coordinator's plan (clip_norm {plan['clip_norm']}, bits {plan['bits']}) differs from this "
                f"silo's config (clip_norm {spec.clip_norm}, bits {spec.bits})"
            )
        self.length = int(plan["length"])
        # Silo-level DP as this silo's own config has it; a plan asking for less (or other) is refused.
        self.privacy = SiloLevel.of(config, self.length - 1)
        mine = self.privacy.plan() if self.privacy is not None else None
        if plan.get("privacy") != mine:
            raise ConfigError(f"the coordinator's plan has silo-level DP {plan.get('privacy')}, this silo's config {mine}")
        bucket, roster, threshold = None, tuple(plan["roster"]), plan.get("threshold")
        if silo_id not in roster:
            raise WrongSender(f"the coordinator's plan for round {round_number} does not list {silo_id}")
        if config.aggregation.mode == "bucketed" or "buckets" in plan:
            expected = [{"silos": list(b), "threshold": spec.threshold_for(len(b))}
                        for b in config.buckets(round_number, roster)]
            if config.aggregation.mode != "bucketed" or plan.get("buckets") != expected:
                raise ConfigError(
                    f"the coordinator's buckets for round {round_number} ({plan.get('buckets')}) differ from the seeded "
                    f"shuffle this silo's config gives ({expected})"
                )
            bucket = next(k for k, b in enumerate(expected) if silo_id in b["silos"])
            roster, threshold = tuple(expected[bucket]["silos"]), expected[bucket]["threshold"]
            self.channel = SecAggChannel(exchange, round_number, bucket)
        self.ctx = RoundContext(
            federation=instance_name(config.federation, bucket), round_number=round_number, roster=roster,
            threshold=int(threshold),
        )
        self.identity = silo_identity(state, silo_id)
        self.secrets = RoundSecrets(state, silo_id, config.federation, round_number)

    def read_set(self, name: str) -> dict:
        return self.channel.read_set(name, self.coordinator, self.ctx.federation)

    def identities(self) -> tuple[dict, dict[str, bytes]]:
        u1 = self.read_set("u1")
        identities = {s: crypto.unb64(pk, 32) for s, pk in u1["identities"].items()}
        if identities.get(self.silo) != crypto.identity_public(self.identity):
            raise WrongSender("the coordinator's U1 carries another identity for this silo")
        return u1, identities


def _manifest(refs, began: float, **extra) -> dict:
    return {"objects": [r.to_dict() for r in refs], "bytes": sum(r.size for r in refs),
            "crypto_s": time.perf_counter() - began, **extra}


@task(name="advertise-keys", cache_policy=NONE, persist_result=False)
def advertise_keys(config: FederationConfig, silo_id: str, round_number: int, state: StateDir) -> dict:
    began = time.perf_counter()
    session = _Session(config, silo_id, round_number, state)
    client_state, envelope = client.advertise(session.ctx, silo_id, session.identity)
    session.secrets.save_state(client_state)
    return _manifest([session.channel.publish(client.KEYS, silo_id, envelope)], began)


@task(name="share-keys", cache_policy=NONE, persist_result=False)
def share_keys(config: FederationConfig, silo_id: str, round_number: int, state: StateDir) -> dict:
    began = time.perf_counter()
    session = _Session(config, silo_id, round_number, state)
    u1, identities = session.identities()
    adverts = session.channel.read(client.KEYS, list(u1["u1"]))
    client_state, envelope = client.share_keys(
        session.ctx, session.secrets.load_state(), session.identity, u1["u1"], adverts, identities
    )
    session.secrets.save_state(client_state)
    return _manifest([session.channel.publish(client.SHARES, silo_id, envelope)], began)


@task(name="mask-update", cache_policy=NONE, persist_result=False)
def mask_update(config: FederationConfig, silo_id: str, round_number: int, state: StateDir) -> dict:
    began = time.perf_counter()
    session = _Session(config, silo_id, round_number, state)
    u1, identities = session.identities()
    u2 = session.read_set("u2")["u2"]
    shares = session.channel.read(client.SHARES, list(u2))
    delta, n_samples = session.secrets.load_update()
    if len(delta) + 1 != session.length:
        raise WrongSender(f"the plan's vector length {session.length} does not fit this silo's update ({len(delta)} + 1)")
    spec = config.aggregation.secure
    level = session.privacy
    if level is None:
        values, clipped = contribution(delta, n_samples, float(u1["weight_scale"]), spec.clip_norm)
    else:  # DP-FedAvg: clipped to the DP bound, weight capped at 1 (so one silo moves the sum by <= C)
        delta, dp_clipped = level.clip(delta)
        values, clipped = contribution(delta, level.weight(n_samples), 1.0, spec.clip_norm)
        clipped = clipped or dp_clipped
    codes = spec.quantizer().encode(values, numpy_rng(derive_seed(config.seed, "quantize", round_number, silo_id)))
    if level is not None and level.shares is not None:  # distributed DP: this silo's Skellam share, then the masks
        noise = session.secrets.load_noise()
        if noise is None or noise.shape[0] != len(delta):
            raise StateError(f"no noise share for this round's {len(delta)} parameters on this silo")
        codes = add_share(codes, noise)
        del noise
    client_state, envelope, masked = client.masked_input(
        session.ctx, session.secrets.load_state(), session.identity, u2, shares, identities, codes
    )
    session.secrets.save_state(client_state)
    refs = session.channel.publish_masked(silo_id, envelope, masked)
    del delta, values, codes
    return _manifest(refs, began, clipped=bool(clipped), bad_senders=list(client_state.bad_senders))


@task(name="reveal-shares", cache_policy=NONE, persist_result=False)
def reveal_shares(config: FederationConfig, silo_id: str, round_number: int, state: StateDir) -> dict:
    began = time.perf_counter()
    session = _Session(config, silo_id, round_number, state)
    u3 = session.read_set("u3")
    client_state, envelope = client.unmask(
        session.ctx, session.secrets.load_state(), session.identity, u3["survivors"], u3["dropped"]
    )
    session.secrets.save_state(client_state)  # remembers the answer until the message is out
    ref = session.channel.publish(client.UNMASK, silo_id, envelope)
    session.secrets.forget()  # the round's secrets are no longer needed; a second request finds nothing
    return _manifest([ref], began)

