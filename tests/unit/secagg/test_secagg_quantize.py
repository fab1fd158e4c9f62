"""Quantisation, headroom and sample weighting: the integers summed under masks decode to the
float sum they stand for, and no setting the checks accept can wrap around the modulus."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from secagg_harness import context

from fl_core.errors import AggregationError, HeadroomError
from fl_core.secagg import simulate
from fl_core.secagg.quantize import Quantizer, check_headroom, clip_by_norm, max_bits
from fl_core.secagg.spec import SecureSpec
from fl_core.secagg.weighting import contribution, mean_update

PROPERTY = settings(max_examples=60, deadline=None)
SIGNED_MAX = 2**31 - 1

bounds = st.floats(min_value=1e-3, max_value=1e3)


def modular_sum(codes: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(codes[0])
    for c in codes:
        np.add(total, c, out=total)  # uint32 arithmetic wraps mod 2^32, as under the masks
    return total


def fits(n: int, bits: int) -> bool:
    return n * (2 ** (bits - 1) - 1) <= SIGNED_MAX


def slow_max_bits(n: int) -> int:
    bits = 1
    while fits(n, bits + 1):
        bits += 1
    return bits


# -- encode / decode ------------------------------------------------------------------------------------
@PROPERTY
@given(
    bound=bounds,
    bits=st.integers(2, 32),
    fractions=st.lists(st.floats(min_value=-1.0, max_value=1.0), min_size=1, max_size=64),
    seed=st.integers(0, 2**32 - 1),
)
def test_decode_of_encode_is_within_one_step(bound, bits, fractions, seed):
    q = Quantizer(bound=bound, bits=bits)
    x = np.array(fractions) * bound
    codes = q.encode(x, np.random.default_rng(seed))
    assert codes.dtype == np.uint32 and codes.shape == x.shape
    error = np.abs(q.decode_sum(codes) - x)
    assert np.all(error <= q.step * (1 + 1e-9))


@pytest.mark.parametrize("offset_in_steps", [0.3, 0.5, 0.77, -0.25, -0.9])
def test_stochastic_rounding_is_unbiased(offset_in_steps):
    q = Quantizer(bound=1.0, bits=8)
    x = (17 + offset_in_steps) * q.step
    draws = 200_000
    decoded = q.decode_sum(q.encode(np.full(draws, x), np.random.default_rng(11)))
    mean_error = float(np.mean(decoded - x))
    # Each error lies within one step of zero, so its std is at most step/2; allow 6 standard errors.
    tolerance = 6 * (q.step / 2) / math.sqrt(draws)
    assert abs(mean_error) < tolerance
    # The test has power: rounding to nearest is biased by more than that at these offsets.
    nearest_bias = abs(np.round(x / q.step) * q.step - x)
    assert nearest_bias > 10 * tolerance


def test_encode_refuses_values_beyond_the_bound():
    q = Quantizer(bound=2.0, bits=16)
    with pytest.raises(ValueError, match="bound"):
        q.encode(np.array([0.0, 2.5]), np.random.default_rng(0))


@PROPERTY
@given(
    n=st.integers(1, 40),
    d=st.integers(1, 50),
    clip=bounds,
    spare_bits=st.integers(0, 20),
    extreme=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_sum_of_encoded_clipped_vectors_decodes_within_n_steps(n, d, clip, spare_bits, extreme, seed):
    bits = max(2, max_bits(n) - spare_bits)
    q = Quantizer(bound=clip, bits=bits)
    rng = np.random.default_rng(seed)
    if extreme:  # every silo at the bound on the same coordinate: the worst case for headroom
        sign = rng.choice([-1.0, 1.0])
        raw = [np.eye(d)[0] * sign * clip * 3 for _ in range(n)]
    else:
        raw = [rng.normal(size=d) * clip * rng.uniform(0.1, 3) for _ in range(n)]
    clipped = [clip_by_norm(v, clip)[0] for v in raw]
    codes = [q.encode(v, rng) for v in clipped]
    decoded = q.decode_sum(modular_sum(codes))
    assert np.all(np.abs(decoded - np.sum(clipped, axis=0)) <= n * q.step * (1 + 1e-9))


def test_one_bit_over_the_headroom_wraps():
    """What `check_headroom` guards against actually happens one bit above `max_bits`."""
    n = 5
    q = Quantizer(bound=1.0, bits=max_bits(n) + 1)
    codes = [q.encode(np.array([1.0]), np.random.default_rng(0)) for _ in range(n)]
    assert q.decode_sum(modular_sum(codes))[0] < 0  # n positive values summed to a negative one
    safe = Quantizer(bound=1.0, bits=max_bits(n))
    codes = [safe.encode(np.array([1.0]), np.random.default_rng(0)) for _ in range(n)]
    assert safe.decode_sum(modular_sum(codes))[0] == pytest.approx(n)


def test_clip_by_norm():
    v = np.array([3.0, 4.0])
    clipped, was = clip_by_norm(v, 1.0)
    assert was and np.linalg.norm(clipped) == pytest.approx(1.0)
    np.testing.assert_allclose(clipped, v / 5)
    same, was = clip_by_norm(v, 5.0)
    assert not was and same is not v
    np.testing.assert_array_equal(same, v)
    with pytest.raises(ValueError):
        clip_by_norm(np.array([np.nan, 1.0]), 1.0)


# -- headroom -------------------------------------------------------------------------------------------
@PROPERTY
@given(n=st.integers(1, 2**31), bits=st.integers(2, 40))
def test_check_headroom_accepts_exactly_the_settings_that_fit(n, bits):
    if fits(n, bits):
        check_headroom(n, bits)
    else:
        with pytest.raises(HeadroomError):
            check_headroom(n, bits)


@PROPERTY
@given(n=st.one_of(st.integers(1, 1000), st.integers(1, 2**31 - 1), st.sampled_from([1, 2, 3, 2**15, 2**16 - 1, 2**30])))
def test_max_bits_is_the_boundary(n):
    b = max_bits(n)
    assume(b >= 2)  # a roster beyond 2^30 silos has no usable width at all
    assert b == slow_max_bits(n)
    check_headroom(n, b)
    check_headroom(n, max(2, b - 1))
    with pytest.raises(HeadroomError, match=f"bits <= {b}"):
        check_headroom(n, b + 1)


def test_check_headroom_refuses_fewer_than_two_bits():
    with pytest.raises(HeadroomError):
        check_headroom(1, 1)


# -- spec -----------------------------------------------------------------------------------------------
@PROPERTY
@given(n=st.integers(1, 60), t=st.integers(2, 70))
def test_spec_accepts_exactly_thresholds_in_the_upper_half(n, t):
    spec = SecureSpec(threshold=t, bits=16)
    if 2 * t > n and t <= n:
        assert spec.threshold_for(n) == t
        if fits(n, 16):
            spec.check(n)
    else:
        with pytest.raises(ValueError, match="threshold"):
            spec.threshold_for(n)
        with pytest.raises(ValueError, match="threshold"):
            spec.check(n)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 10, 11])
def test_spec_default_threshold_is_a_strict_majority(n):
    t = SecureSpec().threshold_for(n)
    assert t == n // 2 + 1 and 2 * t > n and 2 * (t - 1) <= n


def test_spec_rejects_headroom_violations_and_bad_fields():
    SecureSpec(bits=24).check(128)  # 128 * (2^23 - 1) < 2^31
    with pytest.raises(HeadroomError):
        SecureSpec(bits=24).check(257)
    with pytest.raises(HeadroomError):
        SecureSpec(bits=31).check(3)  # 3 (2^30 - 1) > 2^31 - 1, while 2 silos fit
    SecureSpec(bits=31).check(2)
    for bad in ({"threshold": 1}, {"clip_norm": 0.0}, {"clip_norm": math.inf}, {"bits": 1}, {"bits": 32}):
        with pytest.raises(ValueError):
            SecureSpec(**bad)


def test_spec_quantizer_covers_the_weight_coordinate():
    assert SecureSpec(clip_norm=0.5, bits=20).quantizer().bound == 1.0
    assert SecureSpec(clip_norm=4.0, bits=20).quantizer().bound == 4.0


# -- sample weighting -----------------------------------------------------------------------------------
@PROPERTY
@given(
    n=st.integers(1, 20),
    d=st.integers(1, 30),
    clip=st.floats(min_value=0.1, max_value=20),
    bits=st.integers(12, 24),
    seed=st.integers(0, 2**32 - 1),
)
def test_weighted_mean_through_quantisation(n, d, clip, bits, seed):
    assume(fits(n, bits))
    rng = np.random.default_rng(seed)
    weights = rng.integers(1, 10_000, size=n).astype(float)
    scale = float(weights.max())
    deltas = []
    for _ in range(n):
        v = rng.normal(size=d)
        deltas.append(v / np.linalg.norm(v) * clip * rng.uniform(0, 1))  # within the clip: unclipped
    q = SecureSpec(clip_norm=clip, bits=bits).quantizer()
    contributions = []
    for delta, w in zip(deltas, weights):
        vector, was_clipped = contribution(delta, w, scale, clip)
        assert not was_clipped and vector.shape == (d + 1,)
        assert np.all(np.abs(vector) <= q.bound)
        contributions.append(q.encode(vector, rng))
    mean, total_weight = mean_update(q.decode_sum(modular_sum(contributions)))

    exact = np.sum([w * delta for w, delta in zip(weights, deltas)], axis=0) / weights.sum()
    assert total_weight == pytest.approx(weights.sum() / scale, abs=n * q.step)
    # numerator and denominator each within n steps: |a/b - a'/b'| <= n step (|a/b| + 1) / b'
    tolerance = n * q.step * (np.abs(exact) + 1) / total_weight
    assert mean.dtype == np.float32
    assert np.all(np.abs(mean - exact) <= tolerance * 1.001 + 1e-6 * (np.abs(exact) + 1))


def test_weighted_mean_through_a_secure_round():
    ctx = context(6)
    rng = np.random.default_rng(5)
    clip, d = 2.0, 40
    q = SecureSpec(clip_norm=clip, bits=20).quantizer()
    weights = {s: float(w) for s, w in zip(ctx.roster, rng.integers(10, 500, size=6))}
    deltas = {s: rng.normal(size=d) * 0.1 for s in ctx.roster}
    scale = max(weights.values())
    inputs = {s: q.encode(contribution(deltas[s], weights[s], scale, clip)[0], rng) for s in ctx.roster}
    transcript = simulate.run_round(ctx, inputs, {ctx.roster[4]: "masked"})
    survivors = transcript.result.survivors
    mean, _ = mean_update(q.decode_sum(transcript.result.total))
    exact = sum(weights[s] * deltas[s] for s in survivors) / sum(weights[s] for s in survivors)
    np.testing.assert_allclose(mean, exact, atol=1e-3)
    assert ctx.roster[4] not in survivors


def test_contribution_clips_and_checks_its_weight():
    vector, was_clipped = contribution(np.array([30.0, 40.0]), 2.0, 4.0, 5.0)
    assert was_clipped
    np.testing.assert_allclose(vector, [1.5, 2.0, 0.5])
    for w in (0.0, -1.0, 4.5):
        with pytest.raises(AggregationError):
            contribution(np.ones(2), w, 4.0, 5.0)
    with pytest.raises(AggregationError):
        mean_update(np.array([0.1, 0.0]))
