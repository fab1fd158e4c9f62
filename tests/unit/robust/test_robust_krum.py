"""Krum and Multi-Krum: Gram distances against explicit pairwise sums (including the cancellation
case), selections against a loop reference, order, breakdown, overflow and the n ≥ 2f + 3 rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from robust_reference import (
    ref_krum,
    ref_krum_order,
    ref_krum_scores,
    ref_multi_krum,
    ref_sq_distances,
    small_ints,
    update_sets,
)

from fl_core.errors import BadWeights, NonFiniteUpdate, ShapeMismatch, TooFewUpdates
from fl_core.robust import Krum, MultiKrum, krum_scores, krum_select, pairwise_sq_distances
from fl_core.robust._inputs import as_updates
from fl_core.robust.krum import krum_geometry

PROPERTY = settings(max_examples=60, deadline=None)


def _max_f(n):
    return (n - 3) // 2


@PROPERTY
@given(data=update_sets(min_n=2, max_n=9, elements=small_ints))
def test_gram_distances_equal_explicit_pairwise_sums_on_exact_inputs(data):
    vectors, _ = data
    np.testing.assert_array_equal(pairwise_sq_distances(vectors), np.array(ref_sq_distances(vectors)))


@PROPERTY
@given(data=update_sets(min_n=3, max_n=11, elements=small_ints), f_pick=st.integers(0, 10))
def test_krum_scores_and_choice_match_the_loop_reference_exactly(data, f_pick):
    vectors, weights = data
    f = min(f_pick, _max_f(len(vectors)))
    expected = ref_krum_scores(vectors, f)
    np.testing.assert_array_equal(krum_scores(pairwise_sq_distances(vectors), f), [expected[i] for i in range(len(vectors))])
    out = Krum(f=f)(vectors, weights)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ref_krum(vectors, f))
    assert krum_select(vectors, f) == ref_krum_order(vectors, f)[:1]


@PROPERTY
@given(data=update_sets(min_n=3, max_n=11, elements=small_ints), f_pick=st.integers(0, 10), m_pick=st.integers(1, 11))
def test_multi_krum_matches_the_loop_reference(data, f_pick, m_pick):
    vectors, weights = data
    n = len(vectors)
    f = min(f_pick, _max_f(n))
    m = min(m_pick, n - f)
    out = MultiKrum(f=f, m=m)(vectors, weights)
    np.testing.assert_allclose(out, ref_multi_krum(vectors, f, m), rtol=1e-6, atol=1e-6)
    default = MultiKrum(f=f)(vectors, weights)  # m = n − f
    np.testing.assert_allclose(default, ref_multi_krum(vectors, f, n - f), rtol=1e-6, atol=1e-6)


@PROPERTY
@given(data=update_sets(min_n=3, max_n=11, elements=small_ints), seed=st.integers(0, 2**32 - 1))
def test_krum_is_exactly_order_invariant_even_with_ties(data, seed):
    # Small integers make equal scores common (duplicates, symmetric sets): ties go by contents.
    vectors, weights = data
    f = _max_f(len(vectors)) // 2
    order = np.random.default_rng(seed).permutation(len(vectors))
    shuffled, shuffled_w = [vectors[i] for i in order], [weights[i] for i in order]
    np.testing.assert_array_equal(Krum(f=f)(shuffled, shuffled_w), Krum(f=f)(vectors, weights))
    np.testing.assert_allclose(MultiKrum(f=f)(shuffled, shuffled_w), MultiKrum(f=f)(vectors, weights), rtol=1e-6,
                               atol=1e-6)


def test_krum_selection_agrees_with_the_reference_on_continuous_data():
    rng = np.random.default_rng(11)
    for trial in range(20):
        n, d = int(rng.integers(5, 16)), int(rng.integers(2, 40))
        vectors = list(rng.normal(size=(n, d)).astype(np.float32))
        f = int(rng.integers(0, _max_f(n) + 1))
        assert krum_select(vectors, f, 3) == ref_krum_order(vectors, f)[:3], trial


# ---- the cancellation case -------------------------------------------------------------------------

def _near_identical(seed, n=12, d=4000, spread=1e-3):
    rng = np.random.default_rng(seed)
    offset = rng.normal(size=d) * 100.0
    return [(offset + spread * rng.normal(size=d)).astype(np.float32) for _ in range(n)]


def test_near_identical_updates_defeat_the_raw_gram_product_but_not_krum():
    vectors = _near_identical(0)
    exact = np.array(ref_sq_distances(vectors))
    off = ~np.eye(len(vectors), dtype=bool)

    raw = pairwise_sq_distances(vectors)  # no reference: the offset's square swamps the differences
    assert np.max(np.abs(raw - exact)[off] / exact[off]) > 1e-2  # the test has power

    shifted = pairwise_sq_distances(vectors, reference=vectors[0])
    assert np.max(np.abs(shifted - exact)[off] / exact[off]) < 1e-4

    used, scores = krum_geometry(as_updates(vectors), 2, 1)  # Krum notices and takes a second pass
    assert np.max(np.abs(used - exact)[off] / exact[off]) < 1e-4
    assert krum_select(vectors, 2, 4) == ref_krum_order(vectors, 2)[:4]
    np.testing.assert_array_equal(Krum(f=2)(vectors, [1.0] * 12), ref_krum(vectors, 2))


def test_near_identical_honest_updates_with_huge_byzantine_ones():
    honest = _near_identical(1, n=10, d=500)
    byz = [np.full(500, 1e6, dtype=np.float32), np.full(500, -1e6, dtype=np.float32), np.full(500, 1e6, dtype=np.float32)]
    vectors = honest[:4] + byz + honest[4:]
    assert krum_select(vectors, 3, 5) == ref_krum_order(vectors, 3)[:5]
    assert all(i not in (4, 5, 6) for i in krum_select(vectors, 3, 7))


def test_values_whose_squares_overflow_float32_fall_back_to_float64():
    rng = np.random.default_rng(5)
    honest = list(rng.normal(size=(9, 20)).astype(np.float32))
    byz = [np.full(20, 3e30, dtype=np.float32), np.full(20, -2e30, dtype=np.float32)]
    vectors = honest[:3] + byz + honest[3:]
    np.testing.assert_array_equal(Krum(f=2)(vectors, [1.0] * 11), ref_krum(vectors, 2))
    np.testing.assert_allclose(MultiKrum(f=2)(vectors, [1.0] * 11), ref_multi_krum(vectors, 2, 9), rtol=1e-6, atol=1e-7)


# ---- breakdown ---------------------------------------------------------------------------------------

@st.composite
def huge_attack(draw):
    f = draw(st.integers(1, 4))
    honest_n = draw(st.integers(f + 3, f + 9))  # n = honest + f ≥ 2f + 3
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    honest = rng.uniform(-1, 1, size=(honest_n, d)).astype(np.float32)
    kind = draw(st.sampled_from(["same", "random", "signs"]))
    if kind == "same":  # colluders agree, so their mutual distances are 0
        byz = np.tile(rng.uniform(-1e6, 1e6, size=d), (f, 1))
    elif kind == "random":
        byz = rng.uniform(-1e6, 1e6, size=(f, d))
    else:
        byz = 1e6 * rng.choice([-1.0, 1.0], size=(f, d))
    x = np.vstack([honest, byz.astype(np.float32)])[rng.permutation(honest_n + f)]
    return x, honest, f


@PROPERTY
@given(case=huge_attack())
def test_huge_byzantine_updates_cannot_pull_krum_or_multi_krum_out_of_the_honest_box(case):
    x, honest, f = case
    w = [1.0] * len(x)
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    for out in (Krum(f=f)(x, w), MultiKrum(f=f)(x, w)):
        assert np.all(out >= lo) and np.all(out <= hi)


def test_the_same_attack_moves_the_mean():
    rng = np.random.default_rng(8)
    honest = rng.uniform(-1, 1, size=(8, 3)).astype(np.float32)
    x = np.vstack([honest, np.full((2, 3), 1e6, dtype=np.float32)])
    w = [1.0] * 10
    assert np.all(x.astype(np.float64).mean(axis=0) > honest.max(axis=0))  # the attack has power
    for out in (Krum(f=2)(x, w), MultiKrum(f=2)(x, w)):
        assert np.all(out >= honest.min(axis=0)) and np.all(out <= honest.max(axis=0))


# ---- refusals ------------------------------------------------------------------------------------------

def test_too_few_updates_for_f_are_refused():
    x = np.zeros((6, 3), dtype=np.float32)
    with pytest.raises(TooFewUpdates, match=r"Krum with f = 2 \(n ≥ 2f \+ 3\) needs at least 7 updates, got 6"):
        Krum(f=2)(x, [1.0] * 6)
    with pytest.raises(TooFewUpdates, match="needs at least 7"):
        MultiKrum(f=2)(x, [1.0] * 6)
    MultiKrum(f=1, m=5)(x, [1.0] * 6)  # n = m + f: fine
    with pytest.raises(TooFewUpdates, match="m = 6"):  # n ≥ m + f
        MultiKrum(f=1, m=6)(x, [1.0] * 6)
    with pytest.raises(TooFewUpdates, match="no updates"):
        Krum(f=0)([], [])


def test_shapes_non_finite_values_and_weights_are_refused():
    good = [np.zeros(3, dtype=np.float32)] * 5
    with pytest.raises(ShapeMismatch, match="update 2"):
        Krum(f=1)(good[:2] + [np.zeros(4)] + good[3:], [1.0] * 5)
    bad = [v.copy() for v in good]
    bad[3][1] = np.nan
    with pytest.raises(NonFiniteUpdate, match="update 3"):
        Krum(f=1)(bad, [1.0] * 5)
    bad[3][1] = np.inf
    with pytest.raises(NonFiniteUpdate, match="update 3"):
        MultiKrum(f=1)(bad, [1.0] * 5)
    with pytest.raises(BadWeights):
        Krum(f=1)(good, [1.0] * 4)
    with pytest.raises(BadWeights):
        Krum(f=1)(good, [1.0, -1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ShapeMismatch, match="reference"):
        pairwise_sq_distances(good, reference=np.zeros(4))


def test_parameters_are_checked():
    for f in (-1, 1.5, True, None):
        with pytest.raises(ValueError, match="f must be"):
            Krum(f=f)
    for m in (0, -2, 2.0):
        with pytest.raises(ValueError, match="m must be"):
            MultiKrum(f=1, m=m)


def test_input_vectors_are_not_modified_and_the_output_is_a_new_array():
    vectors = [np.arange(4, dtype=np.float32) * i for i in range(7)]
    before = [v.copy() for v in vectors]
    out = Krum(f=2)(vectors, [1.0] * 7)
    out[:] = 99
    for v, b in zip(vectors, before):
        np.testing.assert_array_equal(v, b)
