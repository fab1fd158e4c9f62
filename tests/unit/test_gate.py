"""The fairness gate: floor, gap, regression and overall checks, and the group checks, with their numbers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.bootstrap import Interval
from fl_core.fairness import GroupCounts
from fl_core.gate import GateSpec, GroupSpec, decide

PROPERTY = settings(max_examples=60, deadline=None)
NAN = math.nan


def _check(decision, name):
    matches = [c for c in decision.checks if c.name == name]
    assert len(matches) == 1, f"expected one {name} check, got {decision.checks}"
    return matches[0]


# --- GateSpec ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["min_worst", "max_gap", "max_regression"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_gate_spec_rejects_non_finite_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"{field} must be a finite number, got {value!r}"):
        GateSpec(**{field: value})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_gap=-0.1), r"max_gap and max_regression must be >= 0, got -0.1, 0.0"),
        (dict(max_regression=-0.01), r"max_gap and max_regression must be >= 0, got 0.3, -0.01"),
    ],
)
def test_gate_spec_rejects_negative_tolerances(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GateSpec(**kwargs)


def test_gate_spec_accepts_zero_tolerances():
    spec = GateSpec(max_gap=0.0, max_regression=0.0, min_worst=-1.0)
    assert (spec.max_gap, spec.max_regression) == (0.0, 0.0)


# --- floor ---------------------------------------------------------------------------------------


def test_floor_passes_with_its_numbers():
    d = decide({"a": 0.7, "b": 0.65}, None, GateSpec(min_worst=0.6, max_gap=0.3))
    assert d.passed and d.summary() == "passed"
    floor = _check(d, "floor")
    assert floor.passed and floor.value == 0.65 and floor.threshold == 0.6
    assert floor.detail == "worst silo b accuracy 0.650 >= 0.600"
    assert d.failures == ()


def test_floor_fails_with_its_numbers():
    d = decide({"a": 0.9, "b": 0.55, "c": 0.8}, None, GateSpec(min_worst=0.6, max_gap=0.5))
    assert not d.passed
    floor = _check(d, "floor")
    assert not floor.passed and floor.value == 0.55 and floor.threshold == 0.6
    assert floor.detail == "worst silo b accuracy 0.550 < 0.600"
    assert d.failures == (floor,)
    assert d.summary() == floor.detail


def test_floor_boundary_is_inclusive():
    assert _check(decide({"a": 0.75}, None, GateSpec(min_worst=0.75)), "floor").passed


# --- gap -----------------------------------------------------------------------------------------


def test_gap_fails_with_its_numbers():
    d = decide({"a": 0.95, "b": 0.61}, None, GateSpec(min_worst=0.6, max_gap=0.3))
    assert not d.passed
    gap = _check(d, "gap")
    assert not gap.passed and gap.value == pytest.approx(0.34) and gap.threshold == 0.3
    assert gap.detail == "gap a - b = 0.340 > 0.300"
    assert _check(d, "floor").passed
    assert d.summary() == gap.detail


def test_gap_boundary_is_inclusive_and_single_silo_has_no_gap():
    assert _check(decide({"a": 0.75, "b": 0.5}, None, GateSpec(min_worst=0.5, max_gap=0.25)), "gap").passed
    single = _check(decide({"a": 0.7}, None, GateSpec(max_gap=0.0)), "gap")
    assert single.passed and single.value == 0.0


def test_floor_and_gap_failures_are_both_reported():
    d = decide({"a": 0.99, "b": 0.1}, None, GateSpec(min_worst=0.6, max_gap=0.3))
    assert [c.name for c in d.failures] == ["floor", "gap"]
    assert d.summary() == "worst silo b accuracy 0.100 < 0.600; gap a - b = 0.890 > 0.300"


# --- regression ----------------------------------------------------------------------------------


def test_regression_fails_with_its_numbers():
    champion = {"a": 0.8, "b": 0.8}
    d = decide({"a": 0.9, "b": 0.7}, champion, GateSpec(min_worst=0.6, max_gap=0.3, max_regression=0.05))
    assert not d.passed
    reg = _check(d, "regression")
    assert not reg.passed and reg.value == pytest.approx(0.1) and reg.threshold == 0.05
    assert reg.detail == "largest loss vs champion: b +0.100 > 0.050"


def test_regression_passes_within_tolerance_and_on_improvement():
    spec = GateSpec(min_worst=0.6, max_gap=0.3, max_regression=0.05)
    small = _check(decide({"a": 0.77, "b": 0.85}, {"a": 0.8, "b": 0.8}, spec), "regression")
    assert small.passed and small.value == pytest.approx(0.03)
    assert small.detail == "largest loss vs champion: a +0.030 <= 0.050"
    better = _check(decide({"a": 0.9, "b": 0.85}, {"a": 0.8, "b": 0.8}, spec), "regression")
    assert better.passed and better.value == pytest.approx(-0.05)


def test_champion_none_skips_regression():
    d = decide({"a": 0.7, "b": 0.8}, None, GateSpec())
    assert [c.name for c in d.checks] == ["floor", "gap"]
    assert d.passed


def test_regression_ignores_silos_the_champion_has_no_value_for():
    spec = GateSpec(min_worst=0.0, max_gap=1.0, max_regression=0.05)
    # "c" is new and "b" was undefined for the champion: only "a" can regress, and it improved.
    d = decide({"a": 0.9, "b": 0.1, "c": 0.2}, {"a": 0.8, "b": NAN}, spec)
    reg = _check(d, "regression")
    assert reg.passed and reg.value == pytest.approx(-0.1)
    no_overlap = decide({"a": 0.9}, {"z": 0.99}, spec)
    assert [c.name for c in no_overlap.checks] == ["floor", "gap"]


def test_regression_ignores_silos_undefined_for_the_candidate():
    spec = GateSpec(min_worst=0.0, max_gap=1.0, max_regression=0.05)
    d = decide({"a": 0.8, "b": NAN}, {"a": 0.8, "b": 0.99}, spec)
    reg = _check(d, "regression")
    assert reg.passed and reg.value == 0.0


# --- log loss: lower is better -------------------------------------------------------------------


def test_log_loss_floor_is_a_ceiling():
    spec = GateSpec(metric="log_loss", min_worst=0.6, max_gap=0.3)
    ok = decide({"a": 0.4, "b": 0.5}, None, spec)
    assert ok.passed
    floor = _check(ok, "floor")
    assert floor.value == 0.5 and floor.detail == "worst silo b log_loss 0.500 <= 0.600"
    bad = decide({"a": 0.4, "b": 0.7}, None, spec)
    floor = _check(bad, "floor")
    assert not floor.passed and floor.value == 0.7
    assert floor.detail == "worst silo b log_loss 0.700 > 0.600"
    gap = _check(bad, "gap")
    assert gap.value == pytest.approx(0.3) and gap.detail.startswith("gap a - b = 0.300")


def test_log_loss_regression_is_an_increase():
    spec = GateSpec(metric="log_loss", min_worst=1.0, max_gap=1.0, max_regression=0.05)
    worse = decide({"a": 0.4, "b": 0.3}, {"a": 0.3, "b": 0.3}, spec)
    reg = _check(worse, "regression")
    assert not reg.passed and reg.value == pytest.approx(0.1)
    assert reg.detail == "largest loss vs champion: a +0.100 > 0.050"
    better = decide({"a": 0.2, "b": 0.3}, {"a": 0.3, "b": 0.3}, spec)
    assert _check(better, "regression").passed and better.passed


# --- undefined values ----------------------------------------------------------------------------


def test_nan_silos_are_listed_as_undefined_and_excluded():
    d = decide({"c": 0.8, "b": NAN, "a": 0.9, "z": NAN}, None, GateSpec(metric="roc_auc", min_worst=0.7, max_gap=0.15))
    assert d.undefined == ("b", "z")
    assert d.passed
    assert _check(d, "floor").value == 0.8
    assert _check(d, "gap").value == pytest.approx(0.1)
    assert d.metric == "roc_auc"


@pytest.mark.parametrize("candidate", [{"a": NAN, "b": NAN}, {}], ids=["all-nan", "empty"])
def test_no_defined_value_fails_with_a_coverage_check(candidate):
    d = decide(candidate, {"a": 0.9}, GateSpec(metric="roc_auc"))
    assert not d.passed
    assert len(d.checks) == 1
    coverage = d.checks[0]
    assert coverage.name == "coverage" and not coverage.passed
    assert (coverage.value, coverage.threshold) == (0.0, 1.0)
    assert d.undefined == tuple(sorted(candidate))
    assert d.summary() == "no silo has a defined roc_auc on its holdout"


# --- differential: a plain re-statement of the rules -----------------------------------------------


def _reference_passes(candidate, champion, spec):
    higher = spec.metric != "log_loss"
    values = [v for v in candidate.values() if not math.isnan(v)]
    if not values:
        return False
    worst = min(values) if higher else max(values)
    floor = worst >= spec.min_worst if higher else worst <= spec.min_worst
    gap = max(values) - min(values) <= spec.max_gap
    regression = overall = True
    if champion is not None:
        losses = []
        for silo, value in candidate.items():
            before = champion.get(silo, NAN)
            if math.isnan(value) or math.isnan(before):
                continue
            loss = before - value if higher else value - before
            regression = regression and loss <= spec.max_regression
            losses.append(loss)
        overall = not losses or -sum(losses) / len(losses) >= -spec.max_overall_drop
    return floor and gap and regression and overall


metric_values = st.one_of(st.floats(0.0, 1.0), st.just(NAN))
silo_maps = st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e"]), metric_values, max_size=5)


@PROPERTY
@given(
    candidate=silo_maps,
    champion=st.one_of(st.none(), silo_maps),
    spec=st.builds(
        GateSpec,
        metric=st.sampled_from(["accuracy", "roc_auc", "log_loss"]),
        min_worst=st.floats(0.0, 1.0),
        max_gap=st.floats(0.0, 1.0),
        max_regression=st.floats(0.0, 0.5),
        max_overall_drop=st.floats(0.0, 0.2),
    ),
)
def test_decide_agrees_with_a_plain_statement_of_the_rules(candidate, champion, spec):
    d = decide(candidate, champion, spec)
    assert d.passed == _reference_passes(candidate, champion, spec)
    assert d.passed == all(c.passed for c in d.checks)
    assert set(d.undefined) == {s for s, v in candidate.items() if math.isnan(v)}
    assert list(d.undefined) == sorted(d.undefined)
    assert all(not math.isnan(c.value) for c in d.checks)


# --- intervals: a regression inside noise does not block, one outside does ---------------------------


def _gain(estimate, low, high, sd=0.02):
    return Interval(estimate=estimate, low=low, high=high, sd=sd, replicates=1000)


SPEC = GateSpec(min_worst=0.5, max_gap=0.5, max_regression=0.0)


def test_a_silo_regression_inside_its_interval_does_not_block():
    # b loses 0.05 but its paired interval of the gain reaches +0.01: inside noise
    d = decide({"a": 0.85, "b": 0.75}, {"a": 0.78, "b": 0.80}, SPEC, gains={"a": _gain(0.07, 0.03, 0.11),
                                                                            "b": _gain(-0.05, -0.11, 0.01)})
    reg = _check(d, "regression")
    assert reg.passed and reg.value == pytest.approx(0.05)
    assert (reg.low, reg.high) == (pytest.approx(-0.01), pytest.approx(0.11))
    assert reg.detail == "largest loss vs champion: b +0.050 [-0.010, +0.110], not beyond 0.000"
    assert d.passed  # overall +0.01


def test_a_silo_regression_beyond_its_interval_blocks():
    d = decide({"a": 0.95, "b": 0.72}, {"a": 0.78, "b": 0.80}, SPEC, gains={"a": _gain(0.17, 0.1, 0.2),
                                                                            "b": _gain(-0.08, -0.12, -0.03)})
    reg = _check(d, "regression")
    assert not reg.passed
    assert reg.detail == "largest loss vs champion: b +0.080 [+0.030, +0.120], beyond 0.000"
    assert _check(d, "overall").passed and not d.passed
    tolerant = decide({"a": 0.95, "b": 0.72}, {"a": 0.78, "b": 0.80}, GateSpec(min_worst=0.5, max_gap=0.5,
                                                                               max_regression=0.05),
                      gains={"a": _gain(0.17, 0.1, 0.2), "b": _gain(-0.08, -0.12, -0.03)})
    assert tolerant.passed  # the loss's interval starts at 0.03, inside a tolerance of 0.05


def test_the_overall_gain_is_weighted_by_holdout_rows_and_carries_a_combined_interval():
    gains = {"a": _gain(0.04, 0.0, 0.08, sd=0.02), "b": _gain(-0.02, -0.1, 0.06, sd=0.04)}
    d = decide({"a": 0.84, "b": 0.78}, {"a": 0.80, "b": 0.80}, SPEC, gains=gains, sizes={"a": 100, "b": 300})
    overall = _check(d, "overall")
    assert overall.value == pytest.approx((100 * 0.04 - 300 * 0.02) / 400)
    assert not overall.passed and not d.passed  # worse on the pooled holdouts: the champion stays
    sd = math.sqrt((0.25 * 0.02) ** 2 + (0.75 * 0.04) ** 2)
    assert overall.low == pytest.approx(overall.value - 1.959964 * sd, abs=1e-5)
    assert overall.high == pytest.approx(overall.value + 1.959964 * sd, abs=1e-5)
    assert overall.detail.startswith("overall gain vs champion -0.005 [")
    drop_allowed = decide({"a": 0.84, "b": 0.78}, {"a": 0.80, "b": 0.80},
                          GateSpec(min_worst=0.5, max_gap=0.5, max_overall_drop=0.01), gains=gains,
                          sizes={"a": 100, "b": 300})
    assert drop_allowed.passed


@pytest.mark.parametrize("field, value, message", [
    ("confidence", 1.0, "confidence must be in"), ("bootstrap", 10, "bootstrap must be between"),
    ("max_overall_drop", -0.1, "max_overall_drop must be >= 0"),
])
def test_bad_interval_settings_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        GateSpec(**{field: value})


# --- group checks: demographic parity and equalised odds on a sensitive column ----------------------


def _counts(n, predicted, positive, tp):
    return GroupCounts(n=n, predicted=predicted, positive=positive, true_positive=tp, false_positive=predicted - tp)


GROUPS = GroupSpec(column="sex", max_dp_difference=0.2, max_eo_difference=0.3, min_group_size=10)
GROUPED = GateSpec(min_worst=0.5, max_gap=0.5, groups=GROUPS)
# a: Male 40 rows, 20 predicted positive (rate 0.5), 20 positives of which 16 found (TPR 0.8, FPR 4/20 = 0.2);
#    Female 20 rows, 8 predicted (0.4), 8 positives, 6 found (TPR 0.75, FPR 2/12)
SILO_A = {"Male": _counts(40, 20, 20, 16), "Female": _counts(20, 8, 8, 6)}
# b: Male 30 rows, 18 predicted (0.6), TPR 14/20 = 0.7, FPR 4/10 = 0.4; Female 10 rows, 2 predicted (0.2),
#    TPR 1/3, FPR 1/7
SILO_B = {"Male": _counts(30, 18, 20, 14), "Female": _counts(10, 2, 3, 1)}


def test_group_spec_is_validated_naming_the_field():
    with pytest.raises(ValueError, match="max_dp_difference must be a number in"):
        GroupSpec(column="sex", max_dp_difference=1.5, max_eo_difference=0.3)
    with pytest.raises(ValueError, match="max_eo_difference must be a number in"):
        GroupSpec(column="sex", max_dp_difference=0.2, max_eo_difference=math.nan)
    with pytest.raises(ValueError, match="min_group_size must be >= 3"):
        GroupSpec(column="sex", max_dp_difference=0.2, max_eo_difference=0.3, min_group_size=2)
    with pytest.raises(ValueError, match="threshold must be in"):
        GroupSpec(column="sex", max_dp_difference=0.2, max_eo_difference=0.3, threshold=0.0)


def test_without_groups_configured_group_counts_are_ignored():
    d = decide({"a": 0.8, "b": 0.7}, None, GateSpec(min_worst=0.5, max_gap=0.5), groups={"a": SILO_A})
    assert [c.name for c in d.checks] == ["floor", "gap"] and d.groups is None


def test_the_group_checks_use_the_federations_summed_counts_and_name_each_silo():
    d = decide({"a": 0.8, "b": 0.7}, None, GROUPED, groups={"a": SILO_A, "b": SILO_B}, suppressed={"a": 0, "b": 0})
    parity, odds = _check(d, "parity"), _check(d, "odds")
    # pooled: Male 70 rows, 38 predicted (0.543); Female 30 rows, 10 predicted (0.333)
    assert parity.value == pytest.approx(38 / 70 - 10 / 30) and parity.threshold == 0.2
    assert not parity.passed and not d.passed
    # pooled TPR Male 30/40, Female 7/11; FPR Male 8/30, Female 3/19
    assert odds.value == pytest.approx(max(30 / 40 - 7 / 11, 8 / 30 - 3 / 19)) and odds.passed
    assert parity.detail.startswith("demographic parity difference on sex 0.210 > 0.200 "
                                    "(positive rate Female 0.333, Male 0.543) · per silo: a 0.100, b 0.400")
    assert odds.detail.startswith("equalised odds difference on sex 0.114 <= 0.300 (TPR gap 0.114, FPR gap 0.109)")
    assert d.summary() == parity.detail
    # the pooled value is not the mean of the silos' (0.1 and 0.4)
    assert d.groups.silos["a"].parity == pytest.approx(0.1) and d.groups.silos["b"].parity == pytest.approx(0.4)
    assert d.groups.counts["Male"] == SILO_A["Male"] + SILO_B["Male"]
    loose = GateSpec(min_worst=0.5, max_gap=0.5, groups=GroupSpec(column="sex", max_dp_difference=0.25,
                                                                  max_eo_difference=0.3))
    assert decide({"a": 0.8, "b": 0.7}, None, loose, groups={"a": SILO_A, "b": SILO_B}).passed


def test_a_silo_that_withheld_its_groups_is_named_and_left_out_of_the_sum():
    d = decide({"a": 0.8, "c": 0.9}, None, GROUPED, groups={"a": SILO_A, "c": {}}, suppressed={"c": 2})
    parity = _check(d, "parity")
    assert parity.value == pytest.approx(0.1) and parity.passed
    assert "per silo: a 0.100, c — (2 groups withheld)" in parity.detail
    assert d.groups.suppressed == {"c": 2}
    assert math.isnan(d.groups.silos["c"].parity)
    out = d.groups.to_dict()
    assert out["silos"]["c"] == {"counts": {}, "suppressed": 2, **d.groups.silos["c"].to_dict()}
    assert out["federation"]["counts"]["Female"] == SILO_A["Female"].to_dict()


def test_an_undefined_rate_is_named_and_left_out_of_its_gap():
    no_female_positives = {"Male": _counts(40, 20, 20, 16), "Female": _counts(20, 8, 0, 0)}
    d = decide({"a": 0.8}, None, GROUPED, groups={"a": no_female_positives})
    odds = _check(d, "odds")
    assert odds.value == pytest.approx(0.2) and odds.passed  # the FPR gap (Male 4/20, Female 8/20); no Female TPR
    assert "left out: Female TPR (no positives)" in odds.detail
    assert "TPR gap —" in odds.detail


@pytest.mark.parametrize("groups, suppressed", [({}, {}), ({"a": {}}, {"a": 2}), ({"a": {"Male": _counts(40, 20, 20, 16)}},
                                                                                 {"a": 1})],
                         ids=["no-report", "all-withheld", "one-group"])
def test_a_difference_the_counts_cannot_measure_fails_its_check(groups, suppressed):
    d = decide({"a": 0.8}, None, GROUPED, groups=groups, suppressed=suppressed)
    parity, odds = _check(d, "parity"), _check(d, "odds")
    assert not parity.passed and not odds.passed and not d.passed
    assert math.isnan(parity.value) and math.isnan(odds.value)
    assert parity.detail.startswith("demographic parity difference on sex undefined: the reported counts hold fewer "
                                    "than two groups with a defined rate")


def test_group_checks_are_reported_even_when_no_silo_has_a_defined_metric():
    d = decide({"a": NAN}, None, GateSpec(metric="roc_auc", groups=GROUPS), groups={"a": SILO_A})
    assert [c.name for c in d.checks] == ["coverage", "parity", "odds"] and not d.passed
    assert d.groups is not None


@PROPERTY
@given(
    silos=st.dictionaries(
        st.sampled_from(["a", "b", "c"]),
        st.dictionaries(st.sampled_from(["Male", "Female", "other"]),
                        st.tuples(st.integers(10, 60), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)).map(
                            lambda t: _counts(t[0], *_split(*t)))),
        max_size=3),
    dp=st.floats(0.0, 1.0), eo=st.floats(0.0, 1.0),
)
def test_group_checks_block_exactly_when_a_pooled_difference_exceeds_or_is_undefined(silos, dp, eo):
    from fl_core.fairness import demographic_parity_difference, equalised_odds_difference, sum_counts

    spec = GateSpec(min_worst=0.0, max_gap=1.0, groups=GroupSpec(column="g", max_dp_difference=dp, max_eo_difference=eo))
    d = decide({s: 0.9 for s in silos} or {"a": 0.9}, None, spec, groups=silos)
    pooled = sum_counts(silos.values())
    want_dp, want_eo = demographic_parity_difference(pooled), equalised_odds_difference(pooled)
    assert _check(d, "parity").passed == (not math.isnan(want_dp) and want_dp <= dp)
    assert _check(d, "odds").passed == (not math.isnan(want_eo) and want_eo <= eo)
    assert d.passed == (_check(d, "parity").passed and _check(d, "odds").passed)


def _split(n, predicted, positive, found):
    """(predicted, positive, true positives) of a group of `n` rows from three fractions."""
    pred, pos = round(predicted * n), round(positive * n)
    low, high = max(0, pred - (n - pos)), min(pred, pos)
    return pred, pos, low + round(found * (high - low))
