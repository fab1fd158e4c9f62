"""Metrics: differential tests against scikit-learn and a slow pairwise reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from fl_core.evaluation import (
    HIGHER_IS_BETTER,
    METRICS,
    Metrics,
    accuracy,
    evaluate,
    log_loss,
    pooled,
    predict_proba,
    roc_auc,
)
from fl_core.models import ModelSpec, build_model

PROPERTY = settings(max_examples=60, deadline=None)

labels_01 = st.lists(st.integers(0, 1), min_size=2, max_size=40)
# Few distinct score values, so ties (within and across classes) are common.
tied_scores = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5000001, 0.9, 1.0])


def _slow_auc(y, s):
    """P(positive score > negative score) + 1/2 P(tie), by counting every pair."""
    pos = [si for yi, si in zip(y, s) if yi == 1]
    neg = [si for yi, si in zip(y, s) if yi == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@st.composite
def labelled_scores(draw, scores=tied_scores):
    y = draw(labels_01)
    assume(0 < sum(y) < len(y))
    s = draw(st.lists(scores, min_size=len(y), max_size=len(y)))
    return np.array(y), np.array(s, dtype=np.float64)


# --- ROC AUC -------------------------------------------------------------------------------------


@PROPERTY
@given(data=labelled_scores())
def test_roc_auc_equals_sklearn_with_ties(data):
    y, s = data
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


@PROPERTY
@given(data=labelled_scores(scores=st.floats(0.0, 1.0)))
def test_roc_auc_equals_sklearn_on_continuous_scores(data):
    y, s = data
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


@PROPERTY
@given(data=labelled_scores(scores=st.integers(-3, 3).map(float)))
def test_roc_auc_equals_the_pairwise_definition_and_flips_with_the_scores(data):
    y, s = data
    auc = roc_auc(y, s)
    assert auc == pytest.approx(_slow_auc(y.tolist(), s.tolist()), abs=1e-12)
    assert roc_auc(y, -s) == pytest.approx(1.0 - auc, abs=1e-12)
    assert 0.0 <= auc <= 1.0


def test_roc_auc_known_values():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(np.array([0, 1, 0, 1]), np.full(4, 0.5)) == 0.5
    # One positive beats one of two negatives and ties the other: (1 + 0.5) / 2.
    assert roc_auc(np.array([1, 0, 0]), np.array([0.5, 0.5, 0.2])) == 0.75


@pytest.mark.parametrize(
    "y", [np.zeros(5, dtype=int), np.ones(5, dtype=int), np.zeros(0, dtype=int)], ids=["all-0", "all-1", "empty"]
)
def test_roc_auc_is_nan_for_one_class(y):
    assert math.isnan(roc_auc(y, np.linspace(0, 1, len(y))))


# --- accuracy, log loss --------------------------------------------------------------------------


@PROPERTY
@given(y=labels_01, data=st.data())
def test_accuracy_equals_sklearn(y, data):
    p = np.array(data.draw(st.lists(st.one_of(tied_scores, st.floats(0, 1)), min_size=len(y), max_size=len(y))))
    y = np.array(y)
    assert accuracy(y, p) == pytest.approx(skm.accuracy_score(y, (p >= 0.5).astype(int)), abs=1e-12)


def test_accuracy_threshold_is_inclusive():
    assert accuracy(np.array([1, 0]), np.array([0.5, 0.4999])) == 1.0
    assert accuracy(np.array([1, 0]), np.array([0.7, 0.7]), threshold=0.8) == 0.5


@PROPERTY
@given(y=labels_01, data=st.data())
def test_log_loss_equals_sklearn(y, data):
    p = np.array(data.draw(st.lists(st.floats(1e-6, 1 - 1e-6), min_size=len(y), max_size=len(y))))
    y = np.array(y)
    assert log_loss(y, p) == pytest.approx(skm.log_loss(y, p, labels=[0, 1]), rel=1e-9)


def test_log_loss_clips_certain_wrong_answers_to_a_finite_value():
    worst = log_loss(np.array([1, 0]), np.array([0.0, 1.0]))
    assert math.isfinite(worst)
    assert worst == pytest.approx(-math.log(1e-7), rel=1e-6)
    assert log_loss(np.array([1, 0]), np.array([1.0, 0.0])) == pytest.approx(0.0, abs=1e-6)


def test_empty_inputs_give_nan():
    empty = np.zeros(0)
    assert math.isnan(accuracy(empty, empty))
    assert math.isnan(log_loss(empty, empty))


# --- model scoring -------------------------------------------------------------------------------


def test_predict_proba_is_the_sigmoid_of_the_logit_in_eval_mode(binary_data):
    x, _ = binary_data(10, 3, seed=0)
    model = build_model(ModelSpec(kind="mlp", hidden=(4,)), 3, seed=1)
    model.train()
    p = predict_proba(model, x)
    assert not model.training
    assert p.dtype == np.float64 and p.shape == (10,)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()[:, 0].astype(np.float64)
    np.testing.assert_allclose(p, 1.0 / (1.0 + np.exp(-logits)), rtol=1e-6)
    assert np.all((p > 0) & (p < 1))


def test_evaluate_bundles_the_three_metrics(binary_data):
    x, y = binary_data(30, 3, seed=2)
    model = build_model(ModelSpec(), 3, seed=4)
    m = evaluate(model, x, y)
    p = predict_proba(model, x)
    assert m.n == 30
    assert m.accuracy == accuracy(y, p)
    assert m.roc_auc == roc_auc(y, p)
    assert m.log_loss == log_loss(y, p)
    assert m.to_dict() == {"n": 30, "accuracy": m.accuracy, "roc_auc": m.roc_auc, "log_loss": m.log_loss}
    assert [m.get(name) for name in METRICS] == [m.accuracy, m.roc_auc, m.log_loss]


@pytest.mark.parametrize("name", ["n", "auc", "precision"])
def test_metrics_get_rejects_unknown_names(name):
    with pytest.raises(KeyError):
        Metrics(n=1, accuracy=1.0, roc_auc=math.nan, log_loss=0.1).get(name)


def test_every_metric_has_a_direction():
    assert set(HIGHER_IS_BETTER) == set(METRICS)
    assert HIGHER_IS_BETTER == {"accuracy": True, "roc_auc": True, "log_loss": False}


# --- pooled --------------------------------------------------------------------------------------


def _metrics(y, p):
    return Metrics(n=len(y), accuracy=accuracy(y, p), roc_auc=roc_auc(y, p), log_loss=log_loss(y, p))


@PROPERTY
@given(
    silos=st.lists(
        st.lists(st.tuples(st.integers(0, 1), st.floats(0.01, 0.99)), min_size=1, max_size=15), min_size=1, max_size=4
    )
)
def test_pooled_accuracy_and_log_loss_equal_the_concatenated_holdout(silos):
    per_silo = {
        f"s{i}": (np.array([t[0] for t in rows]), np.array([t[1] for t in rows])) for i, rows in enumerate(silos)
    }
    result = pooled({name: _metrics(y, p) for name, (y, p) in per_silo.items()})
    y_all = np.concatenate([y for y, _ in per_silo.values()])
    p_all = np.concatenate([p for _, p in per_silo.values()])
    assert result["accuracy"] == pytest.approx(accuracy(y_all, p_all), abs=1e-12)
    assert result["log_loss"] == pytest.approx(log_loss(y_all, p_all), rel=1e-9)
    aucs = [roc_auc(y, p) for y, p in per_silo.values() if not math.isnan(roc_auc(y, p))]
    if aucs:
        assert result["roc_auc_mean"] == pytest.approx(float(np.mean(aucs)), abs=1e-12)
    else:
        assert math.isnan(result["roc_auc_mean"])


def test_pooled_skips_undefined_auc_and_handles_nothing():
    result = pooled(
        {
            "a": Metrics(n=10, accuracy=0.8, roc_auc=0.9, log_loss=0.4),
            "b": Metrics(n=30, accuracy=0.6, roc_auc=math.nan, log_loss=0.8),
            "c": Metrics(n=10, accuracy=1.0, roc_auc=0.7, log_loss=0.2),
        }
    )
    assert result["accuracy"] == pytest.approx((8 + 18 + 10) / 50)
    assert result["log_loss"] == pytest.approx((4 + 24 + 2) / 50)
    assert result["roc_auc_mean"] == pytest.approx(0.8)
    assert all(math.isnan(v) for v in pooled({}).values())
    assert set(pooled({})) == {"accuracy", "log_loss", "roc_auc_mean"}
