"""Shamir t-of-n sharing: any t shares recover the secret, whatever the x-coordinates; t - 1 shares
are consistent with every possible secret, so they reveal nothing about it."""

from __future__ import annotations

import itertools
import random
import secrets

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from secagg_harness import ALPHA

from fl_core.errors import ThresholdError, WrongLength
from fl_core.secagg import shamir
from fl_core.secagg.shamir import PRIME

PROPERTY = settings(max_examples=40, deadline=None)
MAX_SUBSETS = 250

secret_bytes = st.binary(min_size=32, max_size=32)
positions = st.one_of(st.integers(1, 64), st.integers(1, PRIME - 1))


@st.composite
def sharings(draw, min_threshold: int = 1):
    """(secret, {x: share}, t) with n <= 12 distinct, arbitrary x-coordinates."""
    n = draw(st.integers(max(1, min_threshold), 12))
    t = draw(st.integers(min_threshold, n))
    xs = draw(st.lists(positions, min_size=n, max_size=n, unique=True))
    secret = draw(secret_bytes)
    return secret, shamir.split(secret, xs, t), t


def subsets(xs, size, rng):
    """Every `size`-subset of `xs`, or MAX_SUBSETS random distinct ones when there are more."""
    all_subsets = list(itertools.combinations(sorted(xs), size))
    return all_subsets if len(all_subsets) <= MAX_SUBSETS else rng.sample(all_subsets, MAX_SUBSETS)


def slow_lagrange_at_zero(xs):
    """λ_i = Π_{j≠i} x_j / (x_j − x_i) mod p, one modular inverse per coefficient."""
    out = {}
    for i in xs:
        num, den = 1, 1
        for j in xs:
            if j != i:
                num, den = num * j % PRIME, den * (j - i) % PRIME
        out[i] = num * pow(den, -1, PRIME) % PRIME
    return out


@PROPERTY
@given(case=sharings(), seed=st.integers(0, 2**32 - 1))
def test_every_t_subset_recovers_the_secret(case, seed):
    secret, shares, t = case
    rng = random.Random(seed)
    for subset in subsets(shares, t, rng):
        assert shamir.combine({x: shares[x] for x in subset}, t) == secret
    assert shamir.combine(shares, t) == secret  # more than t shares: any t of them


@PROPERTY
@given(xs=st.lists(positions, min_size=1, max_size=12, unique=True))
def test_lagrange_coefficients_match_the_definition(xs):
    lam = shamir.lagrange_at_zero(xs)
    assert lam == slow_lagrange_at_zero(xs)
    # They interpolate every polynomial of degree < len(xs) at 0: Σ λ_i x_i^k = [k == 0].
    for k in range(len(xs)):
        assert sum(lam[x] * pow(x, k, PRIME) for x in xs) % PRIME == (1 if k == 0 else 0)


@PROPERTY
@given(
    xs=st.lists(positions, min_size=2, max_size=10, unique=True),
    secrets_=st.lists(secret_bytes, min_size=2, max_size=5),
    data=st.data(),
)
def test_reused_coefficients_give_the_same_result(xs, secrets_, data):
    t = data.draw(st.integers(1, len(xs)))
    window = sorted(xs)[:t]
    lam = shamir.lagrange_at_zero(window)
    for secret in secrets_:
        shares = shamir.split(secret, xs, t)
        assert shamir.combine(shares, t, lam) == secret == shamir.combine(shares, t)
    # Coefficients for another set of x-coordinates are not misapplied.
    other = shamir.lagrange_at_zero([x + 1 for x in window if x + 1 < PRIME] or [1])
    assert shamir.combine(shamir.split(secrets_[0], xs, t), t, other) == secrets_[0]


@PROPERTY
@given(case=sharings(min_threshold=2))
def test_t_minus_one_shares_do_not_reconstruct(case):
    secret, shares, t = case
    fewer = dict(itertools.islice(shares.items(), t - 1))
    with pytest.raises(ThresholdError):
        shamir.combine(fewer, t)
    try:
        guess = shamir.combine(fewer, t - 1)  # interpolating the t - 1 shares anyway
    except WrongLength:  # an interpolated value >= 2^256 (probability ~2^-248)
        return
    assert guess != secret


# -- several secrets at once --------------------------------------------------------------------------
def horner_mod_p(coefficients, x):
    """The scalar reference: Horner's rule reduced mod p at every step."""
    y = 0
    for c in reversed(coefficients):
        y = (y * x + c) % PRIME
    return y


field_elements = st.one_of(st.integers(0, 3), st.integers(0, PRIME - 1), st.just(PRIME - 1))


@PROPERTY
@given(
    data=st.data(),
    degree=st.integers(1, 14),
    count=st.integers(1, 4),
    xs=st.lists(st.one_of(st.integers(0, 200), st.integers(0, PRIME - 1)), min_size=1, max_size=12, unique=True),
)
def test_packed_evaluation_equals_horner_mod_p(data, degree, count, xs):
    """Lanes never carry into each other, whatever the degree, the x-coordinates (up to p - 1) and
    the coefficients (including all p - 1, the largest unreduced sums)."""
    polynomials = [data.draw(st.lists(field_elements, min_size=degree, max_size=degree)) for _ in range(count)]
    values = shamir.evaluate(polynomials, xs)
    assert values == [{x: horner_mod_p(c, x) for x in xs} for c in polynomials]


def test_packed_evaluation_at_the_extremes():
    top = [PRIME - 1] * 60  # every lane at its largest sum, next to a zero polynomial and another maximal one
    xs = list(range(1, 101)) + [PRIME - 1]
    values = shamir.evaluate([top, [0] * 60, top], xs)
    assert values[0] == values[2] == {x: horner_mod_p(top, x) for x in xs}
    assert set(values[1].values()) == {0}
    for bad in ([[1, 2], [3]], [[]]):
        with pytest.raises(ValueError):
            shamir.evaluate(bad, [1])
    with pytest.raises(ValueError):
        shamir.evaluate([[1, 2]], [PRIME])
    assert shamir.evaluate([], [1, 2]) == []


@PROPERTY
@given(
    secrets_=st.lists(secret_bytes, min_size=1, max_size=3),
    xs=st.lists(positions, min_size=2, max_size=10, unique=True),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_many_shares_each_secret_t_of_n(secrets_, xs, data, seed):
    """Every t-subset of one secret's shares recovers it; t - 1 of them do not."""
    t = data.draw(st.integers(1, len(xs)))
    shared = shamir.split_many(secrets_, xs, t)
    assert len(shared) == len(secrets_)
    rng = random.Random(seed)
    for secret, shares in zip(secrets_, shared):
        assert sorted(shares) == sorted(xs)
        for subset in subsets(xs, t, rng):
            assert shamir.combine({x: shares[x] for x in subset}, t) == secret
        if t >= 2:
            fewer = {x: shares[x] for x in sorted(xs)[: t - 1]}
            with pytest.raises(ThresholdError):
                shamir.combine(fewer, t)
            try:
                assert shamir.combine(fewer, t - 1) != secret
            except WrongLength:
                pass


def test_split_many_draws_a_fresh_polynomial_per_secret():
    """Two equal secrets get unrelated shares (their polynomials' other coefficients are drawn apart)."""
    secret = secrets.token_bytes(32)
    first, second = shamir.split_many([secret, secret], [1, 2, 3, 4], 3)
    assert first != second
    assert shamir.combine(first, 3) == shamir.combine(second, 3) == secret
    with pytest.raises(WrongLength):
        shamir.split_many([secret, secret[:31]], [1, 2, 3], 2)
    with pytest.raises(ThresholdError):
        shamir.split_many([secret], [1, 2, 3], 4)


# -- t - 1 shares reveal nothing ------------------------------------------------------------------------
def _interpolate(points: dict[int, int], at: int) -> int:
    """f(at) for the polynomial of degree < len(points) through `points`, with `lagrange_at_zero`
    applied to the shifted coordinates (x − at): g(x) = f(x + at) has g(0) = f(at)."""
    shifted = {(x - at) % PRIME: y for x, y in points.items()}
    mu = shamir.lagrange_at_zero(list(shifted))
    return sum(mu[z] * y for z, y in shifted.items()) % PRIME


@PROPERTY
@given(case=sharings(min_threshold=2), candidate=secret_bytes, data=st.data())
def test_t_minus_one_shares_are_consistent_with_every_secret(case, candidate, data):
    """For any t - 1 shares and any candidate secret there is exactly one polynomial of degree
    < t through both; completing the shares with its value at an unused position makes `combine`
    return the candidate. So t - 1 shares leave every secret equally possible."""
    secret, shares, t = case
    known_xs = data.draw(st.lists(st.sampled_from(sorted(shares)), min_size=t - 1, max_size=t - 1, unique=True))
    known = {x: shares[x] for x in known_xs}
    extra = data.draw(positions.filter(lambda x: x not in known))
    completion = _interpolate({0: int.from_bytes(candidate, "big"), **known}, extra)
    assert shamir.combine({**known, extra: completion}, t) == candidate
    # The same construction with the true secret reproduces the real share at any dealt position.
    for x in set(shares) - set(known):
        assert _interpolate({0: int.from_bytes(secret, "big"), **known}, x) == shares[x]


def _top_bytes(values) -> np.ndarray:
    return np.array([v >> 248 for v in values], dtype=np.int64)


def _same_distribution_p(a: np.ndarray, b: np.ndarray) -> float:
    table = np.vstack([np.bincount(a, minlength=257), np.bincount(b, minlength=257)])
    table = table[:, table.sum(axis=0) > 0]
    return float(stats.chi2_contingency(table).pvalue)


def _samples(secret: bytes, xs, t, known, draws):
    """Per sharing: the t - 1 known shares' top bytes, and the top byte of what interpolating
    those shares gives (an attacker's naive estimate of the secret)."""
    lam = shamir.lagrange_at_zero(known)
    firsts, guesses = [], []
    for _ in range(draws):
        shares = shamir.split(secret, xs, t)
        firsts.append(shares[known[0]])
        guesses.append(sum(lam[x] * shares[x] for x in known) % PRIME)
    return _top_bytes(firsts), _top_bytes(guesses)


def test_t_minus_one_shares_have_the_same_distribution_for_different_secrets():
    xs, t, known, draws = [1, 2, 3, 4, 5], 3, [2, 4], 3000
    zeros, ones = bytes(32), b"\xff" * 32
    first_a, guess_a = _samples(zeros, xs, t, known, draws)
    first_b, guess_b = _samples(ones, xs, t, known, draws)
    assert _same_distribution_p(first_a, first_b) > ALPHA
    assert _same_distribution_p(guess_a, guess_b) > ALPHA
    assert float(stats.chisquare(np.bincount(guess_a, minlength=256)[:256]).pvalue) > ALPHA

    # Power: with threshold t - 1 the same statistics separate the two secrets completely.
    leaky_a = _samples(zeros, xs, t - 1, known, 300)[1]
    leaky_b = _samples(ones, xs, t - 1, known, 300)[1]
    assert _same_distribution_p(leaky_a, leaky_b) < 1e-30


# -- input checks ---------------------------------------------------------------------------------------
def test_split_and_combine_refuse_bad_input():
    secret = secrets.token_bytes(32)
    with pytest.raises(WrongLength):
        shamir.split(secret[:31], [1, 2, 3], 2)
    for xs in ([1, 1, 2], [0, 1, 2], [1, 2, PRIME]):
        with pytest.raises(ValueError):
            shamir.split(secret, xs, 2)
    for t in (0, 4):
        with pytest.raises(ThresholdError):
            shamir.split(secret, [1, 2, 3], t)
    with pytest.raises(ValueError):
        shamir.lagrange_at_zero([3, 5, 3])
    shares = shamir.split(secret, [1, 2, 3], 2)
    with pytest.raises(WrongLength):
        shamir.combine({1: shares[1], 2: PRIME + 5}, 2)


def test_share_encoding_round_trips_and_checks_size():
    for y in (0, 1, PRIME - 1, secrets.randbelow(PRIME)):
        data = shamir.encode_share(y)
        assert len(data) == shamir.SHARE_BYTES and shamir.decode_share(data) == y
    with pytest.raises(WrongLength):
        shamir.decode_share(bytes(32))
    with pytest.raises(WrongLength):
        shamir.decode_share(PRIME.to_bytes(shamir.SHARE_BYTES, "big"))
