"""Group fairness within silos: per-group confusion counts, their sum over silos, small-cell
suppression, and the demographic parity and equalised odds differences built from the counts; the
config's `gate.groups` and the holdout rows' group labels a silo keeps for them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.errors import ConfigError
from fl_core.fairness import (
    GroupCounts,
    demographic_parity_difference,
    disparity,
    equalised_odds_difference,
    group_counts,
    reportable,
    sum_counts,
)
from fl_core.gate import GroupSpec
from infra.config import load_config, parse_config
from infra.silo_data import encode_table

PROPERTY = settings(max_examples=80, deadline=None)
NAMES = ["Male", "Female", "other", "x"]


def _counts(n, predicted, positive, tp):
    return GroupCounts(n=n, predicted=predicted, positive=positive, true_positive=tp, false_positive=predicted - tp)


@st.composite
def holdouts(draw, min_size=0, max_size=60, missing=True):
    """Labels, predicted probabilities and group labels (with missing ones) of one silo's holdout."""
    n = draw(st.integers(min_size, max_size))
    y = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=np.int64)
    p = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)), dtype=np.float64)
    choices = [*NAMES, None] if missing else NAMES
    groups = np.array(draw(st.lists(st.sampled_from(choices), min_size=n, max_size=n)), dtype=object)
    return y, p, groups


# --- counts --------------------------------------------------------------------------------------


def test_group_counts_of_a_small_holdout_by_hand():
    y = [1, 0, 1, 0, 1, 1, 0, 0, 1]
    p = [0.9, 0.2, 0.6, 0.7, 0.1, 0.8, 0.3, 0.5, 0.99]
    g = ["a", "a", "a", "a", "b", "b", "b", "b", None]
    counts = group_counts(y, p, g)
    assert list(counts) == ["a", "b"]  # the row without a group is in neither
    assert counts["a"] == _counts(n=4, predicted=3, positive=2, tp=2)
    assert counts["b"] == _counts(n=4, predicted=2, positive=2, tp=1)  # p = 0.5 counts as positive
    assert (counts["a"].selection_rate, counts["a"].tpr, counts["a"].fpr) == (0.75, 1.0, 0.5)
    assert demographic_parity_difference(counts) == pytest.approx(0.25)
    assert equalised_odds_difference(counts) == pytest.approx(0.5)  # TPR gap 0.5, FPR gap 0.0
    d = disparity(counts)
    assert (d.tpr_gap, d.fpr_gap, d.left_out) == (pytest.approx(0.5), pytest.approx(0.0), ())


def test_the_threshold_decides_what_counts_as_a_positive_prediction():
    counts = group_counts([1, 0], [0.6, 0.4], ["a", "a"], threshold=0.7)
    assert counts["a"].predicted == 0
    with pytest.raises(ValueError, match="threshold"):
        group_counts([1], [0.6], ["a"], threshold=1.0)


def test_missing_group_labels_are_left_out_and_lengths_must_agree():
    counts = group_counts([1, 0, 1], [0.9, 0.1, 0.8], [None, math.nan, "a"])
    assert list(counts) == ["a"] and counts["a"].n == 1
    with pytest.raises(ValueError, match="3 labels, 2 predictions"):
        group_counts([1, 0, 1], [0.9, 0.1], ["a", "a", "a"])


@pytest.mark.parametrize("fields, message", [
    (dict(n=3, predicted=2, positive=1, true_positive=1, false_positive=0), "must equal predicted"),
    (dict(n=3, predicted=4, positive=1, true_positive=1, false_positive=3), "cannot exceed"),
    (dict(n=3, predicted=2, positive=0, true_positive=1, false_positive=1), "do not fit"),
    (dict(n=-1, predicted=0, positive=0, true_positive=0, false_positive=0), "non-negative"),
    (dict(n=True, predicted=0, positive=0, true_positive=0, false_positive=0), "non-negative"),
])
def test_counts_that_cannot_come_from_a_holdout_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        GroupCounts(**fields)


def test_counts_round_trip_through_a_dict():
    c = _counts(n=20, predicted=7, positive=9, tp=5)
    assert GroupCounts.from_dict(c.to_dict()) == c


# --- undefined rates -----------------------------------------------------------------------------


def test_a_group_without_positives_is_left_out_of_the_tpr_gap_and_named():
    counts = {"a": _counts(n=10, predicted=5, positive=5, tp=4), "b": _counts(n=10, predicted=2, positive=0, tp=0)}
    d = disparity(counts)
    assert math.isnan(d.tpr_gap) and math.isnan(counts["b"].tpr)
    assert d.fpr_gap == pytest.approx(0.2 - 0.2)  # a: 1 of 5 negatives, b: 2 of 10
    assert d.odds == d.fpr_gap  # the defined gap
    assert d.left_out == ("b TPR (no positives)",)
    assert d.parity == pytest.approx(0.3)


def test_with_fewer_than_two_groups_nothing_is_measurable():
    one = {"a": _counts(n=10, predicted=5, positive=5, tp=4)}
    for counts in (one, {}):
        assert math.isnan(demographic_parity_difference(counts))
        assert math.isnan(equalised_odds_difference(counts))
    only_positives = {"a": _counts(n=5, predicted=3, positive=5, tp=3), "b": _counts(n=5, predicted=5, positive=5, tp=5)}
    assert equalised_odds_difference(only_positives) == pytest.approx(0.4)  # TPR gap; no FPR defined


# --- properties ----------------------------------------------------------------------------------


@PROPERTY
@given(holdouts())
def test_both_differences_lie_in_the_unit_interval_or_are_undefined(data):
    counts = group_counts(*data)
    for value in (demographic_parity_difference(counts), equalised_odds_difference(counts)):
        assert math.isnan(value) or 0.0 <= value <= 1.0


@PROPERTY
@given(holdouts(min_size=1, max_size=30, missing=False), st.integers(2, 4))
def test_predictions_independent_of_the_group_have_no_difference(data, k):
    # every group gets the very same rows (labels and predictions): nothing depends on the group
    y, p, _ = data
    groups = np.repeat(np.array(NAMES[:k], dtype=object), len(y))
    counts = group_counts(np.tile(y, k), np.tile(p, k), groups)
    assert demographic_parity_difference(counts) == 0.0
    assert equalised_odds_difference(counts) == 0.0  # one class only: the other rate's gap is the defined one


@PROPERTY
@given(holdouts(), st.permutations(NAMES), st.sampled_from(["P", "Q", "R", "S"]))
def test_the_differences_do_not_depend_on_what_the_groups_are_called(data, renamed, prefix):
    y, p, groups = data
    mapping = {old: f"{prefix}{new}" for old, new in zip(NAMES, renamed)}
    relabelled = np.array([None if g is None else mapping[g] for g in groups], dtype=object)
    before, after = group_counts(y, p, groups), group_counts(y, p, relabelled)
    assert sorted(before.values(), key=repr) == sorted(after.values(), key=repr)
    for f in (demographic_parity_difference, equalised_odds_difference):
        a, b = f(before), f(after)
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-15)


@PROPERTY
@given(st.lists(holdouts(max_size=25), min_size=1, max_size=4))
def test_counts_summed_over_silos_are_the_counts_of_the_pooled_rows(silos):
    summed = sum_counts(group_counts(*silo) for silo in silos)
    pooled = group_counts(*(np.concatenate(parts) for parts in zip(*silos)))
    assert summed == pooled
    assert demographic_parity_difference(summed) == demographic_parity_difference(pooled) or (
        math.isnan(demographic_parity_difference(summed)) and math.isnan(demographic_parity_difference(pooled)))


# --- small-cell suppression ----------------------------------------------------------------------


def test_small_groups_are_withheld_and_counted():
    counts = {"a": _counts(50, 20, 25, 15), "b": _counts(4, 1, 2, 1), "c": _counts(30, 10, 10, 5),
              "d": _counts(12, 3, 3, 2)}
    kept, withheld = reportable(counts, 10)
    # b (4 rows) is under 10; its 4 rows alone would be revealed by subtracting from the holdout's
    # size, so the smallest reported group (d, 12 rows) is withheld with it: 16 undescribed rows
    assert set(kept) == {"a", "c"} and withheld == 2
    assert reportable(counts, 3) == (counts, 0)


def test_rows_without_a_group_count_as_undescribed():
    counts = {"a": _counts(50, 20, 25, 15), "b": _counts(40, 10, 10, 5)}
    assert reportable(counts, 10, unassigned=0) == (counts, 0)
    assert reportable(counts, 10, unassigned=12) == (counts, 0)  # 12 undescribed rows: a cell of 10+
    kept, withheld = reportable(counts, 10, unassigned=2)
    assert set(kept) == {"a"} and withheld == 1  # 2 + 40 undescribed rows


def test_two_groups_one_small_withholds_both():
    counts = {"Male": _counts(56, 40, 42, 35), "Female": _counts(4, 1, 1, 1)}
    assert reportable(counts, 10) == ({}, 2)


@PROPERTY
@given(holdouts(max_size=80), st.integers(3, 15))
def test_what_a_silo_reports_never_describes_a_small_cell(data, size):
    y, p, groups = data
    counts = group_counts(y, p, groups)
    unassigned = sum(1 for g in groups if g is None)
    kept, withheld = reportable(counts, size, unassigned=unassigned)
    assert all(c.n >= size for c in kept.values())
    assert withheld == len(counts) - len(kept) and set(kept) <= set(counts)
    undescribed = len(y) - sum(c.n for c in kept.values())
    assert not kept or undescribed == 0 or undescribed >= size  # nothing reported: nothing to subtract from
    assert all(kept[g] == counts[g] for g in kept)


# --- config and the silo's group labels ----------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "heart" / "federation.yaml"


def _example(groups):
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["gate"] = {**raw["gate"], "groups": groups}
    return parse_config(raw)


def test_the_example_declares_group_checks_on_sex():
    spec = load_config(EXAMPLE).gate.groups
    assert spec == GroupSpec(column="sex", max_dp_difference=0.40, max_eo_difference=0.30, min_group_size=10,
                             threshold=0.5)


@pytest.mark.parametrize("column", ["age", "fbs", "disease", "split", "ethnicity"])
def test_the_sensitive_column_must_be_a_categorical_column_of_the_contract(column):
    with pytest.raises(ConfigError, match=rf"gate.groups.column: '{column}' is not a categorical column of the "
                                          r"contract \(categorical columns: \['sex', 'cp'"):
        _example({"column": column, "max_dp_difference": 0.3, "max_eo_difference": 0.3})


@pytest.mark.parametrize(("groups", "message"), [
    ({"column": "sex"}, "gate.groups.max_dp_difference: required key missing"),
    ({"column": "sex", "max_dp_difference": 0.3, "max_eo_difference": 0.3, "min_group_size": 1},
     "min_group_size must be >= 3"),
    ({"column": "sex", "max_dp_difference": 0.3, "max_eo_difference": 0.3, "cutoff": 0.5},
     "gate.groups.cutoff: unknown key"),
])
def test_bad_group_settings_are_named(groups, message):
    with pytest.raises(ConfigError, match=message):
        _example(groups)


def test_a_config_without_groups_has_no_group_checks():
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["gate"] = {k: v for k, v in raw["gate"].items() if k != "groups"}
    assert parse_config(raw).gate.groups is None


def test_the_silo_keeps_each_holdout_rows_raw_group_label_missing_as_none():
    contract = load_config(EXAMPLE).contract
    rows = 6
    columns = {}
    for f in contract.features:
        if f.kind == "numeric":
            columns[f.name] = pa.array([int(f.min)] * rows) if f.dtype == "int" else pa.array([float(f.min)] * rows)
        elif f.kind == "boolean":
            columns[f.name] = pa.array([False] * rows)
        else:
            columns[f.name] = pa.array([f.categories[0]] * rows)
    columns["sex"] = pa.array(["Male", "Female", None, "Female", "Male", "Male"])
    columns[contract.label.column] = pa.array([1, 0, 1, 0, 1, 0])
    columns[contract.split_column] = pa.array(["train", "holdout", "holdout", "train", "holdout", "holdout"])
    data = encode_table(pa.table(columns), contract)
    assert list(data.holdout_groups["sex"]) == ["Female", None, "Male", "Male"]
    assert set(data.holdout_groups) == {f.name for f in contract.features if f.kind == "categorical"}
    counts = group_counts(data.y_holdout, np.full(4, 0.9), data.holdout_groups["sex"])
    assert {g: c.n for g, c in counts.items()} == {"Female": 1, "Male": 2}  # the row without sex is in no group
