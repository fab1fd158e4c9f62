"""Correctness of a whole round: the unmasked result is the exact sum mod 2^32 of the survivors'
inputs whatever the roster, threshold, dimension and dropout schedule; too few participants at
any phase is a `ThresholdError`, never a sum."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_harness import MODULUS, Round, context, plain_sum, random_inputs, silo_names

from fl_core.errors import QuorumError, ThresholdError
from fl_core.secagg import client, simulate
from fl_core.secagg.simulate import PHASES

ROUND_PROPERTY = settings(max_examples=35, deadline=None)
FAILING_PROPERTY = settings(max_examples=25, deadline=None)


@st.composite
def rounds(draw, max_n: int = 30, over_budget: bool = False):
    """(ctx, inputs, drop): a roster in a random order (so roster order differs from name order),
    t in (n/2, n], inputs of dimension 1..2000, and up to n - t drops at random phases (more than
    n - t when `over_budget`)."""
    n = draw(st.integers(2, max_n))
    threshold = draw(st.one_of(st.just(n // 2 + 1), st.integers(n // 2 + 1, n)))
    roster = draw(st.permutations(silo_names(n)))
    ctx = context(n, threshold, round_number=draw(st.integers(0, 10**6)), roster=roster)
    d = draw(st.integers(1, 2000))
    kind = draw(st.sampled_from(["uniform", "zeros", "max", "small"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "uniform":
        inputs = random_inputs(roster, d, rng)
    elif kind == "zeros":
        inputs = {s: np.zeros(d, dtype=np.uint32) for s in roster}
    elif kind == "max":  # every addition wraps around the modulus
        inputs = {s: np.full(d, MODULUS - 1, dtype=np.uint32) for s in roster}
    else:
        inputs = {s: rng.integers(0, 4, size=d, dtype=np.uint32) for s in roster}
    budget = n - threshold
    k = draw(st.integers(budget + 1, n) if over_budget else st.integers(0, budget))
    dropping = draw(st.permutations(roster))[:k]
    drop = {s: draw(st.sampled_from(PHASES)) for s in dropping}
    return ctx, inputs, drop


@ROUND_PROPERTY
@given(case=rounds())
def test_unmasked_total_is_the_survivors_sum(case):
    ctx, inputs, drop = case
    transcript = simulate.run_round(ctx, inputs, drop)
    result = transcript.result

    reached_masked = [s for s in ctx.roster if drop.get(s, client.UNMASK) == client.UNMASK]
    dropped_at_masked = [s for s in ctx.roster if drop.get(s) == client.MASKED]
    assert result.survivors == reached_masked  # exactly those, in roster order
    assert result.recovered == dropped_at_masked
    assert transcript.masked.dropped == dropped_at_masked
    assert result.revealers == [s for s in reached_masked if s not in drop]
    assert set(transcript.masked_vectors) == set(reached_masked)  # what the coordinator stores
    assert result.total.dtype == np.uint32
    np.testing.assert_array_equal(result.total, plain_sum(inputs, result.survivors))


def test_sum_uses_roster_positions_not_silo_names():
    """The pairwise-mask sign comes from the roster order; a roster in reverse name order (and
    silo ids that sort differently as strings) must still cancel."""
    roster = ("s10", "s9", "b", "a", "s1")
    ctx = context(5, roster=roster)
    inputs = random_inputs(roster, 257, np.random.default_rng(3))
    transcript = simulate.run_round(ctx, inputs, {"b": client.MASKED})
    assert transcript.result.survivors == ["s10", "s9", "a", "s1"]
    np.testing.assert_array_equal(transcript.result.total, plain_sum(inputs, ["s10", "s9", "a", "s1"]))


def test_a_silo_without_input_takes_no_part():
    ctx = context(5)
    inputs = random_inputs(ctx.roster[:4], 10, np.random.default_rng(4))
    transcript = simulate.run_round(ctx, inputs)
    assert transcript.result.survivors == list(ctx.roster[:4])
    np.testing.assert_array_equal(transcript.result.total, plain_sum(inputs, ctx.roster[:4]))


# -- too few participants -------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("n, threshold", [(5, 3), (6, 4), (7, 7)])
def test_dropping_one_more_than_the_budget_raises_threshold_error(phase, n, threshold):
    ctx = context(n, threshold)
    inputs = random_inputs(ctx.roster, 8, np.random.default_rng(n))
    at_budget = {s: phase for s in ctx.roster[: n - threshold]}
    result = simulate.run_round(ctx, inputs, at_budget).result  # n - t drops still complete
    np.testing.assert_array_equal(result.total, plain_sum(inputs, result.survivors))

    over = {s: phase for s in ctx.roster[: n - threshold + 1]}
    with pytest.raises(ThresholdError, match="threshold is") as info:
        simulate.run_round(ctx, inputs, over)
    assert isinstance(info.value, QuorumError)  # the round changes nothing, like any quorum failure


@FAILING_PROPERTY
@given(case=rounds(max_n=12, over_budget=True))
def test_any_schedule_with_more_than_n_minus_t_drops_raises(case):
    ctx, inputs, drop = case
    with pytest.raises(ThresholdError):
        simulate.run_round(ctx, inputs, drop)


def test_silos_refuse_to_mask_or_unmask_for_fewer_than_t_peers():
    """The client-side checks: a coordinator cannot shrink U2 or U3 below t to isolate inputs."""
    r = Round.start(n=5).through_keys().through_shares()
    me = r.ctx.roster[0]
    too_few = list(r.ctx.roster[: r.ctx.threshold - 1])
    with pytest.raises(ThresholdError):
        client.masked_input(r.ctx, r.states[me], r.identities[me], too_few, r.forwarded_to(me), r.inputs[me])
    r.through_masked()
    with pytest.raises(ThresholdError):
        client.unmask(r.ctx, r.states[me], r.identities[me], too_few, [])
    r.through_unmask()
    np.testing.assert_array_equal(r.result.total, r.expected(r.ctx.roster))


def test_the_transcript_times_every_phase_of_every_party():
    ctx = context(6)
    inputs = random_inputs(ctx.roster, 64, np.random.default_rng(5))
    seconds = simulate.run_round(ctx, inputs, {ctx.roster[0]: client.MASKED}).seconds
    assert set(seconds) == {f"{phase}.{party}" for phase in PHASES for party in ("silos", "server")}
    assert all(value > 0 for value in seconds.values())
