"""The silo's bootstrap: each replicate's metric is the metric of the resampled rows, a model paired
with itself gains exactly nothing, and a clearly better model's gain interval lies above zero."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.bootstrap import _weighted_metric, paired_intervals
from fl_core.evaluation import accuracy, log_loss, roc_auc

REFERENCE = {"accuracy": accuracy, "roc_auc": roc_auc, "log_loss": log_loss}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 40), metric=st.sampled_from(sorted(REFERENCE)),
       ties=st.booleans())
def test_a_replicate_scores_like_the_resampled_rows(seed, n, metric, ties):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = rng.random(n)
    if ties:  # ROC AUC's ties count 1/2
        p = np.round(p * 4) / 4
    index = rng.integers(0, n, n)
    counts = np.bincount(index, minlength=n)[None, :].astype(np.float64)
    ours = float(_weighted_metric(metric, y, p, counts)[0])
    expected = REFERENCE[metric](y[index], p[index])
    if math.isnan(expected):
        assert math.isnan(ours)
    else:
        assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("metric", sorted(REFERENCE))
def test_a_model_paired_with_itself_gains_exactly_nothing(metric):
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 2, 80), rng.random(80)
    score, gain = paired_intervals(metric, y, p, p.copy(), np.random.default_rng(2), replicates=300)
    assert (gain.estimate, gain.low, gain.high, gain.sd) == (0.0, 0.0, 0.0, 0.0)
    assert score.low <= score.estimate <= score.high and score.high - score.low > 0.02


@pytest.mark.parametrize("metric", sorted(REFERENCE))
def test_a_clearly_better_model_gains_beyond_its_interval_and_log_loss_gains_by_falling(metric):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    good = np.clip(0.8 * y + 0.1 + rng.normal(0, 0.1, 400), 0.01, 0.99)
    noisy = np.clip(0.5 + rng.normal(0, 0.3, 400), 0.01, 0.99)
    _, gain = paired_intervals(metric, y, good, noisy, np.random.default_rng(4), replicates=500)
    assert gain.estimate > 0 and gain.low > 0  # positive is better, for log loss too
    _, loss = paired_intervals(metric, y, noisy, good, np.random.default_rng(4), replicates=500)
    assert loss.high < 0


def test_the_paired_interval_is_narrower_than_the_difference_of_unpaired_ones():
    """Two models that disagree on few rows: their scores vary with the rows together."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 200)
    a = np.where(rng.random(200) < 0.8, y, 1 - y).astype(float)
    b = a.copy()
    b[:6] = 1 - b[:6]
    score, gain = paired_intervals("accuracy", y, a, b, np.random.default_rng(6), replicates=1000)
    assert gain.high - gain.low < 0.5 * (score.high - score.low)


def test_the_intervals_are_reproducible_from_the_seed_and_undefined_auc_replicates_are_left_out():
    y = np.array([1] * 3 + [0] * 27)
    p = np.linspace(0, 1, 30)
    first = paired_intervals("roc_auc", y, p, p[::-1].copy(), np.random.default_rng(7), replicates=400)
    again = paired_intervals("roc_auc", y, p, p[::-1].copy(), np.random.default_rng(7), replicates=400)
    assert first == again
    assert 0 < first[0].replicates < 400  # some resamples draw no positive row
    one_class, gain = paired_intervals("roc_auc", np.zeros(10, int), np.linspace(0, 1, 10), None,
                                       np.random.default_rng(8), replicates=100)
    assert math.isnan(one_class.estimate) and math.isnan(one_class.low) and gain is None


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="metric must be one of"):
        paired_intervals("f1", np.ones(3), np.ones(3), None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="3 labels, 2 candidate"):
        paired_intervals("accuracy", np.ones(3), np.ones(2), None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="confidence"):
        paired_intervals("accuracy", np.ones(3), np.ones(3), None, np.random.default_rng(0), confidence=1.5)
