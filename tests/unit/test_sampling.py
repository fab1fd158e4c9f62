"""Drawing k of n silos per round: the draw's size, that it is a subset, that it is a pure function of
the seed, the round and the set (not its order), and that over many rounds every silo trains in a
fraction k/n of them."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.sampling import SiloSample, sample_silos

ids = st.lists(st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True), min_size=1, max_size=12, unique=True)
seeds = st.integers(0, 2**63 - 1)
rounds = st.integers(1, 10_000)


@settings(max_examples=200, deadline=None)
@given(silos=ids, data=st.data(), seed=seeds, r=rounds)
def test_a_draw_is_k_distinct_silos_of_the_set_in_sorted_order(silos, data, seed, r):
    k = data.draw(st.integers(1, len(silos) + 3))
    drawn = sample_silos(silos, k, seed, r)
    assert len(drawn) == min(k, len(silos))
    assert set(drawn) <= set(silos) and len(set(drawn)) == len(drawn)
    assert list(drawn) == sorted(drawn)


@settings(max_examples=100, deadline=None)
@given(silos=ids, seed=seeds, r=rounds)
def test_none_or_k_at_least_n_is_every_silo_sorted(silos, seed, r):
    assert sample_silos(silos, None, seed, r) == tuple(sorted(silos))
    assert sample_silos(silos, len(silos), seed, r) == tuple(sorted(silos))
    assert sample_silos(silos, len(silos) + 5, seed, r) == tuple(sorted(silos))


@settings(max_examples=150, deadline=None)
@given(silos=ids, data=st.data(), seed=seeds, r=rounds)
def test_the_draw_depends_on_seed_round_and_set_only_not_on_order(silos, data, seed, r):
    k = data.draw(st.integers(1, len(silos)))
    shuffled = data.draw(st.permutations(silos))
    first = sample_silos(silos, k, seed, r)
    assert sample_silos(silos, k, seed, r) == first  # deterministic: a redone round draws the same
    assert sample_silos(shuffled, k, seed, r) == first  # the order the roster was read in plays no part
    assert sample_silos(tuple(silos), k, seed, r) == first


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 10), data=st.data(), seed=seeds)
def test_every_silo_trains_in_about_k_of_n_rounds(n, data, seed):
    k = data.draw(st.integers(1, n - 1))
    silos = [f"silo{i:02d}" for i in range(n)]
    rounds_drawn = 2000
    counts = dict.fromkeys(silos, 0)
    for r in range(1, rounds_drawn + 1):
        for s in sample_silos(silos, k, seed, r):
            counts[s] += 1
    q = k / n
    # each count is Binomial(2000, q); 5 standard deviations (a false alarm < 1e-5 per silo)
    tolerance = 5 * math.sqrt(rounds_drawn * q * (1 - q))
    for silo, count in counts.items():
        assert abs(count - rounds_drawn * q) <= tolerance, (silo, count, rounds_drawn * q)


def test_rounds_and_seeds_draw_differently():
    silos = [f"s{i}" for i in range(10)]
    by_round = {sample_silos(silos, 3, 7, r) for r in range(1, 50)}
    assert len(by_round) > 20  # not one fixed subset
    assert [sample_silos(silos, 3, 7, r) for r in range(1, 20)] != [sample_silos(silos, 3, 8, r) for r in range(1, 20)]


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "2"])
def test_k_below_one_or_not_an_integer_is_refused(k):
    with pytest.raises(ValueError, match="silos per round"):
        sample_silos(["a", "b", "c"], k, 0, 1)


def test_a_silo_listed_twice_is_refused():
    with pytest.raises(ValueError, match="repeat"):
        sample_silos(["a", "b", "a"], 1, 0, 1)


def test_the_sample_record_names_the_draw_and_its_rate():
    sample = SiloSample.draw(["s3", "s0", "s2", "s1"], 2, 11, 4)
    assert sample.sampled == sample_silos(["s0", "s1", "s2", "s3"], 2, 11, 4)
    assert (sample.k, sample.n, sample.rate) == (2, 4, 0.5)
    assert sorted(sample.sampled + sample.not_sampled) == ["s0", "s1", "s2", "s3"]
    assert sample.to_dict() == {"silos_per_round": 2, "k": 2, "n": 4, "rate": 0.5, "sampled": list(sample.sampled),
                                "not_sampled": list(sample.not_sampled)}
    assert sample.metrics() == {"silos.sampled": 2.0, "silos.eligible": 4.0, "silos.sample_rate": 0.5}
    everyone = SiloSample.draw(["b", "a"], None, 11, 4)
    assert everyone.sampled == ("a", "b") and everyone.rate == 1.0
