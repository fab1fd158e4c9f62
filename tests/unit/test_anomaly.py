"""Anomaly scores: an outlying update is flagged by the score it outlies on, honest updates are
not, robust z-scores are not fooled by the outliers themselves, and streaks count rounds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.anomaly import AnomalySpec, reported, robust_z, score_updates, streaks
from fl_core.errors import AggregationError

SPEC = AnomalySpec()


def honest(n: int, d: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d)
    return {f"s{i:02d}": direction + 0.3 * rng.normal(size=d) for i in range(n)}


def test_honest_updates_raise_no_flags():
    updates = honest(12)
    merged = np.mean(list(updates.values()), axis=0)
    scores = score_updates(updates, merged, SPEC)
    assert all(not s.flags for s in scores.values())
    assert all(s.cosine > 0.8 for s in scores.values())


@pytest.mark.parametrize(("attack", "flag"), [("scaled", "norm"), ("flipped", "cosine"), ("shifted", "distance")])
def test_each_attack_is_flagged_by_the_score_it_outlies_on(attack, flag):
    updates = honest(12)
    base = updates["s03"]
    updates["s03"] = {"scaled": 20 * base, "flipped": -base, "shifted": base + 3.0 * np.ones_like(base)}[attack]
    merged = np.median(np.stack(list(updates.values())), axis=0)
    scores = score_updates(updates, merged, SPEC)
    assert flag in scores["s03"].flags
    assert all(not s.flags for name, s in scores.items() if name != "s03")


@settings(max_examples=50, deadline=None)
@given(n=st.integers(12, 60), outliers=st.integers(1, 3), scale=st.floats(3.0, 1e6))
def test_robust_z_is_not_fooled_by_the_outliers_it_looks_for(n, outliers, scale):
    from statistics import NormalDist

    values = [1.0 + 0.1 * NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)]  # honest: normal quantiles
    values += [1.0 + scale] * outliers  # far fewer than half: median and MAD stay with the honest values
    z = robust_z(values)
    assert np.all(z[-outliers:] > 3.5)
    assert np.all(np.abs(z[:n]) < 4.5)
    # A plain z-score would be dominated by the outliers themselves.
    plain = (values[-1] - np.mean(values)) / np.std(values)
    assert z[-1] > plain


def test_zero_mad_marks_the_odd_one_out_as_infinite_and_json_says_none():
    z = robust_z([1.0, 1.0, 1.0, 5.0])
    assert list(z[:3]) == [0.0, 0.0, 0.0] and z[3] == np.inf
    updates = {"a": np.ones(3), "b": np.ones(3), "c": np.ones(3), "d": 9 * np.ones(3)}
    scores = score_updates(updates, np.ones(3), SPEC)
    assert "norm" in scores["d"].flags
    assert json.loads(json.dumps(scores["d"].to_dict()))["norm_z"] is None


def test_streaks_count_consecutive_flagged_rounds_and_report_after_k():
    spec = AnomalySpec(report_after=2)
    flagged = score_updates({"a": np.ones(3), "b": np.ones(3), "c": np.ones(3), "d": -9 * np.ones(3)}, np.ones(3), spec)
    counts = streaks({}, flagged)
    assert counts == {"a": 0, "b": 0, "c": 0, "d": 1} and reported(counts, spec) == []
    counts = streaks(counts, flagged)
    assert reported(counts, spec) == ["d"]
    clean = score_updates({"a": np.ones(3), "b": np.ones(3), "d": np.ones(3)}, np.ones(3), spec)
    assert streaks(counts, clean)["d"] == 0
    assert streaks(counts, {})["d"] == 2  # absent this round: keeps its count


def test_bad_inputs_and_specs_are_refused():
    with pytest.raises(AggregationError, match="no updates"):
        score_updates({}, np.ones(3), SPEC)
    with pytest.raises(AggregationError, match="update of a has shape"):
        score_updates({"a": np.ones(2)}, np.ones(3), SPEC)
    with pytest.raises(AggregationError, match="NaN"):
        score_updates({"a": np.array([1.0, np.nan, 0.0])}, np.ones(3), SPEC)
    with pytest.raises(ValueError, match="min_cosine"):
        AnomalySpec(min_cosine=2.0)
    with pytest.raises(ValueError, match="report_after"):
        AnomalySpec(report_after=0)
