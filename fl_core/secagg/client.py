"""A silo's side of secure aggregation, phase by phase (Bonawitz et al. 2017, §4, semi-honest
setting with signatures against impersonation and replay).

1. `advertise`: fresh X25519 key pairs for this round (one for share encryption, one for masks),
   signed with the silo's long-term Ed25519 identity.
2. `share_keys`: verify every peer's keys; draw the self-mask seed b; Shamir-share b and the mask
   private key t-of-n among the round's participants U1; encrypt each peer's two shares to it
   (AES-GCM, bound to sender, receiver and round); commit to b; sign the commitment and the
   ciphertexts. It keeps, per peer, the key under which that peer's shares to it are encrypted.
3. `masked_input`: decrypt the shares addressed to this silo, as the coordinator forwards them
   (`open_forwarded`); add to the quantised update its self mask PRG(b) and, for every other
   participant v in U2, +PRG(s_uv) if this silo comes first in the roster and -PRG(s_uv)
   otherwise.
4. `unmask`: given the survivors U3 (whose masked inputs the coordinator holds) and the dropped
   D = U2 \\ U3, reveal the self-seed shares of survivors and the mask-key shares of the dropped;
   never both for one silo, and only once per round.

Why the shares can travel through the coordinator. As in Bonawitz et al. (§4, round 1), a sender
addresses one ciphertext to each peer and the coordinator forwards to each receiver only the
ciphertexts addressed to it (one bundle per receiver, signed by the coordinator and bound to the
federation, round and receiver), so no silo reads the others' messages. The coordinator verifies
each sender's signed shares message (`server.collect_shares`); a receiver checks each ciphertext
by authenticated decryption alone, and that is enough:
- The coordinator cannot forge a share. The ciphertext from v to u is AES-GCM under a key derived
  (HKDF) from the X25519 agreement of v's and u's share-encryption keys, whose public halves u
  verified under v's identity key in v's signed advert (`share_keys`). Without either private key
  the coordinator cannot derive it, and a ciphertext it makes under any other key fails the tag.
- It cannot swap two senders' ciphertexts: the key and the associated data belong to the ordered
  pair (sender, receiver), so v's ciphertext filed under w fails under the (w, u) key; nor send u
  the ciphertext meant for another receiver.
- It cannot replay a ciphertext of another round, federation or bucket: the associated data and
  the key's HKDF info bind (federation or bucket instance, round), and the key pairs are fresh
  each round.
- What it can do is what it could always do: withhold or garble a ciphertext. The receiver then
  counts the sender among its `bad_senders`, exactly as for a sender that encrypted garbage, and
  the coordinator must treat that sender as dropped (recovering its mask key) — the sender's input
  stays out of the sum and hidden behind its self mask. The coordinator's signature on the bundle
  adds that a silo acts only on what this round's coordinator sent it.

The state between phases (`ClientState`) holds the round's secrets: it stays on the silo's side
(its state folder), never in an exchange object, a Prefect result, a log or MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fl_core.errors import SecAggError, ThresholdError, UnknownSilo, WrongLength, WrongSender
from fl_core.secagg import crypto, prg, shamir

KEYS, SHARES, MASKED, UNMASK = "keys", "shares", "masked", "unmask"
FORWARDED = "forwarded"  # the coordinator's bundle of the shares addressed to one silo
COORDINATOR = "coordinator"  # the sender named in the coordinator's messages


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundContext:
    """What every party agrees on for one round: the roster fixes each silo's share x-coordinate
    (its 1-based position) and the sign of each pairwise mask."""

    federation: str
    round_number: int
    roster: tuple[str, ...]
    threshold: int

    def __post_init__(self) -> None:
        if len(set(self.roster)) != len(self.roster):
            raise ValueError("roster repeats a silo")
        if not len(self.roster) // 2 < self.threshold <= len(self.roster):
            raise ValueError(
                f"threshold must be in ({len(self.roster) // 2}, {len(self.roster)}] for {len(self.roster)} silos, "
                f"got {self.threshold}"
            )

    def x(self, silo: str) -> int:
        try:
            return self.roster.index(silo) + 1
        except ValueError:
            raise UnknownSilo(f"{silo!r} is not in the round's roster") from None

    def positions(self) -> dict[str, int]:
        """silo -> x for the whole roster (`x` for many silos at once)."""
        return {silo: k for k, silo in enumerate(self.roster, 1)}

    def round_keys(self) -> crypto.RoundKeys:
        """Key derivation and share encryption bound to this round."""
        return crypto.RoundKeys(self.federation, self.round_number)

    def sign(self, me: str, other: str) -> int:
        return 1 if self.x(me) < self.x(other) else -1

    def header(self, phase: str, sender: str) -> dict[str, Any]:
        return {"federation": self.federation, "round": self.round_number, "phase": phase, "sender": sender}

    def check_set(self, name: str, silos: Sequence[str], within: Sequence[str] | None = None) -> list[str]:
        members = list(silos)
        if len(set(members)) != len(members):
            raise WrongSender(f"{name} lists a silo twice")
        position = self.positions()
        allowed = None if within is None else set(within)
        for silo in members:
            if silo not in position:
                raise UnknownSilo(f"{silo!r} is not in the round's roster")
            if allowed is not None and silo not in allowed:
                raise UnknownSilo(f"{name} names {silo!r}, which is not in the previous phase's set")
        if len(members) < self.threshold:
            raise ThresholdError(f"{name} has {len(members)} silos, the threshold is {self.threshold}")
        return sorted(members, key=position.__getitem__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientState:
    """One silo's secrets for one round (hex/JSON-able so it can be kept on the silo's disk)."""

    silo: str
    enc_private: bytes = field(repr=False)
    mask_private: bytes = field(repr=False)
    self_seed: bytes | None = field(default=None, repr=False)
    peers: dict[str, dict[str, bytes]] = field(default_factory=dict, repr=False)  # v -> {"enc", "mask"} public keys
    own_shares: dict[str, int] = field(default_factory=dict, repr=False)  # this silo's shares of its own secrets
    held: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)  # sender -> {"seed", "mask"} shares
    share_keys: dict[str, bytes] = field(default_factory=dict, repr=False)  # sender -> AES key of its shares to this silo
    u2: tuple[str, ...] = ()
    bad_senders: tuple[str, ...] = ()
    answered: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "silo": self.silo,
            "enc_private": self.enc_private.hex(),
            "mask_private": self.mask_private.hex(),
            "self_seed": None if self.self_seed is None else self.self_seed.hex(),
            "peers": {v: {k: key.hex() for k, key in keys.items()} for v, keys in self.peers.items()},
            "own_shares": {k: hex(v) for k, v in self.own_shares.items()},
            "held": {v: {k: hex(s) for k, s in shares.items()} for v, shares in self.held.items()},
            "share_keys": {v: key.hex() for v, key in self.share_keys.items()},
            "u2": list(self.u2),
            "bad_senders": list(self.bad_senders),
            "answered": None if self.answered is None else [list(self.answered[0]), list(self.answered[1])],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ClientState:
        try:
            return cls(
                silo=raw["silo"],
                enc_private=bytes.fromhex(raw["enc_private"]),
                mask_private=bytes.fromhex(raw["mask_private"]),
                self_seed=None if raw["self_seed"] is None else bytes.fromhex(raw["self_seed"]),
                peers={v: {k: bytes.fromhex(h) for k, h in keys.items()} for v, keys in raw["peers"].items()},
                own_shares={k: int(v, 16) for k, v in raw["own_shares"].items()},
                held={v: {k: int(s, 16) for k, s in shares.items()} for v, shares in raw["held"].items()},
                share_keys={v: bytes.fromhex(h) for v, h in raw.get("share_keys", {}).items()},  # absent from older states
                u2=tuple(raw["u2"]),
                bad_senders=tuple(raw["bad_senders"]),
                answered=None if raw["answered"] is None else (tuple(raw["answered"][0]), tuple(raw["answered"][1])),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise SecAggError("the silo's secure-aggregation state is unreadable") from None


# -- phase 1 -------------------------------------------------------------------------------------------
def advertise(ctx: RoundContext, me: str, identity: Ed25519PrivateKey) -> tuple[ClientState, crypto.Envelope]:
    ctx.x(me)
    enc_private, enc_public = crypto.new_x25519()
    mask_private, mask_public = crypto.new_x25519()
    envelope = crypto.seal(identity, ctx.header(KEYS, me), {"enc": crypto.b64(enc_public), "mask": crypto.b64(mask_public)})
    return ClientState(silo=me, enc_private=enc_private, mask_private=mask_private), envelope


def read_advert(ctx: RoundContext, sender: str, envelope: crypto.Envelope, identity_public: bytes) -> dict[str, bytes]:
    body = crypto.open_envelope(
        envelope, identity_public, federation=ctx.federation, round_number=ctx.round_number, phase=KEYS, sender=sender
    )
    try:
        keys = {"enc": crypto.unb64(body["enc"], 32), "mask": crypto.unb64(body["mask"], 32)}
    except KeyError:
        raise WrongLength(f"the keys of {sender} lack a field") from None
    for key in keys.values():  # a low-order key would make every peer's key agreement fail
        crypto.check_x25519_public(key)
    return keys


# -- phase 2 -------------------------------------------------------------------------------------------
def _pack(seed_share: int, mask_share: int) -> bytes:
    return shamir.encode_share(seed_share) + shamir.encode_share(mask_share)


def _unpack(data: bytes) -> tuple[int, int]:
    if len(data) != 2 * shamir.SHARE_BYTES:
        raise WrongLength("a decrypted share pair has the wrong size")
    return shamir.decode_share(data[: shamir.SHARE_BYTES]), shamir.decode_share(data[shamir.SHARE_BYTES :])


def share_keys(
    ctx: RoundContext,
    state: ClientState,
    identity: Ed25519PrivateKey,
    u1: Sequence[str],
    adverts: Mapping[str, crypto.Envelope],
    identities: Mapping[str, bytes],
) -> tuple[ClientState, crypto.Envelope]:
    """Verify every advert of U1 (any failure: this silo refuses the round), then share secrets.

    One agreement per peer gives both directions' share keys: the one this silo encrypts to the
    peer with, and the one the peer's shares to this silo are under, kept in the state so that the
    masked-input phase decrypts without agreeing again."""
    me = state.silo
    members = ctx.check_set("U1", u1)
    if me not in members:
        raise UnknownSilo(f"{me} is not in U1")
    peers = {}
    for v in members:
        if v not in adverts or v not in identities:
            raise UnknownSilo(f"no verified keys for {v}")
        peers[v] = read_advert(ctx, v, adverts[v], identities[v])
    if peers[me]["mask"] != crypto.x25519_public(state.mask_private) or peers[me]["enc"] != crypto.x25519_public(state.enc_private):
        raise WrongSender("U1 carries keys for this silo that it did not advertise")
    seed = os.urandom(shamir.SECRET_BYTES)
    position = ctx.positions()
    seed_shares, mask_shares = shamir.split_many([seed, state.mask_private], [position[v] for v in members], ctx.threshold)
    agree, keys = crypto.agreement(state.enc_private), ctx.round_keys()
    ciphertexts, incoming = {}, {}
    for v in members:
        if v == me:
            continue
        shared = agree(peers[v]["enc"])
        plain = _pack(seed_shares[position[v]], mask_shares[position[v]])
        ciphertexts[v] = crypto.b64(keys.seal_share(keys.share_key(shared, me, v), me, v, plain))
        incoming[v] = keys.share_key(shared, v, me)
    body = {"commitment": keys.commitment(seed, me), "ciphertexts": ciphertexts}
    envelope = crypto.seal(identity, ctx.header(SHARES, me), body)
    own = {"seed": seed_shares[position[me]], "mask": mask_shares[position[me]]}
    return replace(state, self_seed=seed, peers=peers, own_shares=own, share_keys=incoming), envelope


def open_forwarded(
    envelope: crypto.Envelope, coordinator_public: bytes, *, federation: str, round_number: int, recipient: str
) -> dict[str, str]:
    """The ciphertexts (sender -> base64) in the coordinator's bundle for `recipient`, once its
    signature, binding (federation or bucket instance, round, phase) and recipient check; else
    `BadSignature`, `StaleMessage` or `WrongSender`, and `WrongLength` for a bundle without a
    sender -> text mapping. Each ciphertext is checked later, by `masked_input`'s decryption."""
    body = crypto.open_envelope(
        envelope, coordinator_public, federation=federation, round_number=round_number, phase=FORWARDED,
        sender=COORDINATOR,
    )
    if body.get("recipient") != recipient:
        raise WrongSender(f"the coordinator's bundle is addressed to {body.get('recipient')!r}, not {recipient!r}")
    ciphertexts = body.get("ciphertexts")
    if not isinstance(ciphertexts, dict):
        raise WrongLength("the coordinator's bundle of shares is malformed")
    return dict(ciphertexts)


# -- phase 3 -------------------------------------------------------------------------------------------
def masked_input(
    ctx: RoundContext,
    state: ClientState,
    identity: Ed25519PrivateKey,
    u2: Sequence[str],
    forwarded: Mapping[str, str],
    vector: np.ndarray,
) -> tuple[ClientState, crypto.Envelope, np.ndarray]:
    """Mask the quantised `vector` (uint32); keep the shares addressed to this silo.

    `forwarded` maps each sender in U2 to its ciphertext for this silo (base64), as the
    coordinator forwarded it. A sender whose ciphertext is missing, not base64, or does not
    decrypt under the pair's key to two field elements is reported in the message
    (``bad_senders``): the coordinator then treats it as dropped. Its pairwise mask is still
    applied (it depends only on public keys), so the sum stays consistent."""
    me = state.silo
    if state.self_seed is None:
        raise SecAggError("masked input before share_keys")
    members = ctx.check_set("U2", u2, within=list(state.peers))
    if me not in members:
        raise UnknownSilo(f"{me} is not in U2")
    if vector.dtype != np.uint32 or vector.ndim != 1:
        raise WrongLength("the input must be a 1-D uint32 vector")
    held, bad = {}, []
    keys, share_agree = ctx.round_keys(), None
    for v in members:
        if v == me:
            continue
        try:
            blob = crypto.unb64(forwarded[v])
            key = state.share_keys.get(v)
            if key is None:  # a state kept by a version that did not store the share keys
                share_agree = share_agree or crypto.agreement(state.enc_private)
                key = keys.share_key(share_agree(state.peers[v]["enc"]), v, me)
            seed_share, mask_share = _unpack(keys.open_share(key, v, me, blob))
        except (SecAggError, KeyError, TypeError):
            bad.append(v)
            continue
        held[v] = {"seed": seed_share, "mask": mask_share}
    add = [keys.self_mask_key(state.self_seed, me)]
    subtract = []
    mask_agree = crypto.agreement(state.mask_private)
    position = ctx.positions()
    for v in members:
        if v == me:
            continue
        low, high = (me, v) if position[me] < position[v] else (v, me)
        key = keys.pair_mask_key(mask_agree(state.peers[v]["mask"]), low, high)
        (add if low == me else subtract).append(key)
    masked = np.array(vector, dtype=np.uint32, copy=True)
    prg.apply_masks_inplace(masked, add=add, subtract=subtract)
    envelope = crypto.seal(identity, ctx.header(MASKED, me), {"length": len(masked), "bad_senders": sorted(bad)}, masked)
    return replace(state, held=held, u2=tuple(members), bad_senders=tuple(sorted(bad))), envelope, masked


# -- phase 4 -------------------------------------------------------------------------------------------
def unmask(
    ctx: RoundContext,
    state: ClientState,
    identity: Ed25519PrivateKey,
    survivors: Sequence[str],
    dropped: Sequence[str],
) -> tuple[ClientState, crypto.Envelope]:
    """Reveal self-seed shares of `survivors` and mask-key shares of `dropped`, once.

    Refuses (`WrongSender`) a request naming a silo on both lists, a second request with other
    lists, or lists outside U2; so no silo's self seed and mask key are both ever revealed."""
    me = state.silo
    if not state.u2:
        raise SecAggError("unmask before masked input")
    u2 = list(state.u2)
    alive = ctx.check_set("U3", survivors, within=u2)
    gone = sorted(set(dropped), key=ctx.x)
    if len(gone) != len(dropped):
        raise WrongSender("the dropped list names a silo twice")
    for v in gone:
        if v not in u2:
            raise UnknownSilo(f"the dropped list names {v!r}, which is not in U2")
    if set(alive) & set(gone):
        raise WrongSender("a silo is listed both as survivor and as dropped")
    if me not in alive:
        raise UnknownSilo(f"{me} is not among the survivors")
    request = (tuple(alive), tuple(gone))
    if state.answered is not None and state.answered != request:
        raise WrongSender("this silo already answered an unmasking request for this round")
    seed_shares, mask_shares = {}, {}
    for u in alive:
        if u == me:
            seed_shares[u] = hex(state.own_shares["seed"])
        elif u in state.held:
            seed_shares[u] = hex(state.held[u]["seed"])
    for v in gone:
        if v in state.held:
            mask_shares[v] = hex(state.held[v]["mask"])
    envelope = crypto.seal(identity, ctx.header(UNMASK, me), {"seed_shares": seed_shares, "mask_shares": mask_shares})
    return replace(state, answered=request), envelope
