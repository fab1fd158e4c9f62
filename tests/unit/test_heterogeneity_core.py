"""Multi-class models, partial work (stragglers), personalisation, q-FFL weights and the simulation's
options: the pieces the heterogeneity experiments stand on."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.dp.dpsgd import DPSGDSpec, round_event, train_local_dp
from fl_core.errors import TrainingError
from fl_core.evaluation import accuracy, log_loss, multiclass_roc_auc, predict_proba, scores
from fl_core.models import ModelSpec, build_model, output_classes
from fl_core.params import flatten, load_flat_inplace
from fl_core.personalise import PersonalSpec, personalise
from fl_core.qffl import mean_loss, qffl_weight
from fl_core.seeding import derive_seed, numpy_rng, torch_rng
from fl_core.server_opt import ServerOptimizer, ServerOptimizerSpec
from fl_core.simulation import Options, SiloArrays, Stragglers, federated_rounds
from fl_core.specs import parameter_sizes
from fl_core.training import TrainSpec, WorkBudget, planned_steps, train_local

PROPERTY = settings(max_examples=25, deadline=None)
SPEC = TrainSpec(batch_size=8, lr=0.1, local_epochs=2)


def multiclass(n: int, features: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = numpy_rng(seed)
    centres = rng.normal(scale=3.0, size=(classes, features))
    y = rng.integers(0, classes, size=n)
    return centres[y] + rng.normal(size=(n, features)), y.astype(np.int64)


def binary(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = numpy_rng(seed)
    x = rng.normal(size=(n, 3))
    return x, (x @ np.array([1.0, -2.0, 0.5]) + rng.normal(scale=0.3, size=n) > 0).astype(np.int64)


# --- multi-class models ----------------------------------------------------------------------------


def test_a_multiclass_model_has_one_logit_per_class_and_a_binary_one_logit():
    spec = ModelSpec(kind="mlp", hidden=(6,), classes=5)
    model = build_model(spec, 4, seed=1)
    assert output_classes(model) == 5 and model(torch.zeros(2, 4)).shape == (2, 5)
    assert sum(parameter_sizes(spec, 4)) == sum(p.numel() for p in model.parameters())
    assert output_classes(build_model(ModelSpec(), 4, seed=1)) == 2


@pytest.mark.parametrize("classes", [1, 0, True, 2.5])
def test_classes_must_be_an_integer_of_at_least_two(classes):
    with pytest.raises(ValueError, match="classes must be an integer >= 2"):
        ModelSpec(classes=classes)


def test_softmax_training_learns_separable_classes_and_scores_them():
    x, y = multiclass(300, 4, 4, seed=3)
    model = build_model(ModelSpec(classes=4), 4, seed=2)
    before = accuracy(y, predict_proba(model, x))
    result = train_local(model, x, y, replace(SPEC, local_epochs=5), seed=4)
    p = predict_proba(model, x)
    assert p.shape == (300, 4) and np.allclose(p.sum(axis=1), 1.0)
    m = scores(y, p)
    assert m.accuracy > 0.9 > before and m.roc_auc > 0.95 and m.log_loss < 0.5
    assert result.steps == result.planned == 5 * math.ceil(300 / 8)


def test_labels_outside_the_models_classes_are_refused():
    x, y = multiclass(20, 3, 3, seed=1)
    with pytest.raises(TrainingError, match="labels must be 0 or 1"):
        train_local(build_model(ModelSpec(classes=2), 3, seed=0), x, np.where(y == 2, 5, y), SPEC, seed=0)
    with pytest.raises(TrainingError, match=r"class indices 0\.\.2"):
        train_local(build_model(ModelSpec(classes=3), 3, seed=0), x, y + 1, SPEC, seed=0)


def test_multiclass_metrics_against_their_definitions():
    y = np.array([0, 1, 2, 2])
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.45, 0.5, 0.05], [0.1, 0.1, 0.8]])
    assert accuracy(y, p) == 0.75
    assert log_loss(y, p) == pytest.approx(-np.mean(np.log([0.7, 0.8, 0.05, 0.8])))
    # one-vs-rest: class 0 and 1 separate perfectly, class 2's positives score 0.05 and 0.8 against 0.1, 0.1
    assert multiclass_roc_auc(y, p) == pytest.approx(np.mean([1.0, 1.0, 0.5]))
    assert math.isnan(multiclass_roc_auc(np.zeros(3, dtype=int), np.full((3, 2), 0.5)))


def test_dp_sgd_trains_a_multiclass_model_in_both_clipping_modes():
    x, y = multiclass(120, 4, 3, seed=5)
    trained = {}
    for mode in ("hooks", "ghost"):
        model = build_model(ModelSpec(classes=3), 4, seed=2)
        dp = DPSGDSpec(noise_multiplier=0.5, max_grad_norm=1.0, clipping=mode)
        result = train_local_dp(model, x, y, SPEC, dp, seed=7, noise=torch_rng(9))
        assert result.clipping == mode and result.steps == result.planned
        trained[mode] = flatten(model)
    np.testing.assert_allclose(trained["hooks"], trained["ghost"], atol=1e-5)


# --- partial work ------------------------------------------------------------------------------------


@PROPERTY
@given(cap=st.integers(1, 30))
def test_a_step_budget_stops_training_early_and_the_first_steps_are_those_of_the_full_round(cap):
    x, y = binary(64, seed=1)
    full, cut = build_model(ModelSpec(), 3, seed=0), build_model(ModelSpec(), 3, seed=0)
    planned = planned_steps(64, SPEC)
    result = train_local(cut, x, y, SPEC, seed=5, budget=WorkBudget(max_steps=cap))
    assert result.steps == min(cap, planned) and result.planned == planned
    assert result.partial == (cap < planned)
    train_local(full, x, y, replace(SPEC, local_steps=min(cap, planned)), seed=5)
    np.testing.assert_array_equal(flatten(full), flatten(cut))


def test_a_deadline_that_has_passed_still_takes_the_first_step():
    x, y = binary(64, seed=1)
    result = train_local(build_model(ModelSpec(), 3, seed=0), x, y, SPEC, seed=5,
                         budget=WorkBudget(deadline=0.0))
    assert result.steps == 1 and result.partial
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        WorkBudget(max_steps=0)


def test_dp_sgd_cut_short_costs_the_steps_it_took():
    x, y = binary(100, seed=2)
    dp = DPSGDSpec(noise_multiplier=1.1, max_grad_norm=1.0)
    planned = round_event(100, SPEC, 1.1)
    result = train_local_dp(build_model(ModelSpec(), 3, seed=0), x, y, SPEC, dp, seed=3, noise=torch_rng(1),
                            budget=WorkBudget(max_steps=4))
    assert result.steps == 4 and result.planned == planned.steps > 4
    assert result.event.steps == 4 and result.event.sample_rate == planned.sample_rate


# --- personalisation ---------------------------------------------------------------------------------


def test_head_only_personalisation_changes_only_the_output_layer():
    x, y = binary(80, seed=3)
    model = build_model(ModelSpec(kind="mlp", hidden=(5,)), 3, seed=1)
    before = [p.detach().clone() for p in model.parameters()]
    result = personalise(model, x, y, SPEC, PersonalSpec(steps=7, layers="head"), seed=2)
    after = list(model.parameters())
    assert result.steps == 7
    assert all(torch.equal(b, a) for b, a in zip(before[:2], after[:2]))  # the body
    assert not torch.equal(before[2], after[2])  # the head
    assert all(p.requires_grad for p in model.parameters())  # thawed again


def test_personalisation_is_local_training_of_its_steps_and_lr_and_under_dp_charges_its_steps():
    x, y = binary(80, seed=3)
    spec = replace(SPEC, objective="fedprox", prox_mu=0.5)
    personal = PersonalSpec(steps=9, lr=0.02)
    a, b = build_model(ModelSpec(), 3, seed=1), build_model(ModelSpec(), 3, seed=1)
    personalise(a, x, y, spec, personal, seed=4)
    train_local(b, x, y, replace(SPEC, local_steps=9, lr=0.02), seed=4)
    np.testing.assert_array_equal(flatten(a), flatten(b))
    dp = DPSGDSpec(noise_multiplier=1.0, max_grad_norm=1.0)
    result = personalise(build_model(ModelSpec(kind="mlp", hidden=(4,)), 3, seed=1), x, y, spec,
                         PersonalSpec(steps=9, layers="head"), seed=4, dp=dp, noise=torch_rng(2))
    assert result.event.steps == 9


@pytest.mark.parametrize("kwargs, match", [(dict(steps=0), "steps"), (dict(layers="body"), "layers"),
                                           (dict(lr=-1.0), "lr")])
def test_personal_spec_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PersonalSpec(**kwargs)


# --- q-FFL -------------------------------------------------------------------------------------------


@PROPERTY
@given(n=st.integers(1, 10_000), loss=st.floats(0.0, 50.0), q=st.floats(0.0, 5.0))
def test_qffl_weight_is_n_times_loss_to_the_q(n, loss, q):
    w = qffl_weight(n, loss, q)
    assert w == pytest.approx(n * max(loss, 1e-6) ** q)
    assert qffl_weight(n, loss, 0.0) == n


def test_qffl_weighs_the_silo_it_serves_worst_more():
    x, y = binary(50, seed=4)
    model = build_model(ModelSpec(), 3, seed=0)
    train_local(model, x, y, SPEC, seed=1)
    good = mean_loss(model, x, y)
    bad = mean_loss(model, x, 1 - y)
    assert bad > good
    assert qffl_weight(50, bad, 2.0) / qffl_weight(50, good, 2.0) == pytest.approx((bad / good) ** 2)
    with pytest.raises(ValueError, match="q must be"):
        qffl_weight(5, 1.0, -1.0)


# --- the simulation's options ------------------------------------------------------------------------


@pytest.fixture
def silos():
    out = {}
    for i, n in enumerate([30, 50, 17, 41]):
        x, y = binary(n, seed=20 + i)
        out[f"s{i}"] = SiloArrays(x_train=x, y_train=y)
    return out


def test_stragglers_are_seeded_and_a_zero_fraction_changes_nothing(silos):
    planned = {s: planned_steps(len(d.y_train), SPEC) for s, d in silos.items()}
    policy = Stragglers(fraction=0.5)
    a = policy.budgets(list(silos), planned, root_seed=1, round_number=3)
    assert a == policy.budgets(list(silos), planned, root_seed=1, round_number=3) and len(a) == 2
    assert all(1 <= cap < planned[s] for s, cap in a.items())
    plain = federated_rounds(silos, ModelSpec(), SPEC, 3, rounds=2).vector
    none = federated_rounds(silos, ModelSpec(), SPEC, 3, rounds=2, options=Options(stragglers=Stragglers(fraction=0.0)))
    np.testing.assert_array_equal(plain, none.vector)


def test_dropped_stragglers_are_left_out_and_partial_ones_count(silos):
    stragglers = Stragglers(fraction=0.5)
    planned = {s: planned_steps(len(d.y_train), SPEC) for s, d in silos.items()}
    caps = stragglers.budgets(list(silos), planned, root_seed=3, round_number=1)
    kept = {s: d for s, d in silos.items() if s not in caps}
    dropped = federated_rounds(silos, ModelSpec(), SPEC, 3, rounds=1, options=Options(stragglers=replace(stragglers,
                                                                                                       drop=True)))
    np.testing.assert_array_equal(dropped.vector, federated_rounds(kept, ModelSpec(), SPEC, 3, rounds=1).vector)
    partial = federated_rounds(silos, ModelSpec(), SPEC, 3, rounds=1, options=Options(stragglers=stragglers))
    # By hand: the stragglers' first `cap` steps, the others' full rounds, the sample-weighted mean.
    start = federated_rounds(silos, ModelSpec(), SPEC, 3, rounds=0).vector
    deltas, weights = [], []
    for s in sorted(silos):
        model = build_model(ModelSpec(), 3, seed=0)
        load_flat_inplace(model, start)
        train_local(model, silos[s].x_train, silos[s].y_train, SPEC, seed=derive_seed(3, "train", 1, s),
                    budget=WorkBudget(max_steps=caps[s]) if s in caps else None)
        deltas.append(flatten(model) - start)
        weights.append(len(silos[s].y_train))
    expected = start + sum(w * d for w, d in zip(weights, deltas)) / sum(weights)
    np.testing.assert_allclose(partial.vector, expected, atol=1e-6)


def test_qffl_with_q_zero_is_fedavg_and_with_q_positive_differs(silos):
    plain = federated_rounds(silos, ModelSpec(), SPEC, 3, rounds=2).vector
    zero = federated_rounds(silos, ModelSpec(), SPEC, 3, rounds=2, options=Options(qffl=0.0)).vector
    np.testing.assert_allclose(plain, zero, atol=1e-6)
    assert not np.allclose(plain, federated_rounds(silos, ModelSpec(), SPEC, 3, rounds=2, options=Options(qffl=3.0)).vector)


def test_the_secure_sums_arithmetic_matches_the_trusted_mean_within_quantisation(silos):
    from fl_core.round_policy import build_policy
    from fl_core.secagg.spec import SecureSpec

    def policy(mode):
        return build_policy(mode=mode, rule="fedavg", robust_params={}, server_lr=1.0, min_silos=2, min_bucket=3,
                            secure=SecureSpec(threshold=3, clip_norm=10.0, bits=24), privacy=None, anomaly=None,
                            seed=3, rounds=3, layers=parameter_sizes(ModelSpec(), 3), n_silos=4,
                            server_optimizer=ServerOptimizerSpec(kind="fedadam"))

    server = ServerOptimizer(spec=ServerOptimizerSpec(kind="fedadam"), lr=1.0)
    reference = federated_rounds(silos, ModelSpec(), SPEC, 3, rounds=3, server=server).vector
    trusted = federated_rounds(silos, ModelSpec(), SPEC, 3, rounds=3, options=Options(policy=policy("trusted"))).vector
    secure = federated_rounds(silos, ModelSpec(), SPEC, 3, rounds=3, options=Options(policy=policy("secure"))).vector
    np.testing.assert_allclose(trusted, reference, atol=1e-6)
    np.testing.assert_allclose(secure, reference, atol=2e-4)
    assert not np.array_equal(secure, reference)  # it did go through the quantiser
