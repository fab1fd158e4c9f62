"""The Adversary's hooks: identity without a spec, for honest silos and for attacks of the other
level; malicious silos' data and updates attacked as the spec says; colluding attacks computed from
the updates the attacker is allowed to see; results independent of dict order; `pick_malicious`."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_binary_data
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.attacks import (
    DATA_KINDS,
    KINDS,
    UPDATE_KINDS,
    Adversary,
    AttackError,
    AttackParameterError,
    AttackSpec,
    alie_update,
    alie_z_max,
    ipm_update,
    pick_malicious,
)

TRIGGER = {"trigger_columns": (0,), "trigger_values": (7.0,)}
SILOS = ("s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9")


def spec(kind: str, silos=("s1", "s4"), **params) -> AttackSpec:
    extra = TRIGGER if kind in ("backdoor", "model_replacement") else {}
    return AttackSpec(kind=kind, silos=silos, **(extra | params))


def round_of(seed: int, silos=SILOS, d: int = 16) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d)
    updates = {s: (direction + rng.normal(size=d)).astype(np.float32) for s in silos}
    weights = {s: float(rng.integers(10, 500)) for s in silos}
    return updates, weights


def test_no_attack_changes_nothing():
    adversary = Adversary()
    x, y = make_binary_data(20, 3, 0)
    px, py = adversary.poison_data("s1", x, y, np.random.default_rng(0))
    assert px is x and py is y
    updates, weights = round_of(0)
    out = adversary.poison_updates(updates, weights, np.random.default_rng(0))
    assert out == updates and out is not updates
    assert all(out[s] is updates[s] for s in updates)
    assert adversary.malicious == () and not adversary.is_malicious("s1")


@pytest.mark.parametrize("kind", KINDS)
def test_honest_silos_are_never_touched(kind):
    adversary = Adversary(spec(kind))
    x, y = make_binary_data(40, 3, 1)
    px, py = adversary.poison_data("s0", x, y, np.random.default_rng(0))
    assert px is x and py is y
    updates, weights = round_of(1)
    before = {s: u.copy() for s, u in updates.items()}
    out = adversary.poison_updates(updates, weights, np.random.default_rng(0))
    for s in SILOS:
        if s not in ("s1", "s4"):
            assert out[s] is updates[s]
        np.testing.assert_array_equal(updates[s], before[s])  # the caller's arrays are not mutated
    assert set(out) == set(updates)


@pytest.mark.parametrize("kind", KINDS)
def test_each_hook_acts_only_for_its_level(kind):
    adversary = Adversary(spec(kind))
    x, y = make_binary_data(40, 3, 2)
    px, py = adversary.poison_data("s1", x, y, np.random.default_rng(0))
    data_changed = px is not x or py is not y
    assert data_changed == (kind in DATA_KINDS)
    updates, weights = round_of(2)
    out = adversary.poison_updates(updates, weights, np.random.default_rng(0))
    changed = any(not np.array_equal(out[s], updates[s]) for s in ("s1", "s4"))
    assert changed == (kind in UPDATE_KINDS)
    if kind not in UPDATE_KINDS:
        assert all(out[s] is updates[s] for s in updates)


def test_label_flip_through_the_adversary():
    adversary = Adversary(spec("label_flip", flip_fraction=0.5))
    x, y = make_binary_data(40, 3, 3)
    px, py = adversary.poison_data("s4", x, y, np.random.default_rng(0))
    assert px is x and int((py != y).sum()) == 20


def test_model_replacement_backdoors_the_data_and_boosts_the_update():
    adversary = Adversary(spec("model_replacement", silos=("s2",), server_lr=0.5, target=0, poison_fraction=0.25))
    x, y = make_binary_data(40, 3, 4)
    px, py = adversary.poison_data("s2", x, y, np.random.default_rng(0))
    stamped = px[:, 0] == 7.0
    assert stamped.sum() == 10 and np.all(py[stamped] == 0)
    updates, weights = round_of(4)
    out = adversary.poison_updates(updates, weights, np.random.default_rng(0))
    boost = sum(weights.values()) / (0.5 * weights["s2"])  # W / (η · w)
    np.testing.assert_allclose(out["s2"], boost * updates["s2"], rtol=1e-6)


def test_a_fixed_boost_overrides_the_replacement_factor():
    out = Adversary(spec("scaling", boost=3.0)).poison_updates(*round_of(5), np.random.default_rng(0))
    updates, _ = round_of(5)
    np.testing.assert_allclose(out["s1"], 3.0 * updates["s1"], rtol=1e-6)


def test_with_equal_weights_the_boost_is_n_over_eta():
    updates, _ = round_of(6)
    weights = dict.fromkeys(updates, 1.0)
    out = Adversary(spec("scaling", silos=("s3",), server_lr=2.0)).poison_updates(updates, weights, np.random.default_rng(0))
    np.testing.assert_allclose(out["s3"], len(SILOS) / 2.0 * updates["s3"], rtol=1e-6)


def test_sign_flip_and_gaussian_noise_act_per_silo():
    updates, weights = round_of(7)
    flipped = Adversary(spec("sign_flip", magnitude=4.0)).poison_updates(updates, weights, np.random.default_rng(0))
    for s in ("s1", "s4"):
        np.testing.assert_array_equal(flipped[s], -4.0 * updates[s])
    noisy = Adversary(spec("gaussian_noise", std=2.0)).poison_updates(updates, weights, np.random.default_rng(0))
    assert noisy["s1"].dtype == np.float32 and not np.array_equal(noisy["s1"], noisy["s4"])


@pytest.mark.parametrize("knowledge", ["honest", "all", "own"])
def test_colluding_attacks_send_one_vector_from_the_updates_the_attacker_sees(knowledge):
    updates, weights = round_of(8)
    malicious = ["s1", "s4"]
    seen = {"honest": [s for s in sorted(updates) if s not in malicious], "all": sorted(updates),
            "own": malicious}[knowledge]
    reference = [updates[s] for s in seen]
    alie = Adversary(spec("alie", knowledge=knowledge)).poison_updates(updates, weights, np.random.default_rng(0))
    expected = alie_update(reference, alie_z_max(len(SILOS), 2)).astype(np.float32)
    ipm = Adversary(spec("ipm", knowledge=knowledge, epsilon=0.5)).poison_updates(updates, weights, np.random.default_rng(0))
    for s in malicious:
        np.testing.assert_array_equal(alie[s], expected)
        np.testing.assert_array_equal(ipm[s], ipm_update(reference, 0.5).astype(np.float32))


def test_alie_z_max_is_taken_for_the_silos_taking_part_in_the_round():
    updates, weights = round_of(9, silos=SILOS[:6])  # n = 6 take part, f = 2 of them malicious
    out = Adversary(spec("alie")).poison_updates(updates, weights, np.random.default_rng(0))
    honest = [updates[s] for s in sorted(updates) if s not in ("s1", "s4")]
    np.testing.assert_allclose(out["s1"], alie_update(honest, alie_z_max(6, 2)), rtol=1e-6)


def test_an_omniscient_attack_with_no_honest_silo_in_the_round_is_refused():
    updates, weights = round_of(10, silos=("s1", "s4"))
    with pytest.raises(AttackError, match="honest"):
        Adversary(spec("ipm")).poison_updates(updates, weights, np.random.default_rng(0))


def test_a_round_without_malicious_silos_is_left_alone():
    updates, weights = round_of(11, silos=("s0", "s2", "s3"))
    out = Adversary(spec("alie")).poison_updates(updates, weights, np.random.default_rng(0))
    assert all(out[s] is updates[s] for s in updates)


def test_weights_must_cover_the_same_silos_as_the_updates():
    updates, weights = round_of(12)
    del weights["s0"]
    with pytest.raises(AttackError, match="weights"):
        Adversary(spec("scaling")).poison_updates(updates, weights, np.random.default_rng(0))


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(sorted(UPDATE_KINDS)), seed=st.integers(0, 2**32 - 1), order=st.permutations(SILOS))
def test_poisoned_updates_do_not_depend_on_the_order_of_the_silos(kind, seed, order):
    updates, weights = round_of(seed)
    adversary = Adversary(spec(kind))
    a = adversary.poison_updates(updates, weights, np.random.default_rng(seed))
    shuffled = {s: updates[s] for s in order}
    b = adversary.poison_updates(shuffled, {s: weights[s] for s in order}, np.random.default_rng(seed))
    for s in SILOS:
        np.testing.assert_array_equal(a[s], b[s])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), fraction=st.floats(0.01, 1.0), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_pick_malicious_takes_floor_of_the_fraction_whatever_the_order(n, fraction, seed, data):
    ids = [f"silo{i:02d}" for i in range(n)]
    count = int(np.floor(fraction * n + 1e-9))
    if count == 0:
        with pytest.raises(AttackError, match="picks no silo"):
            pick_malicious(ids, fraction, np.random.default_rng(seed))
        return
    picked = pick_malicious(ids, fraction, np.random.default_rng(seed))
    assert len(picked) == count and len(set(picked)) == count and set(picked) <= set(ids)
    assert list(picked) == sorted(picked)
    shuffled = data.draw(st.permutations(ids))
    assert pick_malicious(shuffled, fraction, np.random.default_rng(seed)) == picked
    # The pick is a valid spec as it stands.
    assert AttackSpec(kind="sign_flip", silos=picked).silos == picked


def test_pick_malicious_is_seeded_and_exact_on_round_fractions():
    ids = [f"s{i:03d}" for i in range(100)]
    assert len(pick_malicious(ids, 0.29, np.random.default_rng(0))) == 29  # 0.29 · 100 = 28.999… in floats
    assert len(pick_malicious(SILOS, 0.2, np.random.default_rng(0))) == 2
    assert pick_malicious(SILOS, 0.2, np.random.default_rng(3)) == pick_malicious(SILOS, 0.2, np.random.default_rng(3))
    picks = {pick_malicious(SILOS, 0.2, np.random.default_rng(seed)) for seed in range(20)}
    assert len(picks) > 1


def test_pick_malicious_refuses_bad_input():
    with pytest.raises(AttackParameterError) as info:
        pick_malicious(SILOS, 0.0, np.random.default_rng(0))
    assert info.value.field == "fraction"
    with pytest.raises(AttackError, match="distinct"):
        pick_malicious(["a", "a", "b"], 0.5, np.random.default_rng(0))
