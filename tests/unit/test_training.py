"""Local training: validated inputs, exact step counts, and bit-for-bit reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.errors import FedsiloError, TrainingError
from fl_core.evaluation import log_loss, predict_proba
from fl_core.models import ModelSpec, build_model
from fl_core.params import flatten, load_flat_inplace
from fl_core.training import TrainSpec, train_local

PROPERTY = settings(max_examples=30, deadline=None)

MLP = ModelSpec(kind="mlp", hidden=(5,), activation="tanh")


# --- TrainSpec -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rounds=0), r"rounds must be >= 1, got 0"),
        (dict(local_epochs=0), r"local_epochs must be >= 1, got 0"),
        (dict(local_steps=0), r"local_steps must be >= 1 when set, got 0"),
        (dict(local_steps=-2), r"local_steps.*-2"),
        (dict(lr=0.0), r"lr must be a positive number, got 0.0"),
        (dict(lr=-0.1), r"lr must be a positive number, got -0.1"),
        (dict(lr=math.nan), r"lr must be a positive number, got nan"),
        (dict(lr=math.inf), r"lr must be a positive number, got inf"),
        (dict(momentum=-0.1), r"momentum must be in \[0, 1\), got -0.1"),
        (dict(momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
        (dict(momentum=math.nan), r"momentum.*nan"),
        (dict(weight_decay=-1e-4), r"weight_decay must be .*>= 0, got -0.0001"),
        (dict(weight_decay=math.nan), r"weight_decay.*nan"),
        (dict(weight_decay=math.inf), r"weight_decay.*inf"),
        (dict(batch_size=0), r"batch_size must be >= 1, got 0"),
    ],
)
def test_train_spec_rejects_bad_values_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainSpec(**kwargs)


def test_train_spec_accepts_its_boundaries():
    spec = TrainSpec(rounds=1, local_epochs=1, local_steps=1, lr=1e-9, momentum=0.0, weight_decay=0.0, batch_size=1)
    assert spec.local_steps == 1 and spec.momentum == 0.0


# --- input checks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, y, match",
    [
        (np.zeros(4, dtype=np.float32), np.zeros(4), r"do not line up"),
        (np.zeros((4, 2), dtype=np.float32), np.zeros((4, 1)), r"do not line up"),
        (np.zeros((4, 2), dtype=np.float32), np.zeros(3), r"features \(4, 2\) and labels \(3,\) do not line up"),
        (np.zeros((0, 2), dtype=np.float32), np.zeros(0), r"no training rows"),
        (np.zeros((3, 2), dtype=np.float32), np.array([0, 1, 2]), r"labels must be 0 or 1"),
        (np.zeros((3, 2), dtype=np.float32), np.array([0.0, 1.0, np.nan]), r"labels must be 0 or 1"),
        (np.zeros((3, 2), dtype=np.float32), np.array([0, -1, 1]), r"labels must be 0 or 1"),
    ],
)
def test_bad_training_inputs_raise_training_error(x, y, match):
    model = build_model(ModelSpec(), 2, seed=0)
    before = flatten(model)
    with pytest.raises(TrainingError, match=match):
        train_local(model, x, y, TrainSpec(), seed=0)
    np.testing.assert_array_equal(flatten(model), before)


def test_divergence_raises_training_error_naming_lr():
    x = np.full((8, 2), 1e30, dtype=np.float32)
    y = np.array([0, 1] * 4)
    with pytest.raises(TrainingError, match=r"diverged.*lr=1e\+30") as info:
        train_local(build_model(ModelSpec(), 2, seed=1), x, y, TrainSpec(lr=1e30), seed=1)
    assert isinstance(info.value, FedsiloError)


# --- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        TrainSpec(local_epochs=2, batch_size=7),
        TrainSpec(optimizer="adam", lr=0.01, local_steps=9, batch_size=5, weight_decay=1e-3),
        TrainSpec(momentum=0.9, local_epochs=1, batch_size=4),
    ],
    ids=["sgd-epochs", "adam-steps", "sgd-momentum"],
)
@pytest.mark.parametrize("model_spec", [ModelSpec(), MLP], ids=["logistic", "mlp"])
def test_same_seed_gives_bit_identical_parameters(binary_data, spec, model_spec):
    x, y = binary_data(40, 4, seed=3)
    runs = []
    for _ in range(2):
        model = build_model(model_spec, 4, seed=11)
        result = train_local(model, x, y, spec, seed=123)
        runs.append((flatten(model), result))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def test_different_seed_shuffles_differently(binary_data):
    x, y = binary_data(40, 4, seed=3)
    vectors = []
    for seed in (1, 2):
        model = build_model(ModelSpec(), 4, seed=11)
        train_local(model, x, y, TrainSpec(batch_size=4), seed=seed)
        vectors.append(flatten(model))
    assert not np.array_equal(vectors[0], vectors[1])


def test_training_neither_reads_nor_advances_the_global_torch_rng(binary_data):
    x, y = binary_data(30, 3, seed=0)
    vectors = []
    for global_seed in (0, 99):
        torch.manual_seed(global_seed)
        model = build_model(ModelSpec(), 3, seed=5)
        state = torch.random.get_rng_state()
        train_local(model, x, y, TrainSpec(batch_size=4), seed=8)
        assert torch.equal(state, torch.random.get_rng_state())
        vectors.append(flatten(model))
    np.testing.assert_array_equal(vectors[0], vectors[1])


def test_inputs_are_not_mutated(binary_data):
    x, y = binary_data(20, 3, seed=0)
    x0, y0 = x.copy(), y.copy()
    train_local(build_model(ModelSpec(), 3, seed=0), x, y, TrainSpec(local_epochs=3), seed=0)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


# --- step counts and batches ---------------------------------------------------------------------


class _BatchRecorder:
    """Records the first feature of every row the model sees, one list per forward call."""

    def __init__(self, model):
        self.batches: list[list[float]] = []
        model.register_forward_hook(lambda _m, inputs, _out: self.batches.append(inputs[0][:, 0].tolist()))


def _indexed(n):
    # Column 0 holds the row index (exact in float32) so the hook can tell which rows were used.
    x = np.zeros((n, 2), dtype=np.float32)
    x[:, 0] = np.arange(n)
    y = (np.arange(n) % 2).astype(np.int64)
    return x, y


@PROPERTY
@given(n=st.integers(1, 30), batch_size=st.integers(1, 12), local_steps=st.integers(1, 20), seed=st.integers(0, 2**32))
def test_local_steps_caps_the_step_count_exactly(n, batch_size, local_steps, seed):
    x, y = _indexed(n)
    model = build_model(ModelSpec(), 2, seed=0)
    recorder = _BatchRecorder(model)
    spec = TrainSpec(local_steps=local_steps, local_epochs=5, batch_size=batch_size, lr=1e-3)
    result = train_local(model, x, y, spec, seed=seed)
    assert result.steps == local_steps
    assert len(recorder.batches) == local_steps
    assert result.n_samples == n
    assert all(1 <= len(b) <= batch_size for b in recorder.batches)


@PROPERTY
@given(n=st.integers(1, 30), batch_size=st.integers(1, 12), epochs=st.integers(1, 3), seed=st.integers(0, 2**32))
def test_each_epoch_visits_every_row_exactly_once(n, batch_size, epochs, seed):
    x, y = _indexed(n)
    model = build_model(ModelSpec(), 2, seed=0)
    recorder = _BatchRecorder(model)
    result = train_local(model, x, y, TrainSpec(local_epochs=epochs, batch_size=batch_size, lr=1e-3), seed=seed)
    per_epoch = math.ceil(n / batch_size)
    assert result.steps == epochs * per_epoch == len(recorder.batches)
    for e in range(epochs):
        rows = [int(i) for batch in recorder.batches[e * per_epoch : (e + 1) * per_epoch] for i in batch]
        assert sorted(rows) == list(range(n))


# --- what one step does --------------------------------------------------------------------------


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_one_full_batch_sgd_step_matches_the_hand_computed_gradient(binary_data, weight_decay):
    x, y = binary_data(25, 3, seed=4)
    model = build_model(ModelSpec(), 3, seed=2)
    w0 = model[0].weight.detach().numpy().astype(np.float64).reshape(-1).copy()
    b0 = float(model[0].bias.detach())
    lr = 0.3
    result = train_local(model, x, y, TrainSpec(local_steps=1, batch_size=25, lr=lr, weight_decay=weight_decay), seed=0)

    xs = x.astype(np.float64)
    z = xs @ w0 + b0
    p = 1.0 / (1.0 + np.exp(-z))
    grad_w = xs.T @ (p - y) / len(y) + weight_decay * w0
    grad_b = np.mean(p - y) + weight_decay * b0
    np.testing.assert_allclose(model[0].weight.detach().numpy().reshape(-1), w0 - lr * grad_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(model[0].bias.detach()), b0 - lr * grad_b, rtol=1e-5, atol=1e-6)
    # mean_loss is the loss of the batch before the step.
    expected_loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert result.mean_loss == pytest.approx(expected_loss, rel=1e-5)
    assert result.steps == 1 and result.n_samples == 25


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_one_full_batch_adam_step_matches_the_hand_computed_update(binary_data, weight_decay):
    # Adam's first bias-corrected step is lr * g / (|g| + eps), with L2 weight decay folded into g.
    x, y = binary_data(25, 3, seed=5)
    model = build_model(ModelSpec(), 3, seed=2)
    w0 = model[0].weight.detach().numpy().astype(np.float64).reshape(-1).copy()
    b0 = float(model[0].bias.detach())
    lr = 0.01
    spec = TrainSpec(optimizer="adam", local_steps=1, batch_size=25, lr=lr, weight_decay=weight_decay)
    train_local(model, x, y, spec, seed=0)

    xs = x.astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-(xs @ w0 + b0)))
    grad_w = xs.T @ (p - y) / len(y) + weight_decay * w0
    grad_b = np.mean(p - y) + weight_decay * b0
    np.testing.assert_allclose(
        model[0].weight.detach().numpy().reshape(-1), w0 - lr * grad_w / (np.abs(grad_w) + 1e-8), rtol=1e-5, atol=1e-6
    )
    assert float(model[0].bias.detach()) == pytest.approx(b0 - lr * grad_b / (abs(grad_b) + 1e-8), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("label", [0, 1])
def test_a_one_class_training_set_trains_towards_that_class(binary_data, label):
    x, _ = binary_data(16, 3, seed=6)
    y = np.full(16, label, dtype=np.int64)
    model = build_model(MLP, 3, seed=1)
    before = log_loss(y, predict_proba(model, x))
    result = train_local(model, x, y, TrainSpec(local_epochs=3, batch_size=16, lr=0.1), seed=0)
    after = log_loss(y, predict_proba(model, x))
    assert result.steps == 3 and math.isfinite(result.mean_loss)
    assert np.all(np.isfinite(flatten(model)))
    assert after < before


def test_training_reduces_the_loss_on_separable_data(binary_data):
    x, y = binary_data(64, 4, seed=9)
    model = build_model(ModelSpec(), 4, seed=0)
    before = log_loss(y, predict_proba(model, x))
    train_local(model, x, y, TrainSpec(local_epochs=20, batch_size=16, lr=0.2), seed=0)
    assert log_loss(y, predict_proba(model, x)) < 0.6 * before


def test_bool_labels_are_accepted_like_ints(binary_data):
    x, y = binary_data(20, 3, seed=1)
    vectors = []
    for labels in (y, y.astype(bool), y.astype(np.float64)):
        model = build_model(ModelSpec(), 3, seed=0)
        train_local(model, x, labels, TrainSpec(batch_size=6), seed=4)
        vectors.append(flatten(model))
    np.testing.assert_array_equal(vectors[0], vectors[1])
    np.testing.assert_array_equal(vectors[0], vectors[2])


def test_training_resumes_from_a_loaded_vector(binary_data):
    # The pipeline trains a model rebuilt from a flat vector; that must equal training the original.
    x, y = binary_data(30, 3, seed=2)
    original = build_model(MLP, 3, seed=1)
    rebuilt = build_model(MLP, 3, seed=999)
    load_flat_inplace(rebuilt, flatten(original))
    for model in (original, rebuilt):
        train_local(model, x, y, TrainSpec(batch_size=8), seed=3)
    np.testing.assert_array_equal(flatten(original), flatten(rebuilt))
