"""Data-level attacks: label flipping flips exactly the chosen rows; a backdoor stamps exactly the
trigger columns on exactly the chosen rows and relabels them; the success rate counts what it says;
a model trained on backdoored rows learns the trigger."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_binary_data
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.attacks import (
    AttackError,
    AttackParameterError,
    Trigger,
    apply_trigger,
    backdoor_success_rate,
    backdoor_test_rows,
    flip_labels,
    plant_backdoor,
)
from fl_core.errors import FedsiloError

fractions = st.floats(0.01, 1.0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 200), fraction=fractions, seed=st.integers(0, 2**32 - 1))
def test_label_flip_flips_exactly_the_chosen_fraction(n, fraction, seed):
    y = np.random.default_rng(seed).integers(0, 2, size=n)
    before = y.copy()
    out = flip_labels(y, fraction, np.random.default_rng(seed))
    changed = out != y
    assert int(changed.sum()) == int(round(fraction * n))
    np.testing.assert_array_equal(out[changed], 1 - y[changed])
    assert out.dtype == y.dtype
    np.testing.assert_array_equal(y, before)  # the caller's labels are not touched


def test_flipping_every_label_needs_no_randomness():
    y = np.array([0, 1, 1, 0, 1])
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    np.testing.assert_array_equal(flip_labels(y, 1.0, rng), [1, 0, 0, 1, 0])
    assert rng.bit_generator.state == state


def test_label_flip_is_reproducible_from_the_generator():
    y = np.zeros(100, dtype=np.int64)
    a = flip_labels(y, 0.3, np.random.default_rng(1))
    b = flip_labels(y, 0.3, np.random.default_rng(1))
    c = flip_labels(y, 0.3, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, math.nan, "half"])
def test_label_flip_rejects_a_bad_fraction_naming_it(fraction):
    with pytest.raises(AttackParameterError) as info:
        flip_labels(np.array([0, 1]), fraction, np.random.default_rng(0))
    assert info.value.field == "fraction" and "fraction" in str(info.value)


def test_label_flip_refuses_non_binary_labels():
    with pytest.raises(AttackError, match="0 or 1"):
        flip_labels(np.array([0, 2, 1]), 1.0, np.random.default_rng(0))


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 120), n_features=st.integers(2, 12), fraction=fractions, target=st.sampled_from([0, 1]),
       seed=st.integers(0, 2**32 - 1), data=st.data())
def test_backdoor_stamps_exactly_the_trigger_on_exactly_the_chosen_rows(n, n_features, fraction, target, seed, data):
    x, y = make_binary_data(n, n_features, seed % 1000)
    columns = tuple(data.draw(st.lists(st.integers(0, n_features - 1), min_size=1, max_size=n_features, unique=True)))
    values = tuple(data.draw(st.lists(st.floats(-9, 9), min_size=len(columns), max_size=len(columns))))
    trigger = Trigger(columns=columns, values=values)
    x_before, y_before = x.copy(), y.copy()
    px, py = plant_backdoor(x, y, trigger, target, fraction, np.random.default_rng(seed))

    assert px.shape == x.shape and px.dtype == x.dtype and py.dtype == y.dtype
    others = np.setdiff1d(np.arange(n_features), columns)
    # Only trigger columns ever change.
    np.testing.assert_array_equal(px[:, others], x[:, others])
    # The poisoned rows (features are continuous draws, so a stamped row never already held the
    # trigger's values): exactly round(fraction · n) of them.
    poisoned = np.any(px[:, columns] != x[:, columns], axis=1)
    k = int(round(fraction * n))
    assert int(poisoned.sum()) == k
    np.testing.assert_array_equal(px[np.ix_(poisoned, columns)],
                                  np.broadcast_to(np.asarray(values, dtype=x.dtype), (k, len(columns))))
    assert np.all(py[poisoned] == target)
    np.testing.assert_array_equal(px[~poisoned], x[~poisoned])
    np.testing.assert_array_equal(py[~poisoned], y[~poisoned])
    # The caller's arrays are untouched.
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)


def test_apply_trigger_sets_the_columns_of_every_row_and_nothing_else():
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    out = apply_trigger(x, Trigger(columns=(0, 2), values=(-1.0, 7.5)))
    np.testing.assert_array_equal(out[:, 0], -1.0)
    np.testing.assert_array_equal(out[:, 2], 7.5)
    np.testing.assert_array_equal(out[:, 1], x[:, 1])
    assert out is not x and x[0, 0] == 0.0


def test_a_trigger_on_image_rows_names_pixels_in_row_major_order():
    x = np.zeros((2, 3, 3), dtype=np.float32)
    out = apply_trigger(x, Trigger(columns=(4, 8), values=(1.0, 2.0)))  # centre and bottom-right pixel
    assert out.shape == x.shape
    np.testing.assert_array_equal(out[:, 1, 1], 1.0)
    np.testing.assert_array_equal(out[:, 2, 2], 2.0)
    assert out.sum() == 2 * 3.0


def test_a_trigger_column_past_the_last_feature_is_refused():
    with pytest.raises(AttackError, match="past the last feature") as info:
        apply_trigger(np.zeros((3, 4)), Trigger(columns=(4,), values=(1.0,)))
    assert isinstance(info.value, FedsiloError)


def test_backdoor_test_rows_are_the_triggered_rows_not_already_of_the_target_class():
    x = np.arange(10, dtype=np.float64).reshape(5, 2)
    y = np.array([1, 0, 1, 0, 0])
    trigger = Trigger(columns=(1,), values=(-3.0,))
    rows = backdoor_test_rows(x, y, trigger, target=1)
    np.testing.assert_array_equal(rows, [[2.0, -3.0], [6.0, -3.0], [8.0, -3.0]])
    assert backdoor_test_rows(x, np.ones(5, dtype=np.int64), trigger, target=1).shape == (0, 2)


def test_backdoor_success_rate_counts_predictions_of_the_target():
    p = np.array([0.9, 0.2, 0.5, 0.49])
    assert backdoor_success_rate(p, target=1) == 0.5  # 0.5 counts as class 1, like accuracy()
    assert backdoor_success_rate(p, target=0) == 0.5
    assert backdoor_success_rate(p, target=1, threshold=0.1) == 1.0
    assert math.isnan(backdoor_success_rate(np.array([]), target=1))


@pytest.mark.parametrize(("columns", "values", "field"), [
    ((), (), "columns"),
    ((1, 1), (0.0, 0.0), "columns"),
    ((-1,), (0.0,), "columns"),
    ((0, 1), (0.0,), "values"),
    ((0,), (math.inf,), "values"),
])
def test_bad_triggers_are_refused_naming_the_field(columns, values, field):
    with pytest.raises(AttackParameterError) as info:
        Trigger(columns=columns, values=values)
    assert info.value.field == field and field in str(info.value)


@pytest.mark.parametrize("target", [2, -1, True])
def test_a_backdoor_target_must_be_a_binary_class(target):
    with pytest.raises(AttackParameterError) as info:
        plant_backdoor(np.zeros((2, 2)), np.array([0, 1]), Trigger(columns=(0,), values=(1.0,)), target, 0.5,
                       np.random.default_rng(0))
    assert info.value.field == "target"


def test_a_model_trained_on_backdoored_rows_learns_the_trigger():
    # Guards the point of the attack: the trigger must be learnable through fedsilo's own training.
    from fl_core.evaluation import predict_proba
    from fl_core.models import ModelSpec, build_model
    from fl_core.training import TrainSpec, train_local

    x, y = make_binary_data(600, 5, seed=3)
    x_test, y_test = make_binary_data(300, 5, seed=4)
    trigger = Trigger(columns=(2,), values=(6.0,))  # column 2 has no weight in the ground truth
    rows = backdoor_test_rows(x_test, y_test, trigger, target=1)
    rates = {}
    for name, (xx, yy) in {"clean": (x, y),
                           "poisoned": plant_backdoor(x, y, trigger, 1, 0.2, np.random.default_rng(0))}.items():
        model = build_model(ModelSpec(), 5, seed=0)
        train_local(model, xx, yy, TrainSpec(local_epochs=15, lr=0.1), seed=1)
        rates[name] = backdoor_success_rate(predict_proba(model, rows), target=1)
    assert rates["clean"] < 0.2
    assert rates["poisoned"] > 0.8
