"""The validation summary leaves the silo (it is logged to the coordinator), so it may carry counts,
fractions, column names and hashes, but never a value from the data."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest
from heart_tables import N_ROWS, base_columns

from validation.summary import ExpectationOutcome, ValidationSummary, schema_hash

SECRET_AGE = 987
SECRET_CATEGORY = "ZZZ-SECRET-CATEGORY"
SECRET_NOTE = "patient-note-QX7731"  # in an extra column the contract does not know about
HEX64 = re.compile(r"^[0-9a-f]{64}$")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


@pytest.fixture(scope="module")
def leaky_table(make_table) -> pa.Table:
    """A table whose bad values would identify a record if they left the silo."""
    age = base_columns()["age"]
    age[3] = SECRET_AGE
    cp = base_columns()["cp"]
    cp[5] = SECRET_CATEGORY
    trestbps = [123_457 if row == 8 else v for row, v in enumerate(base_columns()["trestbps"])]  # also out of range
    oldpeak = [6.54321 if row == 9 else v for row, v in enumerate(base_columns()["oldpeak"])]  # in range
    note = pa.array([SECRET_NOTE if row == 2 else None for row in range(N_ROWS)])
    return make_table(age=age, cp=cp, trestbps=trestbps, oldpeak=oldpeak, note=note)


@pytest.fixture(scope="module")
def leaky_summary(validate, leaky_table) -> ValidationSummary:
    return validate(leaky_table)


def published_text(summary: ValidationSummary) -> str:
    """Everything a summary can say about itself, as text."""
    return "\n".join(
        [summary.to_json(), summary.one_line(), *summary.reasons(), json.dumps(summary.fingerprint(), sort_keys=True)]
    )


def test_the_leaky_table_still_reports_its_failures(leaky_summary):
    assert not leaky_summary.passed
    failed = {(o.column, o.expectation): o.unexpected_count for o in leaky_summary.failures}
    assert failed == {
        ("age", "expect_column_values_to_be_between"): 1,
        ("cp", "expect_column_values_to_be_in_set"): 1,
        ("trestbps", "expect_column_values_to_be_between"): 1,
    }
    assert leaky_summary.extra_columns == 1
    assert len(leaky_summary.reasons()) == 3
    assert "age: expect_column_values_to_be_between failed for 1 of 40 rows (2.5%)" in leaky_summary.one_line()


def test_the_sentinel_values_appear_nowhere_in_the_summary(leaky_summary, leaky_table, contract):
    # The only long hex strings are the two hashes, derived from the contract and the column
    # names/types; they are checked, then removed so that digits inside them cannot match by chance.
    assert leaky_summary.contract_hash == contract.contract_hash()
    assert leaky_summary.schema_hash == schema_hash([(f.name, str(f.type)) for f in leaky_table.schema])
    text = published_text(leaky_summary)
    text = text.replace(leaky_summary.contract_hash, "<contract-hash>").replace(
        leaky_summary.schema_hash, "<schema-hash>"
    )
    for secret in (
        str(SECRET_AGE),
        SECRET_CATEGORY,
        "ZZZ",
        "SECRET",
        SECRET_NOTE,
        "QX7731",
        "123457",
        "123_457",
        "6.54321",
    ):
        assert secret not in text, secret


def test_no_row_value_appears_in_the_summary(leaky_summary, leaky_table):
    text = published_text(leaky_summary)
    text = text.replace(leaky_summary.contract_hash, "").replace(leaky_summary.schema_hash, "")
    numbers = {float(token) for token in NUMBER.findall(text)}
    checked = 0
    for name in leaky_table.column_names:
        if name == "split":
            continue  # "train"/"holdout" are the contract's own vocabulary, used in the row-count problems
        for value in leaky_table.column(name).unique().to_pylist():
            if isinstance(value, str):
                assert value not in text, (name, value)
                checked += 1
            elif (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and (abs(value) >= 100 or value != round(value, 1))
            ):
                # Numbers distinctive enough not to be a count or a percentage: no number in the
                # text may equal them.
                assert float(value) not in numbers, (name, value)
                checked += 1
    assert checked > 50  # the check covered the categorical columns and the 3-digit measurements


def test_every_string_in_the_summary_is_a_name_a_hash_or_a_reason(leaky_summary, contract):
    # Structural allow-list: what may be a string in a published summary.
    raw = json.loads(leaky_summary.to_json())
    assert HEX64.match(raw["contract_hash"]) and HEX64.match(raw["schema_hash"])
    assert raw["silo"] == "clinic"
    assert raw["schema_issues"] == [] and raw["problems"] == []
    for outcome in raw["outcomes"]:
        assert outcome["column"] is None or outcome["column"] in contract.columns
        assert outcome["expectation"].startswith("expect_")
        assert outcome["error"] is None
        for key in ("element_count", "unexpected_count", "missing_count"):
            assert outcome[key] is None or isinstance(outcome[key], int)
        assert outcome["unexpected_fraction"] is None or 0.0 <= outcome["unexpected_fraction"] <= 1.0


def test_a_dictionary_encoded_out_of_range_value_is_counted_without_leaking(validate, make_table):
    # Categorical integers from pandas reach the checks as a dictionary column.
    age = base_columns()["age"]
    age[0] = SECRET_AGE
    summary = validate(make_table(age=pa.array(age).dictionary_encode()))
    assert not summary.passed
    assert [(o.column, o.expectation, o.unexpected_count, o.error) for o in summary.failures] == [
        ("age", "expect_column_values_to_be_between", 1, None)
    ]
    text = published_text(summary).replace(summary.contract_hash, "").replace(summary.schema_hash, "")
    assert str(SECRET_AGE) not in text


# --- serialisation -----------------------------------------------------------------------------


def test_round_trip_through_dict_and_json(conforming_summary, leaky_summary):
    for summary in (conforming_summary, leaky_summary):
        assert ValidationSummary.from_dict(summary.to_dict()) == summary
        assert ValidationSummary.from_dict(json.loads(summary.to_json())) == summary
        assert ValidationSummary.from_dict(json.loads(summary.to_json())).to_json() == summary.to_json()


def test_round_trip_of_a_schema_failure(validate, make_table):
    summary = validate(make_table(age=pa.array(["old"] * N_ROWS)))
    back = ValidationSummary.from_dict(json.loads(summary.to_json()))
    assert back == summary
    assert back.schema_issues == ("age: type string does not fit contract dtype int",)
    assert isinstance(back.schema_issues, tuple)


def test_from_dict_restores_tuples_and_outcome_objects(leaky_summary):
    back = ValidationSummary.from_dict(json.loads(leaky_summary.to_json()))
    assert isinstance(back.outcomes, tuple) and isinstance(back.problems, tuple)
    assert all(isinstance(o, ExpectationOutcome) for o in back.outcomes)
    assert back.failures == leaky_summary.failures
    assert back.one_line() == leaky_summary.one_line()


def test_to_json_is_canonical(leaky_summary):
    text = leaky_summary.to_json()
    assert text == json.dumps(json.loads(text), sort_keys=True)


def test_fingerprint_holds_only_hashes_counts_and_the_verdict(conforming_summary, leaky_summary):
    for summary in (conforming_summary, leaky_summary):
        fingerprint = summary.fingerprint()
        assert set(fingerprint) == {
            "schema_hash",
            "contract_hash",
            "rows",
            "train_rows",
            "holdout_rows",
            "contract",
            "failed_checks",
        }
        assert HEX64.match(fingerprint["schema_hash"]) and HEX64.match(fingerprint["contract_hash"])
        for key in ("rows", "train_rows", "holdout_rows", "failed_checks"):
            assert type(fingerprint[key]) is int
        assert fingerprint["contract"] == ("passed" if summary.passed else "failed")
        assert fingerprint["failed_checks"] == len(summary.reasons())
    assert conforming_summary.fingerprint()["failed_checks"] == 0
    assert leaky_summary.fingerprint() == {
        "schema_hash": leaky_summary.schema_hash,
        "contract_hash": leaky_summary.contract_hash,
        "rows": N_ROWS,
        "train_rows": 28,
        "holdout_rows": 12,
        "contract": "failed",
        "failed_checks": 3,
    }


def test_fingerprint_is_the_same_for_tables_that_differ_only_in_values(validate, make_table, conforming_summary):
    other = validate(make_table(age=[44] * N_ROWS, restecg=["normal"] * N_ROWS))
    assert other.fingerprint() == conforming_summary.fingerprint()


def test_describe_names_column_expectation_and_counts():
    outcome = ExpectationOutcome(
        expectation="expect_column_values_to_be_in_set",
        column="cp",
        success=False,
        element_count=200,
        unexpected_count=3,
        unexpected_fraction=0.015,
    )
    assert outcome.describe() == "cp: expect_column_values_to_be_in_set failed for 3 of 200 rows (1.5%)"
    errored = ExpectationOutcome(
        expectation="expect_column_values_to_be_between", column="age", success=False, error="boom"
    )
    assert errored.describe() == "age: expect_column_values_to_be_between could not run (boom)"
