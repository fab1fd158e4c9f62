"""The expectation suite on tables whose schema fits: each broken expectation is reported with its
column, its expectation type and how many rows it concerned, never with the values.

Each case notes the risk the expectation guards: what federated training would do with the data
if it slipped through.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
from heart_tables import N_ROWS, base_columns, only_failure

from validation.suite import build_suite

BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
NOT_NULL = "expect_column_values_to_not_be_null"
ROW_COUNT = "expect_table_row_count_to_be_between"


def with_values(column: str, replacements: dict[int, object]) -> list:
    """The base column with a few rows replaced."""
    values = base_columns()[column]
    for row, value in replacements.items():
        values[row] = value
    return values


def with_missing(column: str, rows: range) -> list:
    """The base column with its own gaps filled by a valid value, then exactly `rows` missing."""
    values = base_columns()[column]
    fill = next(v for v in values if v is not None)
    return [None if row in rows else (fill if v is None else v) for row, v in enumerate(values)]


def assert_single_failure(summary, column: str, expectation: str, unexpected: int):
    assert not summary.passed
    assert summary.schema_issues == ()
    assert summary.problems == ()
    failure = only_failure(summary)
    assert (failure.column, failure.expectation) == (column, expectation)
    assert failure.element_count == N_ROWS
    assert failure.unexpected_count == unexpected
    assert failure.unexpected_fraction == pytest.approx(unexpected / N_ROWS)
    assert failure.error is None
    line = f"{column}: {expectation} failed for {unexpected} of {N_ROWS} rows ({100 * unexpected / N_ROWS:.1f}%)"
    assert summary.reasons() == [line]
    assert summary.one_line() == f"clinic: contract failed: {line}"
    return failure


def test_every_expectation_records_the_risk_it_guards(contract, conforming_summary):
    # (conforming_summary: building a GX suite needs the context that validate_table makes.)
    suite = build_suite(contract)
    assert len(suite.expectations) == len(conforming_summary.outcomes)
    assert suite.expectations
    for expectation in suite.expectations:
        assert expectation.meta["guards"].strip(), expectation.type


# --- values out of range ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "bad"),
    [
        # Risk: an age of 987 is a typo or a missing-value code; the encoder would clip it silently.
        ("age", {3: 987}),
        # Risk: an age of 5 is a paediatric record in an adult cohort.
        ("age", {0: 5, 7: 17}),
        # Risk: blood pressure in kPa instead of mm Hg (a unit change at one hospital).
        ("trestbps", {1: 16, 2: 18, 4: 15}),
        # Risk: cholesterol in mmol/l instead of mg/dl.
        ("chol", {0: 5}),
        # Risk: a negative vessel count is a coding error.
        ("ca", {5: -1}),
        ("oldpeak", {2: -3.5, 6: 7.01}),
        ("thalch", {10: 250}),
    ],
)
def test_values_out_of_range_are_counted(validate, make_table, column, bad):
    summary = validate(make_table(**{column: with_values(column, bad)}))
    failure = assert_single_failure(summary, column, BETWEEN, len(bad))
    assert failure.missing_count == make_table().column(column).null_count


def test_range_bounds_are_inclusive(validate, make_table):
    # The contract's min and max are plausibility bounds, themselves plausible.
    summary = validate(
        make_table(age=with_values("age", {0: 18, 1: 100}), oldpeak=with_values("oldpeak", {0: -3.0, 1: 7.0}))
    )
    assert summary.passed, summary.reasons()


def test_an_infinite_value_is_out_of_range(validate, make_table):
    # Risk: an overflowed computation would dominate every gradient it touches.
    summary = validate(make_table(oldpeak=with_values("oldpeak", {4: float("inf")})))
    assert_single_failure(summary, "oldpeak", BETWEEN, 1)


# --- unknown categories ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "bad"),
    [
        # Risk: an unknown category encodes as "none of the above" and biases the model.
        ("cp", {0: "angina"}),
        # Risk: a different spelling at one hospital splits one category in two.
        ("sex", {1: "male", 2: "M", 3: "FEMALE"}),
        ("restecg", {4: "st-t wave abnormality"}),
        ("slope", {0: ""}),
        ("thal", {0: "normal "}),  # trailing space: a different category
    ],
)
def test_unknown_categories_are_counted(validate, make_table, column, bad):
    summary = validate(make_table(**{column: with_values(column, bad)}))
    assert_single_failure(summary, column, IN_SET, len(bad))


def test_an_unknown_category_in_a_dictionary_column_is_counted(validate, make_table):
    values = with_values("sex", {6: "unknown"})
    summary = validate(make_table(sex=pa.array(values).dictionary_encode()))
    assert_single_failure(summary, "sex", IN_SET, 1)


# --- missing values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "max_missing", "at_limit"),
    [
        # Risk: a hospital missing most blood pressures measures a different population; the
        # missing-indicator would dominate its contribution.
        ("trestbps", 0.35, 14),
        ("restecg", 0.05, 2),
        ("exang", 0.35, 14),
    ],
)
def test_missing_values_exactly_at_max_missing_pass(validate, make_table, contract, column, max_missing, at_limit):
    assert contract.feature(column).max_missing == max_missing
    assert at_limit == round(max_missing * N_ROWS)
    summary = validate(make_table(**{column: with_missing(column, range(N_ROWS - at_limit, N_ROWS))}))
    assert summary.passed, summary.reasons()
    outcome = next(o for o in summary.outcomes if (o.column, o.expectation) == (column, NOT_NULL))
    assert outcome.success
    assert outcome.unexpected_count == at_limit


@pytest.mark.parametrize(("column", "over_limit"), [("trestbps", 15), ("restecg", 3), ("exang", 15), ("thalch", 30)])
def test_missing_values_above_max_missing_fail(validate, make_table, column, over_limit):
    summary = validate(make_table(**{column: with_missing(column, range(over_limit))}))
    assert_single_failure(summary, column, NOT_NULL, over_limit)


@pytest.mark.parametrize("column", ["age", "sex", "cp"])
def test_a_single_missing_value_fails_a_column_that_allows_none(validate, make_table, contract, column):
    # Risk: age, sex and chest-pain type are always recorded; a gap means a broken export.
    assert contract.feature(column).max_missing == 0.0
    summary = validate(make_table(**{column: with_values(column, {11: None})}))
    assert_single_failure(summary, column, NOT_NULL, 1)


@pytest.mark.parametrize("column", ["chol", "slope", "ca", "thal"])
def test_a_column_with_max_missing_one_may_be_entirely_missing(validate, make_table, column):
    # Switzerland records no cholesterol: the contract allows it, and the table still passes.
    summary = validate(make_table(**{column: [None] * N_ROWS}))
    assert summary.passed, summary.reasons()
    assert all(o.expectation != NOT_NULL for o in summary.outcomes if o.column == column)


def test_nan_in_a_float_column_counts_as_missing(validate, make_table):
    # Risk: NaN is a missing-value code too; it must count against max_missing, not slip past it.
    values = [float("nan") if row < 15 else v for row, v in enumerate(base_columns()["oldpeak"])]
    summary = validate(make_table(oldpeak=values))
    assert_single_failure(summary, "oldpeak", NOT_NULL, 15)


# --- label -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [{0: 2}, {0: 4, 1: 3}, {5: -1}])
def test_a_label_outside_the_classes_is_counted(validate, make_table, bad):
    # Risk: a severity grade (num 0-4) instead of 0/1 would be trained as noise.
    summary = validate(make_table(disease=with_values("disease", bad)))
    assert_single_failure(summary, "disease", IN_SET, len(bad))


def test_a_null_label_is_counted(validate, make_table):
    # Risk: a row without a label can be neither trained nor scored.
    summary = validate(make_table(disease=with_values("disease", {0: None, 9: None})))
    assert_single_failure(summary, "disease", NOT_NULL, 2)


def test_a_one_class_silo_passes(validate, make_table):
    # A hospital that only sees diseased patients is still a valid silo; the pipeline must cope
    # with it rather than the contract refusing it.
    summary = validate(make_table(disease=[1] * N_ROWS))
    assert summary.passed, summary.reasons()
    assert (summary.n_train, summary.n_holdout) == (28, 12)


# --- split -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["test", "Train", "validation", ""])
def test_a_split_other_than_train_or_holdout_is_counted(validate, make_table, bad):
    # Risk: a "test" row is in neither split, so federated evaluation would not be a holdout.
    summary = validate(make_table(split=with_values("split", {0: bad})))
    assert_single_failure(summary, "split", IN_SET, 1)
    assert (summary.n_train, summary.n_holdout) == (27, 12)


def test_a_null_split_is_counted(validate, make_table):
    summary = validate(make_table(split=with_values("split", {1: None})))
    assert_single_failure(summary, "split", NOT_NULL, 1)
    assert (summary.n_train, summary.n_holdout) == (27, 12)


# --- silo size ---------------------------------------------------------------------------------


def test_an_empty_silo_fails_with_its_row_counts(validate, conforming_table):
    # Risk: a silo with no rows would be averaged in with weight zero or divide by zero.
    summary = validate(conforming_table.slice(0, 0))
    assert not summary.passed
    assert (summary.n_rows, summary.n_train, summary.n_holdout) == (0, 0, 0)
    assert summary.problems == (
        "split: 0 train rows, the contract needs >= 20",
        "split: 0 holdout rows, the contract needs >= 10",
    )
    failure = only_failure(summary)
    assert (failure.column, failure.expectation) == (None, ROW_COUNT)
    assert all(o.error is None for o in summary.outcomes)
    assert summary.reasons() == [*summary.problems, f"{ROW_COUNT} failed"]
    assert summary.fingerprint()["failed_checks"] == 3


def test_too_few_train_rows_is_a_problem(validate, make_table):
    # Risk: a silo with too little training data adds noise, not signal.
    summary = validate(make_table(split=["train"] * 15 + ["holdout"] * 25))
    assert not summary.passed
    assert (summary.n_train, summary.n_holdout) == (15, 25)
    assert summary.problems == ("split: 15 train rows, the contract needs >= 20",)
    assert summary.failures == ()  # 40 rows pass the table-size expectation
    assert summary.reasons() == ["split: 15 train rows, the contract needs >= 20"]


def test_too_few_holdout_rows_is_a_problem(validate, make_table):
    # Risk: a holdout of a handful of patients makes the hospital's accuracy meaningless.
    summary = validate(make_table(split=["train"] * 31 + ["holdout"] * 9))
    assert not summary.passed
    assert (summary.n_train, summary.n_holdout) == (31, 9)
    assert summary.problems == ("split: 9 holdout rows, the contract needs >= 10",)
    assert summary.failures == ()


def test_exactly_the_minimum_rows_pass(validate, make_table):
    summary = validate(make_table(n=30, split=["train"] * 20 + ["holdout"] * 10))
    assert summary.passed, summary.reasons()
    assert (summary.n_rows, summary.n_train, summary.n_holdout) == (30, 20, 10)


def test_a_silo_below_the_table_size_also_fails_the_row_count_expectation(validate, make_table):
    summary = validate(make_table(n=12, split=["train"] * 8 + ["holdout"] * 4))
    assert summary.problems == (
        "split: 8 train rows, the contract needs >= 20",
        "split: 4 holdout rows, the contract needs >= 10",
    )
    assert [(o.column, o.expectation) for o in summary.failures] == [(None, ROW_COUNT)]


# --- several failures --------------------------------------------------------------------------


def test_several_failures_are_all_reported_and_one_line_is_capped(validate, make_table):
    summary = validate(
        make_table(
            age=with_values("age", {0: 150}),
            cp=with_values("cp", {1: "angina"}),
            disease=with_values("disease", {2: 7}),
            split=with_values("split", {3: "test"}),
        )
    )
    assert not summary.passed
    assert [(o.column, o.expectation) for o in summary.failures] == [
        ("age", BETWEEN),
        ("cp", IN_SET),
        ("disease", IN_SET),
        ("split", IN_SET),
    ]
    assert all(o.unexpected_count == 1 for o in summary.failures)
    assert len(summary.reasons()) == 4
    line = summary.one_line()
    assert line.startswith("clinic: contract failed: age: ")
    assert line.endswith(" (+1 more)")
    assert "split:" not in line
    assert summary.fingerprint()["failed_checks"] == 4
