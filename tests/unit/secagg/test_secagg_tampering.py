"""Tampered, replayed, impersonated and malformed messages: each is refused with its own typed
error, its sender counts as dropped, and the round either completes with the right sum of the
remaining survivors or fails with a `SecAggError` — never a silently wrong sum."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_harness import (
    FEDERATION,
    Round,
    flip_byte,
    flip_signature,
    reseal,
    unsigned_edit,
    with_signature,
)

from fl_core.errors import (
    BadCiphertext,
    BadSignature,
    SecAggError,
    StaleMessage,
    UnknownSilo,
    WrongLength,
    WrongSender,
)
from fl_core.secagg import client, crypto, shamir, simulate
from fl_core.secagg.shamir import PRIME
from fl_core.secagg.simulate import PHASES

PROPERTY = settings(max_examples=60, deadline=None)


def assert_rejected(rejected: dict[str, str], silo: str, error: type[Exception]) -> None:
    assert silo in rejected, f"{silo} was accepted"
    assert rejected[silo].startswith(f"{error.__name__}:"), rejected[silo]


def open_as(r: Round, phase: str, sender: str, envelope: crypto.Envelope, vector=None) -> dict:
    return crypto.open_envelope(
        envelope, r.public[sender], federation=FEDERATION, round_number=r.ctx.round_number, phase=phase,
        sender=sender, vector=vector,
    )


def finish(r: Round, expected_survivors: list[str]) -> None:
    """Run the remaining phases; the result is the exact sum of `expected_survivors`."""
    if r.collected_adverts is None:
        r.collect_adverts()
    if r.collected_shares is None:
        r.through_shares()
    if r.collected_masked is None:
        r.through_masked()
    if r.result is None:
        r.through_unmask()
    assert r.result.survivors == expected_survivors
    np.testing.assert_array_equal(r.result.total, r.expected(expected_survivors))


def tamper_phase(r: Round, phase: str, silo: str, change) -> dict[str, str]:
    """Run up to `phase`, replace `silo`'s message of that phase by `change(message)`, collect;
    return what the coordinator rejected in that phase."""
    if phase == client.KEYS:
        r.advertise()
        r.adverts[silo] = change(r.adverts[silo])
        return r.collect_adverts().rejected
    r.through_keys()
    if phase == client.SHARES:
        r.share()
        r.shares[silo] = change(r.shares[silo])
        return r.collect_shares().rejected
    r.through_shares()
    if phase == client.MASKED:
        r.mask()
        r.masked[silo] = change(r.masked[silo])
        return r.collect_masked().rejected
    r.through_masked()
    r.reveal()
    r.reveals[silo] = change(r.reveals[silo])
    return r.unmask().rejected


def survivors_after(r: Round, phase: str, silo: str) -> list[str]:
    """A silo refused before the unmask phase is left out of the sum; one whose reveal is refused
    still counts (its input was masked in; only its shares are ignored)."""
    return [s for s in r.ctx.roster if phase == client.UNMASK or s != silo]


# -- masked vectors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", [0, 4 * 16 + 1, -1])
def test_flipped_byte_in_a_masked_vector_drops_that_silo(index):
    r = Round.start(n=5, d=32).through_keys().through_shares()
    r.mask()
    victim = r.ctx.roster[1]
    envelope, vector = r.masked[victim]
    tampered = np.frombuffer(flip_byte(vector.tobytes(), index), dtype=np.uint32).copy()
    r.masked[victim] = (envelope, tampered)
    masked = r.collect_masked()
    assert_rejected(masked.rejected, victim, BadSignature)
    assert victim in masked.dropped and victim not in masked.survivors
    finish(r, [s for s in r.ctx.roster if s != victim])
    assert r.result.recovered == [victim]


def test_vector_swapped_between_silos_is_refused():
    r = Round.start(n=5).through_keys().through_shares()
    r.mask()
    a, b = r.ctx.roster[0], r.ctx.roster[3]
    r.masked[a] = (r.masked[a][0], r.masked[b][1])
    assert_rejected(r.collect_masked().rejected, a, BadSignature)
    finish(r, [s for s in r.ctx.roster if s != a])


# -- encrypted shares -----------------------------------------------------------------------------------
def _corrupt_ciphertext(envelope: crypto.Envelope, receiver: str) -> dict:
    body = json.loads(json.dumps(envelope.body))
    blob = crypto.unb64(body["ciphertexts"][receiver])
    body["ciphertexts"][receiver] = crypto.b64(flip_byte(blob, len(blob) // 2))
    return body


def test_bad_share_ciphertext_is_reported_and_its_sender_dropped():
    """A sender that signs a corrupted ciphertext passes the coordinator's checks; its receiver
    cannot decrypt, reports it, and the coordinator drops it and recovers its mask key."""
    r = Round.start(n=6).through_keys()
    r.share()
    sender, receiver = r.ctx.roster[0], r.ctx.roster[3]
    r.shares[sender] = reseal(r.identities[sender], r.shares[sender], body=_corrupt_ciphertext(r.shares[sender], receiver))
    assert sender in r.collect_shares().u2
    r.mask()
    assert r.states[receiver].bad_senders == (sender,)
    assert open_as(r, client.MASKED, receiver, *r.masked[receiver])["bad_senders"] == [sender]
    masked = r.collect_masked()
    assert masked.reported[receiver] == [sender]
    assert sender in masked.rejected and sender in masked.dropped
    finish(r, [s for s in r.ctx.roster if s != sender])
    assert r.result.recovered == [sender]


def test_decrypt_share_refuses_any_flipped_byte():
    shared = bytes(range(32))
    blob = crypto.encrypt_share(shared, FEDERATION, 7, "a", "b", b"x" * 66)
    assert crypto.decrypt_share(shared, FEDERATION, 7, "a", "b", blob) == b"x" * 66
    for index in (0, 11, 12, len(blob) // 2, len(blob) - 1):
        with pytest.raises(BadCiphertext):
            crypto.decrypt_share(shared, FEDERATION, 7, "a", "b", flip_byte(blob, index))
    for binding in ((FEDERATION, 6, "a", "b"), (FEDERATION, 7, "b", "a"), ("other", 7, "a", "b")):
        with pytest.raises(BadCiphertext):
            crypto.decrypt_share(shared, *binding, blob)
    with pytest.raises(BadCiphertext):
        crypto.decrypt_share(shared, FEDERATION, 7, "a", "b", blob[:12])


def test_ciphertext_edited_in_transit_fails_the_signature():
    r = Round.start(n=5).through_keys()
    r.share()
    sender = r.ctx.roster[2]
    r.shares[sender] = unsigned_edit(r.shares[sender], body=_corrupt_ciphertext(r.shares[sender], r.ctx.roster[0]))
    shares = r.collect_shares()
    assert_rejected(shares.rejected, sender, BadSignature)
    assert sender not in shares.u2
    finish(r, [s for s in r.ctx.roster if s != sender])


# -- signatures, replays, impersonation -----------------------------------------------------------------
def _flip_signature_of(message):
    if isinstance(message, tuple):  # (envelope, vector) of the masked phase
        return flip_signature(message[0], 17), message[1]
    return flip_signature(message, 17)


@pytest.mark.parametrize("phase", PHASES)
def test_flipped_signature_byte_is_refused(phase):
    r = Round.start(n=5)
    silo = r.ctx.roster[1]
    rejected = tamper_phase(r, phase, silo, _flip_signature_of)
    assert_rejected(rejected, silo, BadSignature)
    finish(r, survivors_after(r, phase, silo))


def test_open_envelope_refuses_every_signature_byte_flip():
    r = Round.start(n=3).through_keys()
    silo = r.ctx.roster[0]
    envelope = r.adverts[silo]
    for index in range(0, 64, 7):
        with pytest.raises(BadSignature):
            open_as(r, client.KEYS, silo, flip_signature(envelope, index))
    with pytest.raises(BadSignature):
        open_as(r, client.KEYS, silo, with_signature(envelope, b""))
    body = dict(envelope.body, mask=envelope.body["enc"])  # an edited body under the old signature
    with pytest.raises(BadSignature):
        open_as(r, client.KEYS, silo, unsigned_edit(envelope, body=body))
    with pytest.raises(BadSignature):
        client.read_advert(r.ctx, silo, flip_signature(envelope), r.public[silo])


@pytest.fixture
def two_rounds():
    """Round r - 1 (complete) and round r, run by the same silos with the same identities."""
    previous = Round.start(n=5, round_number=6)
    previous.run()
    current = Round.start(n=5, round_number=7, identities=previous.identities)
    return previous, current


@pytest.mark.parametrize("phase", PHASES)
def test_replay_from_the_previous_round_is_stale(two_rounds, phase):
    previous, current = two_rounds
    silo = current.ctx.roster[3]
    old = {client.KEYS: previous.adverts, client.SHARES: previous.shares, client.MASKED: previous.masked,
           client.UNMASK: previous.reveals}[phase][silo]
    rejected = tamper_phase(current, phase, silo, lambda _: old)
    assert_rejected(rejected, silo, StaleMessage)
    finish(current, survivors_after(current, phase, silo))


def test_a_replay_rebound_to_the_current_round_fails_the_signature(two_rounds):
    previous, current = two_rounds
    silo = current.ctx.roster[0]
    old = previous.adverts[silo]
    with pytest.raises(StaleMessage):
        open_as(current, client.KEYS, silo, old)
    with pytest.raises(BadSignature):
        open_as(current, client.KEYS, silo, unsigned_edit(old, header=dict(old.header, round=7)))


def test_silos_refuse_replayed_peer_messages(two_rounds):
    """The silos check bindings too: a replayed advert in U1 makes share_keys refuse the round; a
    peer's ciphertext of the previous round, forwarded in its place, is reported as a bad sender."""
    previous, current = two_rounds
    current.through_keys()
    me, peer = current.ctx.roster[0], current.ctx.roster[1]
    adverts = dict(current.adverts, **{peer: previous.adverts[peer]})
    with pytest.raises(StaleMessage):
        client.share_keys(current.ctx, current.states[me], current.identities[me], current.collected_adverts.u1,
                          adverts, current.public)
    current.through_shares()
    current.mask()
    # only `me` is served the replay, in a bundle the coordinator signs for this round
    replayed = dict(current.forwarded_to(me), **{peer: previous.shares[peer].body["ciphertexts"][me]})
    current.seal_bundle(me, replayed)
    current.states[me], envelope, vector = client.masked_input(
        current.ctx, current.states[me], current.identities[me], current.collected_shares.u2,
        current.forwarded_to(me), current.inputs[me],
    )
    current.masked[me] = (envelope, vector)
    assert current.states[me].bad_senders == (peer,)
    current.collect_masked()
    assert current.collected_masked.reported[me] == [peer]
    finish(current, [s for s in current.ctx.roster if s != peer])


def test_other_federation_or_phase_is_stale():
    r = Round.start(n=3).through_keys()
    silo = r.ctx.roster[0]
    envelope = r.adverts[silo]
    with pytest.raises(StaleMessage):
        crypto.open_envelope(envelope, r.public[silo], federation="other", round_number=7, phase=client.KEYS, sender=silo)
    with pytest.raises(StaleMessage):
        open_as(r, client.SHARES, silo, envelope)  # an advert filed as a shares message


@pytest.mark.parametrize("phase", PHASES)
def test_impersonation_fails_the_signature(phase):
    """A message that claims to come from A but is signed with B's identity."""
    r = Round.start(n=5)
    a, b = r.ctx.roster[2], r.ctx.roster[4]

    def impersonate(message):
        if isinstance(message, tuple):
            return reseal(r.identities[b], message[0], vector=message[1]), message[1]
        return reseal(r.identities[b], message)

    rejected = tamper_phase(r, phase, a, impersonate)
    assert_rejected(rejected, a, BadSignature)
    finish(r, survivors_after(r, phase, a))


@pytest.mark.parametrize("phase", PHASES)
def test_message_filed_under_another_sender_is_refused(phase):
    r = Round.start(n=5)
    a, b = r.ctx.roster[2], r.ctx.roster[4]
    source = {client.KEYS: lambda: r.adverts, client.SHARES: lambda: r.shares, client.MASKED: lambda: r.masked,
              client.UNMASK: lambda: r.reveals}[phase]
    rejected = tamper_phase(r, phase, a, lambda _: source()[b])
    assert_rejected(rejected, a, WrongSender)
    finish(r, survivors_after(r, phase, a))


# -- unknown silos and wrong lengths --------------------------------------------------------------------
def test_adverts_from_unknown_silos_are_refused():
    r = Round.start(n=5)
    mallory = crypto.new_identity()
    r.advertise()
    _, advert = client.advertise(r.ctx, r.ctx.roster[0], mallory)
    r.adverts["mallory"] = reseal(mallory, advert, header=dict(advert.header, sender="mallory"))
    assert_rejected(r.collect_adverts().rejected, "mallory", UnknownSilo)
    with pytest.raises(UnknownSilo):
        r.ctx.x("mallory")
    with pytest.raises(UnknownSilo):
        client.advertise(r.ctx, "mallory", mallory)
    finish(r, list(r.ctx.roster))


def test_shares_for_silos_outside_u1_are_refused():
    r = Round.start(n=6).through_keys()
    r.share()
    extra, missing = r.ctx.roster[0], r.ctx.roster[1]
    body = json.loads(json.dumps(r.shares[extra].body))
    body["ciphertexts"]["mallory"] = body["ciphertexts"][r.ctx.roster[2]]
    r.shares[extra] = reseal(r.identities[extra], r.shares[extra], body=body)
    body = json.loads(json.dumps(r.shares[missing].body))
    del body["ciphertexts"][r.ctx.roster[2]]
    r.shares[missing] = reseal(r.identities[missing], r.shares[missing], body=body)
    shares = r.collect_shares()
    assert_rejected(shares.rejected, extra, UnknownSilo)
    assert_rejected(shares.rejected, missing, UnknownSilo)
    finish(r, list(r.ctx.roster[2:]))


def test_masked_inputs_outside_u2_are_refused():
    r = Round.start(n=6).through_keys()
    outsider = r.ctx.roster[0]
    r.through_shares(skip=[outsider])  # dropped before U2
    r.mask()
    u2 = r.collected_shares.u2
    _, envelope, vector = client.masked_input(
        r.ctx, r.states[u2[0]], r.identities[u2[0]], u2, r.forwarded_to(u2[0]), r.inputs[u2[0]]
    )
    r.masked[outsider] = (reseal(r.identities[outsider], envelope, header=r.ctx.header(client.MASKED, outsider),
                                 vector=vector), vector)
    accuser = u2[1]
    envelope, vector = r.masked[accuser]
    r.masked[accuser] = (reseal(r.identities[accuser], envelope, body=dict(envelope.body, bad_senders=["mallory"]),
                                vector=vector), vector)
    masked = r.collect_masked()
    assert_rejected(masked.rejected, outsider, UnknownSilo)
    assert_rejected(masked.rejected, accuser, UnknownSilo)
    with pytest.raises(UnknownSilo):
        client.unmask(r.ctx, r.states[u2[0]], r.identities[u2[0]], masked.survivors, masked.dropped + ["mallory"])
    with pytest.raises(UnknownSilo):
        client.unmask(r.ctx, r.states[u2[0]], r.identities[u2[0]], masked.survivors, [outsider])
    finish(r, [s for s in u2 if s != accuser])


def test_reveals_about_silos_outside_the_lists_are_refused():
    r = Round.start(n=6).through_keys().through_shares()
    dropped = r.ctx.roster[5]
    r.through_masked(skip=[dropped])
    r.reveal()
    survivors = r.collected_masked.survivors
    r.reveals[dropped] = reseal(r.identities[dropped], r.reveals[survivors[0]], header=r.ctx.header(client.UNMASK, dropped))
    liar = survivors[1]
    body = dict(r.reveals[liar].body, seed_shares=dict(r.reveals[liar].body["seed_shares"], mallory="0x1"))
    r.reveals[liar] = reseal(r.identities[liar], r.reveals[liar], body=body)
    result = r.unmask()
    assert_rejected(result.rejected, dropped, UnknownSilo)
    assert_rejected(result.rejected, liar, UnknownSilo)
    assert liar not in result.revealers
    np.testing.assert_array_equal(result.total, r.expected(survivors))


def test_vectors_of_the_wrong_length_or_type_are_refused():
    r = Round.start(n=7, d=16).through_keys().through_shares()
    r.mask()
    longer, wrong_type, mislabelled = r.ctx.roster[0], r.ctx.roster[1], r.ctx.roster[2]
    envelope, vector = r.masked[longer]
    extended = np.append(vector, np.uint32(0))
    r.masked[longer] = (reseal(r.identities[longer], envelope, vector=extended), extended)  # validly signed
    envelope, vector = r.masked[wrong_type]
    as_int64 = vector.astype(np.int64)
    r.masked[wrong_type] = (reseal(r.identities[wrong_type], envelope, vector=as_int64), as_int64)
    envelope, vector = r.masked[mislabelled]
    r.masked[mislabelled] = (reseal(r.identities[mislabelled], envelope, body=dict(envelope.body, length=17),
                                    vector=vector), vector)
    masked = r.collect_masked()
    for silo in (longer, wrong_type, mislabelled):
        assert_rejected(masked.rejected, silo, WrongLength)
    assert masked.survivors == list(r.ctx.roster[3:])
    with pytest.raises(WrongLength):
        client.masked_input(r.ctx, r.states[longer], r.identities[longer], r.collected_shares.u2,
                            r.forwarded_to(longer), r.inputs[longer].astype(np.float32))
    with pytest.raises(WrongLength):
        client.masked_input(r.ctx, r.states[longer], r.identities[longer], r.collected_shares.u2,
                            r.forwarded_to(longer), r.inputs[longer].reshape(4, 4))
    finish(r, list(r.ctx.roster[3:]))


def test_adverts_with_missing_or_short_keys_are_refused():
    r = Round.start(n=7)
    r.advertise()
    short, missing, garbled = r.ctx.roster[0], r.ctx.roster[1], r.ctx.roster[2]
    r.adverts[short] = reseal(r.identities[short], r.adverts[short],
                              body=dict(r.adverts[short].body, enc=crypto.b64(bytes(31))))
    r.adverts[missing] = reseal(r.identities[missing], r.adverts[missing], body={"enc": r.adverts[missing].body["enc"]})
    r.adverts[garbled] = reseal(r.identities[garbled], r.adverts[garbled], body=dict(r.adverts[garbled].body, mask="%%"))
    adverts = r.collect_adverts()
    for silo in (short, missing, garbled):
        assert_rejected(adverts.rejected, silo, WrongLength)
    assert adverts.u1 == list(r.ctx.roster[3:])
    finish(r, list(r.ctx.roster[3:]))


# Low-order X25519 points: every key agreement with them yields the all-zero secret.
_P25519 = 2**255 - 19
LOW_ORDER = [
    0, 1, _P25519 - 1, _P25519, _P25519 + 1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
]


@pytest.mark.parametrize("field", ["enc", "mask"])
@pytest.mark.parametrize("point", LOW_ORDER, ids=lambda u: f"u{u % 1000}")
def test_an_advertised_low_order_key_drops_its_silo(field, point):
    """Such a key would make every honest peer's key agreement fail (share_keys for `enc`,
    masked_input for `mask`), so one silo could abort every round; the coordinator refuses it."""
    key = point.to_bytes(32, "little")
    with pytest.raises(BadCiphertext):
        crypto.agree(crypto.new_x25519()[0], key)
    r = Round.start(n=5)
    r.advertise()
    bad = r.ctx.roster[4]
    r.adverts[bad] = reseal(r.identities[bad], r.adverts[bad], body=dict(r.adverts[bad].body, **{field: crypto.b64(key)}))
    adverts = r.collect_adverts()
    assert_rejected(adverts.rejected, bad, BadCiphertext)
    assert bad not in adverts.u1
    finish(r, list(r.ctx.roster[:4]))


# -- malformed bodies under valid signatures ------------------------------------------------------------
@pytest.mark.parametrize("ciphertexts", [None, 5, "s01", ["s01", "s02", "s03", "s04"]])
def test_malformed_shares_body_drops_its_sender(ciphertexts):
    r = Round.start(n=5).through_keys()
    r.share()
    silo = r.ctx.roster[0]
    r.shares[silo] = reseal(r.identities[silo], r.shares[silo], body=dict(r.shares[silo].body, ciphertexts=ciphertexts))
    shares = r.collect_shares()
    assert_rejected(shares.rejected, silo, WrongLength)
    finish(r, list(r.ctx.roster[1:]))


@pytest.mark.parametrize("bad_senders", [None, 5, "s00", {"s00": True}])
def test_malformed_masked_body_drops_its_sender(bad_senders):
    r = Round.start(n=5).through_keys().through_shares()
    r.mask()
    silo = r.ctx.roster[1]
    envelope, vector = r.masked[silo]
    r.masked[silo] = (reseal(r.identities[silo], envelope, body=dict(envelope.body, bad_senders=bad_senders),
                             vector=vector), vector)
    masked = r.collect_masked()
    assert_rejected(masked.rejected, silo, WrongLength)
    assert masked.survivors == [s for s in r.ctx.roster if s != silo]
    finish(r, masked.survivors)


@pytest.mark.parametrize("shares", [None, 5, ["0x1"], {"s00": "zz"}, {"s00": ["0x1"]}])
def test_malformed_reveal_is_ignored(shares):
    r = Round.start(n=5).through_keys().through_shares().through_masked()
    r.reveal()
    silo = r.ctx.roster[2]
    r.reveals[silo] = reseal(r.identities[silo], r.reveals[silo], body=dict(r.reveals[silo].body, seed_shares=shares))
    result = r.unmask()
    assert silo in result.rejected and silo not in result.revealers
    np.testing.assert_array_equal(result.total, r.expected(r.ctx.roster))


# -- wrong revealed shares ------------------------------------------------------------------------------
def _lie(r: Round, liar: str, kind: str) -> None:
    """`liar` (a survivor) reveals one wrong share of `kind`, validly signed."""
    body = json.loads(json.dumps(r.reveals[liar].body))
    if kind == "own seed":
        target, field = liar, "seed_shares"
    elif kind == "peer seed":
        target, field = next(s for s in body["seed_shares"] if s != liar), "seed_shares"
    else:
        target, field = next(iter(body["mask_shares"])), "mask_shares"
    body[field][target] = hex((int(body[field][target], 16) + 1) % PRIME)
    r.reveals[liar] = reseal(r.identities[liar], r.reveals[liar], body=body)


def _lying_round(n: int, threshold: int, silent: int):
    """A round with the last silo dropped in the masked phase and `silent` survivors that do not
    reveal, just before unmasking."""
    r = Round.start(n=n, threshold=threshold, d=24).through_keys().through_shares()
    r.through_masked(skip=[r.ctx.roster[-1]])
    r.reveal(skip=r.collected_masked.survivors[len(r.collected_masked.survivors) - silent:])
    return r


@pytest.mark.parametrize("kind", ["own seed", "peer seed", "mask key"])
@pytest.mark.parametrize("position", range(6))
def test_a_wrong_revealed_share_never_yields_a_wrong_sum(kind, position):
    r = _lying_round(n=7, threshold=4, silent=0)  # 6 revealers for t = 4
    liar = r.collected_masked.survivors[position]
    _lie(r, liar, kind)
    truth = r.expected(r.collected_masked.survivors)
    try:
        result = r.unmask()
    except SecAggError:
        assert position not in (0, 5), "a wrong share at either end leaves a window of t honest shares"
        return
    np.testing.assert_array_equal(result.total, truth)


@pytest.mark.parametrize("kind", ["own seed", "peer seed", "mask key"])
def test_a_wrong_share_among_exactly_t_reveals_fails_the_round(kind):
    r = _lying_round(n=7, threshold=4, silent=2)
    assert len(r.reveals) == r.ctx.threshold
    _lie(r, r.collected_masked.survivors[1], kind)
    with pytest.raises(SecAggError, match="do not reconstruct"):
        r.unmask()


def test_a_share_outside_the_field_is_skipped():
    r = _lying_round(n=7, threshold=4, silent=0)
    liar = r.collected_masked.survivors[0]
    body = json.loads(json.dumps(r.reveals[liar].body))
    target = next(iter(body["seed_shares"]))
    body["seed_shares"][target] = hex(PRIME + 3)
    r.reveals[liar] = reseal(r.identities[liar], r.reveals[liar], body=body)
    np.testing.assert_array_equal(r.unmask().total, r.expected(r.collected_masked.survivors))
    with pytest.raises(WrongLength):
        shamir.combine({1: PRIME + 3, 2: 5}, 2)


# -- serialised envelopes -------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=90),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)


@PROPERTY
@given(garbage=st.one_of(st.text(), st.binary()))
def test_from_json_on_garbage_raises_bad_signature(garbage):
    with pytest.raises(BadSignature):
        crypto.Envelope.from_json(garbage)


@PROPERTY
@given(
    raw=st.fixed_dictionaries(
        {}, optional={"header": json_values, "body": json_values, "signature": json_values, "vector_sha256": json_values}
    )
)
def test_from_json_on_json_of_the_wrong_shape_raises_bad_signature(raw):
    try:
        envelope = crypto.Envelope.from_json(json.dumps(raw))
    except BadSignature:
        return
    assert isinstance(envelope.header, dict) and isinstance(envelope.body, dict)
    assert len(envelope.signature) == 64


@pytest.mark.parametrize(
    "text",
    [
        '{"header": {}, "body": {}, "signature": "!!not base64!!"}',
        '{"header": {}, "body": {}, "signature": "AAAA"}',
        '{"header": {}, "body": {}, "signature": 5}',
        '{"header": {}, "body": {}, "signature": null}',
        '{"header": {}, "body": {}}',
        '{"header": "ab", "body": {}, "signature": ""}',
        "[1, 2]",
        "null",
        "[" * 100_000,
        b"\xff\xfe\x00",
    ],
)
def test_from_json_on_known_garbage(text):
    with pytest.raises(BadSignature):
        crypto.Envelope.from_json(text)


@pytest.fixture(scope="module")
def serialised():
    r = Round.start(n=3, d=8).through_keys().through_shares().through_masked()
    silo = r.ctx.roster[1]
    envelope, vector = r.masked[silo]
    return r, silo, envelope, vector


def test_envelopes_survive_serialisation(serialised):
    r, silo, envelope, vector = serialised
    restored = crypto.Envelope.from_json(envelope.to_json())
    assert restored == envelope
    assert open_as(r, client.MASKED, silo, restored, vector) == envelope.body


@PROPERTY
@given(position=st.integers(0, 10_000), value=st.integers(0, 255))
def test_any_byte_change_in_a_serialised_envelope_is_caught(serialised, position, value):
    """A changed byte is refused when parsed or verified, unless the content is unchanged (e.g. a
    space swapped for another whitespace character)."""
    r, silo, envelope, vector = serialised
    data = bytearray(envelope.to_json().encode())
    data[position % len(data)] = value
    try:
        restored = crypto.Envelope.from_json(bytes(data))
        body = open_as(r, client.MASKED, silo, restored, vector)
    except SecAggError:
        return
    assert restored == envelope and body == envelope.body


def test_simulated_round_rejects_nothing_when_nobody_cheats():
    r = Round.start(n=5)
    result = r.run()
    assert not r.collected_adverts.rejected and not r.collected_shares.rejected
    assert not r.collected_masked.rejected and not result.rejected
    transcript = simulate.run_round(r.ctx, r.inputs, identities=r.identities)
    np.testing.assert_array_equal(transcript.result.total, result.total)


def test_a_message_of_one_bucket_is_stale_in_another():
    """Bucketed mode: each bucket's instance binds its messages to its own name, so an advert (or a
    coordinator's set) of bucket 0 cannot be replayed into bucket 1 of the same round."""
    from infra.secagg_channel import instance_name

    r = Round.start(n=3).through_keys()
    silo = r.ctx.roster[0]
    bucket0 = client.RoundContext(federation=instance_name(FEDERATION, 0), round_number=7, roster=r.ctx.roster,
                                  threshold=r.ctx.threshold)
    _, envelope = client.advertise(bucket0, silo, r.identities[silo])
    assert client.read_advert(bucket0, silo, envelope, r.public[silo])  # accepted where it was made
    bucket1 = client.RoundContext(federation=instance_name(FEDERATION, 1), round_number=7, roster=r.ctx.roster,
                                  threshold=r.ctx.threshold)
    for other in (bucket1, r.ctx):
        with pytest.raises(StaleMessage):
            client.read_advert(other, silo, envelope, r.public[silo])
    assert instance_name(FEDERATION, None) == FEDERATION and ":" in instance_name(FEDERATION, 0)
