"""Shares forwarded by the coordinator (Bonawitz et al., CCS 2017, §4): each silo is sent only the
ciphertexts addressed to it, in one bundle the coordinator signs. The coordinator cannot make a
silo hold a share its sender did not encrypt to it: a tampered, swapped, replayed (from another
round or bucket), missing or duplicated ciphertext puts its sender among the silo's bad senders,
the coordinator then drops that sender and recovers its masks, and the round ends with the exact
sum of the others — never a wrong share held, never a wrong sum. The bundle itself is signed by
the coordinator and bound to the federation (or bucket), round, phase and recipient."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_harness import FEDERATION, Round, flip_byte, random_inputs, reseal, unsigned_edit

from fl_core.errors import BadSignature, SecAggError, StaleMessage, WrongLength, WrongSender
from fl_core.secagg import client, crypto, server, shamir
from fl_core.secagg.client import ClientState, RoundContext
from infra.exchange import Exchange, LocalObjectStore
from infra.secagg_channel import SecAggChannel, instance_name

PROPERTY = settings(max_examples=60, deadline=None)


def shared_round(n: int = 6, skip_shares: tuple[str, ...] = ()) -> Round:
    return Round.start(n=n, d=16).through_keys().through_shares(skip=skip_shares)


def mask_one(r: Round, silo: str, forwarded, ctx: RoundContext | None = None) -> ClientState:
    """`silo`'s state after masking with `forwarded` (r itself is left as it was)."""
    state, _, _ = client.masked_input(ctx or r.ctx, r.states[silo], r.identities[silo], r.collected_shares.u2,
                                      forwarded, r.inputs[silo])
    return state


def finish_without(r: Round, bad: list[str]) -> None:
    """Collect the masked inputs, reveal and unmask: the `bad` senders are dropped and recovered,
    and the sum is exactly the others'."""
    masked = r.collect_masked()
    for v in bad:
        assert v in masked.dropped and v in masked.rejected
    r.through_unmask()
    rest = [s for s in r.ctx.roster if s not in bad]
    assert r.result.survivors == rest and r.result.recovered == bad
    np.testing.assert_array_equal(r.result.total, r.expected(rest))


# -- what is forwarded ----------------------------------------------------------------------------------
def test_each_silo_is_forwarded_exactly_the_ciphertexts_addressed_to_it():
    gone = "s05"
    r = shared_round(skip_shares=(gone,))  # in U1, never shared: not in U2
    u2 = r.collected_shares.u2
    assert gone not in u2
    bundles = server.forward_shares(r.ctx, r.collected_shares)
    assert list(bundles) == u2
    for recipient, ciphertexts in bundles.items():
        assert list(ciphertexts) == [s for s in u2 if s != recipient]
        for sender, blob in ciphertexts.items():
            assert blob == r.shares[sender].body["ciphertexts"][recipient]
        assert r.forwarded_to(recipient) == ciphertexts  # what the signed bundle carries
        assert r.bundles[recipient].header == r.ctx.header(client.FORWARDED, client.COORDINATOR)
    assert not r.collected_shares.rejected


def test_an_honestly_forwarded_round_holds_every_share_and_sums_exactly():
    r = shared_round()
    r.mask()
    for silo in r.ctx.roster:
        assert r.states[silo].bad_senders == ()
        assert set(r.states[silo].held) == set(r.ctx.roster) - {silo}
    finish_without(r, [])


# -- the coordinator cannot slip a silo a wrong share ------------------------------------------------------
def _flip(position: int):
    def change(bundle, sender, _r):
        blob = crypto.unb64(bundle[sender])
        bundle[sender] = crypto.b64(flip_byte(blob, position))
    return change


def _swap(bundle, sender, r):
    other = next(s for s in bundle if s != sender)
    bundle[sender], bundle[other] = bundle[other], bundle[sender]
    return [sender, other]


def _for_another_receiver(bundle, sender, r):
    receiver = next(s for s in r.ctx.roster if s not in bundle)
    third = next(s for s in r.ctx.roster if s not in (sender, receiver))
    bundle[sender] = r.shares[sender].body["ciphertexts"][third]  # what sender encrypted to a third silo


def _copy_of_another_sender(bundle, sender, _r):
    other = next(s for s in bundle if s != sender)
    bundle[sender] = bundle[other]  # one sender's ciphertext under two senders' names


def _replace(value):
    def change(bundle, sender, _r):
        bundle[sender] = value
    return change


def _truncate(bundle, sender, _r):
    bundle[sender] = crypto.b64(crypto.unb64(bundle[sender])[: crypto.NONCE_BYTES])


def _missing(bundle, sender, _r):
    del bundle[sender]


CHANGES = {
    "nonce flipped": _flip(0),
    "ciphertext flipped": _flip(crypto.NONCE_BYTES + 20),
    "tag flipped": _flip(-1),
    "truncated to its nonce": _truncate,
    "swapped with another sender's": _swap,
    "meant for another receiver": _for_another_receiver,
    "another sender's, duplicated": _copy_of_another_sender,
    "missing": _missing,
    "not base64": _replace("%%"),
    "not canonical base64": _replace("AB=="),
    "empty": _replace(""),
    "a number": _replace(5),
    "null": _replace(None),
    "a list": _replace(["AAAA"]),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_ciphertext_changed_by_the_coordinator_drops_its_sender(change):
    r = shared_round(n=7)  # t = 4: with two senders dropped, four of the five survivors hold their shares
    receiver, sender = r.ctx.roster[3], r.ctx.roster[1]
    bundle = r.forwarded_to(receiver)
    bad = change(bundle, sender, r) or [sender]
    r.seal_bundle(receiver, bundle)  # the coordinator signs what it forwards; it cannot sign for the sender
    r.mask()
    bad = sorted(bad, key=r.ctx.x)
    assert list(r.states[receiver].bad_senders) == bad
    assert set(r.states[receiver].held) == set(r.ctx.roster) - {receiver, *bad}
    assert r.masked[receiver][0].body["bad_senders"] == bad
    assert all(r.states[s].bad_senders == () for s in r.ctx.roster if s != receiver)
    finish_without(r, bad)


def test_extra_entries_in_a_bundle_change_nothing():
    """Entries for the recipient itself or for a silo outside U2 are never read."""
    gone = "s05"
    r = shared_round(skip_shares=(gone,))
    receiver = r.ctx.roster[0]
    genuine = mask_one(r, receiver, r.forwarded_to(receiver))
    padded = dict(r.forwarded_to(receiver), **{receiver: "AAAA", gone: r.shares["s01"].body["ciphertexts"][receiver],
                                               "mallory": "AAAA"})
    state = mask_one(r, receiver, padded)
    assert state.bad_senders == () and state.held == genuine.held


def test_a_sender_that_encrypts_a_malformed_share_pair_is_a_bad_sender():
    """A malicious sender (it holds the pair's key) encrypts a pair of the wrong size or a value
    outside the field; its receivers cannot use it and report it."""
    r = Round.start(n=7, d=16).through_keys()
    r.share()
    short, outside = r.ctx.roster[0], r.ctx.roster[1]
    receiver = r.ctx.roster[4]
    keys = r.ctx.round_keys()
    for sender, plain in ((short, bytes(2 * shamir.SHARE_BYTES - 1)),
                          (outside, shamir.encode_share(1) + (shamir.PRIME + 1).to_bytes(shamir.SHARE_BYTES, "big"))):
        shared = crypto.agree(r.states[sender].enc_private, r.states[sender].peers[receiver]["enc"])
        key = keys.share_key(shared, sender, receiver)
        body = json.loads(json.dumps(r.shares[sender].body))
        body["ciphertexts"][receiver] = crypto.b64(keys.seal_share(key, sender, receiver, plain))
        r.shares[sender] = reseal(r.identities[sender], r.shares[sender], body=body)
    assert r.collect_shares().u2 == list(r.ctx.roster)  # validly signed: the coordinator cannot tell
    r.mask()
    assert r.states[receiver].bad_senders == (short, outside)
    finish_without(r, [short, outside])


@pytest.fixture(scope="module")
def ready():
    """A round through the shares phase, its states left untouched by the tests that use it."""
    return shared_round(n=7)


@PROPERTY
@given(data=st.data())
def test_exactly_the_changed_ciphertexts_are_refused(ready, data):
    """Any mix of changes to one silo's bundle: the senders whose entry differs from what they
    sent are exactly its bad senders, and every other share it holds is the genuine one."""
    r = ready
    receiver = data.draw(st.sampled_from(r.ctx.roster))
    genuine = r.forwarded_to(receiver)
    bundle = dict(genuine)
    senders = list(genuine)
    for sender in data.draw(st.lists(st.sampled_from(senders), unique=True, max_size=len(senders))):
        kind = data.draw(st.sampled_from(["flip", "drop", "other sender", "other receiver", "garbage"]))
        if kind == "flip":
            blob = crypto.unb64(genuine[sender])
            bundle[sender] = crypto.b64(flip_byte(blob, data.draw(st.integers(0, len(blob) - 1))))
        elif kind == "drop":
            bundle.pop(sender, None)
        elif kind == "other sender":
            bundle[sender] = genuine[data.draw(st.sampled_from([s for s in senders if s != sender]))]
        elif kind == "other receiver":
            third = data.draw(st.sampled_from([s for s in r.ctx.roster if s not in (sender, receiver)]))
            bundle[sender] = r.shares[sender].body["ciphertexts"][third]
        else:
            bundle[sender] = data.draw(st.one_of(st.text(max_size=40), st.integers(), st.none()))
    changed = [s for s in senders if bundle.get(s) != genuine[s]]
    honest = mask_one(r, receiver, genuine)
    state = mask_one(r, receiver, bundle)
    assert list(state.bad_senders) == changed
    assert state.held == {s: held for s, held in honest.held.items() if s not in changed}


# -- replays from another round or bucket --------------------------------------------------------------
def test_a_ciphertext_from_another_round_or_bucket_fails_even_under_the_same_keys():
    """The associated data binds the round and the instance (federation or bucket): the very same
    ciphertexts, decrypted under the very same pairwise keys but in another round or bucket's
    context, all fail."""
    r = shared_round()
    me = r.ctx.roster[2]
    forwarded = r.forwarded_to(me)
    assert mask_one(r, me, forwarded).bad_senders == ()
    others = [replace(r.ctx, round_number=r.ctx.round_number + 1), replace(r.ctx, round_number=r.ctx.round_number - 1),
              replace(r.ctx, federation=instance_name(FEDERATION, 0)), replace(r.ctx, federation="other")]
    for ctx in others:
        state = mask_one(r, me, forwarded, ctx=ctx)
        assert list(state.bad_senders) == [s for s in r.ctx.roster if s != me] and state.held == {}


def test_a_ciphertext_from_another_bucket_of_the_same_round_is_refused():
    """Two buckets with the same silos and identities (as a reshuffle could give): bucket 0's
    ciphertexts forwarded into bucket 1 fail there."""
    def bucket(k: int, identities=None) -> Round:
        ctx = RoundContext(federation=instance_name(FEDERATION, k), round_number=7,
                           roster=tuple(f"s{i:02d}" for i in range(5)), threshold=3)
        ids = identities or {s: crypto.new_identity() for s in ctx.roster}
        inputs = random_inputs(ctx.roster, 8, np.random.default_rng(k))
        return Round(ctx=ctx, identities=ids, inputs=inputs).through_keys().through_shares()

    first = bucket(0)
    second = bucket(1, identities=first.identities)
    me, peer = second.ctx.roster[0], second.ctx.roster[3]
    bundle = dict(second.forwarded_to(me), **{peer: first.shares[peer].body["ciphertexts"][me]})
    second.seal_bundle(me, bundle)
    second.mask()
    assert second.states[me].bad_senders == (peer,)
    finish_without(second, [peer])


# -- the bundle itself ----------------------------------------------------------------------------------
def test_a_bundle_is_opened_only_by_its_recipient_in_its_round():
    r = shared_round()
    me, other = r.ctx.roster[0], r.ctx.roster[1]

    def opened(envelope, recipient=me, ctx=r.ctx, public=None):
        return client.open_forwarded(envelope, public or r.coordinator_public, federation=ctx.federation,
                                     round_number=ctx.round_number, recipient=recipient)

    bundle = r.bundles[me]
    assert opened(bundle) == r.forwarded_to(me)
    with pytest.raises(WrongSender):
        opened(r.bundles[other])  # another silo's bundle, filed under mine
    with pytest.raises(BadSignature):
        opened(bundle, public=r.public[me])  # not the coordinator's key
    with pytest.raises(BadSignature):
        body = dict(bundle.body, ciphertexts=dict(bundle.body["ciphertexts"], s01=bundle.body["ciphertexts"]["s02"]))
        opened(unsigned_edit(bundle, body=body))  # edited in transit
    with pytest.raises(BadSignature):
        opened(reseal(r.identities[other], bundle))  # a silo posing as the coordinator
    with pytest.raises(WrongSender):
        opened(reseal(r.coordinator, bundle, header=r.ctx.header(client.FORWARDED, other)))
    for ctx in (replace(r.ctx, round_number=6), replace(r.ctx, federation=instance_name(FEDERATION, 1))):
        with pytest.raises(StaleMessage):
            opened(bundle, ctx=ctx)  # a bundle of round 7 replayed into round 6 or into a bucket
    with pytest.raises(StaleMessage):
        opened(reseal(r.coordinator, bundle, header=r.ctx.header("u2", client.COORDINATOR)))  # another phase
    with pytest.raises(WrongSender):
        opened(reseal(r.coordinator, bundle, body={"ciphertexts": bundle.body["ciphertexts"]}))  # no recipient
    for ciphertexts in (None, 5, "AAAA", ["AAAA"]):
        with pytest.raises(WrongLength):
            opened(reseal(r.coordinator, bundle, body={"recipient": me, "ciphertexts": ciphertexts}))


def test_a_bundle_naming_a_sender_twice_is_refused():
    """JSON parsers differ on a repeated key (first or last wins), so one signed text could show
    two readers two bundles; the envelope parser refuses any repeated key, wherever it is."""
    r = shared_round()
    me = r.ctx.roster[0]
    text = r.bundles[me].to_json()
    assert crypto.Envelope.from_json(text) == r.bundles[me]
    genuine = r.bundles[me].body["ciphertexts"]["s01"]
    forged = r.bundles[me].body["ciphertexts"]["s02"]
    for first, second in ((genuine, forged), (forged, genuine)):
        repeated = text.replace(f'"s01": "{genuine}"', f'"s01": "{first}", "s01": "{second}"')
        assert repeated != text
        with pytest.raises(BadSignature):
            crypto.Envelope.from_json(repeated)
    with pytest.raises(BadSignature):
        crypto.Envelope.from_json(text.replace('"recipient": ', '"recipient": "s02", "recipient": '))


def test_the_channel_files_each_bundle_under_its_recipient(tmp_path):
    r = shared_round()
    exchange = Exchange(LocalObjectStore(tmp_path), FEDERATION)
    channel, bucket = SecAggChannel(exchange, 7), SecAggChannel(exchange, 7, 2)
    for recipient, envelope in r.bundles.items():
        channel.publish_forwarded(recipient, envelope)
    me, other = r.ctx.roster[0], r.ctx.roster[1]
    assert (tmp_path / f"{exchange.round_prefix(7)}/secagg/forwarded/{me}.json").is_file()
    assert channel.read_forwarded(me, r.coordinator_public, FEDERATION) == r.forwarded_to(me)
    with pytest.raises(BadSignature):
        channel.read_forwarded(me, r.public[me], FEDERATION)
    with pytest.raises(StaleMessage):
        channel.read_forwarded(me, r.coordinator_public, "other")
    bucket.publish_forwarded(me, r.bundles[other])  # the wrong silo's bundle, in a bucket's folder
    assert (tmp_path / f"{exchange.round_prefix(7)}/secagg/bucket-2/forwarded/{me}.json").is_file()
    with pytest.raises(WrongSender):
        bucket.read_forwarded(me, r.coordinator_public, FEDERATION)


# -- the share keys kept between the phases -------------------------------------------------------------
def test_share_keys_survive_the_state_on_disk_and_an_older_state_still_masks():
    r = shared_round()
    me = r.ctx.roster[1]
    state = r.states[me]
    assert set(state.share_keys) == set(r.ctx.roster) - {me}
    assert all(len(key) == 32 for key in state.share_keys.values())
    assert len(set(state.share_keys.values())) == len(state.share_keys)
    assert ClientState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert "share_keys" not in repr(state) and state.share_keys[r.ctx.roster[0]].hex() not in repr(state)
    older = state.to_dict()
    del older["share_keys"]  # as kept by a version that derived the keys again in the masked phase
    restored = ClientState.from_dict(older)
    assert restored.share_keys == {}
    forwarded = r.forwarded_to(me)
    with_keys = mask_one(r, me, forwarded)
    r.states[me] = restored
    without = mask_one(r, me, forwarded)
    assert without.bad_senders == () and without.held == with_keys.held
    with pytest.raises(SecAggError, match="unreadable"):
        ClientState.from_dict(dict(state.to_dict(), share_keys={"s00": "zz"}))


def test_the_kept_key_is_the_one_the_sender_encrypts_with():
    r = shared_round()
    keys = r.ctx.round_keys()
    for u in r.ctx.roster:
        for v in r.ctx.roster:
            if u == v:
                continue
            shared = crypto.agree(r.states[v].enc_private, r.states[v].peers[u]["enc"])
            assert r.states[u].share_keys[v] == keys.share_key(shared, v, u)  # v -> u, derived by v
            assert r.states[u].share_keys[v] != keys.share_key(shared, u, v)  # the other direction differs
