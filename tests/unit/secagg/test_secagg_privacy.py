"""What the honest-but-curious coordinator holds tells it nothing about a single silo's input:
masked vectors are indistinguishable from uniform, a silo declared dropped stays hidden behind its
self mask even if its input turns up late, and no silo reveals both secrets of one peer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from secagg_harness import (
    ALPHA,
    FEDERATION,
    Round,
    byte_uniformity_p,
    context,
    high_bits_p,
    lane_uniformity_ps,
    same_top_byte_p,
)

from fl_core.errors import ThresholdError, UnknownSilo, WrongSender
from fl_core.secagg import client, crypto, prg, shamir, simulate
from fl_core.secagg.client import ClientState
from fl_core.secagg.quantize import Quantizer

D = 2048
ROUNDS = 24


def structured_inputs(roster) -> dict[str, np.ndarray]:
    """Highly structured inputs: all zeros, one constant, a ramp."""
    zeros, constant, ramp = roster
    return {
        zeros: np.zeros(D, dtype=np.uint32),
        constant: np.full(D, 0x80000000, dtype=np.uint32),
        ramp: np.arange(D, dtype=np.uint32),
    }


@pytest.fixture(scope="module")
def stored():
    """The masked vector the coordinator stores for each silo, over ROUNDS independent rounds."""
    ctx = context(3)
    inputs = structured_inputs(ctx.roster)
    vectors = {s: [] for s in ctx.roster}
    for _ in range(ROUNDS):
        transcript = simulate.run_round(ctx, inputs)
        for s in ctx.roster:
            vectors[s].append(transcript.masked_vectors[s])
    return ctx, inputs, vectors


def realistic_update(rng) -> np.ndarray:
    return Quantizer(bound=1.0, bits=16).encode(np.clip(rng.normal(scale=0.05, size=D), -1, 1), rng)


def test_masked_vectors_differ_from_their_inputs(stored):
    ctx, inputs, vectors = stored
    for s in ctx.roster:
        for v in vectors[s]:
            assert np.count_nonzero(v == inputs[s]) <= 2  # ~D / 2^32 coincidences expected
    first = vectors[ctx.roster[0]]
    assert not any(np.array_equal(first[0], other) for other in first[1:])  # fresh masks every round


@pytest.mark.parametrize("which", [0, 1, 2])
def test_masked_vector_of_a_structured_input_looks_uniform(stored, which):
    ctx, _, vectors = stored
    sample = vectors[ctx.roster[which]]
    assert byte_uniformity_p(sample) > ALPHA
    assert high_bits_p(sample, bits=4) > ALPHA
    assert high_bits_p(sample, bits=8) > ALPHA
    assert min(lane_uniformity_ps(sample)) > ALPHA


def test_the_uniformity_statistics_have_power():
    """The same statistics reject a realistic quantised update, and a mask that leaves the top
    byte alone, by a wide margin: passing them above means something."""
    rng = np.random.default_rng(1)
    updates = [realistic_update(rng) for _ in range(ROUNDS)]
    assert byte_uniformity_p(updates) < 1e-30
    assert high_bits_p(updates) < 1e-30
    weak = [np.uint32(0x80000000) + (rng.integers(0, 2**32, D, dtype=np.uint32) & np.uint32(0xFFFFFF))
            for _ in range(ROUNDS)]
    assert high_bits_p(weak) < 1e-30
    assert lane_uniformity_ps(weak)[3] < 1e-30
    assert min(lane_uniformity_ps(weak)[:3]) > ALPHA  # ...while the masked lanes pass


def test_masked_vectors_of_different_inputs_are_indistinguishable(stored):
    ctx, inputs, vectors = stored
    zeros, constant, ramp = ctx.roster
    assert same_top_byte_p(vectors[zeros], vectors[constant]) > ALPHA
    assert same_top_byte_p(vectors[zeros], vectors[ramp]) > ALPHA
    a = np.concatenate(vectors[zeros]).astype(np.float64)
    b = np.concatenate(vectors[constant]).astype(np.float64)
    assert stats.ks_2samp(a, b).pvalue > ALPHA
    assert stats.ttest_ind(a, b).pvalue > ALPHA
    # Not correlated with the input either (the ramp's coordinates are their positions).
    positions = np.tile(inputs[ramp].astype(np.float64), ROUNDS)
    assert stats.pearsonr(np.concatenate(vectors[ramp]).astype(np.float64), positions).pvalue > ALPHA
    # Power: an input behind a mask that spares the top byte is told apart at once.
    rng = np.random.default_rng(2)
    weak = [inputs[constant] + (rng.integers(0, 2**32, D, dtype=np.uint32) & np.uint32(0xFFFFFF)) for _ in range(ROUNDS)]
    assert same_top_byte_p(vectors[zeros], weak) < 1e-30


# -- a silo declared dropped that arrives late ----------------------------------------------------------
def _pairwise_removed(r: Round, silo: str, mask_key: bytes, vector: np.ndarray) -> np.ndarray:
    """`vector` without `silo`'s pairwise masks, computed from its mask key and public keys only."""
    ctx = r.ctx
    add, subtract = [], []
    for u in r.collected_shares.u2:
        if u == silo:
            continue
        low, high = sorted((silo, u), key=ctx.x)
        shared = crypto.agree(mask_key, r.collected_adverts.keys[u]["mask"])
        pair = crypto.pair_mask_key(shared, ctx.federation, ctx.round_number, low, high)
        (subtract if ctx.sign(silo, u) > 0 else add).append(pair)  # the silo added sign * PRG(pair)
    out = np.array(vector, dtype=np.uint32, copy=True)
    prg.apply_masks_inplace(out, add=add, subtract=subtract)
    return out


def _opened_reveals(r: Round) -> dict[str, dict]:
    return {
        s: crypto.open_envelope(env, r.public[s], federation=FEDERATION, round_number=r.ctx.round_number,
                                phase=client.UNMASK, sender=s)
        for s, env in r.reveals.items()
    }


def test_a_late_silo_stays_hidden_behind_its_self_mask():
    rng = np.random.default_rng(7)
    ctx = context(5)
    late = ctx.roster[2]
    inputs = {s: rng.integers(0, 2**32, D, dtype=np.uint32) for s in ctx.roster}
    inputs[late] = realistic_update(rng)
    r = Round.start(n=5, inputs=inputs).through_keys().through_shares()
    r.mask(skip=[late])  # declared dropped in the masked phase
    r.collect_masked()
    assert late in r.collected_masked.dropped
    before_answering = dict(r.states)
    result = r.through_unmask()
    assert result.recovered == [late]
    np.testing.assert_array_equal(result.total, r.expected([s for s in ctx.roster if s != late]))

    # Everything the coordinator holds: the reveals (mask-key shares of the late silo, no seed
    # shares of it) and the public keys. It reconstructs the mask key itself.
    opened = _opened_reveals(r)
    assert all(late not in body["seed_shares"] for body in opened.values())
    key_shares = {ctx.x(s): int(body["mask_shares"][late], 16) for s, body in opened.items()}
    mask_key = shamir.combine(key_shares, ctx.threshold)
    assert crypto.x25519_public(mask_key) == r.collected_adverts.keys[late]["mask"]

    # The late silo computes its masked input anyway, and it reaches the coordinator.
    _, envelope, late_vector = client.masked_input(
        ctx, r.states[late], r.identities[late], r.collected_shares.u2, r.forwarded_to(late), inputs[late]
    )
    crypto.open_envelope(envelope, r.public[late], federation=FEDERATION, round_number=ctx.round_number,
                         phase=client.MASKED, sender=late, vector=late_vector)
    stripped = _pairwise_removed(r, late, mask_key, late_vector)
    assert np.count_nonzero(stripped == inputs[late]) <= 2
    assert byte_uniformity_p([stripped]) > ALPHA
    assert high_bits_p([stripped]) > ALPHA
    assert byte_uniformity_p([inputs[late]]) < 1e-30  # the input itself is far from uniform
    # What is left is exactly the self mask (which needs the seed the coordinator lacks).
    unmasked = stripped.copy()
    seed_key = crypto.self_mask_key(r.states[late].self_seed, FEDERATION, ctx.round_number, late)
    prg.apply_masks_inplace(unmasked, subtract=[seed_key])
    np.testing.assert_array_equal(unmasked, inputs[late])

    # Asked again, now naming the late silo as a survivor, every honest survivor refuses.
    survivors = r.collected_masked.survivors
    for u in survivors:
        with pytest.raises(WrongSender):
            client.unmask(ctx, r.states[u], r.identities[u], survivors + [late], [])
        with pytest.raises(WrongSender):
            client.unmask(ctx, r.states[u], r.identities[u], survivors + [late], [late])
        restored = ClientState.from_dict(json.loads(json.dumps(r.states[u].to_dict())))  # as kept on disk
        with pytest.raises(WrongSender):
            client.unmask(ctx, restored, r.identities[u], survivors + [late], [])

    # What that refusal protects: silos that had not answered yet would hand over the seed shares,
    # and t of them unmask the late input completely.
    seed_shares = {}
    for u in survivors[: ctx.threshold]:
        _, reveal = client.unmask(ctx, before_answering[u], r.identities[u], survivors + [late], [])
        seed_shares[ctx.x(u)] = int(reveal.body["seed_shares"][late], 16)
    seed = shamir.combine(seed_shares, ctx.threshold)
    exposed = stripped.copy()
    prg.apply_masks_inplace(exposed, subtract=[crypto.self_mask_key(seed, FEDERATION, ctx.round_number, late)])
    np.testing.assert_array_equal(exposed, inputs[late])


# -- unmasking requests ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def masked_round():
    """A round of 6 silos (t = 4) just after the masked phase; no silo has answered yet."""
    return Round.start(n=6, d=8).through_keys().through_shares().through_masked()


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_unmask_reveals_one_kind_of_share_per_silo(masked_round, data):
    r = masked_round
    ctx, u2 = r.ctx, list(r.collected_shares.u2)
    me = data.draw(st.sampled_from(u2))
    others = [s for s in u2 if s != me]
    alive = [me] + data.draw(st.lists(st.sampled_from(others), min_size=ctx.threshold - 1, unique=True))
    rest = [s for s in u2 if s not in alive]
    gone = data.draw(st.lists(st.sampled_from(rest), unique=True)) if rest else []
    state, envelope = client.unmask(ctx, r.states[me], r.identities[me], alive, gone)
    body = crypto.open_envelope(envelope, r.public[me], federation=FEDERATION, round_number=ctx.round_number,
                                phase=client.UNMASK, sender=me)
    assert set(body["seed_shares"]) == set(alive)
    assert set(body["mask_shares"]) == set(gone)
    assert not set(body["seed_shares"]) & set(body["mask_shares"])
    # Answered once: the same request again gets the same answer, any other is refused.
    _, again = client.unmask(ctx, state, r.identities[me], list(reversed(alive)), gone)
    assert again.body == envelope.body
    different = []
    if gone:
        different.append((alive + gone, []))  # the dropped renamed as survivors
    if len(alive) > ctx.threshold:
        moved = data.draw(st.sampled_from(alive[1:]))
        different.append(([s for s in alive if s != moved], gone + [moved]))  # a survivor renamed as dropped
    spare = [s for s in u2 if s not in alive and s not in gone]
    if spare:
        different.append((alive, gone + spare[:1]))
    assert different
    for other_alive, other_gone in different:
        with pytest.raises(WrongSender, match="already answered"):
            client.unmask(ctx, state, r.identities[me], other_alive, other_gone)


def test_unmask_refuses_a_silo_on_both_lists(masked_round):
    r = masked_round
    ctx, u2 = r.ctx, list(r.collected_shares.u2)
    me, v = u2[0], u2[-1]
    with pytest.raises(WrongSender, match="both"):
        client.unmask(ctx, r.states[me], r.identities[me], u2, [v])
    with pytest.raises(WrongSender):
        client.unmask(ctx, r.states[me], r.identities[me], u2[:5], [u2[5], u2[5]])
    with pytest.raises(WrongSender):
        client.unmask(ctx, r.states[me], r.identities[me], u2[:4] + [u2[0]], [])
    with pytest.raises(UnknownSilo):
        client.unmask(ctx, r.states[me], r.identities[me], u2[:5], ["mallory"])
    with pytest.raises(UnknownSilo):
        client.unmask(ctx, r.states[me], r.identities[me], u2[1:], [])  # not among the survivors itself
    with pytest.raises(ThresholdError):
        client.unmask(ctx, r.states[me], r.identities[me], u2[:3], u2[3:])
    # None of the refusals counted as an answer.
    _, envelope = client.unmask(ctx, r.states[me], r.identities[me], u2[:5], u2[5:])
    assert set(envelope.body["mask_shares"]) == {u2[5]}
