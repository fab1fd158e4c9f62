"""A silo's secure-aggregation tasks, one per protocol step: advertise its round keys (with
training), share its mask secrets, publish its masked input (decrypting the shares the coordinator
forwarded to it, in one bundle it signed), reveal shares for unmasking.

Each step works on a `ProtocolSession` — the round as this silo sees it once it has checked the
coordinator's signed plan — runs one `fl_core.secagg.client` function and publishes the signed
message to the exchange. What it returns is a `ProtocolResult` of object references and sizes;
secrets, shares and the unmasked update never leave the silo's disk (0600, deleted once it has
revealed). These tasks neither persist results nor cache.
"""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NONE

from fl_core.errors import BadSignature, ConfigError, MalformedMessage, StateError, WrongSender
from fl_core.messages import ProtocolResult
from fl_core.secagg import client, crypto
from fl_core.secagg.client import RoundContext
from fl_core.seeding import derive_seed, numpy_rng
from infra.config import FederationConfig
from infra.exchange import Exchange
from infra.keystore import RoundSecrets, silo_identity
from infra.secagg_channel import SecAggChannel, instance_name
from infra.state import StateDir


class ProtocolSession:
    """The round as this silo sees it, after checking the coordinator's plan against its own config
    (clip, bits, silo-level DP). With ``aggregation.silos_per_round`` the silo redoes the round's
    seeded draw from the eligible silos the plan names and refuses a plan whose sum holds other silos
    (so a coordinator cannot hand-pick who is summed with whom). In bucketed mode the silo recomputes
    the round's seeded buckets itself and refuses a plan that places it otherwise (so a coordinator
    cannot hand-pick a bucket around one silo); it then talks only to its bucket's instance of the
    protocol. Built once per round, when the silo advertises its keys, and kept for the later steps."""

    def __init__(self, config: FederationConfig, silo_id: str, round_number: int, attempt: str, state: StateDir,
                 exchange: Exchange, coordinator: bytes):
        self.config, self.silo, self.round_number = config, silo_id, round_number
        self.policy = config.policy()
        self.coordinator = coordinator
        self.channel = SecAggChannel(exchange, round_number)
        plan = self.channel.read_set("plan", coordinator, config.federation)
        spec = self.policy.secure
        if (float(plan["clip_norm"]), int(plan["bits"])) != (spec.clip_norm, spec.bits):
            raise ConfigError(
                f"the coordinator's plan (clip_norm {plan['clip_norm']}, bits {plan['bits']}) differs from this "
                f"silo's config (clip_norm {spec.clip_norm}, bits {spec.bits})"
            )
        if int(plan["length"]) != self.policy.length:
            raise WrongSender(f"the plan's vector length {plan['length']} does not fit this silo's model "
                              f"({self.policy.update_length} + 1)")
        # Silo-level DP as this silo's own config has it; a plan asking for less (or other) is refused.
        mine = self.policy.plan_privacy()
        if plan.get("privacy") != mine:
            raise ConfigError(f"the coordinator's plan has silo-level DP {plan.get('privacy')}, this silo's config {mine}")
        roster = tuple(plan["roster"])
        if silo_id not in roster:
            raise WrongSender(f"the coordinator's plan for round {round_number} does not list {silo_id}")
        self._check_sample(plan, roster)
        expected = self.policy.instances(round_number, roster)
        if self.policy.mode == "bucketed" or "buckets" in plan:
            announced = [{"silos": list(i.silos), "threshold": i.threshold} for i in expected]
            if self.policy.mode != "bucketed" or plan.get("buckets") != announced:
                raise ConfigError(
                    f"the coordinator's buckets for round {round_number} ({plan.get('buckets')}) differ from the seeded "
                    f"shuffle this silo's config gives ({announced})"
                )
        elif int(plan["threshold"]) != expected[0].threshold:
            raise ConfigError(f"the coordinator's threshold {plan['threshold']} differs from this silo's "
                              f"{expected[0].threshold}")
        mine_instance = next(i for i in expected if silo_id in i.silos)
        if mine_instance.index is not None:
            self.channel = SecAggChannel(exchange, round_number, mine_instance.index)
        self.ctx = RoundContext(federation=instance_name(config.federation, mine_instance.index),
                                round_number=round_number, roster=mine_instance.silos,
                                threshold=mine_instance.threshold)
        self.identity = silo_identity(state, silo_id)
        self.secrets = RoundSecrets(state, silo_id, config.federation, round_number, attempt)
        self.secrets.forget_other_attempts()  # an interrupted attempt's run, if still going, stops here
        self._identities: tuple[dict, dict[str, bytes]] | None = None

    def _check_sample(self, plan: dict, roster: tuple[str, ...]) -> None:
        """The plan's sum holds exactly the silos this silo's own config draws from the eligible ones."""
        r, k, sample = self.round_number, self.policy.silos_per_round, plan.get("sample")
        if k is None:
            if sample is not None:
                raise ConfigError(f"the coordinator's plan for round {r} samples silos ({sample}); this silo's config "
                                  "trains every silo each round")
            return
        if not isinstance(sample, dict):
            raise ConfigError(f"the coordinator's plan for round {r} samples no silos; this silo's config draws "
                              f"silos_per_round = {k}")
        eligible = sample.get("eligible")
        if not isinstance(eligible, list) or not all(isinstance(s, str) for s in eligible):
            raise MalformedMessage(f"plan: field 'sample.eligible' must be a list of silo ids, got {eligible!r}"[:200])
        if sample.get("silos_per_round") != k:
            raise ConfigError(f"the coordinator's plan for round {r} draws silos_per_round = "
                              f"{sample.get('silos_per_round')}, this silo's config {k}")
        try:
            drawn = self.policy.sample(r, eligible).sampled
        except ValueError as exc:
            raise MalformedMessage(f"plan: field 'sample.eligible': {exc}") from None
        if tuple(sorted(roster)) != drawn:
            raise ConfigError(f"the coordinator's silos for round {r} ({', '.join(roster)}) differ from the seeded draw "
                              f"of {k} of {len(eligible)} eligible silos this silo's config gives ({', '.join(drawn)})")

    def read_set(self, name: str) -> dict:
        return self.channel.read_set(name, self.coordinator, self.ctx.federation)

    def identities(self) -> tuple[dict, dict[str, bytes]]:
        """U1 as the coordinator signed it, and the identity keys it names (read once a round)."""
        if self._identities is None:
            u1 = self.read_set("u1")
            identities = {s: crypto.unb64(pk, 32) for s, pk in u1["identities"].items()}
            if identities.get(self.silo) != crypto.identity_public(self.identity):
                raise WrongSender("the coordinator's U1 carries another identity for this silo")
            self._identities = (u1, identities)
        return self._identities


def _result(refs, began: float, **extra) -> ProtocolResult:
    return ProtocolResult(objects=tuple(refs), bytes=sum(r.size for r in refs), crypto_s=time.perf_counter() - began,
                          **extra)


@task(name="keys", task_run_name="{silo_id}/keys", cache_policy=NONE, persist_result=False)
def advertise_keys(session: ProtocolSession, silo_id: str) -> ProtocolResult:
    began = time.perf_counter()
    client_state, envelope = client.advertise(session.ctx, silo_id, session.identity)
    session.secrets.save_state(client_state)
    return _result([session.channel.publish(client.KEYS, silo_id, envelope)], began)


@task(name="shares", task_run_name="{silo_id}/shares", cache_policy=NONE, persist_result=False)
def share_keys(session: ProtocolSession, silo_id: str) -> ProtocolResult:
    began = time.perf_counter()
    u1, identities = session.identities()
    relayed = u1.get("adverts")
    if not isinstance(relayed, dict):
        raise WrongSender("the coordinator's U1 relays no adverts")
    adverts = {}
    for peer in u1["u1"]:  # each verified against the peer's identity by client.share_keys
        try:
            adverts[peer] = crypto.Envelope.from_dict(relayed.get(peer))
        except BadSignature:
            adverts[peer] = crypto.Envelope(header={}, body={}, signature=b"")  # fails its check, named
    client_state, envelope = client.share_keys(
        session.ctx, session.secrets.load_state(), session.identity, u1["u1"], adverts, identities
    )
    session.secrets.save_state(client_state)
    return _result([session.channel.publish(client.SHARES, silo_id, envelope)], began)


@task(name="masked", task_run_name="{silo_id}/masked", cache_policy=NONE, persist_result=False)
def mask_update(session: ProtocolSession, silo_id: str) -> ProtocolResult:
    began = time.perf_counter()
    u1, _ = session.identities()
    u2 = session.read_set("u2")["u2"]
    forwarded = session.channel.read_forwarded(silo_id, session.coordinator, session.ctx.federation)
    delta, weight = session.secrets.load_update()
    if len(delta) != session.policy.update_length:
        raise StateError(f"this silo's update has {len(delta)} values, the round's updates {session.policy.update_length}")
    rng = numpy_rng(derive_seed(session.config.seed, "quantize", session.round_number, silo_id))
    codes, clipped = session.policy.encode(delta, weight, float(u1["weight_scale"]), rng,
                                           session.secrets.load_noise())
    client_state, envelope, masked = client.masked_input(
        session.ctx, session.secrets.load_state(), session.identity, u2, forwarded, codes
    )
    session.secrets.save_state(client_state)
    refs = session.channel.publish_masked(silo_id, envelope, masked)
    del delta, codes
    return _result(refs, began, clipped=clipped, bad_senders=tuple(client_state.bad_senders))


@task(name="unmask", task_run_name="{silo_id}/unmask", cache_policy=NONE, persist_result=False)
def reveal_shares(session: ProtocolSession, silo_id: str) -> ProtocolResult:
    began = time.perf_counter()
    u3 = session.read_set("u3")
    client_state, envelope = client.unmask(
        session.ctx, session.secrets.load_state(), session.identity, u3["survivors"], u3["dropped"]
    )
    session.secrets.save_state(client_state)  # remembers the answer until the message is out
    ref = session.channel.publish(client.UNMASK, silo_id, envelope)
    session.secrets.forget()  # the round's secrets are no longer needed; a second request finds nothing
    return _result([ref], began)
